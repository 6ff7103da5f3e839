// Discovery chains recorded from a real 1.22.3 agent (scripts/record-fixtures.mjs)
// → the plan, the rendered frontend and backends, and the change plan.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { planAccessLog } from "../../controller/access-log.js";
import type { CompiledDiscoveryChain, DiscoveryChainReply, DiscoveryResolverNode, ServiceInstanceEntry } from "../../controller/consul-replies.js";
import { buildDesiredState, type DesiredState } from "../../controller/desired-state.js";
import { durationMs, planDiscoveryChain, targetQuery, targetQueryKey } from "../../controller/discovery-chain.js";
import { renderHaproxyConfig } from "../../controller/haproxy-config.js";
import { planChanges } from "../../controller/plan-changes.js";
import { upstreamsToCheck, type SidecarSnapshot } from "../../controller/sidecar-snapshot.js";
import { parseSidecarSpec } from "../../controller/sidecar-spec.js";
import { failoverRelays, prefixRewrite, routeMatchTerms as aclTerms } from "../../controller/upstream-config.js";
import { checkHaproxyConfig } from "../harness/haproxy.js";
import { dbInstances, defaultChainFor, fixture, paths, snapshotFor } from "./controller-fixtures.js";

const chain = (name: string): CompiledDiscoveryChain => fixture<DiscoveryChainReply>(name).Chain;
const upstream = { name: "upstream_billing" };
const web = "agent-service-web-sidecar-proxy";

/** web's sidecar with its db upstream following `compiled` (renamed to db), instances by target ID. */
function stateWith(compiled: CompiledDiscoveryChain, instancesByTarget: Record<string, ServiceInstanceEntry[]> = {}, running?: DesiredState): DesiredState {
  const snapshot = snapshotFor(web, {}, { upstream_db: compiled });
  for (const [id, entries] of Object.entries(instancesByTarget)) snapshot.upstreamInstances[targetQueryKey(targetQuery(compiled.Targets[id]!))] = entries;
  return buildDesiredState(snapshot, paths, running);
}

const frontendOf = (config: string, name: string) => config.slice(config.indexOf(`\nfrontend ${name}\n`), config.indexOf("\n\n", config.indexOf(`\nfrontend ${name}\n`)));
const backendOf = (config: string, name: string) => config.slice(config.indexOf(`\nbackend ${name}\n`), config.indexOf("\n\n", config.indexOf(`\nbackend ${name}\n`)));

describe("durationMs", () => {
  it("reads Go durations and the nanoseconds Consul uses for a resolver's RequestTimeout", () => {
    expect(durationMs("1.5s")).toBe(1500);
    expect(durationMs("1m30s")).toBe(90_000);
    expect(durationMs("250ms")).toBe(250);
    expect(durationMs(10_000_000_000)).toBe(10_000);
    expect(durationMs(undefined)).toBeUndefined();
    expect(() => durationMs("soon")).toThrow(/cannot read duration/);
  });
});

