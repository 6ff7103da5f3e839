// Pure helpers of the runtime API client and of the upstream identity check.
import { describe, expect, it } from "vitest";
import { parseRevoked } from "../../controller/authorizer-control.js";
import { answerIsError, parseHumanTime, parseShowProc, parseShowSess, payload, sessionsToClose } from "../../controller/runtime-api.js";
import { matchesIdentity, uriSans } from "../../controller/upstream-identity.js";

describe("runtime API helpers", () => {
  it("parses the master CLI's show proc (HAProxy 2.6 format)", () => {
    const answer = [
      "#<PID>          <type>          <reloads>       <uptime>        <version>      ",
      "14673           master          2 [failed: 0]   0d00h00m02s     2.6.12-1+deb12u4",
      "# workers",
      "14688           worker          0               0d00h00m01s     2.6.12-1+deb12u4",
      "# old workers",
      "14680           worker          1               0d00h00m09s     2.6.12-1+deb12u4",
      "# programs",
      "",
    ].join("\n");
    expect(parseShowProc(answer)).toEqual({ masterPid: 14673, reloads: 2, workers: [14688], oldWorkers: [14680] });
  });

  it("parses show sess (HAProxy 2.6 format): the session to shut down, its client, frontend, server and age", () => {
    const answer = [
      "0x55b0f471a840: proto=tcpv4 src=127.0.0.1:37424 fe=public_listener be=local_app srv=app ts=00 epoch=0 age=0s calls=2 rate=2 cpu=0 lat=0 rq[f=808000h,i=0,an=00h,rx=29s,wx=,ax=] scf=[8,0h,fd=12] exp=4s rc=0 c_exp=",
      "0x55b0f4835c70: proto=unix_stream src=unix:1 fe=GLOBAL be=<NONE> srv=<none> ts=00 epoch=0 age=1m5s calls=1",
      "0x55b0f4835d00: proto=tcpv6 src=[::1]:40000 fe=public_listener be=local_app srv=<none> ts=00 epoch=0 age=1h5m calls=1",
      "",
    ].join("\n");
    expect(parseShowSess(answer)).toEqual([
      { id: "0x55b0f471a840", client: "127.0.0.1:37424", frontend: "public_listener", server: "app", ageSeconds: { min: 0, max: 0 } },
      { id: "0x55b0f4835c70", client: "unix:1", frontend: "GLOBAL", server: undefined, ageSeconds: { min: 65, max: 65 } },
      { id: "0x55b0f4835d00", client: "::1:40000", frontend: "public_listener", server: undefined, ageSeconds: { min: 3900, max: 3959 } },
    ]);
  });

  it("reads HAProxy's human_time: two units at most, what is below the second cut off", () => {
    expect(parseHumanTime("0s")).toEqual({ min: 0, max: 0 });
    expect(parseHumanTime("59s")).toEqual({ min: 59, max: 59 });
    expect(parseHumanTime("5m")).toEqual({ min: 300, max: 300 });
    expect(parseHumanTime("2d3h")).toEqual({ min: 183_600, max: 187_199 });
    expect(parseHumanTime("?")).toBeUndefined();
    expect(parseHumanTime("5sx")).toBeUndefined();
  });

  it("parses the authorizer's connect revoked, one connection a line, with its age", () => {
    const answer = "127.0.0.1:37424 db spiffe://t.consul/ns/default/dc/dc1/svc/web 12s Matched L4 intention: default/web => default/db (Action: DENY)\n\n";
    expect(parseRevoked(answer)).toEqual([
      { client: "127.0.0.1:37424", target: "db", source: "spiffe://t.consul/ns/default/dc/dc1/svc/web", ageSeconds: 12, reason: "Matched L4 intention: default/web => default/db (Action: DENY)" },
    ]);
    expect(parseRevoked("")).toEqual([]);
  });

  it("shuts down only the revoked connection itself: established, on the frontend, as old as its entry", () => {
    const revoked = parseRevoked("127.0.0.1:40001 db spiffe://t/svc/evil 30s deny\n127.0.0.1:40002 db spiffe://t/svc/evil 30s deny\n127.0.0.1:40003 db spiffe://t/svc/evil 30s deny\n127.0.0.1:40004 db spiffe://t/svc/evil 2s deny\n");
    const sessions = parseShowSess(
      [
        // The same connection: established, 31 s old.
        "0x1: proto=tcpv4 src=127.0.0.1:40001 fe=public_listener be=local_app srv=app ts=00 epoch=0 age=31s calls=1",
        // Another client that got port 40002 since: 1 s old.
        "0x2: proto=tcpv4 src=127.0.0.1:40002 fe=public_listener be=local_app srv=app ts=00 epoch=0 age=1s calls=1",
        // A new connection on 40003 still being decided (its Lua action may be waiting for the agent).
        "0x3: proto=tcpv4 src=127.0.0.1:40003 fe=public_listener be=public_listener srv=<none> ts=00 epoch=0 age=30s calls=1",
        // Decided after the agent answered slowly: a few seconds older than its entry.
        "0x4: proto=tcpv4 src=127.0.0.1:40004 fe=public_listener be=local_app srv=app ts=00 epoch=0 age=6s calls=1",
        "0x5: proto=tcpv4 src=127.0.0.1:40001 fe=upstream_db be=upstream_db srv=s1 ts=00 epoch=0 age=31s calls=1",
      ].join("\n"),
    );
    expect(sessionsToClose(revoked, sessions, "public_listener").map(({ session }) => session.id)).toEqual(["0x1", "0x4"]);
  });

  it("recognises HAProxy's refusals, and not its successes", () => {
    expect(answerIsError("No such server.\n")).toBe(true);
    expect(answerIsError("Can't commit /x/leaf.pem!\n")).toBe(true);
    expect(answerIsError("Unknown command: 'connect cache flush'\n")).toBe(true);
    expect(answerIsError("")).toBe(false);
    expect(answerIsError("IP changed from '127.0.0.1' to '10.0.0.2', port changed from '1' to '21001' by 'stats socket command'\n")).toBe(false);
    expect(answerIsError("Committing /x/roots.pem\nSuccess!\n")).toBe(false);
  });

  it("drops empty lines from a PEM payload (an empty line ends it)", () => {
    expect(payload("-----BEGIN A-----\nx\n-----END A-----\n\n-----BEGIN B-----\ny\n-----END B-----\n")).toBe("-----BEGIN A-----\nx\n-----END A-----\n-----BEGIN B-----\ny\n-----END B-----");
  });
});

