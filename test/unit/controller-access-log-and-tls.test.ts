// The pure translations of proxy-defaults AccessLogs and the mesh entry's TLS.
// The rendered log-formats run on real HAProxy in
// test/integration/access-logs-and-mesh-tls.test.ts.
import { describe, expect, it } from "vitest";
import { accessLogFrontendLines, consulDefaultJsonFormat, planAccessLog, translateFormat } from "../../controller/access-log.js";
import { meshTlsGlobalLines, planMeshTls } from "../../controller/mesh-tls.js";

describe("access logs (proxy-defaults AccessLogs)", () => {
  it("is off unless Enabled (the built-in traffic line stays)", () => {
    expect(planAccessLog(undefined)).toBeUndefined();
    expect(planAccessLog(null)).toBeUndefined();
    expect(planAccessLog({ Enabled: false, Type: "file", Path: "/x" })).toBeUndefined();
  });

  it("uses Consul's default JSON format when none is given, plus the client, the verdict and the reason", () => {
    const log = planAccessLog({ Enabled: true })!;
    expect(log.sink).toEqual({ kind: "stdout" });
    const keys = [...log.http.format.matchAll(/"([a-z_]+)":/g)].map((m) => m[1]);
    expect(keys).toEqual([...Object.keys(consulDefaultJsonFormat), "downstream_peer_uri_san", "connect_verdict", "connect_reason"]);
    expect(log.http.format).toContain('"downstream_peer_uri_san":"%[var(txn.connect_spiffe),json(utf8s)]"');
    expect(log.http.format).toContain('"connect_verdict":"%[var(txn.connect_allowed),iif(allow,deny)]"');
    expect(log.http.format).toContain('"connect_reason":"%[var(txn.connect_reason),json(utf8s)]"');
    // One warning per operator HAProxy cannot give, named once (not once per mode).
    expect(log.warnings.filter((w) => w.includes("not supported"))).toEqual([
      'access logs: %ROUTE_NAME%: not supported by connect-haproxy; logged as "-"',
      'access logs: %RESPONSE_CODE_DETAILS%: not supported by connect-haproxy; logged as "-"',
      'access logs: %CONNECTION_TERMINATION_DETAILS%: not supported by connect-haproxy; logged as "-"',
      'access logs: %UPSTREAM_TRANSPORT_FAILURE_REASON%: not supported by connect-haproxy; logged as "-"',
    ]);
    expect(log.warnings.some((w) => w.includes("%RESPONSE_FLAGS%: HAProxy's two-letter termination state"))).toBe(true);
  });

  it.each([
    ["%START_TIME%", "http", '"%[var(txn.connect_start),div(1000),utime(%Y-%m-%dT%H:%M:%S)].%[var(txn.connect_start),mod(1000),add(1000),json,bytes(1,3)]Z"'],
    ["%START_TIME%", "tcp", '"%[var(sess.connect_start),div(1000),utime(%Y-%m-%dT%H:%M:%S)].%[var(sess.connect_start),mod(1000),add(1000),json,bytes(1,3)]Z"'],
    ["%DOWNSTREAM_REMOTE_ADDRESS%", "http", '"%ci:%cp"'],
    ["%DOWNSTREAM_PEER_URI_SAN%", "tcp", '"%[var(txn.connect_spiffe),json(utf8s)]"'],
    ["%UPSTREAM_CLUSTER%", "tcp", '"%b"'],
    ["%UPSTREAM_HOST%", "http", '"%si:%sp"'],
    ["%REQ(:METHOD)%", "http", '"%HM"'],
    ["%REQ(:METHOD)%", "tcp", '"-"'],
    ["%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%", "http", '"%[capture.req.uri,json(utf8s)]"'],
    ["%REQ(:PATH)%", "http", '"%[capture.req.uri,json(utf8s)]"'],
    ["%PROTOCOL%", "http", '"%HV"'],
    ["%PROTOCOL%", "tcp", '"-"'],
    // A value that is exactly one numeric operator is a JSON number, as Envoy logs it.
    ["%RESPONSE_CODE%", "http", "%ST"],
    ["%RESPONSE_CODE%", "tcp", "0"],
    ["%RESPONSE_FLAGS%", "tcp", '"%ts"'],
    ["%BYTES_RECEIVED%", "http", "%U"],
    ["%BYTES_SENT%", "tcp", "%B"],
    ["%DURATION%", "http", "%Ta"],
    ["%DURATION%", "tcp", "%Tt"],
    ["%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%", "http", "%Tr"],
    ["took %DURATION% ms", "http", '"took %Ta ms"'],
    ["%REQ(USER-AGENT)%", "http", '"%[capture.req.hdr(0),json(utf8s)]"'],
    ["%RESP(CONTENT-TYPE)%", "http", '"%[capture.res.hdr(0),json(utf8s)]"'],
    ["%NOT_AN_OPERATOR%", "http", '"-"'],
  ] as const)("translates %s in %s mode to %s", (operator, mode, expected) => {
    const translated = translateFormat({ json: { v: operator, downstream_peer_uri_san: "x", connect_verdict: "x", connect_reason: "x" } }, mode);
    expect(translated.format.slice(0, translated.format.indexOf(',"downstream_peer_uri_san"'))).toBe(`{"v":${expected}`);
  });

  it("escapes literal text for JSON and doubles % for HAProxy", () => {
    const { format } = translateFormat({ json: { 'a"b': 'x\\y 100% "%PROTOCOL%"', n: 5, nested: { t: true } } }, "http");
    expect(format).toMatch(/^\{"a\\"b":"x\\\\y 100%% \\"%HV\\"","n":5,"nested":\{"t":true\},/);
  });

  it("captures each header once, with Envoy's length limit", () => {
    const translated = translateFormat({ json: { a: "%REQ(:AUTHORITY)%", b: "%REQ(X-REQUEST-ID):16%", c: "%REQ(Host)%" } }, "http");
    expect(translated.requestHeaders).toEqual([{ name: "host", length: 256 }, { name: "x-request-id", length: 16 }]);
    const log = { sink: { kind: "stdout" as const }, http: translated, tcp: translated, listenerLogs: false, warnings: [] };
    // In the order HAProxy runs them (it warns otherwise): the tcp-request level rule, then the http-request captures.
    expect(accessLogFrontendLines(log, "http", false)).toEqual([
      "no log",
      "log stdout len 8192 format raw local0 err",
      "tcp-request content set-log-level err",
      "http-request capture req.hdr(host) len 256",
      "http-request capture req.hdr(x-request-id) len 16",
      expect.stringMatching(/^log-format '\{/),
    ]);
  });

  it("renders a text format as text, with the client, the verdict and the reason appended", () => {
    const log = planAccessLog({ Enabled: true, Type: "stderr", TextFormat: "[%START_TIME%] %REQ(:METHOD)% %RESPONSE_CODE% %BYTES_SENT%\n" })!;
    expect(log.sink).toEqual({ kind: "stderr" });
    expect(log.http.format).toBe(
      "[%[var(txn.connect_start),div(1000),utime(%Y-%m-%dT%H:%M:%S)].%[var(txn.connect_start),mod(1000),add(1000),json,bytes(1,3)]Z] %HM %ST %B" +
        " client=%[var(txn.connect_spiffe)] verdict=%[var(txn.connect_allowed),iif(allow,deny)] reason=%{+Q}[var(txn.connect_reason)]",
    );
    expect(log.tcp.format).toMatch(/\] - 0 %B client=/);
  });

  it("logs to a file, and says what it cannot honour", () => {
    const log = planAccessLog({ Enabled: true, Type: "file", Path: "/var/log/envoy.log", DisableListenerLogs: true, JSONFormat: '{"c":"%DOWNSTREAM_PEER_URI_SAN%","v":"%CONNECT_VERDICT%","r":"%CONNECT_REASON%"}' })!;
    expect(log.sink).toEqual({ kind: "file", path: "/var/log/envoy.log" });
    // The format logs the connect fields itself: nothing is appended.
    expect(log.http.format).toBe('{"c":"%[var(txn.connect_spiffe),json(utf8s)]","v":"%[var(txn.connect_allowed),iif(allow,deny)]","r":"%[var(txn.connect_reason),json(utf8s)]"}');
    expect(log.warnings).toEqual([expect.stringMatching(/^access logs: DisableListenerLogs: failures before a request .* are not logged, nor are requests HAProxy refuses before reading them whole/)]);
    // The file is HAProxy's fd 3; without listener logs, failures before any rule stay at info, below the logger's err.
    expect(accessLogFrontendLines(log, "tcp", true)).toEqual(["no log", "log fd@3 len 8192 format raw local0 err", "tcp-request content set-log-level err", `log-format '${log.tcp.format}'`]);
  });

  it("logs TLS handshake failures on the public listener unless DisableListenerLogs, with the connection's start", () => {
    const log = planAccessLog({ Enabled: true, JSONFormat: '{"t":"%START_TIME%"}' })!;
    const lines = accessLogFrontendLines(log, "http", true);
    expect(lines.slice(0, 6)).toEqual([
      "tcp-request connection set-var(sess.connect_start) date(0,ms)",
      "no log",
      "log stdout len 8192 format raw local0 err",
      "tcp-request content set-log-level err",
      "option log-separate-errors",
      "http-request set-var(txn.connect_start) date(0,ms)",
    ]);
    expect(lines.find((l) => l.startsWith("error-log-format"))).toContain("var(sess.connect_start)");
    expect(lines).toContain("option log-separate-errors");
    expect(accessLogFrontendLines(log, "http", false).some((l) => l.startsWith("error-log-format"))).toBe(false);
  });

  it("falls back with a warning on a bad JSONFormat, an unknown Type, or a file without a Path", () => {
    expect(planAccessLog({ Enabled: true, JSONFormat: "[1]" })!.warnings[0]).toMatch(/JSONFormat is not a JSON object .*default JSON format is used/);
    expect(planAccessLog({ Enabled: true, Type: "syslog" })!.warnings[0]).toBe('access logs: unknown Type "syslog"; logging to stdout');
    const withoutPath = planAccessLog({ Enabled: true, Type: "file" })!;
    expect(withoutPath.sink).toEqual({ kind: "stdout" });
    expect(withoutPath.warnings[0]).toBe('access logs: Type "file" without a Path; logging to stdout');
  });
});

describe("mesh TLS (the mesh config entry)", () => {
  it("uses Envoy's defaults without a mesh entry: incoming TLS 1.2-1.3 (server), outgoing 1.2-1.2 (client)", () => {
    const tls = planMeshTls(null);
    expect(tls.warnings).toEqual([]);
    expect(meshTlsGlobalLines(tls)).toEqual(["ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3", "ssl-default-server-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2"]);
  });

  it("applies versions per direction; TLS_AUTO is the default; a maximum below the minimum is raised, with a warning", () => {
    const tls = planMeshTls({ Kind: "mesh", Name: "mesh", TLS: { Incoming: { TLSMinVersion: "TLSv1_3" }, Outgoing: { TLSMinVersion: "TLSv1_3", TLSMaxVersion: "TLS_AUTO" } } });
    expect(tls.incoming).toEqual({ minVersion: "TLSv1.3", maxVersion: "TLSv1.3" });
    expect(tls.outgoing).toEqual({ minVersion: "TLSv1.3", maxVersion: "TLSv1.3" });
    expect(tls.warnings).toEqual([]);
    const inverted = planMeshTls({ Kind: "mesh", TLS: { Outgoing: { TLSMinVersion: "TLSv1_3", TLSMaxVersion: "TLSv1_2" } } });
    expect(inverted.outgoing).toEqual({ minVersion: "TLSv1.3", maxVersion: "TLSv1.3" });
    expect(inverted.warnings).toEqual(["mesh TLS.Outgoing: TLSMaxVersion TLSv1_2 is below TLSMinVersion TLSv1_3; TLSv1.3 is used for both"]);
  });

  it("maps Consul's cipher suite names to OpenSSL's and warns about the rest", () => {
    const tls = planMeshTls({
      Kind: "mesh",
      Name: "mesh",
      TLS: { Outgoing: { TLSMaxVersion: "TLSv1_2", CipherSuites: ["TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384", "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256", "TLS_AES_128_GCM_SHA256"], ECDHCurves: ["P-256"] } },
    });
    expect(meshTlsGlobalLines(tls)).toEqual([
      "ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.3",
      "ssl-default-server-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2",
      "ssl-default-server-ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-CHACHA20-POLY1305",
    ]);
    expect(tls.warnings).toEqual([
      "mesh TLS.Outgoing.ECDHCurves is not supported by connect-haproxy; ignored",
      'mesh TLS.Outgoing.CipherSuites "TLS_AES_128_GCM_SHA256" is not a cipher suite Consul configures for Envoy; left out',
    ]);
  });

  it("never goes below TLS 1.2, and names versions it does not know", () => {
    const tls = planMeshTls({ Kind: "mesh", Name: "mesh", TLS: { Incoming: { TLSMinVersion: "TLSv1_0", TLSMaxVersion: "TLSv9" } } });
    expect(tls.incoming).toEqual({ minVersion: "TLSv1.2", maxVersion: "TLSv1.3" });
    expect(tls.warnings).toEqual([
      expect.stringMatching(/^mesh TLS\.Incoming\.TLSMinVersion TLSv1_0: below TLS 1\.2 is not offered/),
      'mesh TLS.Incoming.TLSMaxVersion "TLSv9" is not a TLS version Consul knows; the default is used',
    ]);
  });
});
