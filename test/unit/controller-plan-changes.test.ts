// The planner: runtime commands when they suffice, a reload (with a reason) otherwise.
import { describe, expect, it } from "vitest";
import { buildDesiredState, type ConsulSnapshot } from "../../controller/desired-state.js";
import { planChanges } from "../../controller/plan-changes.js";
import { capabilitiesOf, parseHaproxyVersion } from "../../controller/haproxy-version.js";
import type { ServiceInstanceEntry } from "../../controller/consul-replies.js";
import { dbInstances, paths, snapshotFor } from "./controller-fixtures.js";

const webSnapshot = (instances: ServiceInstanceEntry[]): ConsulSnapshot => snapshotFor("agent-service-web-sidecar-proxy", { upstream_db: instances });
const [db1, db2] = dbInstances();
const instance = (n: number): ServiceInstanceEntry => ({ ...db1!, Service: { ...db1!.Service, ID: `db-x${n}`, Port: 30000 + n } });

const haproxy30 = capabilitiesOf(parseHaproxyVersion("HAProxy version 3.0.11-9e587df 2025/06/02 - https://haproxy.org/"));

describe("HAProxy versions", () => {
  it("reads 2.6's and 3.x's version lines, and gives unknown versions the reloading path", () => {
    expect(parseHaproxyVersion("HAProxy version 2.6.12-1+deb12u4 2026/10/17 - https://haproxy.org/\nStatus: …")).toMatchObject({ major: 2, minor: 6, patch: 12 });
    expect(parseHaproxyVersion("HA-Proxy version 2.2.5-34b2b10 2020/11/05 - https://haproxy.org/")).toMatchObject({ major: 2, minor: 2, patch: 5 });
    expect(parseHaproxyVersion("HAProxy version 3.3-dev11-1234 2025/10/30")).toMatchObject({ major: 3, minor: 3, patch: 0 });
    expect(parseHaproxyVersion("nginx version: 1.2")).toBeUndefined();
    expect(capabilitiesOf(parseHaproxyVersion("HAProxy version 2.6.12"))).toMatchObject({ label: "2.6", swapListenerCertificate: false, caFileReachesListener: false });
    expect(capabilitiesOf(parseHaproxyVersion("HAProxy version 2.9.1"))).toMatchObject({ swapListenerCertificate: false, caFileReachesListener: false });
    expect(haproxy30).toEqual({ label: "3.0", swapListenerCertificate: true, caFileReachesListener: true, swapCertificateAfterCaCommit: false });
    expect(capabilitiesOf(undefined)).toMatchObject({ swapListenerCertificate: false, caFileReachesListener: false });
  });
});

