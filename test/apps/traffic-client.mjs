#!/usr/bin/env node
// Opens one connection after another to host:port, sends a line, waits for a
// reply line, and prints one JSON line per attempt: {"t": ms, "ms": duration, "ok": bool,
// "who": "<first word of the reply>", "error": "..."}. Bounded: it stops by
// itself after --max-seconds or --max-connections, whichever comes first.
// With --hold, one connection is kept open and a line exchanged on it every
// interval; each exchange is a JSON line that also carries "conn", the
// connection's number: a broken connection is one failed exchange, and the
// next exchange opens the next connection.
//   node traffic-client.mjs --port 9191 [--host 127.0.0.1] [--interval-ms 20] [--hold]
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
    hold: { type: "boolean", default: false },
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

/** One connection for many exchanges: exchange() sends a line and waits for the reply line. */
function heldConnection() {
  const socket = connect(port, values.host);
  socket.setEncoding("utf8");
  let buffered = "";
  let waiter;
  let broken;
  const fail = (error) => {
    broken ??= error;
    waiter?.(false, broken);
  };
  socket.on("data", (chunk) => {
    buffered += chunk;
    const newline = buffered.indexOf("\n");
    if (newline < 0) return;
    const line = buffered.slice(0, newline);
    buffered = buffered.slice(newline + 1);
    waiter?.(true, undefined, line);
  });
  socket.on("error", (err) => fail(err.code ?? err.message));
  socket.on("close", () => fail("closed"));
  return {
    exchange(n) {
      if (broken) return Promise.resolve({ ok: false, error: broken });
      return new Promise((resolve) => {
        const timer = setTimeout(() => settle(false, "timeout"), timeoutMs);
        function settle(ok, error, line) {
          clearTimeout(timer);
          waiter = undefined;
          resolve({ ok, who: ok ? line.split(" ")[0] : undefined, error });
        }
        waiter = settle;
        socket.write(`ping ${n}\n`);
      });
    },
    close: () => socket.destroy(),
  };
}

let stopping = false;
process.on("SIGTERM", () => (stopping = true));
process.on("SIGINT", () => (stopping = true));
if (values.hold) {
  let conn = 1;
  let held = heldConnection();
  for (let n = 0; Date.now() < deadline && !stopping; n++) {
    const t = Date.now();
    const result = await held.exchange(n);
    process.stdout.write(`${JSON.stringify({ t, ms: Date.now() - t, conn, ...result })}\n`);
    if (!result.ok) {
      held.close();
      conn += 1;
      held = heldConnection();
    }
    const wait = intervalMs - (Date.now() - t);
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
  }
  held.close();
  process.exit(0);
}
for (let n = 0; n < maxConnections && Date.now() < deadline && !stopping; n++) {
  const t = Date.now();
  const result = await attempt();
  process.stdout.write(`${JSON.stringify({ t, ms: Date.now() - t, ...result })}\n`);
  const wait = intervalMs - (Date.now() - t);
  if (wait > 0) await new Promise((r) => setTimeout(r, wait));
}
