#!/usr/bin/env node
// Opens one connection after another to host:port, sends a line, waits for a
// reply line, and prints one JSON line per attempt: {"t": ms, "ms": duration, "ok": bool,
// "who": "<first word of the reply>", "error": "..."}. Bounded: it stops by
// itself after --max-seconds or --max-connections, whichever comes first.
//   node traffic-client.mjs --port 9191 [--host 127.0.0.1] [--interval-ms 20]
import { connect } from "node:net";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string" },
    "interval-ms": { type: "string", default: "20" },
    "timeout-ms": { type: "string", default: "3000" },
    "max-seconds": { type: "string", default: "300" },
    "max-connections": { type: "string", default: "30000" },
  },
});
const port = Number(values.port);
const intervalMs = Number(values["interval-ms"]);
const timeoutMs = Number(values["timeout-ms"]);
const deadline = Date.now() + Number(values["max-seconds"]) * 1000;
const maxConnections = Number(values["max-connections"]);

function attempt() {
  return new Promise((resolve) => {
    const socket = connect(port, values.host);
    let reply = "";
    let settled = false;
    const finish = (ok, error) => {
      if (settled) return;
      settled = true;
      socket.destroy();
      resolve({ ok, who: ok ? reply.split(" ")[0] : undefined, error });
    };
    socket.setEncoding("utf8");
    socket.setTimeout(timeoutMs, () => finish(false, "timeout"));
    socket.on("connect", () => socket.write("ping\n"));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\n")) finish(true);
    });
    socket.on("error", (err) => finish(false, err.code ?? err.message));
    socket.on("close", () => finish(false, "closed before a reply"));
  });
}

let stopping = false;
process.on("SIGTERM", () => (stopping = true));
process.on("SIGINT", () => (stopping = true));
for (let n = 0; n < maxConnections && Date.now() < deadline && !stopping; n++) {
  const t = Date.now();
  const result = await attempt();
  process.stdout.write(`${JSON.stringify({ t, ms: Date.now() - t, ...result })}\n`);
  const wait = intervalMs - (Date.now() - t);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