describe("planDiscoveryChain on recorded chains", () => {
  it("a service with no config entry: one resolver, one backend named as the upstream (as before chains)", () => {
    expect(defaultChainFor({ destinationName: "db", protocol: "tcp", connectTimeoutMs: 5000 })).toMatchObject({
      StartNode: chain("chain-db").StartNode,
      Protocol: chain("chain-db").Protocol,
      Nodes: chain("chain-db").Nodes,
    });
    const plan = planDiscoveryChain({ name: "upstream_db" }, chain("chain-db"));
    expect(plan).toMatchObject({ protocol: "tcp", routes: [], leaves: [{ backends: ["upstream_db"] }], warnings: [] });
    expect(plan.backends).toEqual([
      { name: "upstream_db", targetId: "db.default.default.dc1", query: { service: "db", datacenter: "dc1", onlyPassing: false }, connectTimeoutMs: 5000, loadBalancing: { algorithm: "roundrobin" } },
    ]);
  });

  it("the upstream's overrides compiled in: connect timeout 1.5 s", () => {
    expect(planDiscoveryChain({ name: "upstream_db" }, chain("chain-db-overrides")).backends[0]).toMatchObject({ connectTimeoutMs: 1500 });
  });

  it("resolver: DefaultSubset with its filter, failover in order, ring_hash on a header, timeouts", () => {
    const plan = planDiscoveryChain(upstream, chain("chain-billing-resolver"));
    expect(plan.leaves).toEqual([{ backends: ["upstream_billing.v1.billing.default.default.dc1", "upstream_billing.billing-backup.default.default.dc1"], requestTimeoutMs: 10_000 }]);
    expect(plan.backends[0]).toEqual({
      name: "upstream_billing.v1.billing.default.default.dc1",
      targetId: "v1.billing.default.default.dc1",
      query: { service: "billing", datacenter: "dc1", filter: "Service.Meta.version == v1", onlyPassing: false },
      connectTimeoutMs: 3000,
      loadBalancing: { algorithm: "hash", expression: "req.hdr(x-user)" },
    });
    expect(plan.warnings).toEqual([
      "LoadBalancer.RingHashConfig: HAProxy sizes its consistent-hash ring itself",
      "LoadBalancer.HashPolicies: only the first of 2 hash policies is hashed (Envoy combines them, stopping at a Terminal one that produced a value)",
      "RequestTimeout: HAProxy's server timeout is an inactivity timeout (Envoy's is the whole request); a stream that keeps sending is not cut",
    ]);
  });

  it("splitter: compiled weights 66.67/33.33 as ranges of 10000, with per-split header changes", () => {
    const plan = planDiscoveryChain(upstream, chain("chain-billing-splitter"));
    expect(plan.leaves.map((leaf) => [leaf.split?.from, leaf.split?.to, leaf.backends[0]])).toEqual([
      [0, 6667, "upstream_billing.v1.billing.default.default.dc1"],
      [6667, 10000, "upstream_billing.v2.billing.default.default.dc1"],
    ]);
    expect(plan.leaves[0]!.split!.requestHeaders).toEqual({ add: [], set: [["x-split", "v1"]], remove: [] });
    expect(plan.leaves[1]!.split!.responseHeaders).toEqual({ add: [["x-from", "v2"]], set: [], remove: ["server"] });
    // v2 is OnlyPassing: its instances are asked with ?passing.
    expect(plan.backends.find((b) => b.targetId === "v2.billing.default.default.dc1")!.query.onlyPassing).toBe(true);
  });

  it("splitter: a split of weight 0 (compiled without its Weight, as Consul sends it) gets no range, the other all of it", () => {
    const split = chain("chain-billing-splitter");
    const name = "splitter:billing.default.default";
    const splitter = split.Nodes[name] as { Splits: { Weight?: number }[] };
    const weights = (first: number | undefined, second: number | undefined) =>
      ({ ...split, Nodes: { ...split.Nodes, [name]: { ...splitter, Splits: splitter.Splits.map(({ Weight: _omitted, ...s }, n) => ({ ...s, ...((n === 0 ? first : second) === undefined ? {} : { Weight: n === 0 ? first : second }) })) } } }) as unknown as CompiledDiscoveryChain;
    const ranges = (compiled: CompiledDiscoveryChain) => planDiscoveryChain(upstream, compiled).leaves.map((leaf) => [leaf.split?.from, leaf.split?.to, leaf.backends[0]]);
    expect(ranges(weights(undefined, 100))).toEqual([[0, 10000, "upstream_billing.v2.billing.default.default.dc1"]]);
    expect(ranges(weights(100, undefined))).toEqual([[0, 10000, "upstream_billing.v1.billing.default.default.dc1"]]);
  });

  it("router: routes in order with the default route last, destinations' retries and timeouts", () => {
    const plan = planDiscoveryChain(upstream, chain("chain-billing-router"));
    expect(plan.routes).toHaveLength(4);
    expect(plan.leaves.map((leaf) => [leaf.route, leaf.backends[0], leaf.requestTimeoutMs])).toEqual([
      [0, "upstream_billing.billing-admin.default.default.dc1", 2000],
      [1, "upstream_billing.v2.billing.default.default.dc1", 10_000],
      [2, "upstream_billing.v1.billing.default.default.dc1", 10_000],
      [2, "upstream_billing.v2.billing.default.default.dc1", 10_000],
      [3, "upstream_billing.v1.billing.default.default.dc1", 10_000],
      [3, "upstream_billing.v2.billing.default.default.dc1", 10_000],
    ]);
    expect(plan.backends.find((b) => b.targetId === "billing-admin.default.default.dc1")!.retry).toEqual({
      retries: 3,
      retryOn: ["conn-failure", "503", "502", "empty-response", "junk-response", "500", "501", "504", "response-timeout"],
    });
    expect(plan.warnings).toContain("IdleTimeout: the stream idle timeout is not supported; HAProxy's server inactivity timeout applies");
    expect(plan.warnings).toContain('RetryOn: "reset" retries empty and invalid responses (Envoy: any reset, disconnect or read timeout)');
  });

  it("redirect: compiled away, the chain starts at the target it names", () => {
    const plan = planDiscoveryChain({ name: "upstream_billing-old" }, chain("chain-billing-old-redirect"));
    expect(plan.leaves).toEqual([{ backends: ["upstream_billing-old.v2.billing.default.default.dc1", "upstream_billing-old.billing-backup.default.default.dc1"], requestTimeoutMs: 10_000 }]);
  });

  it("load balancer policies: maglev on a cookie, least_request, random, round_robin", () => {
    const maglev = planDiscoveryChain({ name: "upstream_ledger" }, chain("chain-ledger-maglev"));
    expect(maglev.backends[0]!.loadBalancing).toEqual({ algorithm: "hash", expression: "req.cook(session)" });
    const least = planDiscoveryChain({ name: "upstream_db" }, chain("chain-db-least-request"));
    expect(least.backends[0]).toMatchObject({ loadBalancing: { algorithm: "leastconn" }, connectTimeoutMs: 2000 });
    expect(least.warnings).toEqual(["LoadBalancer.LeastRequestConfig: leastconn compares every server, not a random choice of ChoiceCount"]);
    const withPolicy = (policy: string) => {
      const compiled = chain("chain-db");
      const node = Object.values(compiled.Nodes)[0] as DiscoveryResolverNode;
      return { ...compiled, Nodes: { [compiled.StartNode]: { ...node, LoadBalancer: { Policy: policy } } } };
    };
    expect(planDiscoveryChain({ name: "upstream_db" }, withPolicy("random")).backends[0]!.loadBalancing).toEqual({ algorithm: "random" });
    expect(planDiscoveryChain({ name: "upstream_db" }, withPolicy("round_robin")).backends[0]!.loadBalancing).toEqual({ algorithm: "roundrobin" });
  });

  it("a TCP chain with a router cannot be served: the upstream keeps one empty backend and says why", () => {
    const tcpRouter = { ...chain("chain-billing-router"), Protocol: "tcp" };
    const state = stateWith(tcpRouter);
    expect(state.upstreams[0]!.chain).toBeUndefined();
    expect(state.upstreams[0]!.backends.map((b) => b.name)).toEqual(["upstream_db"]);
    expect(state.upstreams[0]!.chainWarnings[0]).toMatch(/cannot be served \(discovery chain of billing is tcp but has a router\)/);
  });
});

