#!/usr/bin/env node
// Records the Consul replies the controller's unit tests render from, from a
// REAL `consul agent -dev` (CONSUL_BIN), into test/fixtures/consul/*.json.
// Usage: CONSUL_BIN=/path/to/consul node scripts/record-fixtures.mjs
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync, mkdirSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";

const consulBin = process.env.CONSUL_BIN;
if (!consulBin) {
  console.error("record-fixtures: set CONSUL_BIN to a consul binary");
  process.exit(2);
}
const outDir = new URL("../test/fixtures/consul/", import.meta.url).pathname;
mkdirSync(outDir, { recursive: true });

const freePort = () =>
  new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });

const [http, serfLan, serfWan, server] = [await freePort(), await freePort(), await freePort(), await freePort()];
const dataDir = mkdtempSync(join(tmpdir(), "ch-record-"));
writeFileSync(
  join(dataDir, "agent.json"),
  JSON.stringify({
    node_name: "fixture-node",
    datacenter: "dc1",
    bind_addr: "127.0.0.1",
    client_addr: "127.0.0.1",
    advertise_addr: "127.0.0.1",
    log_level: "warn",
    ports: { http, dns: -1, serf_lan: serfLan, serf_wan: serfWan, server, grpc: -1, grpc_tls: -1 },
  }),
);
const agent = spawn(consulBin, ["agent", "-dev", "-config-file", join(dataDir, "agent.json")], { stdio: "ignore" });
const base = `http://127.0.0.1:${http}`;

async function call(method, path, body) {
  const res = await fetch(base + path, { method, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await res.text();
  if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
  return { res, text };
}

async function record(name, path) {
  const { res, text } = await call("GET", path);
  const fixture = {
    request: path,
    status: res.status,
    headers: Object.fromEntries(["x-consul-index", "x-consul-contenthash"].filter((h) => res.headers.has(h)).map((h) => [h, res.headers.get(h)])),
    body: text ? JSON.parse(text) : null,
  };
  writeFileSync(join(outDir, `${name}.json`), JSON.stringify(fixture, null, 2) + "\n");
  console.log(`recorded ${name}.json  <- GET ${path}`);
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
try {
  for (let i = 0; ; i++) {
    try {
      const { text } = await call("GET", "/v1/agent/connect/ca/roots");
      if (JSON.parse(text).Roots?.length) break;
    } catch {}
    if (i > 300) throw new Error("consul did not come up");
    await sleep(100);
  }

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
  agent.kill("SIGTERM");
  await new Promise((r) => agent.once("exit", r));
  rmSync(dataDir, { recursive: true, force: true });
}
