// Rendering haproxy.cfg from Consul replies recorded from the real agent.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { rootsPem } from "../../controller/consul-pem.js";
import { assignSlots, buildDesiredState, instancesFromEntries } from "../../controller/desired-state.js";
import { renderHaproxyConfig } from "../../controller/haproxy-config.js";
import { planAccessLog } from "../../controller/access-log.js";
import { findSidecarRegistration, parseSidecarSpec } from "../../controller/sidecar-spec.js";
import type { AgentServiceRegistration, CaRoots } from "../../controller/consul-replies.js";
import { checkHaproxyConfig } from "../harness/haproxy.js";
import { dbInstances, fixture, paths, snapshotFor } from "./controller-fixtures.js";

describe("findSidecarRegistration", () => {
  const services = fixture<Record<string, AgentServiceRegistration>>("agent-services");
  it("finds the connect-proxy whose DestinationServiceID is the service", () => {
    const found = findSidecarRegistration(services, { sidecarFor: "web-1" });
    expect(found.ok && found.registration.ID).toBe("web-1-sidecar-proxy");
  });
  it("names what it found when nothing matches", () => {
    const found = findSidecarRegistration(services, { sidecarFor: "nope" });
    expect(found.ok).toBe(false);
    expect(!found.ok && found.message).toContain("web-1-sidecar-proxy (for web-1)");
  });
  it("refuses a --proxy-id that is not a connect-proxy", () => {
    const found = findSidecarRegistration(services, { proxyId: "web-1" });
    expect(!found.ok && found.message).toContain("not a connect-proxy");
  });
  it("reports several sidecars for one service", () => {
    const twice = { ...services, extra: { ...services["web-1-sidecar-proxy"]!, ID: "extra" } };
    const found = findSidecarRegistration(twice, { sidecarFor: "web-1" });
    expect(!found.ok && found.message).toContain("several");
  });
});

describe("parseSidecarSpec", () => {
  it("reads defaults as Consul's proxies do", () => {
    const spec = parseSidecarSpec(fixture("agent-service-web-sidecar-proxy"));
    expect(spec.publicListener).toMatchObject({
      bindAddress: "0.0.0.0",
      bindPort: 21000,
      protocol: "tcp",
      destinationServiceName: "web",
      localServiceAddress: "127.0.0.1",
      localServicePort: 8080,
      localConnectTimeoutMs: 5000,
    });
    expect(spec.upstreams).toEqual([
      { name: "upstream_db", destinationType: "service", destinationName: "db", datacenter: undefined, bindAddress: "127.0.0.1", bindPort: 9191, protocol: "tcp", connectTimeoutMs: 5000 },
    ]);
  });
  it("honours bind overrides, protocol, timeouts, datacenters and prepared queries", () => {
    const spec = parseSidecarSpec(fixture("agent-service-api-sidecar-proxy"));
    expect(spec.publicListener).toMatchObject({ bindAddress: "127.0.0.1", bindPort: 21500, protocol: "http", localServiceAddress: "127.0.0.2", localConnectTimeoutMs: 2500, localRequestTimeoutMs: 30000 });
    expect(spec.upstreams.map((u) => [u.name, u.protocol, u.bindAddress, u.bindPort, u.connectTimeoutMs])).toEqual([
      ["upstream_web", "http", "127.0.0.1", 9292, 1500],
      ["upstream_db_dc1", "tcp", "127.0.0.3", 9393, 5000],
      ["upstream_query_db-query", "tcp", "127.0.0.1", 9494, 5000],
    ]);
  });
  it("rejects an unknown protocol with a clear message", () => {
    const reg = fixture<AgentServiceRegistration>("agent-service-web-sidecar-proxy");
    expect(() => parseSidecarSpec({ ...reg, Proxy: { ...reg.Proxy!, Config: { protocol: "smtp" } } })).toThrow(/unsupported protocol "smtp"/);
  });
});

