// ACLs on, least privilege: a Consul dev agent with `default_policy = "deny"`,
// web → db through two connect-haproxy sidecars, each with its own token read
// from a file and holding exactly the policy docs/controller.md gives.
//   1. that policy runs the pair: allowed gets through, denied does not, an
//      intention change is enforced;
//   2. each rule of it is needed: without it, a named request fails;
//   3. the files are rotated (A → B, then A deleted): both the controllers and
//      the authorizers use B with no restart and no reload;
//   4. B is deleted with the files left alone: one line per watch and per
//      authorizer, HAProxy keeps its configuration, new connections are denied;
//      a new token in the file brings traffic back.
import { mkdtempSync, renameSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { sendRuntimeCommand } from "../harness/haproxy.js";
import { mtlsRoundTrip, serviceWithSidecar, startConnectHaproxy, startDbApp, tcpRoundTrip, type SidecarProcess } from "../harness/mesh.js";
import { controllerCli } from "../harness/paths.js";
import { freePorts } from "../harness/ports.js";
import { runCommand, sleep, waitFor, type StartedProcess } from "../harness/processes.js";
import { parseShowProc } from "../../controller/runtime-api.js";

const managementToken = "8d6a0a57-3e0f-4b8e-9a4c-2f3c1d0e5b71";

/** The least-privilege policy of each sidecar, one rule per line (docs/controller.md, "ACL token"). */
const policyRules = {
  web: [
    'service "web" { policy = "write" }',
    'service "web-sidecar-proxy" { policy = "read" }',
    'service "db" { policy = "read" }',
    'service "db-sidecar-proxy" { policy = "read" }',
    'node_prefix "" { policy = "read" }',
  ],
  db: ['service "db" { policy = "write" }', 'service "db-sidecar-proxy" { policy = "read" }'],
};

describe("connect-haproxy with ACLs on (default deny) and least-privilege token files", () => {
  let consul: ConsulAgent;
  let dir: string;
  let ports: { db: number; dbSidecar: number; web: number; webSidecar: number; upstream: number };
  let dbApp: StartedProcess;
  let roots: string[];
  let evil: { CertPEM: string; PrivateKeyPEM: string };
  const sidecars: Record<"web" | "db", SidecarProcess | undefined> = { web: undefined, db: undefined };
  const tokenIds: Record<string, { AccessorID: string; SecretID: string }> = {};
  let policies = 0;

  const api = <T>(method: string, path: string, body?: unknown) => consul.api<T>(method, path, body, managementToken);
  const tokenFile = (service: string) => join(dir, `${service}.token`);
  /** As a secret manager rotates a file: a new file (mode 600), renamed over the old one. */
  const writeTokenFile = (service: string, secret: string) => {
    const temporary = `${tokenFile(service)}.new`;
    writeFileSync(temporary, `${secret}\n`, { mode: 0o600 });
    renameSync(temporary, tokenFile(service));
  };
  async function createToken(label: string, rules: string[]): Promise<{ AccessorID: string; SecretID: string }> {
    const policy = await api<{ ID: string }>("PUT", "/v1/acl/policy", { Name: `${label}-${++policies}`, Rules: rules.join("\n") });
    const token = await api<{ AccessorID: string; SecretID: string }>("PUT", "/v1/acl/token", { Description: label, Policies: [{ ID: policy.ID }] });
    tokenIds[label] = token;
    return token;
  }
  const setIntention = (action: "allow" | "deny") => api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: action });
  const throughMesh = (line: string) => tcpRoundTrip(ports.upstream, line, "127.0.0.1", 3000);
  const fromEvil = (line: string) => mtlsRoundTrip(ports.dbSidecar, evil, roots, line, 3000);
  const masterOf = async (sidecar: SidecarProcess) =>
    waitFor("the master CLI", async () => parseShowProc(await sendRuntimeCommand(join(sidecar.configDir, "master.sock"), "show proc")), { timeoutMs: 5000 });
  const running = () => [sidecars.web!.process, sidecars.db!.process];
  const allOutput = () => `${sidecars.web?.process.output() ?? ""}\n${sidecars.db?.process.output() ?? ""}`;

  beforeAll(async () => {
    consul = await startConsulDev({
      // The agent's own token (node and service sync) is not the sidecars': they get their own below.
      config: { acl: { enabled: true, default_policy: "deny", tokens: { initial_management: managementToken, agent: managementToken } } },
    });
    dir = mkdtempSync(join(tmpdir(), "ch-acl-"));
    const [db, dbSidecar, web, webSidecar, upstream] = (await freePorts(5)) as [number, number, number, number, number];
    ports = { db, dbSidecar, web, webSidecar, upstream };
    dbApp = startDbApp(ports.db, "db");
    await api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: "db-1", name: "db", port: ports.db, sidecarPort: ports.dbSidecar }));
    await api(
      "PUT",
      "/v1/agent/service/register",
      serviceWithSidecar({ id: "web-1", name: "web", port: ports.web, sidecarPort: ports.webSidecar, upstreams: [{ DestinationName: "db", LocalBindPort: ports.upstream }] }),
    );
    await setIntention("allow");
    roots = (await api<{ Roots: { RootCert: string }[] }>("GET", "/v1/agent/connect/ca/roots")).Roots.map((root) => root.RootCert);
    // A mesh identity no intention allows (the default is deny).
    evil = await api("GET", "/v1/agent/connect/ca/leaf/evil");
  });

  afterAll(async () => {
    for (const sidecar of Object.values(sidecars)) await sidecar?.stop();
    await dbApp?.stop();
    await consul?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  it("runs web → db with exactly the documented policy: allowed gets through, denied does not, intention changes are enforced", async () => {
    for (const service of ["web", "db"] as const) {
      writeTokenFile(service, (await createToken(`${service}-A`, policyRules[service])).SecretID);
      expect(statSync(tokenFile(service)).mode & 0o777).toBe(0o600);
      // info: what an operator sees (debug adds a line per retry).
      sidecars[service] = startConnectHaproxy(`${service}-1`, consul.httpAddr, { logLevel: "info", args: ["--token-file", tokenFile(service)] });
    }
    expect(await waitFor("web → db through both sidecars", () => throughMesh("hello"), { process: running(), timeoutMs: 45_000 })).toBe("db answered: hello");
    expect(await fromEvil("let me in")).toBeUndefined();

    await setIntention("deny");
    await waitFor("the deny enforced", async () => ((await throughMesh("after deny")) === undefined ? true : undefined), { process: running(), timeoutMs: 10_000 });
    await setIntention("allow");
    expect(await waitFor("the allow enforced", () => throughMesh("after allow"), { process: running(), timeoutMs: 10_000 })).toBe("db answered: after allow");

    // Nothing the sidecars do was refused, and no token was written out.
    expect(allOutput()).not.toMatch(/\(403 |failed: /);
    for (const token of Object.values(tokenIds)) expect(allOutput()).not.toContain(token.SecretID);
  });

  it("needs every rule of the policy: without each, a named request fails", async () => {
    /** `connect-haproxy render` with a token holding `rules`: the same requests as the watches, each once. */
    async function renderWith(service: "web" | "db", rules: string[]) {
      const token = await createToken(`${service}-without`, rules);
      const file = join(dir, "partial.token");
      writeFileSync(file, token.SecretID, { mode: 0o600 });
      const result = await runCommand(process.execPath, [controllerCli, "render", "--sidecar-for", `${service}-1`, "--http-addr", consul.httpAddr, "--token-file", file, "--config-dir", join(dir, "render")]);
      expect(result.stdout + result.stderr).not.toContain(token.SecretID);
      return { ...result, token: token.SecretID };
    }
    /** The authorizer's call for a connection to `target`, as it makes it (lua-src/agent.ts). */
    const authorizeWith = (token: string, target: string) =>
      consul.fetch("POST", "/v1/agent/connect/authorize", { Target: target, ClientCertURI: "spiffe://x.consul/ns/default/dc/dc1/svc/evil", ClientCertSerial: "01" }, token);
    const without = (service: "web" | "db", index: number) => policyRules[service].filter((_, i) => i !== index);
    const dbServer = `127.0.0.1:${ports.dbSidecar}`;

    // The whole policy renders web with db's instance.
    const whole = await renderWith("web", policyRules.web);
    expect(whole.code).toBe(0);
    expect(whole.stdout).toContain(dbServer);

    // web write (read kept, which grants intentions read): the authorizer's authorize calls for web, and web's
    // leaf certificate. The leaf is not shown failing here: Consul 1.22.3's agent hands a leaf it has cached
    // (web's sidecar asked for it) to any caller, checking service:write only when it signs a new one.
    const webReadOnly = await renderWith("web", ['service "web" { policy = "read" }', ...without("web", 0)]);
    expect(webReadOnly.code).toBe(0);
    expect((await authorizeWith(webReadOnly.token, "web")).status).toBe(403);
    expect((await authorizeWith(tokenIds["web-A"]!.SecretID, "web")).status).toBe(200);
    const uncachedLeaf = await createToken("fresh-read", ['service "fresh" { policy = "read" }']);
    expect((await consul.fetch("GET", "/v1/agent/connect/ca/leaf/fresh", undefined, uncachedLeaf.SecretID)).status).toBe(403);
    // web-sidecar-proxy read: the sidecar's registration (the agent lists only what the token can read).
    const noRegistration = await renderWith("web", without("web", 1));
    expect(noRegistration.code).toBe(2);
    expect(noRegistration.stderr).toMatch(/web-1/);
    // db read: db's discovery chain.
    const noUpstream = await renderWith("web", without("web", 2));
    expect(noUpstream.code).toBe(1);
    expect(noUpstream.stderr).toMatch(/Consul refused \/v1\/discovery-chain\/db \(403 Permission denied/);
    // db-sidecar-proxy read and node read: Consul filters db's instances out of /v1/health/connect/db without them.
    for (const index of [3, 4]) {
      const filtered = await renderWith("web", without("web", index));
      expect(filtered.code, policyRules.web[index]).toBe(0);
      expect(filtered.stdout, policyRules.web[index]).not.toContain(dbServer);
    }

    // db write: the authorizer's authorize calls for db (and db's leaf, as for web); its intentions read
    // (implied by write or read): the controller's and the authorizer's intentions watches.
    const dbReadOnly = await renderWith("db", ['service "db" { policy = "read" }', ...without("db", 0)]);
    expect((await authorizeWith(dbReadOnly.token, "db")).status).toBe(403);
    expect((await authorizeWith(tokenIds["db-A"]!.SecretID, "db")).status).toBe(200);
    const noIntentions = await renderWith("db", ['service "db" { policy = "write" intentions = "deny" }', policyRules.db[1]!]);
    expect(noIntentions.stderr).toMatch(/Consul refused \/v1\/connect\/intentions\/match\?by=destination&name=db \(403 Permission denied/);
    expect((await consul.fetch("GET", "/v1/connect/intentions/match?by=destination&name=db", undefined, noIntentions.token)).status).toBe(403);
    // db-sidecar-proxy read: db's sidecar registration.
    expect((await renderWith("db", without("db", 1))).code).toBe(2);
  });

  it("follows rotated token files (A → B, then A deleted) in both controllers and both authorizers, with no restart and no reload", async () => {
    const before = { web: await masterOf(sidecars.web!), db: await masterOf(sidecars.db!) };
    const pids = running().map((p) => p.pid);
    const dbStats = join(sidecars.db!.configDir, "stats.sock");
    /** The db authorizer's own intentions watch: its index, changes seen and last error (`connect intentions`). */
    const dbWatch = async () => /^db: .*$/m.exec(await sendRuntimeCommand(dbStats, "connect intentions"))![0];
    const changesOf = (line: string) => Number(/(\d+) changes/.exec(line)![1]);
    const watchBefore = await dbWatch();
    for (const service of ["web", "db"] as const) writeTokenFile(service, (await createToken(`${service}-B`, policyRules[service])).SecretID);
    for (const service of ["web", "db"] as const) await api("DELETE", `/v1/acl/token/${tokenIds[`${service}-A`]!.AccessorID}`);

    // Authorize calls (db's authorizer) with B: A no longer exists.
    expect(await throughMesh("with B")).toBe("db answered: with B");
    // Blocking queries go on with B: intention changes are enforced well within a cached allow's 10 s. The
    // second change is read by a query sent after A was deleted (the first may end a query sent with A).
    await setIntention("deny");
    const denyAt = Date.now();
    await waitFor("the deny enforced with B", async () => ((await throughMesh("deny with B")) === undefined ? true : undefined), { process: running(), timeoutMs: 8_000 });
    expect(Date.now() - denyAt).toBeLessThan(8_000);
    await setIntention("allow");
    expect(await waitFor("the allow enforced with B", () => throughMesh("allow with B"), { process: running(), timeoutMs: 10_000 })).toBe("db answered: allow with B");
    expect(await fromEvil("still not")).toBeUndefined();

    // db's authorizer saw both changes itself, and was never refused.
    const watchAfter = await waitFor("db's authorizer at the allow", async () => {
      const line = await dbWatch();
      if (changesOf(line) < changesOf(watchBefore) + 2) throw new Error(`before: ${watchBefore}; now: ${line}`);
      return line;
    }, { timeoutMs: 5000 });
    expect(watchAfter).not.toContain("last error");
    // Each controller said it took the new token (never showing it); the authorizer's line is at info (HAProxy's log).
    for (const service of ["web", "db"] as const) {
      const output = sidecars[service]!.process.output();
      expect(output).toContain(`ACL token file ${tokenFile(service)} changed`);
      expect(output).not.toMatch(/ACL token rejected/);
    }
    expect(running().map((p) => p.pid)).toEqual(pids);
    expect(running().every((p) => !p.exited())).toBe(true);
    const after = { web: await masterOf(sidecars.web!), db: await masterOf(sidecars.db!) };
    expect(after.web).toMatchObject({ masterPid: before.web.masterPid, reloads: before.web.reloads });
    expect(after.db).toMatchObject({ masterPid: before.db.masterPid, reloads: before.db.reloads });
    for (const token of Object.values(tokenIds)) expect(allOutput()).not.toContain(token.SecretID);
  });

  it("on a revoked token: one line per watch and per authorizer, the configuration kept, new connections denied; a new token brings traffic back", async () => {
    const before = { web: await masterOf(sidecars.web!), db: await masterOf(sidecars.db!) };
    const marks = { web: sidecars.web!.process.output().length, db: sidecars.db!.process.output().length };
    const since = (service: "web" | "db") => sidecars[service]!.process.output().slice(marks[service]);
    for (const service of ["web", "db"] as const) await api("DELETE", `/v1/acl/token/${tokenIds[`${service}-B`]!.AccessorID}`);

    // Fail closed: once the authorizer sees the rejection (its intentions watch, within its 4 s wait) no new connection gets through.
    await waitFor("new connections denied", async () => ((await throughMesh("revoked")) === undefined ? true : undefined), { process: running(), timeoutMs: 15_000 });
    // A deleted token does not end the blocking queries already waiting with it: each controller hears of it
    // when one of its watches asks again, within a blocking wait (15 s, plus Consul's jitter of up to 1/16).
    const rejectedLines = (service: "web" | "db") => since(service).split("\n").filter((line) => /watch of .* failed: ACL token rejected by Consul \(403 ACL not found\)/.test(line));
    await waitFor("each controller's first watch refused", async () => (rejectedLines("web").length > 0 && rejectedLines("db").length > 0 ? true : undefined), { process: running(), timeoutMs: 25_000 });
    // Long enough for several retries of every watch (backoff from 250 ms).
    await sleep(8_000);
    expect(await throughMesh("still revoked")).toBeUndefined();

    for (const service of ["web", "db"] as const) {
      const output = since(service);
      const rejected = rejectedLines(service);
      expect(rejected.length, output).toBeGreaterThan(0);
      const perWatch = new Map<string, number>();
      for (const line of rejected) {
        const watch = /watch of (.*?) failed/.exec(line)![1]!;
        perWatch.set(watch, (perWatch.get(watch) ?? 0) + 1);
      }
      for (const [watch, count] of perWatch) expect(count, watch).toBe(1);
      expect(rejected[0]).toContain("retrying with backoff, HAProxy keeps its current configuration");
      // The authorizer: one line for the token, one per destination's intentions.
      // (HAProxy prints each Lua warning twice on stderr: bare, and as a `[warning]` line; these count the latter.)
      expect(output.match(/\[warning\].*ACL token rejected by the Consul agent \(403 ACL not found\): it was deleted/g)?.length ?? 0, output).toBeLessThanOrEqual(1);
      expect(output.match(/\[warning\].*cannot read the intentions for \S+: ACL token rejected/g)?.length ?? 0, output).toBeLessThanOrEqual(1);
    }
    expect(since("db")).toMatch(/ACL token rejected by the Consul agent \(403 ACL not found\): it was deleted/);
    expect(since("db")).toMatch(/cannot read the intentions for db: ACL token rejected/);
    // No crash loop: same processes, same HAProxy master, no reload.
    expect(running().every((p) => !p.exited())).toBe(true);
    expect(await masterOf(sidecars.web!)).toMatchObject({ masterPid: before.web.masterPid, reloads: before.web.reloads });
    expect(await masterOf(sidecars.db!)).toMatchObject({ masterPid: before.db.masterPid, reloads: before.db.reloads });

    // A valid token in the files: traffic again, still without a restart.
    for (const service of ["web", "db"] as const) writeTokenFile(service, (await createToken(`${service}-C`, policyRules[service])).SecretID);
    expect(await waitFor("traffic with C", () => throughMesh("with C"), { process: running(), timeoutMs: 30_000 })).toBe("db answered: with C");
    expect(await fromEvil("never")).toBeUndefined();
    expect(await masterOf(sidecars.db!)).toMatchObject({ masterPid: before.db.masterPid, reloads: before.db.reloads });
    for (const token of Object.values(tokenIds)) expect(allOutput()).not.toContain(token.SecretID);
  });
});
