// Why the controller reloads (seamlessly) for a renewed leaf instead of using
// `set ssl cert` + `commit ssl cert`: on HAProxy 2.6 the listener rebuilt by
// the commit stops requesting client certificates, while `commit ssl ca-file`
// keeps them required. Real HAProxy, real Consul certificates.
import { createServer, type Server } from "node:net";
import { connect as tlsConnect } from "node:tls";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { startHaproxy, type HaproxyInstance } from "../harness/haproxy.js";
import { freePorts } from "../harness/ports.js";
import { RuntimeApi } from "../../controller/runtime-api.js";
import { leafPem, rootsPem } from "../../controller/consul-pem.js";
import type { CaRoots, LeafCertificate } from "../../controller/consul-replies.js";

/** "accepted" when the listener forwards bytes from a client that sent no certificate. */
function connectWithoutCertificate(port: number): Promise<"accepted" | "refused"> {
  return new Promise((resolve) => {
    const socket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false }, () => socket.write("ping"));
    const timer = setTimeout(() => finish("refused"), 3000);
    const finish = (verdict: "accepted" | "refused") => {
      clearTimeout(timer);
      socket.destroy();
      resolve(verdict);
    };
    socket.on("data", () => finish("accepted"));
    socket.on("error", () => finish("refused"));
    socket.on("close", () => finish("refused"));
  });
}

describe("HAProxy 2.6 runtime certificate updates on a `verify required` listener", () => {
  let consul: ConsulAgent;
  let echo: Server;
  let leaf: string;
  let roots: string;
  let listenerPort: number;
  let echoPort: number;

  beforeAll(async () => {
    consul = await startConsulDev();
    leaf = leafPem(await consul.api<LeafCertificate>("GET", "/v1/agent/connect/ca/leaf/db"));
    roots = rootsPem(await consul.api<CaRoots>("GET", "/v1/agent/connect/ca/roots"));
    [listenerPort, echoPort] = (await freePorts(2)) as [number, number];
    echo = createServer((socket) => socket.pipe(socket));
    await new Promise<void>((resolve) => echo.listen(echoPort, "127.0.0.1", resolve));
  });

  afterAll(async () => {
    await new Promise((resolve) => echo?.close(resolve));
    await consul?.stop();
  });

  async function listener(): Promise<HaproxyInstance> {
    return startHaproxy(
      [
        "global",
        "defaults",
        "    mode tcp",
        "    timeout connect 2s",
        "    timeout client 5s",
        "    timeout server 5s",
        "frontend public",
        `    bind 127.0.0.1:${listenerPort} ssl crt {{DIR}}/leaf.pem ca-file {{DIR}}/roots.pem verify required`,
        "    default_backend app",
        "backend app",
        `    server app 127.0.0.1:${echoPort}`,
        "",
      ].join("\n"),
      { files: { "leaf.pem": leaf, "roots.pem": roots } },
    );
  }

  it("keeps client certificates required after commit ssl ca-file", async () => {
    const haproxy = await listener();
    try {
      expect(await connectWithoutCertificate(listenerPort)).toBe("refused");
      await new RuntimeApi(haproxy.statsSocket).replaceCaFile(`${haproxy.dir}/roots.pem`, roots);
      expect(await connectWithoutCertificate(listenerPort)).toBe("refused");
    } finally {
      await haproxy.stop();
    }
  });

  it("stops requiring client certificates after commit ssl cert (so the controller reloads instead)", async () => {
    const haproxy = await listener();
    try {
      expect(await connectWithoutCertificate(listenerPort)).toBe("refused");
      await new RuntimeApi(haproxy.statsSocket).replaceCertificate(`${haproxy.dir}/leaf.pem`, leaf);
      // If this ever fails, HAProxy fixed it: set swapListenerCertificate for that version.
      expect(await connectWithoutCertificate(listenerPort)).toBe("accepted");
    } finally {
      await haproxy.stop();
    }
  });
});
