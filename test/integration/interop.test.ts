// Interoperability with a data plane no one here wrote: Consul's own built-in
// proxy (`consul connect proxy`) on one side, connect-haproxy on the other,
// both directions, intentions enforced both ways.
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { startConsulDev, type ConsulAgent } from "../harness/consul.js";
import {
  serviceWithSidecar,
  startConnectHaproxy,
  startConsulProxy,
  startDbApp,
  tcpRoundTrip,
  type SidecarProcess,
} from "../harness/mesh.js";
import { freePorts } from "../harness/ports.js";
import { waitFor, type StartedProcess } from "../harness/processes.js";

let consul: ConsulAgent;
const started: { stop(): Promise<void> }[] = [];

beforeAll(async () => {
  // Operators run with a default deny; every connection below needs an intention.
  consul = await startConsulDev({ config: { default_intention_policy: "deny" } });
});
afterEach(async () => {
  await Promise.all(started.splice(0).map((p) => p.stop()));
});
afterAll(async () => {
  await consul?.stop();
});

async function setIntention(source: string, destination: string, action: "allow" | "deny") {
  await consul.api("PUT", `/v1/connect/intentions/exact?source=${source}&destination=${destination}`, { Action: action });
}

/** Registers db (with its app) and web (with an upstream to db), returns the ports. */
async function registerPair(tag: string) {
  const [dbPort, dbSidecarPort, webPort, webSidecarPort, upstreamPort] = await freePorts(5);
  const db = startDbApp(dbPort, `db-${tag}`);
  started.push(db);
  await consul.api("PUT", "/v1/agent/service/register", serviceWithSidecar({ id: `db-${tag}`, name: `db-${tag}`, port: dbPort, sidecarPort: dbSidecarPort }));
  await consul.api(
    "PUT",
    "/v1/agent/service/register",
    serviceWithSidecar({
      id: `web-${tag}`,
      name: `web-${tag}`,
      port: webPort,
      sidecarPort: webSidecarPort,
      upstreams: [{ DestinationName: `db-${tag}`, LocalBindPort: upstreamPort }],
    }),
  );
  return { dbSidecarPort, upstreamPort, db: `db-${tag}`, web: `web-${tag}` };
}

/** Waits until a round trip through web's upstream gives the expected outcome. */
async function expectThroughMesh(upstreamPort: number, outcome: "answered" | "refused", watch: StartedProcess[]) {
  const reply = await waitFor(
    `a connection through the mesh to be ${outcome}`,
    async () => {
      for (const p of watch) if (p.exited()) throw new Error(`${p.name} exited:\n${p.output().slice(-3000)}`);
      const answer = await tcpRoundTrip(upstreamPort, "ping", "127.0.0.1", 3000);
      if (outcome === "answered") return answer;
      return answer === undefined ? "refused" : undefined;
    },
    { timeoutMs: 30_000, intervalMs: 250 },
  );
  return reply;
}

function track(...sidecars: SidecarProcess[]) {
  started.push(...sidecars);
  return sidecars.map((s) => s.process);
}

describe("Consul's built-in proxy as web's sidecar → connect-haproxy as db's sidecar", () => {
  it("reaches db when an intention allows it, and is refused when it denies it", async () => {
    const pair = await registerPair("a");
    // Consul's proxy checks that the server presents db's SPIFFE ID: this proves
    // that our public listener serves db's leaf and chains it to the roots.
    const watch = track(startConnectHaproxy(pair.db, consul.httpAddr), startConsulProxy(pair.web, consul.httpAddr));

    await setIntention(pair.web, pair.db, "allow");
    expect(await expectThroughMesh(pair.upstreamPort, "answered", watch)).toBe(`${pair.db} answered: ping`);

    await setIntention(pair.web, pair.db, "deny");
    await expectThroughMesh(pair.upstreamPort, "refused", watch);
    // The refusal came from our authorizer, which logs Consul's reason.
    const dbSidecarLog = watch[0]!.output();
    expect(dbSidecarLog).toMatch(new RegExp(`spiffe://[^ ]+/svc/${pair.web}.*(deny|denied|allowed=0)`, "i"));
  });
});

describe("connect-haproxy as web's sidecar → Consul's built-in proxy as db's sidecar", () => {
  it("reaches db when an intention allows it, and is refused when it denies it", async () => {
    const pair = await registerPair("b");
    // Consul's proxy authorizes our client certificate with the agent.
    const watch = track(startConsulProxy(pair.db, consul.httpAddr), startConnectHaproxy(pair.web, consul.httpAddr));

    await setIntention(pair.web, pair.db, "allow");
    expect(await expectThroughMesh(pair.upstreamPort, "answered", watch)).toBe(`${pair.db} answered: ping`);

    await setIntention(pair.web, pair.db, "deny");
    await expectThroughMesh(pair.upstreamPort, "refused", watch);

    await setIntention(pair.web, pair.db, "allow");
    expect(await expectThroughMesh(pair.upstreamPort, "answered", watch)).toBe(`${pair.db} answered: ping`);
  });
});
