// The CLI against a real Consul dev agent: render, lookup errors, an agent that
// is unreachable at start, and a token that lacks a permission (403).
import { createConnection, createServer, type Server } from "node:net";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { checkHaproxyConfig } from "../harness/haproxy.js";
import { controllerCli as cli } from "../harness/paths.js";
import { freePort, freePorts } from "../harness/ports.js";
import { startProcess, waitFor } from "../harness/processes.js";
import { exitCodes, run } from "../../controller/run.js";


function capture() {
  const sink = { text: "", write: (s: string) => ((sink.text += s), true) };
  return sink;
}

const count = (text: string, needle: string) => text.split(needle).length - 1;

describe("connect-haproxy CLI with a real Consul agent", () => {
  let consul: ConsulAgent;
  let ports: number[];

  beforeAll(async () => {
    consul = await startConsulDev();
    ports = await freePorts(4);
    await consul.api("PUT", "/v1/agent/service/register", { ID: "db-1", Name: "db", Port: ports[0], Connect: { SidecarService: { Port: ports[1] } } });
    await consul.api("PUT", "/v1/agent/service/register", {
      ID: "web-1",
      Name: "web",
      Port: ports[2],
      Connect: { SidecarService: { Port: ports[3], Proxy: { Config: { protocol: "http" }, Upstreams: [{ DestinationName: "db", LocalBindPort: 19555 }] } } },
    });
  });

  afterAll(async () => {
    await consul?.stop();
  });

  it("render prints a configuration that haproxy -c accepts, and exits 0", async () => {
    const out = capture();
    const err = capture();
    const dir = mkdtempSync(join(tmpdir(), "ch-render-"));
    const code = await run(["render", "--sidecar-for", "web-1", "--http-addr", consul.httpAddr, "--config-dir", dir], out, err);
    expect(err.text).toBe("");
    expect(code).toBe(exitCodes.ok);
    expect(out.text).toContain("http-request lua.connect_authorize web");
    expect(out.text).toContain(`bind 0.0.0.0:${ports[3]} ssl crt ${dir}/certs/leaf.pem`);
    expect(out.text).toContain("frontend upstream_db");
    // haproxy -c needs the files the configuration names
    const { ConsulClient } = await import("../../controller/consul-client.js");
    const { leafPem, rootsPem } = await import("../../controller/consul-pem.js");
    const client = new ConsulClient({ httpAddr: consul.httpAddr });
    const { mkdirSync } = await import("node:fs");
    mkdirSync(join(dir, "certs"));
    writeFileSync(join(dir, "certs", "leaf.pem"), leafPem((await client.leafCertificate("web", {})).value));
    writeFileSync(join(dir, "certs", "roots.pem"), rootsPem((await client.caRoots({})).value));
    writeFileSync(join(dir, "passes.map"), "");
    writeFileSync(join(dir, "server-passes.map"), "");
    client.close();
    writeFileSync(join(dir, "haproxy.cfg"), out.text);
    await checkHaproxyConfig(join(dir, "haproxy.cfg"));
    rmSync(dir, { recursive: true, force: true });
  });

  it("exits 2 with one line naming what it found when the service has no sidecar", async () => {
    const out = capture();
    const err = capture();
    const code = await run(["--sidecar-for", "nope-1", "--http-addr", consul.httpAddr], out, err);
    expect(code).toBe(exitCodes.usage);
    expect(err.text.trim().split("\n")).toHaveLength(1);
    expect(err.text).toContain('no connect-proxy on this agent has Proxy.DestinationServiceID "nope-1"');
    expect(err.text).toContain("db-1-sidecar-proxy (for db-1)");
    expect(err.text).toContain("web-1-sidecar-proxy (for web-1)");
  });

  it("waits for an agent that is unreachable at start, saying so once, then starts HAProxy", async () => {
    const relayPort = await freePort();
    const dir = mkdtempSync(join(tmpdir(), "ch-ctl-late-"));
    const controller = startProcess("controller db-1", process.execPath, [cli, "--sidecar-for", "db-1", "--config-dir", dir], {
      env: { ...process.env, CONSUL_HTTP_ADDR: `127.0.0.1:${relayPort}` },
    });
    let relay: Server | undefined;
    try {
      await waitFor("the unreachable warning", async () => (controller.output().includes("cannot reach Consul") ? true : undefined), { process: controller });
      await new Promise((r) => setTimeout(r, 3000));
      expect(count(controller.output(), "cannot reach Consul")).toBe(1);
      // The agent "comes up": relay the port to the real agent.
      relay = createServer((client) => {
        const upstream = createConnection(consul.httpPort, "127.0.0.1");
        client.pipe(upstream).pipe(client);
        client.on("error", () => upstream.destroy());
        upstream.on("error", () => client.destroy());
      });
      await new Promise<void>((resolve) => relay!.listen(relayPort, "127.0.0.1", resolve));
      await waitFor("HAProxy started", async () => (controller.output().includes("HAProxy started") ? true : undefined), { timeoutMs: 30_000, process: controller });
      expect(controller.output()).toContain("Consul is reachable again");
      controller.child.kill("SIGTERM");
      const code = await new Promise<number | null>((resolve) => controller.child.once("exit", resolve));
      expect(code).toBe(0);
    } finally {
      await controller.stop("SIGTERM", 40_000);
      await new Promise((resolve) => (relay ? relay.close(resolve) : resolve(undefined)));
      rmSync(dir, { recursive: true, force: true });
    }
  }, 90_000);
});

