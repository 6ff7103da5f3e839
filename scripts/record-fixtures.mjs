#!/usr/bin/env node
// Records the Consul replies the controller's unit tests render from, from a
// REAL `consul agent -dev` (CONSUL_BIN), into test/fixtures/consul/*.json.
// Usage: CONSUL_BIN=/path/to/consul node scripts/record-fixtures.mjs
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
// The test harness's Consul dev agent (npm run build compiles it to dist/test/harness).
import { consulBinary, startConsulDev } from "../dist/test/harness/consul.js";
import { sleep } from "../dist/test/harness/processes.js";

try {
  consulBinary();
} catch {
  console.error("record-fixtures: set CONSUL_BIN to a consul binary");
  process.exit(2);
}
const outDir = new URL("../test/fixtures/consul/", import.meta.url).pathname;
mkdirSync(outDir, { recursive: true });

// The node name and datacenter are in the recorded replies (instance IDs are node/service).
const agent = await startConsulDev({ nodeName: "fixture-node", config: { datacenter: "dc1" } });
const call = (method, path, body) => agent.api(method, path, body);

async function record(name, path, body) {
  const method = body === undefined ? "GET" : "POST";
  const res = await agent.fetch(method, path, body);
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  const fixture = {
    request: path,
    ...(body === undefined ? {} : { method, requestBody: body }),
    status: res.status,
    headers: Object.fromEntries(["x-consul-index", "x-consul-contenthash"].filter((h) => res.headers.has(h)).map((h) => [h, res.headers.get(h)])),
    body: text ? JSON.parse(text) : null,
  };
  writeFileSync(join(outDir, `${name}.json`), JSON.stringify(fixture, null, 2) + "\n");
  console.log(`recorded ${name}.json  <- ${method} ${path}`);
}

