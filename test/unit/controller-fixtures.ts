// Consul replies recorded from the real agent (scripts/record-fixtures.mjs),
// and the snapshots unit tests build from them.
import { readFileSync } from "node:fs";
import type { AgentServiceRegistration, CaRoots, CompiledDiscoveryChain, Intention, LeafCertificate, ServiceInstanceEntry } from "../../controller/consul-replies.js";
import type { ConsulSnapshot, HaproxyPaths } from "../../controller/desired-state.js";
import { targetQuery, targetQueryKey } from "../../controller/discovery-chain.js";
import { parseSidecarSpec, type UpstreamSpec } from "../../controller/sidecar-spec.js";

export function fixture<T>(name: string): T {
  const recorded = JSON.parse(readFileSync(new URL(`../fixtures/consul/${name}.json`, import.meta.url), "utf8")) as { body: T };
  return recorded.body;
}

export const paths: HaproxyPaths = {
  configFile: "/run/ch/haproxy.cfg",
  leafCertificateFile: "/run/ch/certs/leaf.pem",
  caRootsFile: "/run/ch/certs/roots.pem",
  statsSocket: "/run/ch/stats.sock",
  passMap: "/run/ch/passes.map",
  serverPassMap: "/run/ch/server-passes.map",
  masterSocket: "/run/ch/master.sock",
  controlSocket: "/run/ch/control.sock",
  luaBundle: "/opt/connect-haproxy/dist/connect-haproxy.lua",
};

/**
 * The chain Consul compiles for a service with no config entry, shaped as the
 * recorded chain-db.json (a unit test holds the two side by side).
 */
export function defaultChainFor(upstream: Pick<UpstreamSpec, "destinationName" | "datacenter" | "protocol" | "connectTimeoutMs">): CompiledDiscoveryChain {
  const datacenter = upstream.datacenter ?? "dc1";
  const id = `${upstream.destinationName}.default.default.${datacenter}`;
  const connectTimeout = `${upstream.connectTimeoutMs / 1000}s`;
  return {
    ServiceName: upstream.destinationName,
    Namespace: "default",
    Partition: "default",
    Datacenter: datacenter,
    Default: true,
    Protocol: upstream.protocol,
    StartNode: `resolver:${id}`,
    Nodes: { [`resolver:${id}`]: { Type: "resolver", Name: id, Resolver: { ConnectTimeout: connectTimeout, Default: true, Target: id } } },
    Targets: { [id]: { ID: id, Service: upstream.destinationName, Namespace: "default", Partition: "default", Datacenter: datacenter, ConnectTimeout: connectTimeout, Subset: {} } },
  };
}

/**
 * A snapshot of the sidecar in `proxyFixture`, every service upstream with its
 * default chain; `instances` by upstream name (UpstreamSpec.name) become the
 * instances of that upstream's chain target.
 */
export function snapshotFor(proxyFixture: string, instances: Record<string, ServiceInstanceEntry[]> = {}, chains: Record<string, CompiledDiscoveryChain> = {}): ConsulSnapshot {
  const leafFixture = proxyFixture.includes("web") ? "leaf-web" : "leaf-db";
  const sidecar = parseSidecarSpec(fixture<AgentServiceRegistration>(proxyFixture));
  const allChains = Object.fromEntries(sidecar.upstreams.filter((u) => u.destinationType === "service").map((u) => [u.name, chains[u.name] ?? defaultChainFor(u)]));
  const upstreamInstances: Record<string, ServiceInstanceEntry[]> = {};
  for (const [name, entries] of Object.entries(instances)) {
    const chain = allChains[name];
    if (!chain) upstreamInstances[name] = entries;
    else upstreamInstances[targetQueryKey(targetQuery(Object.values(chain.Targets)[0]!))] = entries;
  }
  return {
    sidecar,
    roots: fixture<CaRoots>("ca-roots"),
    leaf: fixture<LeafCertificate>(leafFixture),
    upstreamInstances,
    chains: allChains,
    intentions: { byDestination: fixture<Record<string, Intention[]>>("intentions-match-db"), index: 20 },
  };
}

export const dbInstances = () => fixture<ServiceInstanceEntry[]>("health-connect-db");