describe("planChanges", () => {
  const running = buildDesiredState(webSnapshot([db1!]), paths);
  const withExtraRoot = () => {
    const snapshot = webSnapshot([db1!]);
    const extra = { ...snapshot.roots.Roots![0]!, ID: "new", RootCert: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----" };
    return buildDesiredState({ ...snapshot, roots: { ...snapshot.roots, Roots: [...snapshot.roots.Roots!, extra] } }, paths, running);
  };

  it("plans nothing when nothing changed", () => {
    expect(planChanges(running, buildDesiredState(webSnapshot([db1!]), paths, running))).toEqual({ kind: "none" });
  });

  it("adds a new instance with set server on a free slot, no reload", () => {
    const plan = planChanges(running, buildDesiredState(webSnapshot([db1!, db2!]), paths, running));
    expect(plan).toEqual({ kind: "runtime", operations: [
      { kind: "set-server", backend: "upstream_db", server: "s2", address: "127.0.0.1", port: 21002, ready: true, change: expect.stringContaining("added to upstream_db/s2") },
    ] });
  });

  it("puts a removed instance's slot in maintenance, no reload", () => {
    const both = buildDesiredState(webSnapshot([db1!, db2!]), paths);
    const plan = planChanges(both, buildDesiredState(webSnapshot([db2!]), paths, both));
    expect(plan).toEqual({ kind: "runtime", operations: [{ kind: "set-server", backend: "upstream_db", server: "s1", ready: false, change: expect.stringContaining("removed from upstream_db/s1") }] });
  });

  it("reloads, with a reason, when the instances outgrow the slots", () => {
    const plan = planChanges(running, buildDesiredState(webSnapshot(Array.from({ length: 9 }, (_, n) => instance(n))), paths, running));
    expect(plan).toEqual({ kind: "reload", reason: "upstream upstream_db needs 16 server slots (has 8)", validation: "haproxy -c" });
  });

  it("loads a renewed leaf with a reload on HAProxy 2.6 (its runtime swap drops verify required), validated by the key pair alone", () => {
    const snapshot = webSnapshot([db1!]);
    const renewed = { ...snapshot, leaf: { ...snapshot.leaf, SerialNumber: "aa:bb", CertPEM: "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----" } };
    expect(planChanges(running, buildDesiredState(renewed, paths, running))).toEqual({
      kind: "reload",
      reason: expect.stringMatching(/^leaf certificate renewed \(serial 0a -> aa:bb\); HAProxy 2\.6 cannot swap/),
      validation: "key pair",
    });
  });

  it("validates with haproxy -c when a renewed leaf comes with a change to the configuration's text", () => {
    const snapshot = webSnapshot([db1!, db2!]);
    const renewed = { ...snapshot, leaf: { ...snapshot.leaf, SerialNumber: "aa:bb", CertPEM: "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----" } };
    expect(planChanges(running, buildDesiredState(renewed, paths, running))).toMatchObject({ kind: "reload", validation: "haproxy -c" });
  });

  it("swaps a renewed leaf at run time on HAProxy 3.0", () => {
    const snapshot = webSnapshot([db1!]);
    const renewed = { ...snapshot, leaf: { ...snapshot.leaf, SerialNumber: "aa:bb", CertPEM: "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----" } };
    const plan = planChanges(running, buildDesiredState(renewed, paths, running), haproxy30);
    const ops = plan.kind === "runtime" ? plan.operations : [];
    expect(ops).toHaveLength(1);
    expect(ops[0]).toMatchObject({ kind: "update-certificate", file: paths.leafCertificateFile, change: expect.stringContaining("-> aa:bb") });
    expect(ops[0]!.kind === "update-certificate" && ops[0]!.pem).toContain("PRIVATE KEY");
  });

  it("reloads for a renewed leaf on HAProxy 3.0 once its worker had a CA commit (HAProxy issue #3165)", () => {
    const snapshot = webSnapshot([db1!]);
    const renewed = { ...snapshot, leaf: { ...snapshot.leaf, SerialNumber: "aa:bb", CertPEM: "-----BEGIN CERTIFICATE-----\nnew\n-----END CERTIFICATE-----" } };
    expect(planChanges(running, buildDesiredState(renewed, paths, running), haproxy30, { caFileCommitted: true })).toEqual({
      kind: "reload",
      reason: expect.stringMatching(/^leaf certificate renewed \(serial 0a -> aa:bb\); this HAProxy 3\.0 worker had its CA file replaced at run time.*#3165/),
      validation: "key pair",
    });
  });

  it("reloads for new roots on HAProxy 2.6 (its commit ssl ca-file leaves the listener trusting the old ones), validated by haproxy -c", () => {
    expect(planChanges(running, withExtraRoot())).toEqual({
      kind: "reload",
      reason: "CA roots changed; HAProxy 2.6's commit ssl ca-file does not reach the listener's verification",
      validation: "haproxy -c",
    });
  });

  it("swaps changed roots at run time on HAProxy 3.0, with every root", () => {
    const plan = planChanges(running, withExtraRoot(), haproxy30);
    const ops = plan.kind === "runtime" ? plan.operations : [];
    expect(ops).toHaveLength(1);
    expect(ops[0]!.kind).toBe("update-ca-file");
    expect(ops[0]!.kind === "update-ca-file" && ops[0]!.pem.match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
  });

  it("reloads when a root leaves (TLS sessions it verified must not resume), with the file holding the rest", () => {
    const snapshot = webSnapshot([db1!]);
    const extra = { ...snapshot.roots.Roots![0]!, ID: "new", RootCert: "-----BEGIN CERTIFICATE-----\nx\n-----END CERTIFICATE-----" };
    const both = buildDesiredState({ ...snapshot, roots: { ...snapshot.roots, Roots: [...snapshot.roots.Roots!, extra] } }, paths, running);
    const onlyNew = buildDesiredState({ ...snapshot, roots: { ...snapshot.roots, Roots: [extra] } }, paths, both);
    expect(planChanges(both, onlyNew, haproxy30)).toEqual({ kind: "reload", reason: "CA roots changed, 1 certificate(s) removed: a reload, so no TLS session they verified can be resumed", validation: "haproxy -c" });
    // 2.6 reloads for every roots change anyway.
    expect(planChanges(both, onlyNew)).toMatchObject({ kind: "reload", reason: expect.stringMatching(/^CA roots changed; HAProxy 2.6's commit ssl ca-file does not reach/) });
  });

  it("reloads when the trust domain changes (the authorizer reads it at load)", () => {
    const snapshot = webSnapshot([db1!]);
    const moved = { ...snapshot, roots: { ...snapshot.roots, TrustDomain: "11111111-2222-3333-4444-555555555555.consul" } };
    expect(planChanges(running, buildDesiredState(moved, paths, running))).toEqual({ kind: "reload", reason: expect.stringContaining("trust domain"), validation: "haproxy -c" });
  });

  it("flushes the authorizer's cache when intentions change", () => {
    const snapshot = webSnapshot([db1!]);
    const plan = planChanges(running, buildDesiredState({ ...snapshot, intentions: { byDestination: { web: [] }, index: 21 } }, paths, running));
    expect(plan).toEqual({
      kind: "runtime",
      operations: [
        { kind: "sync-intentions", target: "web", index: 21, change: "intentions for web changed" },
        { kind: "flush-authorization-cache", change: "intentions for web changed" },
        { kind: "revoke-connections", frontend: "public_listener", target: "web", change: "intentions for web changed" },
      ],
    });
  });

  it("reloads when an upstream is added or removed, or a bind or protocol changes", () => {
    const snapshot = webSnapshot([db1!]);
    const added = { ...snapshot, sidecar: { ...snapshot.sidecar, upstreams: [...snapshot.sidecar.upstreams, { ...snapshot.sidecar.upstreams[0]!, name: "upstream_cache", destinationName: "cache", bindPort: 9999 }] } };
    expect(planChanges(running, buildDesiredState(added, paths, running))).toEqual({ kind: "reload", reason: "upstream upstream_cache added on 127.0.0.1:9999", validation: "haproxy -c" });
    const removed = { ...snapshot, sidecar: { ...snapshot.sidecar, upstreams: [] } };
    expect(planChanges(running, buildDesiredState(removed, paths, running))).toEqual({ kind: "reload", reason: "upstream upstream_db removed", validation: "haproxy -c" });
    const rebound = { ...snapshot, sidecar: { ...snapshot.sidecar, publicListener: { ...snapshot.sidecar.publicListener, bindPort: 22000, protocol: "http" as const } } };
    expect(planChanges(running, buildDesiredState(rebound, paths, running))).toEqual({ kind: "reload", reason: "public listener bindPort 21000 -> 22000; public listener protocol tcp -> http", validation: "haproxy -c" });
  });

  it("never plans a reload without a reason", () => {
    const snapshot = webSnapshot([db1!]);
    const changed = { ...snapshot, sidecar: { ...snapshot.sidecar, upstreams: [{ ...snapshot.sidecar.upstreams[0]!, connectTimeoutMs: 100 }] } };
    const plan = planChanges(running, buildDesiredState(changed, paths, running));
    expect(plan.kind).toBe("reload");
    if (plan.kind === "reload") expect(plan.reason).toMatch(/\w/);
  });
});