describe("instances and slots", () => {
  it("dials Service.Address, else Node.Address", () => {
    expect(instancesFromEntries(dbInstances())).toEqual([
      { id: "fixture-node/db-1-sidecar-proxy", address: "127.0.0.1", port: 21001 },
      { id: "fixture-node/db-2-sidecar-proxy", address: "127.0.0.1", port: 21002 },
    ]);
  });
  it("keeps instances in their slots and fills holes", () => {
    const a = { id: "a", address: "10.0.0.1", port: 1 };
    const b = { id: "b", address: "10.0.0.2", port: 1 };
    const c = { id: "c", address: "10.0.0.3", port: 1 };
    const first = assignSlots(undefined, [a, b]);
    expect(first).toHaveLength(8);
    const second = assignSlots(first, [b, c]);
    expect(second.slice(0, 2)).toEqual([{ name: "s1", instance: c }, { name: "s2", instance: b }]);
  });
  it("grows by blocks of 8 and never shrinks", () => {
    const many = Array.from({ length: 9 }, (_, n) => ({ id: `i${n}`, address: "10.0.0.1", port: n + 1 }));
    const grown = assignSlots(assignSlots(undefined, []), many);
    expect(grown).toHaveLength(16);
    expect(assignSlots(grown, [])).toHaveLength(16);
  });
  it("trusts every current root", () => {
    const roots = fixture<CaRoots>("ca-roots");
    const two = { ...roots, Roots: [...roots.Roots!, { ...roots.Roots![0]!, ID: "old", Active: false }] };
    expect(rootsPem(two).match(/BEGIN CERTIFICATE/g)).toHaveLength(2);
  });
});

