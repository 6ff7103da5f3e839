import { createServer } from "node:net";

/** A TCP port that was free on 127.0.0.1 a moment ago (the kernel picks it). */
export function freePort(host = "127.0.0.1") {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on("error", reject);
    server.listen(0, host, () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

export async function freePorts(count, host = "127.0.0.1") {
  const ports = new Set();
  while (ports.size < count) ports.add(await freePort(host));
  return [...ports];
}