describe("connect-haproxy with ACLs on", () => {
  const managementToken = "11111111-2222-3333-4444-555555555555";
  let consul: ConsulAgent;

  beforeAll(async () => {
    consul = await startConsulDev({ config: { acl: { enabled: true, default_policy: "deny", tokens: { initial_management: managementToken, agent: managementToken } } } });
  });

  afterAll(async () => {
    await consul?.stop();
  });

  it("says once, in one line, which endpoint refused and which permission the token needs", async () => {
    const [appPort, publicPort] = (await freePorts(2)) as [number, number];
    await consul.api("PUT", "/v1/agent/service/register", { ID: "web-1", Name: "web", Port: appPort, Connect: { SidecarService: { Port: publicPort } } }, managementToken);
    // Reads everything but intentions: the intentions watch gets a 403.
    await consul.api("PUT", "/v1/acl/policy", { Name: "read-only", Rules: 'service_prefix "" {\n policy = "read"\n intentions = "deny"\n}\nnode_prefix "" { policy = "read" }' }, managementToken);
    const token = await consul.api<{ SecretID: string }>("PUT", "/v1/acl/token", { Policies: [{ Name: "read-only" }] }, managementToken);
    const dir = mkdtempSync(join(tmpdir(), "ch-ctl-acl-"));
    const controller = startProcess("controller web-1", process.execPath, [cli, "--sidecar-for", "web-1", "--config-dir", dir], {
      env: { ...process.env, CONSUL_HTTP_ADDR: consul.httpAddr, CONSUL_HTTP_TOKEN: token.SecretID },
    });
    try {
      await waitFor("the 403 line", async () => (controller.output().includes("/v1/connect/intentions/match?by=destination&name=web (403") ? true : undefined), { process: controller, timeoutMs: 15_000 }).catch(
        (err: Error) => {
          throw new Error(`${err.message}\ncontroller said:\n${controller.output()}`);
        },
      );
      await new Promise((r) => setTimeout(r, 2000));
      const lines = controller.output().split("\n").filter((line) => line.includes(" (403 "));
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain("/v1/connect/intentions/match?by=destination&name=web");
      expect(lines[0]).toContain('the token needs intention:read on "web"');
      expect(controller.output()).not.toContain(token.SecretID);
      // Everything else works: HAProxy runs with what the token can read.
      await waitFor("HAProxy started", async () => (controller.output().includes("HAProxy started") ? true : undefined), { process: controller });
      controller.child.kill("SIGTERM");
      expect(await new Promise<number | null>((resolve) => controller.child.once("exit", resolve))).toBe(0);
    } finally {
      await controller.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