describe("renderHaproxyConfig", () => {
  const web = renderHaproxyConfig(buildDesiredState(snapshotFor("agent-service-web-sidecar-proxy", { upstream_db: dbInstances() }), paths));

  it("hands the authorizer the trust domain before loading it, so it runs no query of its own", () => {
    const trustDomain = fixture<CaRoots>("ca-roots").TrustDomain;
    const setenv = web.indexOf(`setenv CONNECT_TRUST_DOMAIN ${trustDomain}\n`);
    expect(setenv).toBeGreaterThan(0);
    expect(setenv).toBeLessThan(web.indexOf("lua-load "));
  });

  it("runs one thread and 64 kB buffers (the shared Lua state; request headers as large as Envoy takes)", () => {
    const global = web.slice(web.indexOf("global\n"), web.indexOf("\ndefaults\n"));
    expect(global).toContain("\n    nbthread 1\n");
    expect(global).toContain("\n    tune.bufsize 65536\n");
  });

  it("renders an authorized mTLS public listener forwarding to the local app", () => {
    expect(web).toContain("bind 0.0.0.0:21000 ssl crt /run/ch/certs/leaf.pem ca-file /run/ch/certs/roots.pem verify required");
    expect(web).toContain("tcp-request inspect-delay 5s");
    expect(web).toContain("tcp-request content lua.connect_authorize web");
    expect(web).toContain("tcp-request content reject unless { var(txn.connect_allowed) -m bool }");
    expect(web).toMatch(/log-format .*%\[var\(txn\.connect_spiffe\)\].*txn\.connect_allowed.*txn\.connect_reason/);
    expect(web).toContain("server app 127.0.0.1:8080");
    expect(web).toContain("lua-load /opt/connect-haproxy/dist/connect-haproxy.lua");
    expect(web).toContain("stats socket /run/ch/stats.sock mode 600 level admin");
  });

  it("renders each upstream with pre-allocated mTLS slots holding the healthy instances", () => {
    expect(web).toContain("bind 127.0.0.1:9191");
    expect(web).toContain("server s1 127.0.0.1:21001 ssl crt /run/ch/certs/leaf.pem ca-file /run/ch/certs/roots.pem verify required no-ssl-reuse\n");
    expect(web).toContain("server s2 127.0.0.1:21002 ssl crt");
    expect(web).toMatch(/server s8 127\.0\.0\.1:1 ssl crt .* disabled/);
    expect(web).toContain("balance roundrobin");
  });

  it("checks the upstream server's identity on every TCP connection before a response byte is forwarded", () => {
    const backend = web.slice(web.indexOf("\nbackend upstream_db\n"));
    expect(backend).toMatch(
      /timeout connect \d+ms\n    tcp-response inspect-delay 5s\n    tcp-response content lua\.connect_verify_upstream db\n    tcp-response content reject unless \{ var\(txn\.connect_upstream_ok\) -m bool \}\n    server s1 /,
    );
    expect(web).not.toContain("http-response");
  });

  it("never writes a token or a private key into the configuration", () => {
    expect(web).not.toMatch(/PRIVATE KEY|token/i);
  });

  it("renders HTTP mode with http-request authorization and Consul's timeouts", () => {
    const api = renderHaproxyConfig(buildDesiredState(snapshotFor("agent-service-api-sidecar-proxy"), paths));
    expect(api).toContain("bind 127.0.0.1:21500 ssl crt");
    expect(api).toContain("http-request lua.connect_authorize api");
    expect(api).toContain("http-request deny deny_status 403 unless { var(txn.connect_allowed) -m bool }");
    expect(api).not.toContain("tcp-request content lua.connect_authorize");
    // The path is normalized before the decision, so the path matched is the path forwarded.
    const publicListener = api.slice(api.indexOf("frontend public_listener"), api.indexOf("backend local_app"));
    expect(publicListener.indexOf("normalize-uri path-strip-dotdot full")).toBeGreaterThan(0);
    expect(publicListener.indexOf("normalize-uri percent-decode-unreserved strict")).toBeLessThan(publicListener.indexOf("normalize-uri path-strip-dotdot full"));
    expect(publicListener.indexOf("normalize-uri path-strip-dotdot full")).toBeLessThan(publicListener.indexOf("lua.connect_authorize"));
    expect(api).toContain("    expose-experimental-directives");
    expect(api).toContain("timeout connect 2500ms");
    expect(api).toContain("timeout server 30000ms");
    expect(api).toContain("server app 127.0.0.2:7000");
    expect(api).toMatch(/backend upstream_web\n    mode http\n    balance roundrobin\n    timeout connect 1500ms\n    http-reuse always\n/);
    // Peers' pooled connections are dropped by their pool, not by this listener under a request in flight.
    expect(publicListener).toContain("    timeout http-keep-alive 1h\n");
    expect(api).toContain("bind 127.0.0.3:9393");
    expect(api).toContain("frontend upstream_query_db-query");
  });

  it("logs only refusals and failures without AccessLogs (Envoy logs nothing then), every request with them", () => {
    const state = buildDesiredState(snapshotFor("agent-service-api-sidecar-proxy"), paths);
    const defaults = (config: string) => config.slice(config.indexOf("\ndefaults\n"), config.indexOf("\n\n", config.indexOf("\ndefaults\n")));
    expect(defaults(renderHaproxyConfig(state))).toContain("    option dontlog-normal");
    expect(renderHaproxyConfig({ ...state, accessLog: planAccessLog({ Enabled: true }) })).not.toContain("dontlog-normal");
  });

  it("checks the upstream server's identity on every HTTP response, except for prepared queries", () => {
    const api = renderHaproxyConfig(buildDesiredState(snapshotFor("agent-service-api-sidecar-proxy"), paths));
    const webBackend = api.slice(api.indexOf("\nbackend upstream_web\n"), api.indexOf("\n\n", api.indexOf("\nbackend upstream_web\n")));
    expect(webBackend).toContain(
      "    http-response set-var(txn.connect_upstream_ok) int(1) if { ssl_s_sha1,hex,map(/run/ch/server-passes.map) -m str web }\n" +
        "    http-response lua.connect_verify_upstream web unless { var(txn.connect_upstream_ok) -m found }\n" +
        "    http-response deny unless { var(txn.connect_upstream_ok) -m bool }\n",
    );
    expect(webBackend).not.toContain("tcp-response");
    const queryBackend = api.slice(api.indexOf("\nbackend upstream_query_db-query\n"));
    expect(queryBackend).toMatch(/^\nbackend upstream_query_db-query\n[^]*server s1 /);
    expect(queryBackend).not.toMatch(/connect_verify_upstream/);
  });

  describe("without authorization (the benchmark's plain pair)", () => {
    // The lines of the Lua authorizer, and nothing else.
    const authorizerLine = (line: string) =>
      /^    (setenv CONNECT_(TRUST_DOMAIN|PASS_MAP|SERVER_PASS_MAP|NATIVE_L7_RULES|DECISION_LOG) |lua-load |(tcp|http)-(request|response) .*(connect_authorize|connect_allowed|connect_pass|connect_verify_upstream|connect_upstream_ok)|tcp-(request|response) inspect-delay )/.test(line);
    const trustDomain = fixture<CaRoots>("ca-roots").TrustDomain;
    const lua = "    lua-load /opt/connect-haproxy/dist/connect-haproxy.lua";

    it.each([
      [
        "TCP, one service upstream",
        "agent-service-web-sidecar-proxy",
        [
          `    setenv CONNECT_TRUST_DOMAIN ${trustDomain}`,
          "    setenv CONNECT_DECISION_LOG frontend",
          lua,
          "    tcp-request inspect-delay 5s",
          "    tcp-request content lua.connect_authorize web",
          "    tcp-request content reject unless { var(txn.connect_allowed) -m bool }",
          "    tcp-response inspect-delay 5s",
          "    tcp-response content lua.connect_verify_upstream db",
          "    tcp-response content reject unless { var(txn.connect_upstream_ok) -m bool }",
        ],
      ],
      [
        "HTTP, service and prepared-query upstreams",
        "agent-service-api-sidecar-proxy",
        [
          `    setenv CONNECT_TRUST_DOMAIN ${trustDomain}`,
          "    setenv CONNECT_PASS_MAP /run/ch/passes.map",
          "    setenv CONNECT_NATIVE_L7_RULES none",
          "    setenv CONNECT_SERVER_PASS_MAP /run/ch/server-passes.map",
          "    setenv CONNECT_DECISION_LOG frontend",
          lua,
          "    http-request set-var(txn.connect_pass_until) var(sess.connect_pass_key),map_str_int(/run/ch/passes.map)",
          "    http-request set-var(txn.connect_allowed) int(1) if { date,neg,add(txn.connect_pass_until) gt 0 } { path -m beg / } !{ path -m sub % \\\\ }",
          "    http-request set-var(txn.connect_reason) var(sess.connect_pass_reason) if { var(txn.connect_allowed) -m found }",
          "    http-request set-var(txn.connect_spiffe) var(sess.connect_spiffe) if { var(txn.connect_allowed) -m found }",
          "    http-request lua.connect_authorize api unless { var(txn.connect_allowed) -m found }",
          "    http-request deny deny_status 403 unless { var(txn.connect_allowed) -m bool }",
          "    http-response set-var(txn.connect_upstream_ok) int(1) if { ssl_s_sha1,hex,map(/run/ch/server-passes.map) -m str web }",
          "    http-response lua.connect_verify_upstream web unless { var(txn.connect_upstream_ok) -m found }",
          "    http-response deny unless { var(txn.connect_upstream_ok) -m bool }",
          "    tcp-response inspect-delay 5s",
          "    tcp-response content lua.connect_verify_upstream db",
          "    tcp-response content reject unless { var(txn.connect_upstream_ok) -m bool }",
        ],
      ],
    ])("differs from the full render by exactly the authorizer's lines (%s)", (_, proxy, authorizerLines) => {
      const state = buildDesiredState(snapshotFor(proxy, { upstream_db: dbInstances() }), paths);
      // The authorizer's control service is one frontend of its own.
      const controlFrontend = "frontend connect_control\n    mode http\n    bind unix@/run/ch/control.sock mode 600\n    no log\n    http-request use-service lua.connect_control\n";
      const fullText = renderHaproxyConfig(state);
      expect(fullText).toContain(controlFrontend);
      const full = fullText.replace(`\n${controlFrontend}`, "").split("\n");
      const plain = renderHaproxyConfig(state, { authorization: false }).split("\n");
      expect(full.filter(authorizerLine)).toEqual(authorizerLines);
      expect(plain).toEqual(full.filter((line) => !authorizerLine(line)));
      expect(plain.join("\n")).not.toMatch(/lua|connect_(authorize|verify_upstream|allowed\) -m|upstream_ok|pass)|CONNECT_(TRUST_DOMAIN|PASS_MAP|SERVER_PASS_MAP|NATIVE_L7_RULES|DECISION_LOG)|inspect-delay|ssl_s_sha1/);
    });
  });

  it("is accepted by haproxy -c (with a stand-in for the Lua actions; without authorization, with no Lua)", async () => {
    const dir = mkdtempSync(join(tmpdir(), "ch-render-"));
    const local = {
      ...paths,
      configFile: join(dir, "haproxy.cfg"),
      leafCertificateFile: join(dir, "leaf.pem"),
      caRootsFile: join(dir, "roots.pem"),
      statsSocket: join(dir, "stats.sock"),
      passMap: join(dir, "passes.map"),
      serverPassMap: join(dir, "server-passes.map"),
      masterSocket: join(dir, "master.sock"),
      luaBundle: join(dir, "stub.lua"),
    };
    writeFileSync(
      local.luaBundle,
      'core.register_action("connect_authorize", {"tcp-req", "http-req"}, function(txn) end, 1)\n' +
        'core.register_action("connect_verify_upstream", {"tcp-res", "http-res"}, function(txn) end, 1)\n' +
        'core.register_service("connect_control", "http", function(applet) end)\n',
    );
    for (const proxy of ["agent-service-web-sidecar-proxy", "agent-service-api-sidecar-proxy"]) {
      const state = buildDesiredState(snapshotFor(proxy, { upstream_db: dbInstances() }), local);
      writeFileSync(local.leafCertificateFile, state.leafCertificatePem, { mode: 0o600 });
      writeFileSync(local.caRootsFile, state.caRootsPem);
      writeFileSync(local.passMap, "");
      writeFileSync(local.serverPassMap, "");
      writeFileSync(local.configFile, renderHaproxyConfig(state));
      await checkHaproxyConfig(local.configFile);
      // No Lua loaded at all: nothing in the plain render may refer to it.
      writeFileSync(local.configFile, renderHaproxyConfig(state, { authorization: false }));
      await checkHaproxyConfig(local.configFile);
    }
  });
});
