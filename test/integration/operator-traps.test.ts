// Traps an operator can fall into, on the real HAProxy 2.6 binary (and a real
// Consul dev agent for the controller's part).
//
// A hand-written haproxy.cfg with `setenv CONSUL_HTTP_ADDR …` below `lua-load`:
// the bundle reads its settings when lua-load runs, before that setenv, so it
// would talk to 127.0.0.1:8500. HAProxy runs register_init functions after
// parsing, where the late value is visible (tried on 2.6.12): the bundle stops
// the start-up there, naming the line to move.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { haproxyBinary, luaLoadConfig, sendRuntimeCommand, startHaproxy } from "../harness/haproxy.js";
import { serviceWithSidecar, startConnectHaproxy, startDbApp, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { luaBundlePath } from "../harness/paths.js";
import { freePorts } from "../harness/ports.js";
import { runCommand, waitFor, type StartedProcess } from "../harness/processes.js";
import { parseServersState } from "../../controller/runtime-api.js";

describe("a hand-written haproxy.cfg that sets the authorizer's environment", () => {
  const dir = mkdtempSync(join(tmpdir(), "ch-traps-"));
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  it("with setenv below lua-load: HAProxy refuses to start, saying which setting to move above lua-load", async () => {
    const [port, agentPort] = (await freePorts(2)) as [number, number];
    const config = luaLoadConfig(luaBundlePath, port).replace(/^(\s+lua-load .*)$/m, `$1\n    setenv CONSUL_HTTP_ADDR 127.0.0.1:${agentPort}`);
    const file = join(dir, "late-setenv.cfg");
    writeFileSync(file, config);
    const run = await runCommand(haproxyBinary(), ["-W", "-db", "-f", file], { timeoutMs: 10_000 });
    expect(run.code).toBe(1);
    expect(run.stderr).toContain(
      "connect-haproxy: CONSUL_HTTP_ADDR set after lua-load: the authorizer reads its settings when lua-load runs, so move the setenv/presetenv line(s) for CONSUL_HTTP_ADDR above lua-load in the global section",
    );
  });

  it("with setenv above lua-load: HAProxy starts and the authorizer uses the address", async () => {
    const [port, agentPort] = (await freePorts(2)) as [number, number];
    const config = luaLoadConfig(luaBundlePath, port).replace(/^(\s+lua-load .*)$/m, `    setenv CONSUL_HTTP_ADDR 127.0.0.1:${agentPort}\n$1`);
    const haproxy = await startHaproxy(config);
    try {
      expect(await haproxy.command("connect show config")).toContain(`127.0.0.1:${agentPort}`);
    } finally {
      await haproxy.stop();
    }
  });
});

// A server slot changed behind the controller's back (an operator's `set server
// … state maint` on the stats socket) is put back by the periodic drift check,
// and at once on SIGHUP, which also re-reads everything from Consul.
describe("the controller repairs drift, periodically and on SIGHUP", () => {
  let consul: ConsulAgent;
  let web: SidecarProcess;
  let db: SidecarProcess;
  let dbApp: StartedProcess;
  let upstreamPort: number;
  const driftEverySeconds = 4;

  const statsSocket = () => join(web.configDir, "stats.sock");
  const liveSlots = async () => parseServersState(await sendRuntimeCommand(statsSocket(), "show servers state upstream_db"));
  const echo = () => tcpRoundTrip(upstreamPort, "ping");

  beforeAll(async () => {
    consul = await startConsulDev();
    const [appPort, dbSidecarPort, webSidecarPort, webAppPort, upstream] = (await freePorts(5)) as [number, number, number, number, number];
    upstreamPort = upstream;
    dbApp = startDbApp(appPort, "db-1");
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "db-1", name: "db", port: appPort, sidecarPort: dbSidecarPort }));
    await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "web-1", name: "web", port: webAppPort, sidecarPort: webSidecarPort, upstreams: [{ DestinationName: "db", LocalBindPort: upstream }] }));
    db = startConnectHaproxy("db-1", consul.httpAddr);
    web = startConnectHaproxy("web-1", consul.httpAddr, { args: ["--drift-check-interval", String(driftEverySeconds)] });
    await waitFor("an echo through both sidecars", async () => (await echo()) ?? undefined, { timeoutMs: 30_000, process: web.process });
  }, 60_000);

  afterAll(async () => {
    await web?.stop();
    await db?.stop();
    await dbApp?.stop();
    await consul?.stop();
    for (const sidecar of [web, db]) if (sidecar) rmSync(sidecar.configDir, { recursive: true, force: true });
  });

  /** Puts db's ready slot in maintenance on the stats socket; returns its name. */
  async function maintBehindTheControllersBack(): Promise<string> {
    const slot = (await liveSlots()).find((server) => server.state === "ready")!;
    expect((await sendRuntimeCommand(statsSocket(), `set server upstream_db/${slot.server} state maint`)).trim()).toBe("");
    expect(await echo()).toBeUndefined();
    return slot.server;
  }

  it("the periodic drift check puts a slot set to maint back to ready, with one line naming the difference", async () => {
    const offset = web.process.output().length;
    const slot = await maintBehindTheControllersBack();
    const repairedAt = await waitFor("the slot repaired", async () => ((await liveSlots()).find((s) => s.server === slot)?.state === "ready" ? Date.now() : undefined), {
      timeoutMs: (driftEverySeconds + 3) * 1000, intervalMs: 100,
    });
    expect(repairedAt).toBeGreaterThan(0);
    // The controller logs a repair once HAProxy has answered its commands, which may be just after the slot reads ready.
    const applied = new RegExp(`change="drift: upstream_db/${slot} is maint in HAProxy, should be ready at 127\\.0\\.0\\.1:\\d+ \\(instance [^)]+\\)" path="runtime API: set server addr \\+ state ready"`);
    await waitFor("the repair's log line", async () => (applied.test(web.process.output().slice(offset)) ? true : undefined), { timeoutMs: 2000, intervalMs: 20 });
    const output = web.process.output().slice(offset);
    expect(output).toMatch(/WARN  drift check: HAProxy's server slots differ from the desired state; repairing each trigger=periodic differences=1/);
    expect(output).toMatch(applied);
    expect(await echo()).toBe("db-1 answered: ping");
  }, 30_000);

  it("SIGHUP re-reads Consul and repairs at once, without waiting for the next check", async () => {
    // Just after a periodic check: the next one is driftEverySeconds away.
    const checks = () => web.process.output().split("drift check: HAProxy's server slots are as desired").length;
    const before = checks();
    await waitFor("a periodic drift check", async () => (checks() > before ? true : undefined), { timeoutMs: (driftEverySeconds + 2) * 1000, intervalMs: 50 });
    const offset = web.process.output().length;
    const slot = await maintBehindTheControllersBack();
    const hungUpAt = Date.now();
    web.process.child.kill("SIGHUP");
    await waitFor("the slot repaired", async () => ((await liveSlots()).find((s) => s.server === slot)?.state === "ready" ? true : undefined), { timeoutMs: 3000, intervalMs: 50 });
    expect(Date.now() - hungUpAt).toBeLessThan(driftEverySeconds * 1000 - 500);
    const output = web.process.output().slice(offset);
    expect(output).toContain("SIGHUP: re-reading everything from Consul and checking HAProxy against it");
    expect(output).toMatch(/repairing each trigger=SIGHUP differences=1/);
    expect(await echo()).toBe("db-1 answered: ping");
    // Still running, and the re-read watches changed nothing else: no reload.
    expect(web.process.child.exitCode).toBeNull();
    expect(output).not.toMatch(/validated reload|seamless reload/);
  }, 30_000);
});
