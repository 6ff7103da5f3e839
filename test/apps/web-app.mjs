#!/usr/bin/env node
// web: an HTTP service (the demo, the mesh tests) that calls `db` through its upstream
// listener (the local sidecar) on every request and returns what db said.
//   node web-app.mjs --port 8080 --db 127.0.0.1:9191 [--host 127.0.0.1]
import { createServer } from "node:http";
import { connect } from "node:net";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" }, db: { type: "string" } } });
if (!values.port || !values.db) {
  console.error("web-app: --port and --db host:port are required");
  process.exit(2);
}
const [dbHost, dbPort] = [values.db.slice(0, values.db.lastIndexOf(":")), Number(values.db.slice(values.db.lastIndexOf(":") + 1))];

/** One round trip to db: resolves with its reply line, rejects with why there was none. */
function askDb(question) {
  return new Promise((resolve, reject) => {
    const socket = connect(dbPort, dbHost);
    let reply = "";
    socket.setEncoding("utf8");
    socket.setTimeout(3000, () => socket.destroy(new Error("db did not answer within 3 s")));
    socket.on("connect", () => socket.write(`${question}\n`));
    socket.on("data", (chunk) => {
      reply += chunk;
      if (reply.includes("\n")) {
        socket.end();
        resolve(reply.trim());
      }
    });
    socket.on("error", (err) => reject(err));
    socket.on("close", () => reject(new Error("the connection to db was closed before it answered (refused by the mesh?)")));
  });
}

const server = createServer(async (req, res) => {
  try {
    const answer = await askDb(`hello from web (${req.url})`);
    res.writeHead(200, { "content-type": "text/plain" }).end(`web → ${answer}\n`);
  } catch (err) {
    res.writeHead(502, { "content-type": "text/plain" }).end(`web could not reach db: ${err.message}\n`);
  }
});
server.listen(Number(values.port), values.host, () => console.log(`web-app listening on ${values.host}:${values.port}, db upstream at ${values.db}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref(); // kept-alive clients must not hold the exit
  });
}
