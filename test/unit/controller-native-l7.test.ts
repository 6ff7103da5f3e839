// Native L7 rules: which intentions they decide (first matching source governs,
// as the authorizer decides), how each permission becomes ACL conditions, what
// is left to the authorizer, and that HAProxy 2.6 accepts them.
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import type { Intention } from "../../controller/consul-replies.js";
import { httpAuthorizationRules } from "../../controller/haproxy-config.js";
import { nativeL7Rules } from "../../controller/native-l7.js";
import { checkHaproxyConfig } from "../harness/haproxy.js";

const MAP = "/run/ch/passes.map";
const l7 = (source: string, permissions: unknown[], extra: Partial<Intention> = {}): Intention => ({ SourceName: source, DestinationName: "api", Permissions: permissions, ...extra });
const l4 = (source: string, action: "allow" | "deny"): Intention => ({ SourceName: source, DestinationName: "api", Action: action });
const allow = (HTTP?: unknown) => ({ Action: "allow", ...(HTTP ? { HTTP } : {}) });
const deny = (HTTP?: unknown) => ({ Action: "deny", ...(HTTP ? { HTTP } : {}) });

/** The conditions after `if` of each permission line, in order. */
function permissionLines(lines: string[]): string[] {
  return lines.filter((line) => line.includes("set-var(txn.connect_reason)")).map((line) => line.replace(/^.* !\{ var\(txn\.connect_reason\) -m found \} ?/, ""));
}
const governingLines = (lines: string[]) => lines.filter((line) => line.includes("set-var(txn.connect_l7)"));

