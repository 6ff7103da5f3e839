import { request } from "node:http";
import { createConnection } from "node:net";

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

/** True once something accepts TCP connections on 127.0.0.1:port. */
export function tcpOpen(port, timeoutMs = 1000) {
  return new Promise((resolve) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    const done = (open) => {
      socket.destroy();
      resolve(open);
    };
    socket.setTimeout(timeoutMs, () => done(false));
    socket.on("connect", () => done(true));
    socket.on("error", () => done(false));
  });
}
