// Consul replies the controller refuses before they reach the snapshot (the
// watch logs one line; the last good value stays): recorded replies pass,
// and each kind of damage a proxy or a broken agent can cause is named.
import { generateKeyPairSync } from "node:crypto";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { replyProblem } from "../../controller/consul-reply-checks.js";

const fixture = (name: string) => JSON.parse(readFileSync(new URL(`../fixtures/consul/${name}.json`, import.meta.url), "utf8")).body;

describe("replyProblem", () => {
  it("accepts every recorded reply", () => {
    expect(replyProblem("roots", fixture("ca-roots"))).toBeUndefined();
    expect(replyProblem("registration", fixture("agent-service-web-sidecar-proxy"))).toBeUndefined();
    expect(replyProblem("intentions", fixture("intentions-match-db"), "db")).toBeUndefined();
    expect(replyProblem("intentions", { db: null }, "db")).toBeUndefined();
    expect(replyProblem("target", fixture("health-connect-db"))).toBeUndefined();
    expect(replyProblem("target", null)).toBeUndefined();
    expect(replyProblem("chain", fixture("chain-billing-router"))).toBeUndefined();
    expect(replyProblem("prepared-query", fixture("query-db-query-execute"))).toBeUndefined();
  });

  it("accepts a recorded leaf while it is valid, and names a key that is not the certificate's", () => {
    const leaf = fixture("leaf-db");
    const problem = replyProblem("leaf", leaf);
    // The recorded leaf lives 72 h: past that, expiry is the (right) problem.
    if (Date.parse(leaf.ValidBefore) > Date.now()) expect(problem).toBeUndefined();
    else expect(problem).toMatch(/expired/);
    const otherKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "sec1", format: "pem" }).toString();
    expect(replyProblem("leaf", { ...leaf, PrivateKeyPEM: otherKey })).toMatch(/^leaf [0-9a-f:]+: the private key does not match the certificate$/);
    expect(replyProblem("leaf", { ...leaf, CertPEM: "" })).toBe('CertPEM is ""');
  });

  it("names roots that do not parse, and roots replies without roots", () => {
    const roots = fixture("ca-roots");
    const broken = { ...roots, Roots: [{ ...roots.Roots[0], RootCert: "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n" }] };
    expect(replyProblem("roots", broken)).toMatch(new RegExp(`^root ${roots.Roots[0].ID}: RootCert does not parse as a certificate`));
    expect(replyProblem("roots", { ...roots, Roots: null })).toBe("Roots is null, not a list of roots");
    expect(replyProblem("roots", { ...roots, TrustDomain: "" })).toBe('TrustDomain is ""');
  });

  it("names JSON of the wrong shape for every watch", () => {
    const wrong = { unexpected: [1, 2, 3] };
    expect(replyProblem("registration", wrong)).toBe("no ID or Service");
    expect(replyProblem("roots", wrong)).toBe("TrustDomain is missing");
    expect(replyProblem("leaf", wrong)).toBe("SerialNumber is missing");
    expect(replyProblem("intentions", wrong)).toBe("an intention of unexpected has no SourceName");
    expect(replyProblem("intentions", { db: "allow" })).toBe("the intentions of db are not a list");
    expect(replyProblem("intentions", { error: "no leader" }, "db")).toBe("no list for db");
    expect(replyProblem("target", wrong)).toMatch(/^not a list of instances/);
    expect(replyProblem("target", [{ Service: { Port: "21000" }, Node: {} }])).toBe('instance 1 has Service.Port "21000"');
    expect(replyProblem("chain", wrong)).toBe("no Chain object: missing");
    expect(replyProblem("chain", { Chain: { Protocol: "tcp", Nodes: {}, Targets: {}, StartNode: "resolver:x" } })).toBe('Chain.StartNode "resolver:x" is not one of its nodes');
    expect(replyProblem("roots", "<html>")).toBe('not an object: "<html>"');
  });
});
