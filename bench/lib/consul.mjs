// A Consul dev agent on free loopback ports, and the registrations every
// set-up shares: web with an upstream to db, db in front of the application.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { freePorts } from "./ports.mjs";
import { startProcess, waitFor } from "./processes.mjs";

export async function startConsulDev({ consulBin, dir, cpu }) {
  const [http, serfLan, serfWan, server] = await freePorts(4);
  const configFile = join(dir, "consul.json");
  writeFileSync(
    configFile,
    JSON.stringify({
      node_name: `bench-${http}`,
      bind_addr: "127.0.0.1",
      client_addr: "127.0.0.1",
      advertise_addr: "127.0.0.1",
      log_level: "warn",
      ports: { http, dns: -1, serf_lan: serfLan, serf_wan: serfWan, server, grpc: -1, grpc_tls: -1 },
    }),
  );
  const proc = startProcess("consul", consulBin, ["agent", "-dev", "-config-file", configFile], { cpu, logFile: join(dir, "consul.log") });
  const httpAddr = `127.0.0.1:${http}`;
  const api = async (method, path, body) => {
    const res = await fetch(`http://${httpAddr}${path}`, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`consul ${method} ${path}: ${res.status} ${text.trim()}`);
    return text ? JSON.parse(text) : undefined;
  };
  try {
    await waitFor("consul leader", async () => ((await api("GET", "/v1/status/leader")) ? true : undefined), { process: proc });
    await waitFor("consul CA roots", async () => ((await api("GET", "/v1/agent/connect/ca/roots")).Roots?.length ? true : undefined), { process: proc });
  } catch (err) {
    await proc.stop();
    throw err;
  }
  return { httpAddr, process: proc, api, stop: () => proc.stop("SIGTERM", 5000) };
}

/**
 * Registers db (the application, behind its sidecar's public listener) and web
 * (whose sidecar has the upstream listener to db), and allows web → db.
 * The sidecars get a passing TTL check instead of Consul's default TCP check:
 * the default one polls every 10 s, and every set-up would wait for it before
 * db's sidecar counts as healthy. Everything binds to 127.0.0.1.
 */
export async function registerMesh(consul, ports) {
  const sidecarCheck = [{ Name: "bench: sidecar is up", TTL: "24h", Status: "passing" }];
  await consul.api("PUT", "/v1/agent/service/register", {
    ID: "db",
    Name: "db",
    Address: "127.0.0.1",
    Port: ports.app,
    Connect: {
      SidecarService: {
        Address: "127.0.0.1",
        Port: ports.dbPublic,
        Checks: sidecarCheck,
        Proxy: { Config: { bind_address: "127.0.0.1" } },
      },
    },
  });
  await consul.api("PUT", "/v1/agent/service/register", {
    ID: "web",
    Name: "web",
    Address: "127.0.0.1",
    Port: ports.webApp,
    Connect: {
      SidecarService: {
        Address: "127.0.0.1",
        Port: ports.webPublic,
        Checks: sidecarCheck,
        Proxy: {
          Config: { bind_address: "127.0.0.1" },
          Upstreams: [{ DestinationName: "db", LocalBindAddress: "127.0.0.1", LocalBindPort: ports.upstream }],
        },
      },
    },
  });
  await consul.api("PUT", "/v1/connect/intentions/exact?source=web&destination=db", { Action: "allow" });
  // The built-in proxy and the controller find db's sidecar through the health endpoint.
  await waitFor("db's sidecar healthy in the catalog", async () => ((await consul.api("GET", "/v1/health/connect/db?passing")).length ? true : undefined));
}

/** Leaf certificate + key (as HAProxy's `crt` loads it) for a service, and all roots as a CA file. */
export async function meshCertificates(consul, service) {
  const leaf = await consul.api("GET", `/v1/agent/connect/ca/leaf/${service}`);
  return { pem: `${leaf.CertPEM.trim()}\n${leaf.PrivateKeyPEM.trim()}\n`, serial: leaf.SerialNumber, uri: leaf.ServiceURI };
}

export async function caRootsPem(consul) {
  const roots = await consul.api("GET", "/v1/agent/connect/ca/roots");
  const pems = [];
  for (const root of roots.Roots) {
    pems.push(root.RootCert.trim());
    for (const intermediate of root.IntermediateCerts ?? []) pems.push(intermediate.trim());
  }
  return { pem: pems.join("\n") + "\n", trustDomain: roots.TrustDomain };
}
