// The controller end to end: a real Consul dev agent, real HAProxy processes
// run by the built CLI (dist/controller/cli.js), real bytes through both sidecars.
//
//   client ──► web sidecar (upstream_db on 127.0.0.1:<upstreamPort>) ══mTLS══► db sidecar ──► db echo app
import { createServer, createConnection, type Server } from "node:net";
import { connect as tlsConnect, createServer as createTlsServer } from "node:tls";
import { mkdtempSync, readFileSync, rmSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import { haproxyUnderTest, sendRuntimeCommand } from "../harness/haproxy.js";
import { controllerCli as cli } from "../harness/paths.js";
import { freePorts } from "../harness/ports.js";
import { startProcess, waitFor, type StartedProcess } from "../harness/processes.js";
import { parseShowProc } from "../../controller/runtime-api.js";


interface Sidecar {
  name: string;
  dir: string;
  process: StartedProcess;
  statsSocket: string;
  masterSocket: string;
}

/** Sends `payload`, resolves with what comes back once as many bytes arrived. */
function exchange(port: number, payload: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection({ host: "127.0.0.1", port });
    let received = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no echo within ${timeoutMs} ms (got ${JSON.stringify(received)})`));
    }, timeoutMs);
    socket.on("connect", () => socket.write(payload));
    socket.on("data", (chunk) => {
      received += chunk.toString();
      if (received.length >= payload.length) {
        clearTimeout(timer);
        socket.end();
        resolve(received);
      }
    });
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      if (received.length < payload.length) reject(new Error(`connection closed after ${received.length} bytes`));
    });
  });
}

/** An echo app that tags its answers, so a test knows which instance answered. */
async function echoApp(tag: string, port: number): Promise<Server> {
  const server = createServer((socket) => socket.on("data", (chunk) => socket.write(`${tag}:${chunk.toString()}`.slice(0, chunk.length))));
  await new Promise<void>((resolve) => server.listen(port, "127.0.0.1", resolve));
  return server;
}

function echoFrom(answer: string): string {
  return answer.split(":")[0]!;
}

describe("connect-haproxy controller with real Consul and HAProxy", () => {
  let consul: ConsulAgent;
  const sidecars: Sidecar[] = [];
  const apps: Server[] = [];
  let ports: Record<"db1App" | "db2App" | "db1Public" | "db2Public" | "webPublic" | "webApp" | "upstream", number>;

  const register = (body: unknown) => consul.api("PUT", "/v1/agent/service/register", body);

  /** Registers a service with a sidecar whose only check is a fast TCP check on its public port. */
  async function registerWithSidecar(id: string, name: string, appPort: number, publicPort: number, upstreams: unknown[] = []) {
    await register({
      ID: id,
      Name: name,
      Port: appPort,
      Address: "127.0.0.1",
      Connect: {
        SidecarService: {
          Port: publicPort,
          Address: "127.0.0.1",
          Checks: [{ Name: "listening", TCP: `127.0.0.1:${publicPort}`, Interval: "1s", Timeout: "1s" }],
          Proxy: { Upstreams: upstreams },
        },
      },
    });
  }

  function startSidecar(serviceId: string): Sidecar {
    const dir = mkdtempSync(join(tmpdir(), `ch-ctl-${serviceId}-`));
    const proc = startProcess(`controller ${serviceId}`, process.execPath, [cli, "--sidecar-for", serviceId, "--config-dir", dir, "--log-level", "debug"], {
      env: { ...process.env, CONSUL_HTTP_ADDR: consul.httpAddr },
    });
    const sidecar = { name: serviceId, dir, process: proc, statsSocket: join(dir, "stats.sock"), masterSocket: join(dir, "master.sock") };
    sidecars.push(sidecar);
    return sidecar;
  }

  const sidecar = (name: string) => sidecars.find((s) => s.name === name)!;
  // The master CLI is briefly away while the master re-executes itself on a reload.
  const showProc = (s: Sidecar) => waitFor("the master CLI", async () => parseShowProc(await sendRuntimeCommand(s.masterSocket, "show proc")), { timeoutMs: 5000 });
  /** `show servers state`: [name, address, port, ready] of each slot. */
  async function slots(s: Sidecar, backend: string) {
    const answer = await sendRuntimeCommand(s.statsSocket, `show servers state ${backend}`);
    return answer
      .split("\n")
      .map((line) => line.split(" "))
      .filter((cols) => cols.length > 18 && /^\d+$/.test(cols[0]!))
      .map((cols) => ({ name: cols[3]!, address: cols[4]!, port: Number(cols[18]), ready: (Number(cols[6]) & 0x21) === 0 }));
  }
  const readyPorts = async (s: Sidecar) => (await slots(s, "upstream_db")).filter((slot) => slot.ready).map((slot) => slot.port).sort();

  beforeAll(async () => {
    consul = await startConsulDev();
    const [db1App, db2App, db1Public, db2Public, webPublic, webApp, upstream] = await freePorts(7);
    ports = { db1App: db1App!, db2App: db2App!, db1Public: db1Public!, db2Public: db2Public!, webPublic: webPublic!, webApp: webApp!, upstream: upstream! };
    apps.push(await echoApp("db1", ports.db1App), await echoApp("db2", ports.db2App));
    await registerWithSidecar("db-1", "db", ports.db1App, ports.db1Public);
    await registerWithSidecar("web-1", "web", ports.webApp, ports.webPublic, [{ DestinationName: "db", LocalBindPort: ports.upstream }]);
    startSidecar("db-1");
    startSidecar("web-1");
  });

  afterAll(async () => {
    for (const s of sidecars) await s.process.stop("SIGTERM", 40_000);
    for (const app of apps) await new Promise((resolve) => app.close(resolve));
    await consul?.stop();
    for (const s of sidecars) rmSync(s.dir, { recursive: true, force: true });
  });

  it("carries bytes from web's upstream port to the db app through both sidecars", async () => {
    const answer = await waitFor("an echo through both sidecars", () => exchange(ports.upstream, "hello mesh").catch(() => undefined), {
      timeoutMs: 30_000,
      process: sidecar("web-1").process,
    });
    expect(answer).toBe("db1:hello ");
    const web = sidecar("web-1");
    expect(statSync(web.statsSocket).mode & 0o777).toBe(0o600);
    expect(statSync(join(web.dir, "certs", "leaf.pem")).mode & 0o777).toBe(0o600);
    const config = readFileSync(join(web.dir, "haproxy.cfg"), "utf8");
    expect(config).not.toMatch(/PRIVATE KEY|X-Consul-Token/);
    expect(web.process.output()).toMatch(/applied change change=".*added to upstream_db\/s1" path="runtime API: set server addr \+ state ready"/);
  });

  it("adds a second db instance at run time, without reloading web's HAProxy", async () => {
    const web = sidecar("web-1");
    const before = await showProc(web);
    await registerWithSidecar("db-2", "db", ports.db2App, ports.db2Public);
    startSidecar("db-2");
    await waitFor("both db instances ready in web's backend", async () => ((await readyPorts(web)).length === 2 ? true : undefined), { timeoutMs: 30_000 });
    expect(await readyPorts(web)).toEqual([ports.db1Public, ports.db2Public].sort());
    const after = await showProc(web);
    expect(after.reloads).toBe(before.reloads);
    expect(after.workers).toEqual(before.workers);
    // roundrobin reaches both instances
    const answers = new Set<string>();
    for (let i = 0; i < 6; i++) answers.add(echoFrom(await exchange(ports.upstream, "ping")));
    expect([...answers].sort()).toEqual(["db1", "db2"]);
    // the runtime change is also in the file, for the next reload
    expect(readFileSync(join(web.dir, "haproxy.cfg"), "utf8")).toContain(`127.0.0.1:${ports.db2Public} ssl crt`);
  });

  it("removes a deregistered instance at run time, without reloading", async () => {
    const web = sidecar("web-1");
    const before = await showProc(web);
    await consul.api("PUT", "/v1/agent/service/deregister/db-2");
    await waitFor("db-2 removed from web's backend", async () => ((await readyPorts(web)).length === 1 ? true : undefined), { timeoutMs: 20_000 });
    expect(await readyPorts(web)).toEqual([ports.db1Public]);
    expect((await showProc(web)).workers).toEqual(before.workers);
    for (let i = 0; i < 4; i++) expect(echoFrom(await exchange(ports.upstream, "ping"))).toBe("db1");
    expect(web.process.output()).toMatch(/removed from upstream_db\/s\d" path="runtime API: set server state maint"/);
  });

  it("keeps out an impostor that holds a valid mesh certificate for another service", async () => {
    const web = sidecar("web-1");
    // A "db" instance whose address is web's own public listener: a valid mesh certificate, for web.
    await register({ Kind: "connect-proxy", ID: "db-impostor", Name: "db-sidecar-proxy", Address: "127.0.0.1", Port: ports.webPublic, Proxy: { DestinationServiceName: "db", LocalServicePort: 1 } });
    const health = await consul.api<unknown[]>("GET", "/v1/health/connect/db?passing");
    expect(health).toHaveLength(2);
    await waitFor("the impostor rejected", async () => (web.process.output().includes(`upstream instance 127.0.0.1:${ports.webPublic} kept out of db`) ? true : undefined), { timeoutMs: 15_000 });
    expect(web.process.output()).toMatch(/kept out of db: certificate is spiffe:\/\/[^ ]+\/svc\/web, not service db/);
    expect(await readyPorts(web)).toEqual([ports.db1Public]);
    for (let i = 0; i < 4; i++) expect(echoFrom(await exchange(ports.upstream, "ping"))).toBe("db1");
    await consul.api("PUT", "/v1/agent/service/deregister/db-impostor");
  });

  it("adds an instance within 2 s of it presenting its leaf, though it listened for seconds without one", async () => {
    const web = sidecar("web-1");
    const [latePort] = await freePorts(1);
    // Like a sidecar that listens before its leaf and roots arrive: every handshake fails with an alert.
    const late = createTlsServer({ requestCert: true, rejectUnauthorized: true }, (socket) => socket.pipe(createConnection({ host: "127.0.0.1", port: ports.db2App })).pipe(socket));
    late.on("tlsClientError", () => undefined);
    await new Promise<void>((resolve) => late.listen(latePort, "127.0.0.1", resolve));
    try {
      await register({ Kind: "connect-proxy", ID: "db-late", Name: "db-sidecar-proxy", Address: "127.0.0.1", Port: latePort, Proxy: { DestinationServiceName: "db", LocalServicePort: 1 } });
      await waitFor("the late instance refused", async () => (web.process.output().includes(`upstream instance 127.0.0.1:${latePort} kept out of db`) ? true : undefined), { timeoutMs: 15_000 });
      // Several refused probes, so that any backoff has grown.
      await new Promise((resolve) => setTimeout(resolve, 4_000));
      expect(await readyPorts(web)).toEqual([ports.db1Public]);
      const leaf = await consul.api<{ CertPEM: string; PrivateKeyPEM: string }>("GET", "/v1/agent/connect/ca/leaf/db");
      const roots = await consul.api<{ Roots: { RootCert: string }[] }>("GET", "/v1/agent/connect/ca/roots");
      late.setSecureContext({ cert: leaf.CertPEM, key: leaf.PrivateKeyPEM, ca: roots.Roots.map((r) => r.RootCert) });
      const presented = Date.now();
      await waitFor("the late instance in web's backend", async () => ((await readyPorts(web)).includes(latePort) ? true : undefined), { timeoutMs: 10_000, intervalMs: 20 });
      const joinedMs = Date.now() - presented;
      expect(joinedMs).toBeLessThan(2_000);
      const answers = new Set<string>();
      for (let i = 0; i < 6; i++) answers.add(echoFrom(await exchange(ports.upstream, "ping")));
      expect(answers).toEqual(new Set(["db1", "db2"]));
    } finally {
      await consul.api("PUT", "/v1/agent/service/deregister/db-late");
      late.close();
    }
    await waitFor("the late instance gone from web's backend", async () => ((await readyPorts(web)).length === 1 ? true : undefined), { timeoutMs: 10_000 });
  });

  it("refuses the next connection once a deny intention is written, without waiting for a TTL", async () => {
    const db = sidecar("db-1");
    expect(echoFrom(await exchange(ports.upstream, "allowed"))).toBe("db1");
    await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "deny" });
    const deniedAt = Date.now();
    await waitFor("the authorizer's cache flushed", async () => (db.process.output().includes('path="authorizer control: connect cache flush"') ? true : undefined), { timeoutMs: 5_000 });
    await expect(exchange(ports.upstream, "denied?", 3000)).rejects.toThrow();
    expect(Date.now() - deniedAt).toBeLessThan(5_000);
    await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
    await waitFor("allowed again", () => exchange(ports.upstream, "again", 2000).catch(() => undefined), { timeoutMs: 10_000 });
  });

  // How roots and the renewed leaf reach HAProxy depends on its version
  // (haproxy-capabilities.test.ts): on 2.6 both by seamless reloads; on 3.0+ the
  // roots at run time, and the leaf at run time too unless the same worker had
  // its CA file committed first (then a reload: HAProxy issue #3165).
  it("after a CA root rotation, loads the roots and the renewed leaf as the HAProxy version allows, and no connection fails meanwhile", async () => {
    const db = sidecar("db-1");
    const web = sidecar("web-1");
    const servedSerial = () =>
      new Promise<string>((resolve, reject) => {
        const leafPem = readFileSync(join(web.dir, "certs", "leaf.pem"), "utf8");
        const socket = tlsConnect({ host: "127.0.0.1", port: ports.db1Public, cert: leafPem, key: leafPem, rejectUnauthorized: false }, () => {
          const serial = socket.getPeerCertificate().serialNumber;
          socket.end();
          resolve(serial);
        });
        socket.on("error", reject);
      });
    const normalize = (serial: string) => serial.replaceAll(":", "").toUpperCase().replace(/^0+/, "");
    const initialSerial = normalize(await servedSerial());
    const beforeDb = await showProc(db);
    const beforeWeb = await showProc(web);
    const logFrom = new Map([db, web].map((s) => [s, s.process.output().length]));

    let failures = 0;
    let successes = 0;
    let rotating = true;
    const traffic = (async () => {
      while (rotating) {
        await exchange(ports.upstream, "during rotation").then(() => successes++, () => failures++);
        await new Promise((r) => setTimeout(r, 50));
      }
    })();

    // A new key type forces the built-in CA to generate a new root and re-issue every leaf.
    await consul.api("PUT", "/v1/connect/ca/configuration", { Provider: "consul", Config: { LeafCertTTL: "72h", PrivateKeyType: "rsa", PrivateKeyBits: 2048 } });
    const renewed = await waitFor(
      "db's HAProxy serving the renewed leaf",
      async () => {
        const leaf = await consul.api<{ SerialNumber: string }>("GET", "/v1/agent/connect/ca/leaf/db");
        const served = normalize(await servedSerial());
        return served !== initialSerial && served === normalize(leaf.SerialNumber) ? served : undefined;
      },
      { timeoutMs: 90_000, intervalMs: 500 },
    );
    // web renews too; keep traffic going until both did.
    await waitFor("web's leaf renewed", async () => (web.process.output().includes("leaf certificate renewed") ? true : undefined), { timeoutMs: 60_000, intervalMs: 500 });
    await new Promise((r) => setTimeout(r, 1000));
    rotating = false;
    await traffic;

    if (failures > 0) {
      // Keep the evidence: what each sidecar logged while connections failed.
      console.error(`--- db-1 ---\n${db.process.output().slice(-6000)}\n--- web-1 ---\n${web.process.output().slice(-6000)}`);
    }
    expect(renewed).not.toBe(initialSerial);
    expect(failures).toBe(0);
    expect(successes).toBeGreaterThan(10);
    const { capabilities } = haproxyUnderTest();
    for (const [s, before] of [[db, beforeDb], [web, beforeWeb]] as const) {
      const after = await showProc(s);
      const log = s.process.output().slice(logFrom.get(s));
      const reloadLines = log.split("\n").filter((line) => /applied change .*path="(validated|seamless) reload/.test(line));
      expect(after.reloads - before.reloads).toBe(reloadLines.length);
      if (!capabilities.caFileReachesListener) {
        expect(log).toMatch(/change="[^"]*CA roots changed; HAProxy 2\.6's commit ssl ca-file does not reach the listener's verification[^"]*" path="validated reload/);
        expect(log).not.toContain("commit ssl ca-file\"");
      } else {
        expect(log).toContain('path="runtime API: set ssl ca-file + commit ssl ca-file"');
      }
      if (!capabilities.swapListenerCertificate) {
        expect(log).toMatch(/change="[^"]*leaf certificate renewed \(serial \w+ -> \w+\); HAProxy 2\.6 cannot swap a mutual-TLS listener's certificate at run time[^"]*" path="(seamless|validated) reload/);
      } else {
        // Within the roots' batch (certificate first) at run time; after the CA commit, by a reload.
        expect(log).toMatch(/change="leaf certificate renewed [^"]*" path="runtime API: set ssl cert \+ commit ssl cert"|change="[^"]*leaf certificate renewed [^"]*#3165[^"]*" path="(seamless|validated) reload/);
      }
      expect(reloadLines.length).toBeLessThanOrEqual(2);
    }
  }, 150_000);

  it("reloads for an added upstream, with the reason, and keeps an established connection", async () => {
    const web = sidecar("web-1");
    const before = await showProc(web);
    // A connection opened before the reload, used again after it.
    const socket = createConnection({ host: "127.0.0.1", port: ports.upstream });
    let received = "";
    socket.on("data", (chunk) => (received += chunk.toString()));
    await new Promise((resolve) => socket.once("connect", resolve));
    socket.write("before");
    await waitFor("first echo", async () => (received.length >= 6 ? true : undefined), { timeoutMs: 5000 });
    const cachePort = (await freePorts(1))[0]!;
    await registerWithSidecar("web-1", "web", ports.webApp, ports.webPublic, [
      { DestinationName: "db", LocalBindPort: ports.upstream },
      { DestinationName: "cache", LocalBindPort: cachePort },
    ]);
    await waitFor("the reload", async () => (web.process.output().includes(`change="upstream upstream_cache added on 127.0.0.1:${cachePort}" path="validated reload (haproxy -c, master CLI reload)"`) ? true : undefined), {
      timeoutMs: 20_000,
    });
    expect((await showProc(web)).reloads).toBe(before.reloads + 1);
    socket.write("after!");
    await waitFor("echo on the old connection", async () => (received.length >= 12 ? true : undefined), { timeoutMs: 5000 });
    expect(received).toBe("db1:bedb1:af");
    socket.end();
    expect(echoFrom(await exchange(ports.upstream, "new connection"))).toBe("db1");
  });

  it("restarts HAProxy when it dies, and traffic flows again", async () => {
    const web = sidecar("web-1");
    const { masterPid } = await showProc(web);
    process.kill(masterPid, "SIGKILL");
    await waitFor("HAProxy restarted", async () => (web.process.output().includes("HAProxy restarted") ? true : undefined), { timeoutMs: 20_000, process: web.process });
    expect(web.process.output()).toContain("HAProxy exited unexpectedly; restarting it");
    const answer = await waitFor("an echo after the restart", () => exchange(ports.upstream, "back").catch(() => undefined), { timeoutMs: 20_000 });
    expect(answer).toBe("db1:");
    expect((await showProc(web)).masterPid).not.toBe(masterPid);
  }, 60_000);

  it("stops HAProxy and exits 0 on SIGTERM, leaving no process behind", async () => {
    const web = sidecar("web-1");
    const procs = await showProc(web);
    const pids = [procs.masterPid, ...procs.workers, ...procs.oldWorkers];
    expect(pids.length).toBeGreaterThanOrEqual(2);
    web.process.child.kill("SIGTERM");
    const code = await new Promise<number | null>((resolve) => web.process.child.once("exit", (c) => resolve(c)));
    expect(code).toBe(0);
    for (const pid of pids) expect(() => process.kill(pid, 0)).toThrow();
    expect(web.process.output()).toMatch(/stopping HAProxy softly[\s\S]*stopped/);
  }, 60_000);

  it("keeps HAProxy serving its last configuration while Consul is down, saying so once per watch", async () => {
    const db = sidecar("db-1");
    const before = await showProc(db);
    const config = readFileSync(join(db.dir, "haproxy.cfg"), "utf8");
    await consul.process.stop("SIGKILL");
    await new Promise((r) => setTimeout(r, 4000));
    const output = db.process.output();
    expect(output.split("\n").filter((line) => line.includes("watch of leaf certificate of db failed: cannot reach Consul"))).toHaveLength(1);
    expect(output).toContain("HAProxy keeps its current configuration");
    const after = await showProc(db);
    expect(after.masterPid).toBe(before.masterPid);
    expect(after.workers).toEqual(before.workers);
    expect(readFileSync(join(db.dir, "haproxy.cfg"), "utf8")).toBe(config);
    db.process.child.kill("SIGTERM");
    expect(await new Promise<number | null>((resolve) => db.process.child.once("exit", resolve))).toBe(0);
  }, 60_000);
});