/** The terms as they would read inline: `{ test }` or `!{ test }`. */
const routeMatchTerms = (match: Parameters<typeof aclTerms>[0]) => aclTerms(match).map((term) => `${term.negated ? "!" : ""}{ ${term.test} }`);

describe("route matches as HAProxy ACL terms", () => {
  const route = planDiscoveryChain(upstream, chain("chain-billing-router")).routes;
  it("path prefix, headers (Envoy's missing-header rule on Invert), query parameters, methods: all must hold", () => {
    expect(routeMatchTerms(route[0]!.match)).toEqual([
      "{ path -m beg -- '/admin' }",
      "{ req.fhdr(x-debug) -m found }",
      // Inverted Exact: the header must be there and differ.
      "{ req.fhdr(x-env) -m found }",
      "!{ req.fhdr(x-env) -m str -- 'prod' }",
      "{ req.fhdr(x-team) -m beg -- 'pay' }",
      "{ req.fhdr(x-zone) -m end -- '-1' }",
      "{ req.fhdr(x-id) -m reg -- '^(?:[0-9]+)$' }",
      "{ urlp(q) -m str -- '1' }",
      "{ urlp(p) -m found }",
      "{ urlp(r) -m reg -- '^(?:a.*)$' }",
      "{ method GET POST }",
    ]);
  });
  it("exact paths case-insensitively, regexes on the whole path, the default route without a term", () => {
    expect(routeMatchTerms(route[1]!.match)).toEqual(["{ path -i -m str -- '/Exact' }"]);
    expect(routeMatchTerms(route[2]!.match)).toEqual(["{ path -m reg -- '^(?:/re/[0-9]+)$' }"]);
    expect(routeMatchTerms(route[3]!.match)).toEqual([]);
    expect(routeMatchTerms({ Header: [{ Name: "x-beta", Present: true, Invert: true }] })).toEqual(["!{ req.fhdr(x-beta) -m found }"]);
  });
  it("quotes what it cannot leave bare, and rewrites only the matched prefix", () => {
    expect(routeMatchTerms({ PathExact: "/it's" })).toEqual(["{ path -m str -- '/it'\\''s' }"]);
    expect(prefixRewrite({ PathPrefix: "/admin" }, "/")).toBe("'^\\/admin(.*)$' '/\\1'");
    expect(prefixRewrite({ PathExact: "/old" }, "/new%")).toBe("'^.*$' '/new%%'");
  });
});

