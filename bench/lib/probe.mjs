import { request } from "node:http";

/** Status of one GET http://127.0.0.1:port/ on its own connection (closed after), or undefined. */
export function httpStatus(port, timeoutMs = 2000) {
  return new Promise((resolve) => {
    const req = request({ host: "127.0.0.1", port, path: "/", agent: false, headers: { connection: "close" }, timeout: timeoutMs }, (res) => {
      res.resume();
      res.on("end", () => resolve(res.statusCode));
      res.on("error", () => resolve(undefined));
    });
    req.on("timeout", () => req.destroy());
    req.on("error", () => resolve(undefined));
    req.end();
  });
}

/** One GET http://127.0.0.1:port/metrics: its wall time (ms) and size; throws unless it answers 200. */
export async function timedScrape(port) {
  const started = performance.now();
  const response = await fetch(`http://127.0.0.1:${port}/metrics`);
  const body = await response.text();
  if (response.status !== 200) throw new Error(`/metrics on port ${port} answered ${response.status}`);
  return { ms: performance.now() - started, bytes: body.length };
}
