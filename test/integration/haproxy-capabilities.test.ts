// What the HAProxy under test (HAPROXY_BIN, else Debian's) can change at run
// time, on the real binary with real Consul certificates: each capability the
// controller reads from `haproxy -v` (controller/haproxy-version.ts) is checked
// against what this binary really does. On 2.6 the listener rebuilt by `commit
// ssl cert` stops requesting client certificates, so the controller reloads for
// a renewed leaf there; from 3.0 it keeps them and the controller swaps the leaf.
import { execFile } from "node:child_process";
import { createConnection, createServer as createPlainServer, type Server } from "node:net";
import { connect as tlsConnect, createServer as createTlsServer, type Server as TlsServer } from "node:tls";
import { promisify } from "node:util";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { haproxyUnderTest, startHaproxy, type HaproxyInstance } from "../harness/haproxy.js";
import { freePorts } from "../harness/ports.js";
import { RuntimeApi } from "../../controller/runtime-api.js";
import { leafPem, rootsPem } from "../../controller/consul-pem.js";
import type { RuntimeCapabilities } from "../../controller/haproxy-version.js";
import type { CaRoots, LeafCertificate } from "../../controller/consul-replies.js";

const run = promisify(execFile);
const colonless = (serial: string) => serial.replaceAll(":", "").toLowerCase();

interface Tls {
  pem: string;
  cert: string;
  key: string;
  serial: string;
}

function tlsOf(leaf: LeafCertificate): Tls {
  return { pem: leafPem(leaf), cert: leaf.CertPEM, key: leaf.PrivateKeyPEM, serial: colonless(leaf.SerialNumber) };
}

/** What a TLS client sees on `port`: refused, or accepted with the serial the listener presented. */
function connectTls(port: number, client?: Tls): Promise<{ verdict: "accepted" | "refused"; serial?: string }> {
  return new Promise((resolve) => {
    let serial: string | undefined;
    const socket = tlsConnect({ host: "127.0.0.1", port, rejectUnauthorized: false, cert: client?.cert, key: client?.key }, () => {
      serial = socket.getPeerCertificate().serialNumber?.toLowerCase();
      socket.write("ping");
    });
    const timer = setTimeout(() => finish("refused"), 3000);
    const finish = (verdict: "accepted" | "refused") => {
      clearTimeout(timer);
      socket.destroy();
      resolve(verdict === "accepted" ? { verdict, serial } : { verdict });
    };
    socket.on("data", () => finish("accepted"));
    socket.on("error", () => finish("refused"));
    socket.on("close", () => finish("refused"));
  });
}

/** Through the upstream listener (plain TCP): the serial of the certificate HAProxy's server line presented, or "failed". */
function throughUpstream(port: number): Promise<string> {
  return new Promise((resolve) => {
    const chunks: Buffer[] = [];
    const socket = createConnection({ host: "127.0.0.1", port });
    const timer = setTimeout(() => socket.destroy(), 3000);
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", () => undefined);
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString().trim() || "failed");
    });
  });
}

/** `done` when `step` succeeds, else HAProxy's refusal. */
async function outcome(step: Promise<void>, done: string): Promise<string> {
  return step.then(() => done, (err: Error) => err.message);
}

async function unrelatedCaPem(): Promise<string> {
  const { stdout } = await run("openssl", ["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-keyout", "/dev/null", "-subj", "/CN=not Consul", "-days", "1"]);
  return stdout;
}