describe("the rendered chain", () => {
  const config = renderHaproxyConfig(stateWith(chain("chain-billing-router")));
  const frontend = frontendOf(config, "upstream_db");

  it("routes written last to first (the last write is the first match), then the split pick, then a leaf index where a leaf has rules of its own", () => {
    expect(frontend).toContain(
      [
        "    acl chain_route1_1 method GET POST",
        "    acl chain_route1_2 path -m beg -- '/admin'",
        "    acl chain_route1_3 req.fhdr(x-debug) -m found",
        "    acl chain_route1_4 req.fhdr(x-env) -m found",
        "    acl chain_route1_5 req.fhdr(x-env) -m str -- 'prod'",
      ].join("\n"),
    );
    expect(frontend).toContain(
      [
        "    http-request set-var(txn.chain_route) int(4)",
        "    http-request set-var(txn.chain_route) int(3) if chain_route3_1",
        "    http-request set-var(txn.chain_route) int(2) if chain_route2_1",
        // The method first, regexes last: an AND stops at its first false term.
        "    http-request set-var(txn.chain_route) int(1) if chain_route1_1 chain_route1_2 chain_route1_3 chain_route1_4 !chain_route1_5 chain_route1_6 chain_route1_7 chain_route1_8 chain_route1_9 chain_route1_10 chain_route1_11",
        "    http-request set-var(txn.chain_pick) rand(10000)",
      ].join("\n"),
    );
    expect(frontend).toContain("    acl chain_route1_10 req.fhdr(x-id) -m reg -- '^(?:[0-9]+)$'\n    acl chain_route1_11 urlp(r) -m reg -- '^(?:a.*)$'\n");
    expect(frontend).toContain("    http-request set-var(txn.chain_leaf) int(4) if { var(txn.chain_route) -m int 3 } { var(txn.chain_pick) -m int 6667:9999 }");
  });

  it("route and split header changes, the prefix rewrite and the timeout, each under its condition, one line per distinct action", () => {
    expect(frontend).toContain(
      [
        "    http-request del-header x-r if { var(txn.chain_route) -m int 1 }",
        "    http-request add-header x-a '1' if { var(txn.chain_route) -m int 1 }",
        "    http-request set-header x-s '2' if { var(txn.chain_route) -m int 1 }",
        "    http-request replace-path '^\\/admin(.*)$' '/\\1' if { var(txn.chain_route) -m int 1 }",
        "    http-response set-header x-resp 'y' if { var(txn.chain_route) -m int 1 }",
        "    http-request set-header x-split 'v1' if { var(txn.chain_leaf) -m int 3 5 }",
        "    http-response del-header server if { var(txn.chain_leaf) -m int 4 6 }",
        "    http-response add-header x-from 'v2' if { var(txn.chain_leaf) -m int 4 6 }",
        "    http-request set-var(txn.chain_timeout) int(2000) if { var(txn.chain_leaf) -m int 1 }",
        "    http-request set-var(txn.chain_timeout) int(10000) if { var(txn.chain_leaf) -m int 2 3 4 5 6 }",
      ].join("\n"),
    );
  });

  it("failover when the server is assigned: the target's backup server relays to the first failover target with a usable server", () => {
    const v2 = "upstream_db.v2.billing.default.default.dc1";
    const backup = "upstream_db.billing-backup.default.default.dc1";
    // The route goes to its target alone: no nbsrv test races an instance going away.
    expect(frontend).toContain(`    use_backend ${v2} if { var(txn.chain_leaf) -m int 2 4 6 }`);
    expect(frontend).not.toContain("nbsrv");
    const relay = /    server failover (abns@connect-haproxy-failover-[0-9a-f]{20}) backup send-proxy-v2$/.exec(backendOf(config, v2));
    expect(relay).not.toBeNull();
    // Its response passes the identity check by the server's name; the backup backend checks its own target.
    expect(backendOf(config, v2)).toContain("    http-response set-var(txn.connect_upstream_ok) int(1) if { srv_name failover }\n");
    expect(frontendOf(config, `${v2}.failover`)).toBe(
      ["", `frontend ${v2}.failover`, "    mode http", `    bind ${relay![1]} accept-proxy`, "    no log", `    default_backend ${backup}`].join("\n"),
    );
    expect(backendOf(config, backup)).not.toContain("server failover");
  });

  it("failover relays: in order by usable servers, named per sidecar (abstract sockets are per host)", () => {
    const upstream = { name: "upstream_api", chain: { leaves: [{ backends: ["a", "b", "c"] }, { backends: ["b"] }] } } as unknown as Parameters<typeof failoverRelays>[0];
    const here = failoverRelays(upstream, { configFile: "/run/one/haproxy.cfg" });
    const there = failoverRelays(upstream, { configFile: "/run/two/haproxy.cfg" });
    expect([...here.keys()]).toEqual(["a"]);
    expect(here.get("a")!.targets).toEqual(["b", "c"]);
    expect(here.get("a")!.address).not.toBe(there.get("a")!.address);
    const config = renderHaproxyConfig(stateWith(chain("chain-billing-router")));
    const lines = (name: string) => frontendOf(config, name).split("\n");
    expect(lines("upstream_db.v2.billing.default.default.dc1.failover").filter((line) => line.includes("backend"))).toEqual(["    default_backend upstream_db.billing-backup.default.default.dc1"]);
  });

  it("one backend per target: its balance, connect timeout, retries, the timeout variable and the target's identity", () => {
    expect(backendOf(config, "upstream_db.billing-admin.default.default.dc1")).toMatch(
      /mode http\n    balance roundrobin\n    timeout connect 5000ms\n    http-reuse always\n    retries 3\n    retry-on conn-failure 503 502 empty-response junk-response 500 501 504 response-timeout\n    http-request set-timeout server var\(txn.chain_timeout\) if \{ var\(txn.chain_timeout\) -m found \}\n    http-response set-var\(txn.connect_upstream_ok\) int\(1\) if \{ ssl_s_sha1,hex,map\(\/run\/ch\/server-passes.map\) -m str billing-admin \}\n    http-response lua.connect_verify_upstream billing-admin unless \{ var\(txn.connect_upstream_ok\) -m found \}\n/,
    );
    expect(backendOf(config, "upstream_db.v1.billing.default.default.dc1")).toMatch(/balance hash req.hdr\(x-user\)\n    hash-type consistent\n    timeout connect 3000ms\n/);
  });

  it("is accepted by haproxy -c for every recorded chain", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ch-chain-render-"));
    const local = { ...paths, configFile: join(dir, "haproxy.cfg"), leafCertificateFile: join(dir, "leaf.pem"), caRootsFile: join(dir, "roots.pem"), statsSocket: join(dir, "stats.sock"), masterSocket: join(dir, "master.sock"), luaBundle: join(dir, "stub.lua"), passMap: join(dir, "passes.map"), serverPassMap: join(dir, "server-passes.map") };
    writeFileSync(local.passMap, "");
    writeFileSync(local.serverPassMap, "");
    writeFileSync(local.luaBundle, 'core.register_action("connect_authorize", {"tcp-req", "http-req"}, function(txn) end, 1)\ncore.register_action("connect_verify_upstream", {"tcp-res", "http-res"}, function(txn) end, 1)\ncore.register_service("connect_control", "http", function(applet) end)\n');
    for (const name of ["chain-db", "chain-db-overrides", "chain-billing-resolver", "chain-billing-splitter", "chain-billing-router", "chain-billing-old-redirect", "chain-ledger-maglev", "chain-db-least-request"]) {
      const snapshot = snapshotFor(web, {}, { upstream_db: chain(name) });
      const state = buildDesiredState(snapshot, local);
      writeFileSync(local.leafCertificateFile, state.leafCertificatePem, { mode: 0o600 });
      writeFileSync(local.caRootsFile, state.caRootsPem);
      writeFileSync(local.configFile, renderHaproxyConfig(state));
      await checkHaproxyConfig(local.configFile);
      // With access logs on (their rules sit among the chain's), in an order HAProxy takes without a warning.
      const logged = { ...state, accessLog: planAccessLog({ Enabled: true, Type: "file", Path: join(dir, "access.log"), JSONFormat: '{"t":"%START_TIME%","ua":"%REQ(USER-AGENT)%","ct":"%RESP(CONTENT-TYPE)%"}' }) };
      writeFileSync(local.configFile, renderHaproxyConfig(logged));
      expect(await checkHaproxyConfig(local.configFile)).not.toMatch(/WARNING/);
    }
  });
});

