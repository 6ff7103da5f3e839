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

async function record(name, path) {
  const res = await agent.fetch("GET", path);
  const text = await res.text();
  if (!res.ok) throw new Error(`GET ${path}: ${res.status} ${text}`);
  const fixture = {
    request: path,
    status: res.status,
    headers: Object.fromEntries(["x-consul-index", "x-consul-contenthash"].filter((h) => res.headers.has(h)).map((h) => [h, res.headers.get(h)])),
    body: text ? JSON.parse(text) : null,
  };
  writeFileSync(join(outDir, `${name}.json`), JSON.stringify(fixture, null, 2) + "\n");
  console.log(`recorded ${name}.json  <- GET ${path}`);
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
} finally {
  await agent.stop();
}
