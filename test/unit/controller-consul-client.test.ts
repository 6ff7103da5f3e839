// The Consul client against a fake HTTP server (allowed in unit tests only):
// headers, query parameters, tokens, error classification, cancellation.
import { createServer, type IncomingMessage, type Server } from "node:http";
import { afterEach, describe, expect, it } from "vitest";
import { ConsulClient, ConsulError, maxReplyBytes, parseHttpAddr } from "../../controller/consul-client.js";

type Handler = (req: IncomingMessage, url: URL) => { status?: number; headers?: Record<string, string>; body?: string } | "hang";

let server: Server | undefined;
const seen: { url: URL; token?: string }[] = [];

async function fakeConsul(handler: Handler): Promise<string> {
  seen.length = 0;
  server = createServer((req, res) => {
    const url = new URL(req.url ?? "/", "http://x");
    seen.push({ url, token: req.headers["x-consul-token"] as string | undefined });
    const reply = handler(req, url);
    if (reply === "hang") return;
    res.writeHead(reply.status ?? 200, { "content-type": "application/json", ...reply.headers });
    res.end(reply.body ?? "");
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  const address = server.address() as { port: number };
  return `127.0.0.1:${address.port}`;
}

afterEach(async () => {
  if (!server) return;
  server.closeAllConnections();
  await new Promise((resolve) => server!.close(resolve));
  server = undefined;
});

describe("ConsulClient", () => {
  it("reads X-Consul-Index and sends index, wait and the token", async () => {
    const addr = await fakeConsul(() => ({ headers: { "X-Consul-Index": "42" }, body: JSON.stringify({ ActiveRootID: "r", TrustDomain: "t.consul", Roots: [] }) }));
    const client = new ConsulClient({ httpAddr: addr, token: "secret" });
    const page = await client.caRoots({ index: 7, waitSeconds: 15 });
    client.close();
    expect(page.index).toBe(42);
    expect(page.value.TrustDomain).toBe("t.consul");
    expect(seen[0]!.url.pathname).toBe("/v1/agent/connect/ca/roots");
    expect(seen[0]!.url.searchParams.get("index")).toBe("7");
    expect(seen[0]!.url.searchParams.get("wait")).toBe("15s");
    expect(seen[0]!.token).toBe("secret");
  });

  it("uses the content hash for the agent service endpoint", async () => {
    const addr = await fakeConsul(() => ({ headers: { "X-Consul-ContentHash": "abc" }, body: JSON.stringify({ ID: "web-sidecar-proxy" }) }));
    const client = new ConsulClient({ httpAddr: `http://${addr}` });
    const page = await client.agentService("web-sidecar-proxy", { hash: "old", waitSeconds: 10 });
    client.close();
    expect(page.contentHash).toBe("abc");
    expect(seen[0]!.url.searchParams.get("hash")).toBe("old");
    expect(seen[0]!.url.searchParams.has("index")).toBe(false);
    expect(seen[0]!.token).toBeUndefined();
  });

  it("asks for passing instances in a datacenter", async () => {
    const addr = await fakeConsul(() => ({ headers: { "X-Consul-Index": "3" }, body: "[]" }));
    const client = new ConsulClient({ httpAddr: addr });
    await client.healthyConnectInstances("db", "dc2", {});
    client.close();
    expect(seen[0]!.url.pathname).toBe("/v1/health/connect/db");
    expect(seen[0]!.url.searchParams.get("passing")).toBe("1");
    expect(seen[0]!.url.searchParams.get("dc")).toBe("dc2");
    expect(seen[0]!.url.searchParams.has("index")).toBe(false);
  });

  it("reads a config entry from its kind's list, blocking: the entry, or null while there is none (the mesh entry has no Name)", async () => {
    const replies: Record<string, string> = {
      "/v1/config/proxy-defaults": JSON.stringify([{ Kind: "proxy-defaults", Name: "global", AccessLogs: { Enabled: true } }]),
      "/v1/config/mesh": "[]",
    };
    const addr = await fakeConsul((_req, url) => ({ headers: { "X-Consul-Index": "9" }, body: replies[url.pathname] ?? "null" }));
    const client = new ConsulClient({ httpAddr: addr });
    const defaults = await client.configEntry("proxy-defaults", "global", { index: 3, waitSeconds: 15 });
    expect(defaults).toMatchObject({ index: 9, value: { Name: "global", AccessLogs: { Enabled: true } } });
    expect(seen[0]!.url.search).toBe("?index=3&wait=15s");
    expect((await client.configEntry("mesh", "mesh", {})).value).toBeNull();
    replies["/v1/config/mesh"] = JSON.stringify([{ Kind: "mesh", TLS: { Incoming: { TLSMinVersion: "TLSv1_3" } } }]);
    expect((await client.configEntry("mesh", "mesh", {})).value).toMatchObject({ TLS: { Incoming: { TLSMinVersion: "TLSv1_3" } } });
    client.close();
  });

  it("turns a 403 into one line naming the endpoint and the permission", async () => {
    const addr = await fakeConsul(() => ({ status: 403, headers: { "content-type": "text/plain" }, body: "Permission denied" }));
    const client = new ConsulClient({ httpAddr: addr });
    const err = await client.leafCertificate("web", {}).catch((e: unknown) => e);
    client.close();
    expect(err).toBeInstanceOf(ConsulError);
    expect((err as ConsulError).kind).toBe("forbidden");
    expect((err as ConsulError).message).toContain("/v1/agent/connect/ca/leaf/web");
    expect((err as ConsulError).message).toContain('service:write on "web"');
    expect((err as ConsulError).message).not.toContain("\n");
  });

  it("classifies 404 and connection failures", async () => {
    const addr = await fakeConsul(() => ({ status: 404, headers: { "content-type": "text/plain" }, body: "unknown service ID" }));
    const client = new ConsulClient({ httpAddr: addr });
    expect(((await client.agentService("nope", {}).catch((e: unknown) => e)) as ConsulError).kind).toBe("not-found");
    client.close();
    const closed = new ConsulClient({ httpAddr: "127.0.0.1:1" });
    const err = (await closed.caRoots({}).catch((e: unknown) => e)) as ConsulError;
    closed.close();
    expect(err.kind).toBe("unreachable");
  });

  it("refuses a reply that is not JSON, or too large, in one line", async () => {
    let body = "<html><body>502 Bad Gateway</body></html>";
    const addr = await fakeConsul(() => ({ headers: { "X-Consul-Index": "3" }, body }));
    const client = new ConsulClient({ httpAddr: addr });
    const notJson = (await client.caRoots({}).catch((e: unknown) => e)) as ConsulError;
    expect(notJson.kind).toBe("bad-reply");
    expect(notJson.message).toMatch(/^Consul's reply to \/v1\/agent\/connect\/ca\/roots is not JSON: "<html>/);
    body = `[${"0,".repeat(maxReplyBytes / 2)}0]`;
    const tooLarge = (await client.caRoots({}).catch((e: unknown) => e)) as ConsulError;
    client.close();
    expect(tooLarge.kind).toBe("bad-reply");
    expect(tooLarge.message).toContain("larger than");
  });

  it("cancels a hanging blocking query through its AbortSignal", async () => {
    const addr = await fakeConsul(() => "hang");
    const client = new ConsulClient({ httpAddr: addr });
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 50);
    const started = Date.now();
    const err = (await client.caRoots({ index: 5, waitSeconds: 15 }, controller.signal).catch((e: unknown) => e)) as ConsulError;
    client.close();
    expect(err.kind).toBe("aborted");
    expect(Date.now() - started).toBeLessThan(2000);
  });

  it("parses Consul addresses as CONSUL_HTTP_ADDR does", () => {
    expect(parseHttpAddr("127.0.0.1:8500").href).toBe("http://127.0.0.1:8500/");
    expect(parseHttpAddr("https://consul:8501").protocol).toBe("https:");
    expect(() => parseHttpAddr("ftp://x:1")).toThrow();
  });
});
