import { createConnection, createServer } from "node:net";

// Ports come from a slice of 22000-31999 of this process's own: below the
// kernel's ephemeral range (32768-60999 here), so no outgoing connection takes
// one between the check and the bind, and disjoint between the vitest workers
// that run two files at once (VITEST_POOL_ID 1, 2, …; anything else, e.g. a
// benchmark, slice 0). A port the kernel picked (port 0) could be handed to
// both files: HAProxy binds with SO_REUSEPORT, so both would listen, and one
// file's client would reach the other file's sidecar. (Above Consul's
// sidecar ports, 21000-21255, and the fixed ports tests use, e.g. 18599.)
const firstPort = 22_000;
const sliceCount = 5;
const sliceSize = Math.floor(10_000 / sliceCount);
const slice = Math.min(sliceCount - 1, Number(process.env.VITEST_POOL_ID ?? 0) || 0);
const handedOut = new Set<number>();

/** True when nothing listens on host:port (a listen succeeds and is closed again). */
function canListen(port: number, host: string): Promise<boolean> {
  return new Promise((resolve) => {
    const server = createServer();
    server.unref();
    server.once("error", () => resolve(false));
    server.listen({ port, host, exclusive: true }, () => server.close(() => resolve(true)));
  });
}

/** A TCP port that was free on `host` a moment ago, from this process's slice, never the same one twice. */
export async function freePort(host = "127.0.0.1"): Promise<number> {
  for (let attempt = 0; attempt < 200; attempt++) {
    const port = firstPort + slice * sliceSize + Math.floor(Math.random() * sliceSize);
    if (handedOut.has(port)) continue;
    handedOut.add(port);
    if (await canListen(port, host)) return port;
  }
  throw new Error(`no free port on ${host} in ${firstPort + slice * sliceSize}-${firstPort + (slice + 1) * sliceSize - 1} after 200 attempts`);
}

export async function freePorts(count: number, host = "127.0.0.1"): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) ports.add(await freePort(host));
  return [...ports];
}

/** True once something accepts TCP connections on host:port. */
export function tcpOpen(port: number, host = "127.0.0.1", timeoutMs = 1000): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = createConnection({ host, port });
    const done = (open: boolean) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.on("connect", () => done(true));
    socket.on("error", () => done(false));
  });
}
