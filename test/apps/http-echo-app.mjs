#!/usr/bin/env node
// An HTTP service (the L7 tests) that answers every request with 200 and one
// line: `<name> <method> <path as received>`, so a test sees who answered and
// exactly which path the mesh forwarded. The request's `x-` headers come back
// as JSON in the `x-echo-headers` response header (what the mesh set or
// removed); `?delay_ms=N` delays the answer (timeouts). Opt-in, `--status N`
// answers every request with status N instead of 200: a failing instance
// (retries), still up and still passing its checks.
//   node http-echo-app.mjs --port 8080 [--host 127.0.0.1] [--name api] [--status 503]
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" }, name: { type: "string", default: "api" }, status: { type: "string", default: "200" } } });
const status = Number(values.status);
if (!values.port || !(status >= 100 && status <= 599)) {
  console.error("http-echo-app: --port is required; --status must be an HTTP status (100-599)");
  process.exit(2);
}
// Node's own 16 kB header limit would answer 431 before the mesh's limit is reached.
const server = createServer({ maxHeaderSize: 256 * 1024 }, (req, res) => {
  req.resume();
  const seen = JSON.stringify(Object.fromEntries(Object.entries(req.headers).filter(([name]) => name.startsWith("x-"))));
  const delayMs = Number(new URL(req.url ?? "/", "http://x").searchParams.get("delay_ms") ?? 0);
  const answer = () => res.writeHead(status, { "content-type": "text/plain", "x-echo-headers": seen }).end(`${values.name} ${req.method} ${req.url}\n`);
  req.on("end", () => (delayMs > 0 ? setTimeout(answer, delayMs) : answer()));
});
server.listen(Number(values.port), values.host, () => console.log(`http-echo-app ${values.name} listening on ${values.host}:${values.port}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref(); // kept-alive clients must not hold the exit
  });
}
