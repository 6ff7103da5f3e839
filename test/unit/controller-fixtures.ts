// Consul replies recorded from the real agent (scripts/record-fixtures.mjs),
// and the snapshots unit tests build from them.
import { readFileSync } from "node:fs";
import type { AgentServiceRegistration, CaRoots, Intention, LeafCertificate, ServiceInstanceEntry } from "../../controller/consul-replies.js";
import type { ConsulSnapshot, HaproxyPaths } from "../../controller/desired-state.js";
import { parseSidecarSpec } from "../../controller/sidecar-spec.js";

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
  masterSocket: "/run/ch/master.sock",
  luaBundle: "/opt/connect-haproxy/dist/connect-haproxy.lua",
};

export function snapshotFor(proxyFixture: string, instances: Record<string, ServiceInstanceEntry[]> = {}): ConsulSnapshot {
  const leafFixture = proxyFixture.includes("web") ? "leaf-web" : "leaf-db";
  return {
    sidecar: parseSidecarSpec(fixture<AgentServiceRegistration>(proxyFixture)),
    roots: fixture<CaRoots>("ca-roots"),
    leaf: fixture<LeafCertificate>(leafFixture),
    upstreamInstances: instances,
    intentions: { byDestination: fixture<Record<string, Intention[]>>("intentions-match-db"), index: 20 },
  };
}

export const dbInstances = () => fixture<ServiceInstanceEntry[]>("health-connect-db");