describe("upstream identity", () => {
  const trustDomain = "f022ef26-5d22-a90c-cbff-21ace3ccf189.consul";
  it("reads URI SANs from Node's subjectaltname", () => {
    expect(uriSans(`URI:spiffe://${trustDomain}/ns/default/dc/dc1/svc/db`)).toEqual([`spiffe://${trustDomain}/ns/default/dc/dc1/svc/db`]);
    expect(uriSans("DNS:db.example, URI:spiffe://a/ns/default/dc/dc1/svc/db, URI:spiffe://b/x")).toHaveLength(2);
    expect(uriSans(undefined)).toEqual([]);
  });

  it("accepts the destination service in our trust domain only", () => {
    const id = (svc: string, td = trustDomain, dc = "dc1") => `spiffe://${td}/ns/default/dc/${dc}/svc/${svc}`;
    expect(matchesIdentity(id("db"), { trustDomain, service: "db" })).toBe(true);
    expect(matchesIdentity(id("web"), { trustDomain, service: "db" })).toBe(false);
    expect(matchesIdentity(id("db", "other.consul"), { trustDomain, service: "db" })).toBe(false);
    expect(matchesIdentity(id("db", trustDomain, "dc2"), { trustDomain, service: "db", datacenter: "dc1" })).toBe(false);
    expect(matchesIdentity(`spiffe://${trustDomain}/ap/team/ns/default/dc/dc1/svc/db`, { trustDomain, service: "db" })).toBe(true);
    expect(matchesIdentity(`spiffe://${trustDomain}/agent/client/dc/dc1/id/x`, { trustDomain, service: "db" })).toBe(false);
    expect(matchesIdentity(id("db-extra"), { trustDomain, service: "db" })).toBe(false);
  });
});

describe("certificatePairProblem", () => {
  it("accepts a leaf recorded from Consul, and refuses a mismatched or missing key", async () => {
    const { certificatePairProblem } = await import("../../controller/certificate-pair.js");
    const { fixture } = await import("./controller-fixtures.js");
    const web = fixture<{ CertPEM: string; PrivateKeyPEM: string }>("leaf-web");
    const db = fixture<{ CertPEM: string; PrivateKeyPEM: string }>("leaf-db");
    const validUntil = Date.parse(fixture<{ ValidBefore: string }>("leaf-web").ValidBefore);
    if (validUntil > Date.now()) expect(certificatePairProblem(`${web.CertPEM}\n${web.PrivateKeyPEM}`)).toBeUndefined();
    else expect(certificatePairProblem(`${web.CertPEM}\n${web.PrivateKeyPEM}`)).toMatch(/expired/);
    expect(certificatePairProblem(`${web.CertPEM}\n${db.PrivateKeyPEM}`)).toBe("the private key does not match the certificate");
    expect(certificatePairProblem(web.CertPEM)).toBe("no private key");
  });
});