describe("planning chain changes", () => {
  const resolver = chain("chain-billing-resolver");
  const v1 = "v1.billing.default.default.dc1";
  const backup = "billing-backup.default.default.dc1";
  const [db1] = dbInstances() as [ServiceInstanceEntry];

  it("a router added is a validated reload that says so", () => {
    const running = stateWith(chain("chain-billing-splitter"));
    expect(planChanges(running, stateWith(chain("chain-billing-router"), {}, running))).toEqual({
      kind: "reload",
      reason: "upstream db: discovery chain changed (router added, backends added: upstream_db.billing-admin.default.default.dc1)",
      validation: "haproxy -c",
    });
  });

  it("a splitter added to a plain upstream names it, and weights moved name the splits", () => {
    const plain = stateWith(chain("chain-db"));
    expect(planChanges(plain, stateWith(chain("chain-billing-splitter"), {}, plain))).toMatchObject({ kind: "reload", reason: expect.stringMatching(/^upstream db: discovery chain changed \(splitter added, backends added: .*backends removed: upstream_db\)$/) });
    const split = chain("chain-billing-splitter");
    const splitter = split.Nodes["splitter:billing.default.default"]!;
    const moved = { ...split, Nodes: { ...split.Nodes, "splitter:billing.default.default": { ...splitter, Splits: (splitter as { Splits: { Weight: number }[] }).Splits.map((s, n) => ({ ...s, Weight: n === 0 ? 10 : 90 })) } } } as unknown as CompiledDiscoveryChain;
    const running = stateWith(split);
    expect(planChanges(running, stateWith(moved, {}, running))).toMatchObject({ reason: "upstream db: discovery chain changed (splits changed)" });
  });

  it("failover taking over and giving back needs no reload: only server slots change", () => {
    const running = stateWith(resolver, { [v1]: [db1], [backup]: [] });
    const failedOver = stateWith(resolver, { [v1]: [], [backup]: [db1] }, running);
    const plan = planChanges(running, failedOver);
    expect(plan.kind).toBe("runtime");
    expect(plan.kind === "runtime" && plan.operations.map((op) => op.kind === "set-server" && [op.backend, op.server, op.ready])).toEqual([
      ["upstream_db.v1.billing.default.default.dc1", "s1", false],
      ["upstream_db.billing-backup.default.default.dc1", "s1", true],
    ]);
    expect(planChanges(failedOver, stateWith(resolver, { [v1]: [db1], [backup]: [] }, failedOver)).kind).toBe("runtime");
  });

  it("the same chain again plans nothing", () => {
    const running = stateWith(chain("chain-billing-router"), { [v1]: [db1] });
    expect(planChanges(running, stateWith(chain("chain-billing-router"), { [v1]: [db1] }, running))).toEqual({ kind: "none" });
  });
});

describe("identity per target", () => {
  it("each target's instances must prove the target's service and datacenter, not the upstream's name", () => {
    const spec = parseSidecarSpec(fixture(web));
    const router = chain("chain-billing-router");
    const [db1] = dbInstances() as [ServiceInstanceEntry];
    const targetInstances = Object.fromEntries(Object.values(router.Targets).map((t) => [targetQueryKey(targetQuery(t)), [db1]]));
    const snapshot: SidecarSnapshot = { spec, instances: {}, chains: { upstream_db: router }, targetInstances };
    expect(upstreamsToCheck(snapshot, "td.consul").map((u) => [u.expected.service, u.expected.datacenter, u.group]).sort()).toEqual([
      ["billing", "dc1", "billing dc1 not-critical Service.Meta.version == v1"],
      ["billing", "dc1", "billing dc1 passing Service.Meta.version == v2"],
      ["billing-admin", "dc1", "billing-admin dc1 not-critical "],
      ["billing-backup", "dc1", "billing-backup dc1 not-critical "],
    ]);
  });
});
