#!/usr/bin/env node
// db: a plain TCP service (the demo, the mesh tests). Every line it receives is answered
// with one line naming this instance, so a caller can see who served it.
//   node db-app.mjs --port 5432 [--host 127.0.0.1] [--name db-1]
import { createServer } from "node:net";
import { parseArgs } from "node:util";

const { values } = parseArgs({ options: { port: { type: "string" }, host: { type: "string", default: "127.0.0.1" }, name: { type: "string", default: "db" } } });
if (!values.port) {
  console.error("db-app: --port is required");
  process.exit(2);
}

const server = createServer((socket) => {
  let pending = "";
  socket.setEncoding("utf8");
  socket.on("data", (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const line = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      socket.write(`${values.name} answered: ${line}\n`);
    }
  });
  socket.on("error", () => socket.destroy());
});
server.listen(Number(values.port), values.host, () => console.log(`db-app ${values.name} listening on ${values.host}:${values.port}`));
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 500).unref(); // kept-alive clients must not hold the exit
  });
}