try {
  // db: a TCP service with a plain sidecar.
  await call("PUT", "/v1/agent/service/register", {
    Name: "db", ID: "db-1", Port: 9001, Address: "127.0.0.1",
    Connect: { SidecarService: { Port: 21001 } },
  });
  // A second db instance on another "node address" (empty Service.Address).
  await call("PUT", "/v1/agent/service/register", {
    Name: "db", ID: "db-2", Port: 9002,
    Connect: { SidecarService: { Port: 21002, Address: "" } },
  });
  // web: TCP, one upstream to db on a local port.
  await call("PUT", "/v1/agent/service/register", {
    Name: "web", ID: "web-1", Port: 8080,
    Connect: { SidecarService: { Port: 21000, Proxy: { Upstreams: [{ DestinationName: "db", LocalBindPort: 9191 }] } } },
  });
  // api: HTTP, overridden bind, custom timeouts, a service upstream in another
  // datacenter and a prepared-query upstream.
  await call("POST", "/v1/query", { Name: "db-query", Service: { Service: "db", Connect: true } });
  await call("PUT", "/v1/agent/service/register", {
    Name: "api", ID: "api-1", Port: 7000,
    Connect: {
      SidecarService: {
        Port: 21003,
        Proxy: {
          LocalServiceAddress: "127.0.0.2",
          Config: { protocol: "http", bind_address: "127.0.0.1", bind_port: 21500, local_connect_timeout_ms: 2500, local_request_timeout_ms: 30000 },
          Upstreams: [
            { DestinationName: "web", LocalBindPort: 9292, Config: { protocol: "http", connect_timeout_ms: 1500 } },
            { DestinationName: "db", Datacenter: "dc1", LocalBindAddress: "127.0.0.3", LocalBindPort: 9393 },
            { DestinationType: "prepared_query", DestinationName: "db-query", LocalBindPort: 9494 },
          ],
        },
      },
    },
  });
  await call("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
  await call("PUT", "/v1/connect/intentions/exact?source=*&destination=db", { Action: "deny" });
  // Let health checks of the sidecars settle into a known state.
  await sleep(1500);

  await record("agent-services", "/v1/agent/services");
  await record("agent-service-web-sidecar-proxy", "/v1/agent/service/web-1-sidecar-proxy");
  await record("agent-service-db-sidecar-proxy", "/v1/agent/service/db-1-sidecar-proxy");
  await record("agent-service-api-sidecar-proxy", "/v1/agent/service/api-1-sidecar-proxy");
  await record("ca-roots", "/v1/agent/connect/ca/roots");
  await record("leaf-web", "/v1/agent/connect/ca/leaf/web");
  await record("leaf-db", "/v1/agent/connect/ca/leaf/db");
  // Sidecar health checks are TCP checks on ports nobody listens on: ask for all instances.
  await record("health-connect-db", "/v1/health/connect/db");
  await record("query-db-query-execute", "/v1/query/db-query/execute?connect=true");
  await record("intentions-match-db", "/v1/connect/intentions/match?by=destination&name=db");

  // Discovery chains, recorded after everything above so those replies stay as
  // they were. db has no config entry: the default TCP chain, then with an
  // upstream's overrides.
  await record("chain-db", "/v1/discovery-chain/db");
  await record("chain-db-overrides", "/v1/discovery-chain/db?compile-dc=dc1", { OverrideConnectTimeout: "1500ms", OverrideProtocol: "tcp" });
  // billing (HTTP): two subsets by metadata, a backup service to fail over to.
  for (const [id, version, port] of [["billing-v1", "v1", 9101], ["billing-v2", "v2", 9102]]) {
    await call("PUT", "/v1/agent/service/register", { Name: "billing", ID: id, Port: port, Meta: { version }, Connect: { SidecarService: { Port: port + 12000 } } });
  }
  await call("PUT", "/v1/agent/service/register", { Name: "billing-backup", ID: "billing-backup-1", Port: 9103, Connect: { SidecarService: { Port: 21103 } } });
  const entry = (body) => call("PUT", "/v1/config", body);
  await entry({ Kind: "service-defaults", Name: "billing", Protocol: "http" });
  await entry({ Kind: "service-defaults", Name: "billing-backup", Protocol: "http" });
  await entry({ Kind: "service-defaults", Name: "billing-admin", Protocol: "http" });
  await entry({
    Kind: "service-resolver", Name: "billing", DefaultSubset: "v1",
    Subsets: { v1: { Filter: "Service.Meta.version == v1" }, v2: { Filter: "Service.Meta.version == v2", OnlyPassing: true } },
    ConnectTimeout: "3s", RequestTimeout: "10s",
    Failover: { "*": { Targets: [{ Service: "billing-backup" }] } },
    LoadBalancer: { Policy: "ring_hash", RingHashConfig: { MinimumRingSize: 1024 }, HashPolicies: [{ Field: "header", FieldValue: "x-user" }, { SourceIP: true, Terminal: true }] },
  });
  await record("chain-billing-resolver", "/v1/discovery-chain/billing");
  await record("health-connect-billing-v1", `/v1/health/connect/billing?filter=${encodeURIComponent("Service.Meta.version == v1")}`);
  await entry({
    Kind: "service-splitter", Name: "billing",
    Splits: [
      { Weight: 66.67, ServiceSubset: "v1", RequestHeaders: { Set: { "x-split": "v1" } } },
      { Weight: 33.33, ServiceSubset: "v2", ResponseHeaders: { Add: { "x-from": "v2" }, Remove: ["server"] } },
    ],
  });
  await record("chain-billing-splitter", "/v1/discovery-chain/billing");
  await entry({
    Kind: "service-router", Name: "billing",
    Routes: [
      {
        Match: { HTTP: {
          PathPrefix: "/admin",
          Header: [{ Name: "x-debug", Present: true }, { Name: "x-env", Exact: "prod", Invert: true }, { Name: "x-team", Prefix: "pay" }, { Name: "x-zone", Suffix: "-1" }, { Name: "x-id", Regex: "[0-9]+" }],
          QueryParam: [{ Name: "q", Exact: "1" }, { Name: "p", Present: true }, { Name: "r", Regex: "a.*" }],
          Methods: ["GET", "POST"],
        } },
        Destination: {
          Service: "billing-admin", PrefixRewrite: "/", RequestTimeout: "2s", IdleTimeout: "30s",
          NumRetries: 3, RetryOnConnectFailure: true, RetryOnStatusCodes: [503, 502], RetryOn: ["reset", "5xx"],
          RequestHeaders: { Add: { "x-a": "1" }, Set: { "x-s": "2" }, Remove: ["x-r"] }, ResponseHeaders: { Set: { "x-resp": "y" } },
        },
      },
      { Match: { HTTP: { PathExact: "/Exact", CaseInsensitive: true } }, Destination: { ServiceSubset: "v2" } },
      { Match: { HTTP: { PathRegex: "/re/[0-9]+" } }, Destination: { Service: "billing" } },
    ],
  });
  await record("chain-billing-router", "/v1/discovery-chain/billing");
  // A resolver that redirects (compiled away) and one per load-balancing policy.
  await entry({ Kind: "service-defaults", Name: "billing-old", Protocol: "http" });
  await entry({ Kind: "service-resolver", Name: "billing-old", Redirect: { Service: "billing", ServiceSubset: "v2" } });
  await record("chain-billing-old-redirect", "/v1/discovery-chain/billing-old");
  await entry({ Kind: "service-defaults", Name: "ledger", Protocol: "http" });
  await entry({ Kind: "service-resolver", Name: "ledger", LoadBalancer: { Policy: "maglev", HashPolicies: [{ Field: "cookie", FieldValue: "session", CookieConfig: { Path: "/" } }, { Field: "query_parameter", FieldValue: "user" }] } });
  await record("chain-ledger-maglev", "/v1/discovery-chain/ledger");
  await entry({ Kind: "service-resolver", Name: "db", LoadBalancer: { Policy: "least_request", LeastRequestConfig: { ChoiceCount: 3 } }, ConnectTimeout: "2s" });
  await record("chain-db-least-request", "/v1/discovery-chain/db");
} finally {
  await agent.stop();
}