describe("nativeL7Rules", () => {
  it("decides an exact source's L7 intention: permissions in order, each naming its verdict, then the verdict variable", () => {
    const { lines, index, leftToLua } = nativeL7Rules([l7("web", [deny({ PathPrefix: "/admin" }), allow({ PathExact: "/health", Methods: ["GET", "HEAD"] })])], "api", 42, MAP);
    expect(index).toBe(42);
    expect(leftToLua).toEqual([]);
    expect(governingLines(lines)).toEqual([
      `http-request set-var(txn.connect_l7) int(1) if !{ var(txn.connect_allowed) -m found } { str(l7),map(${MAP}) -m found } { path -m beg / } !{ path -m sub % \\\\ } { var(sess.connect_src) -m str web }`,
    ]);
    expect(lines).toContain('http-request set-var(txn.connect_reason) "str(L7 intention web => api permission 1: deny [haproxy.cfg])" if { var(txn.connect_l7) -m int 1 } !{ var(txn.connect_reason) -m found } { path -m beg \'/admin\' }');
    expect(permissionLines(lines)).toEqual(["{ path -m beg '/admin' }", "{ path -m str '/health' } { method -m str GET HEAD }"]);
    expect(lines.slice(-2)).toEqual([
      "http-request set-var(txn.connect_allowed) int(1) if { var(txn.connect_l7) -m found } { var(txn.connect_reason) -m end ': allow [haproxy.cfg]' }",
      "http-request set-var(txn.connect_allowed) int(0) if { var(txn.connect_l7) -m found } { var(txn.connect_reason) -m end ': deny [haproxy.cfg]' }",
    ]);
  });

  it("a wildcard L7 intention governs only the sources no earlier intention matched, and nothing after it is rendered", () => {
    const list = [l4("admin", "deny"), l7("web", [allow({ PathPrefix: "/" })]), l7("*", [allow({ PathPrefix: "/public/" })]), l7("late", [allow()])];
    const governing = governingLines(nativeL7Rules(list, "api", 7, MAP).lines);
    expect(governing).toHaveLength(2);
    expect(governing[0]).toMatch(/\{ var\(sess\.connect_src\) -m str web \}$/);
    expect(governing[1]).toMatch(/\{ var\(sess\.connect_src\) -m found \} !\{ var\(sess\.connect_src\) -m str admin web \}$/);
    expect(governing.join("\n")).not.toContain("late");
  });

  it("renders nothing for L4 intentions (the agent's verdict and passes decide them) and skips intentions no local client matches", () => {
    const list = [
      l4("web", "allow"),
      l7("web", [allow()], { DestinationName: "*" }), // governed by the first already
      l7("peer-web", [allow()], { SourcePeer: "other" }),
      l7("ns-web", [allow()], { SourceNS: "team" }),
      l7("part-web", [allow()], { SourcePartition: "p1" }),
    ];
    expect(nativeL7Rules(list, "api", 7, MAP).lines).toEqual([]);
  });

  it("header rules: each match type, IgnoreCase (not on regexes), Invert with Envoy's missing-header rule, and a repeated header left to the authorizer", () => {
    const headers = [
      { Name: "X-Exact", Exact: "a", IgnoreCase: true },
      { Name: "x-prefix", Prefix: "p" },
      { Name: "x-suffix", Suffix: "s", Invert: true },
      { Name: "x-contains", Contains: "c" },
      { Name: "x-regex", Regex: "v[0-9]+", IgnoreCase: true },
      { Name: "x-present", Present: true },
      { Name: "x-absent", Present: true, Invert: true },
    ];
    const { lines } = nativeL7Rules([l7("web", [allow({ Header: headers })])], "api", 1, MAP);
    expect(permissionLines(lines)).toEqual([
      "{ req.fhdr(x-exact) -m str -i 'a' } { req.fhdr(x-prefix) -m beg 'p' } { req.fhdr_cnt(x-suffix) gt 0 } !{ req.fhdr(x-suffix) -m end 's' } " +
        "{ req.fhdr(x-contains) -m sub 'c' } { req.fhdr(x-regex) -m reg '^(?:v[0-9]+)\\z' } { req.fhdr_cnt(x-present) gt 0 } { req.fhdr_cnt(x-absent) eq 0 }",
    ]);
    expect(governingLines(lines)[0]).toContain("{ req.fhdr_cnt(x-exact) le 1 } { req.fhdr_cnt(x-prefix) le 1 }");
  });

  it("anchors path regexes as the authorizer does (whole path, \\z)", () => {
    const { lines } = nativeL7Rules([l7("web", [allow({ PathRegex: "/items/[0-9]+" })])], "api", 1, MAP);
    expect(permissionLines(lines)).toEqual(["{ path -m reg '^(?:/items/[0-9]+)\\z' }"]);
  });

  it("stops at the first permission it cannot express exactly: the authorizer decides every request the earlier ones do not", () => {
    const cases: unknown[] = [
      allow({ PathPrefix: "/it's" }), // a quote
      allow({ PathRegex: "(?<name>x)" }), // outside the plain-regex set
      allow({ Header: [{ Name: "x-a", Exact: "" }] }), // no match type
      allow({ Header: [{ Name: "x:a", Exact: "v" }] }), // a name HAProxy cannot take in a fetch argument
      allow({ Methods: ["get"] }),
      { Action: "allow", HTTP: { PathExact: "/x", Query: "y" } }, // an unknown field (newer Consul)
      { Action: "maybe" },
    ];
    for (const unusable of cases) {
      const { lines, leftToLua } = nativeL7Rules([l7("web", [deny({ PathPrefix: "/admin" }), unusable, allow({ PathPrefix: "/" })])], "api", 1, MAP);
      expect(permissionLines(lines), JSON.stringify(unusable)).toEqual(["{ path -m beg '/admin' }"]);
      expect(leftToLua).toEqual(["web => api: permission 2 and after"]);
    }
    expect(nativeL7Rules([l7("web", [allow()], { JWT: { Providers: [] } })], "api", 1, MAP)).toEqual({ lines: [], index: 1, leftToLua: ["web => api: JWT"] });
  });

  it("a source name it cannot compare stops the walk, so no later (wildcard) rule claims that source", () => {
    const { lines, leftToLua } = nativeL7Rules([l7("we b", [allow()]), l7("*", [allow()])], "api", 1, MAP);
    expect(lines).toEqual([]);
    expect(leftToLua).toEqual(["we b => api: its source name, and every intention after it"]);
  });

  it("is accepted by haproxy -c with every kind of rule", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ch-native-l7-"));
    try {
      const passMap = join(dir, "passes.map");
      writeFileSync(passMap, "");
      const list = [
        l4("admin", "deny"),
        l7("web", [
          deny({ PathPrefix: "/admin", Methods: ["POST", "DELETE"] }),
          allow({ PathRegex: "/items/[0-9]+(/.*)?", Header: [{ Name: "x-team", Exact: "payments", IgnoreCase: true }, { Name: "x-debug", Present: true, Invert: true }] }),
          allow({ PathExact: "/health", Header: [{ Name: "x-v", Regex: "v[0-9]+" }, { Name: "x-s", Suffix: "z", Invert: true }, { Name: "x-c", Contains: "c" }] }),
        ]),
        l7("*", [allow({ PathPrefix: "/public/" })]),
      ];
      const native = nativeL7Rules(list, "api", 9, passMap);
      expect(governingLines(native.lines)).toHaveLength(2);
      const config = [
        "global",
        "    expose-experimental-directives",
        `    lua-load ${join(dir, "stub.lua")}`,
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 1s",
        "    timeout server 1s",
        "frontend public",
        "    bind 127.0.0.1:1",
        ...httpAuthorizationRules("api", passMap, native.lines).map((line) => `    ${line}`),
        "    http-request return status 200",
        "",
      ].join("\n");
      writeFileSync(join(dir, "stub.lua"), 'core.register_action("connect_authorize", {"http-req"}, function(txn) end, 1)\n');
      writeFileSync(join(dir, "haproxy.cfg"), config);
      await checkHaproxyConfig(join(dir, "haproxy.cfg"));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
