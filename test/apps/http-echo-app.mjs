#!/usr/bin/env node
// An HTTP service (the L7 tests) that answers every request with 200 and one
// line: `<name> <method> <path as received>`, so a test sees who answered and
// exactly which path the mesh forwarded. The request's `x-` headers come back
// as JSON in the `x-echo-headers` response header (what the mesh set or
// removed); `?delay_ms=N` delays the answer (timeouts).
//   node http-echo-app.mjs --port 8080 [--host 127.0.0.1] [--name api]
import { createServer } from "node:http";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" }, name: { type: "string", default: "api" } } });
if (!values.port) {
  console.error("http-echo-app: --port is required");
  process.exit(2);
}
const server = createServer((req, res) => {
  req.resume();
  const seen = JSON.stringify(Object.fromEntries(Object.entries(req.headers).filter(([name]) => name.startsWith("x-"))));
  const delayMs = Number(new URL(req.url ?? "/", "http://x").searchParams.get("delay_ms") ?? 0);
  const answer = () => res.writeHead(200, { "content-type": "text/plain", "x-echo-headers": seen }).end(`${values.name} ${req.method} ${req.url}\n`);
  req.on("end", () => (delayMs > 0 ? setTimeout(answer, delayMs) : answer()));
});
server.listen(Number(values.port), values.host, () => console.log(`http-echo-app ${values.name} listening on ${values.host}:${values.port}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref(); // kept-alive clients must not hold the exit
  });
}
