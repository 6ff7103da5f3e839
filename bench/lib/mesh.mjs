// The registrations every set-up shares (web with an upstream to db, db in
// front of the application), and a sidecar's desired state as the controller
// would compute it from them: the plain HAProxy pair is that state rendered
// without authorization.
import { join } from "node:path";
import { buildDesiredState } from "../../dist/controller/desired-state.js";
import { ConsulClient } from "../../dist/controller/consul-client.js";
import { readSnapshotOnce } from "../../dist/controller/snapshot-once.js";
import { luaBundlePath } from "../../dist/test/harness/paths.js";
import { waitFor } from "../../dist/test/harness/processes.js";

/**
 * Registers db (the application, behind its sidecar's public listener) and web
 * (whose sidecar has the upstream listener to db), and allows web → db.
 * The sidecars get a passing TTL check instead of Consul's default TCP check:
 * the default one polls every 10 s, and every set-up would wait for it before
 * db's sidecar counts as healthy. Everything binds to 127.0.0.1. `names`
 * renames the pair, so that one agent holds a TCP pair and an HTTP pair.
 */
export async function registerMesh(consul, ports, { protocol = "tcp", names = { web: "web", db: "db" } } = {}) {
  const { web, db } = names;
  // HTTP: db's service-defaults say so (the agent merges it into db's sidecar) and web's upstream says so too.
  if (protocol !== "tcp") await consul.api("PUT", "/v1/config", { Kind: "service-defaults", Name: db, Protocol: protocol });
  const sidecarCheck = [{ Name: "bench: sidecar is up", TTL: "24h", Status: "passing" }];
  await consul.api("PUT", "/v1/agent/service/register", {
    ID: db,
    Name: db,
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
    ID: web,
    Name: web,
    Address: "127.0.0.1",
    Port: ports.webApp,
    Connect: {
      SidecarService: {
        Address: "127.0.0.1",
        Port: ports.webPublic,
        Checks: sidecarCheck,
        Proxy: {
          Config: { bind_address: "127.0.0.1" },
          Upstreams: [{ DestinationName: db, LocalBindAddress: "127.0.0.1", LocalBindPort: ports.upstream, ...(protocol !== "tcp" ? { Config: { protocol } } : {}) }],
        },
      },
    },
  });
  await consul.api("PUT", `/v1/connect/intentions/exact?source=${web}&destination=${db}`, { Action: "allow" });
  // The built-in proxy and the controller find db's sidecar through the health endpoint.
  await waitFor(`${db}'s sidecar healthy in the catalog`, async () => ((await consul.api("GET", `/v1/health/connect/${db}?passing`)).length ? true : undefined));
}

/**
 * The desired state of `service`'s sidecar (`<service>-sidecar-proxy`), from
 * what the controller's watches read (the requests `connect-haproxy render`
 * makes): its registration, the CA roots, its leaf certificate, each
 * upstream's discovery chain and the instances of its targets. Its files live in
 * `dir` as `<service>-sidecar.cfg`, `<service>-sidecar.sock`, `<service>-leaf.pem`, `roots.pem`.
 */
export async function sidecarState(consul, service, dir) {
  const registration = await consul.api("GET", `/v1/agent/service/${service}-sidecar-proxy`);
  const client = new ConsulClient({ httpAddr: consul.httpAddr });
  let snapshot;
  try {
    snapshot = await readSnapshotOnce(client, registration);
  } finally {
    client.close();
  }
  const paths = {
    configFile: join(dir, `${service}-sidecar.cfg`),
    leafCertificateFile: join(dir, `${service}-leaf.pem`),
    caRootsFile: join(dir, "roots.pem"),
    statsSocket: join(dir, `${service}-sidecar.sock`),
    passMap: join(dir, `${service}-passes.map`),
    serverPassMap: join(dir, `${service}-server-passes.map`),
    masterSocket: join(dir, `${service}-master.sock`),
    luaBundle: luaBundlePath,
  };
  return buildDesiredState(snapshot, paths);
}