describe("runtime certificate updates on the HAProxy under test (HAPROXY_BIN)", () => {
  let consul: ConsulAgent;
  let echo: Server;
  let destination: TlsServer;
  let listenerLeaf: Tls;
  let nextLeaf: Tls;
  let clientLeaf: Tls;
  let roots: string;
  let otherCa: string;
  let listenerPort: number;
  let upstreamPort: number;
  let echoPort: number;
  let destinationPort: number;
  let capabilities: RuntimeCapabilities;
  let versionLine: string;

  beforeAll(async () => {
    const underTest = haproxyUnderTest();
    versionLine = underTest.version.line;
    capabilities = underTest.capabilities;
    consul = await startConsulDev();
    const leaf = (service: string) => consul.api<LeafCertificate>("GET", `/v1/agent/connect/ca/leaf/${service}`);
    [listenerLeaf, nextLeaf, clientLeaf] = (await Promise.all(["db", "db-next", "web"].map(leaf))).map(tlsOf) as [Tls, Tls, Tls];
    roots = rootsPem(await consul.api<CaRoots>("GET", "/v1/agent/connect/ca/roots"));
    otherCa = await unrelatedCaPem();
    [listenerPort, upstreamPort, echoPort, destinationPort] = (await freePorts(4)) as [number, number, number, number];
    echo = createPlainServer((socket) => socket.pipe(socket));
    await new Promise<void>((resolve) => echo.listen(echoPort, "127.0.0.1", resolve));
    // The upstream's sidecar: tells the client which certificate HAProxy's server line presented.
    const destinationLeaf = tlsOf(await leaf("api"));
    destination = createTlsServer({ cert: destinationLeaf.cert, key: destinationLeaf.key, requestCert: true, rejectUnauthorized: false }, (socket) => {
      socket.end(`${socket.getPeerCertificate().serialNumber?.toLowerCase() ?? "none"}\n`);
    });
    await new Promise<void>((resolve) => destination.listen(destinationPort, "127.0.0.1", resolve));
  });

  afterAll(async () => {
    await new Promise((resolve) => echo?.close(resolve));
    await new Promise((resolve) => destination?.close(resolve));
    await consul?.stop();
  });

  /** The controller's shape: one leaf file for the `verify required` listener and the upstream server line, one roots file. */
  async function sidecar(): Promise<HaproxyInstance> {
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
        "frontend upstream",
        `    bind 127.0.0.1:${upstreamPort}`,
        "    default_backend upstream",
        "backend upstream",
        `    server destination 127.0.0.1:${destinationPort} ssl crt {{DIR}}/leaf.pem ca-file {{DIR}}/roots.pem verify required`,
        "",
      ].join("\n"),
      { files: { "leaf.pem": listenerLeaf.pem, "roots.pem": roots } },
    );
  }

  /** Runs `test` on a fresh sidecar-shaped HAProxy, stopped afterwards whatever happens. */
  async function withSidecar(test: (haproxy: HaproxyInstance) => Promise<void>) {
    const haproxy = await sidecar();
    try {
      await test(haproxy);
    } finally {
      await haproxy.stop();
    }
  }

  async function shownSerial(haproxy: HaproxyInstance): Promise<string> {
    return colonless(/^Serial: (\S+)/m.exec(await haproxy.command(`show ssl cert ${haproxy.dir}/leaf.pem`))?.[1] ?? "");
  }

  /** `leaf` is what the stats socket shows, what the listener presents to a mesh client and what the server line presents upstream. */
  async function expectServing(haproxy: HaproxyInstance, leaf: Tls) {
    expect(await shownSerial(haproxy)).toBe(leaf.serial);
    expect(await connectTls(listenerPort, clientLeaf)).toEqual({ verdict: "accepted", serial: leaf.serial });
    expect(await throughUpstream(upstreamPort)).toBe(leaf.serial);
  }

  /** Still serving with verification on both sides: clients without a certificate refused, with one accepted, the upstream reached. */
  async function expectVerifying(haproxy: HaproxyInstance, leaf: Tls) {
    expect(await connectTls(listenerPort)).toEqual({ verdict: "refused" });
    expect(await connectTls(listenerPort, clientLeaf)).toEqual({ verdict: "accepted", serial: leaf.serial });
    expect(await throughUpstream(upstreamPort)).toBe(leaf.serial);
    expect(await haproxy.command("show info")).toMatch(/^Pid: /m);
  }

  it("keeps client certificates required after commit ssl ca-file; the new CA decides on the server lines, and on the listener where the controller says so", async () => {
    await withSidecar(async (haproxy) => {
      await expectVerifying(haproxy, listenerLeaf);
      const api = new RuntimeApi(haproxy.statsSocket);
      await api.replaceCaFile(`${haproxy.dir}/roots.pem`, otherCa);
      // Consul's leaves no longer chain to what the listener and the server line trust.
      const listenerVerdict = (await connectTls(listenerPort, clientLeaf)).verdict;
      console.log(`capabilities: ${versionLine}: after commit ssl ca-file of another CA the listener ${listenerVerdict} a Consul client; caFileReachesListener=${capabilities.caFileReachesListener}`);
      // 2.6.12: "accepted" (the listener keeps the CA it loaded, so the controller reloads for new roots); 3.0+: "refused".
      expect(listenerVerdict).toBe(capabilities.caFileReachesListener ? "refused" : "accepted");
      expect(await connectTls(listenerPort)).toEqual({ verdict: "refused" });
      expect(await throughUpstream(upstreamPort)).toBe("failed");
      await api.replaceCaFile(`${haproxy.dir}/roots.pem`, roots);
      await expectVerifying(haproxy, listenerLeaf);
    });
  });

  it("swaps the leaf with commit ssl cert on the listener and the server lines; client certificates stay required exactly where the controller says so", async () => {
    await withSidecar(async (haproxy) => {
      await expectVerifying(haproxy, listenerLeaf);
      await new RuntimeApi(haproxy.statsSocket).replaceCertificate(`${haproxy.dir}/leaf.pem`, nextLeaf.pem);
      await expectServing(haproxy, nextLeaf);
      // 2.6: "accepted" (the bug that makes the controller reload); 3.0+: "refused".
      const withoutCertificate = (await connectTls(listenerPort)).verdict;
      console.log(`capabilities: ${versionLine}: after commit ssl cert a client without a certificate is ${withoutCertificate}; swapListenerCertificate=${capabilities.swapListenerCertificate}`);
      expect(withoutCertificate).toBe(capabilities.swapListenerCertificate ? "refused" : "accepted");
    });
  });

  it("takes a renewed leaf then new roots in one worker, in the controller's order (certificate first)", async () => {
    await withSidecar(async (haproxy) => {
      const api = new RuntimeApi(haproxy.statsSocket);
      await api.replaceCertificate(`${haproxy.dir}/leaf.pem`, nextLeaf.pem);
      await api.replaceCaFile(`${haproxy.dir}/roots.pem`, roots);
      await expectServing(haproxy, nextLeaf);
      expect((await connectTls(listenerPort)).verdict).toBe(capabilities.swapListenerCertificate ? "refused" : "accepted");
    });
  });

  // HAProxy issue #3165: a CA update, a certificate update, then a CA update again crashed HAProxy.
  it("after commit ssl ca-file, commit ssl cert no longer reaches the listener (so the controller reloads); the rest of issue #3165's sequence is reported", async () => {
    await withSidecar(async (haproxy) => {
      const api = new RuntimeApi(haproxy.statsSocket);
      await api.replaceCaFile(`${haproxy.dir}/roots.pem`, roots);
      const leafSwap = await outcome(api.replaceCertificate(`${haproxy.dir}/leaf.pem`, nextLeaf.pem), "swapped");
      expect(leafSwap === "swapped").toBe(capabilities.swapCertificateAfterCaCommit);
      // The third step, which the controller never takes in one worker (it reloads for the leaf instead).
      const secondCa = await outcome(api.replaceCaFile(`${haproxy.dir}/roots.pem`, roots), "committed");
      await new Promise((resolve) => setTimeout(resolve, 500));
      const afterwards = haproxy.process.exited() ? `exited (${String(haproxy.process.exitStatus())})` : "still runs";
      console.log(`capabilities: ${versionLine}: HAProxy issue #3165's sequence: CA committed, leaf (${leafSwap}), CA (${secondCa}): HAProxy ${afterwards}`);
      if (capabilities.swapCertificateAfterCaCommit) await expectVerifying(haproxy, nextLeaf);
    });
  });
});
