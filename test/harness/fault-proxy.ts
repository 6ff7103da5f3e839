// An HTTP proxy between a client (the controller's --http-addr, HAProxy's
// CONSUL_HTTP_ADDR) and a real Consul agent that answers chosen endpoints
// badly: the bad input a broken agent, a proxy in the way or a restored
// server can produce. Everything else passes through untouched. Every
// request is recorded, so a test can bound how often a client retried.
import { generateKeyPairSync } from "node:crypto";
import { createServer, request, type IncomingMessage, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";

export type Fault =
  /** 200 with a body that is not JSON (cut mid-object). */
  | { kind: "garbage-json" }
  /** 200 with JSON of another shape (a proxy's own error object). */
  | { kind: "wrong-shape" }
  /** 200 announcing a Content-Length, then the connection closes halfway. */
  | { kind: "truncated" }
  /** 502 with a load balancer's HTML error page. */
  | { kind: "html-error" }
  /** Every request answered 500 at once. */
  | { kind: "status-storm" }
  /** 200 with a JSON-looking body of `bytes` (default 50 MB), streamed. */
  | { kind: "huge"; bytes?: number }
  /** Consul's index seen `by` lower than it is (a server restored from an older snapshot); requests are translated back, so blocking still works. */
  | { kind: "index-backwards"; by: number }
  /** The real leaf with another private key. */
  | { kind: "leaf-key-mismatch" }
  /** The real roots with every RootCert replaced by bytes that do not parse. */
  | { kind: "unparsable-roots" }
  /** The real roots reply listing only this root (`pem`): every other root has left Consul's roots. */
  | { kind: "replace-roots"; pem: string };

export interface ProxiedRequest {
  at: number;
  method: string;
  path: string;
  query: string;
  userAgent: string;
  /** The fault that answered it, if any. */
  fault?: Fault["kind"];
}

export interface FaultProxy {
  /** `127.0.0.1:<port>`, for --http-addr / CONSUL_HTTP_ADDR. */
  readonly httpAddr: string;
  /** From now on, requests whose path (without the query) matches `path` get `fault`; requests in flight are answered with it at once. */
  inject(path: RegExp, fault: Fault): void;
  /** Back to plain forwarding. */
  clear(): void;
  requests(): readonly ProxiedRequest[];
  close(): Promise<void>;
}

interface Pending {
  path: string;
  /** Stops waiting for the agent and answers again under the current faults. */
  redo(): void;
}

const garbageBody = '{"Roots":[{"ID":"1a:cb","RootCert":"-----BEGIN CERT';
const wrongShapeBody = '{"error":"upstream connect error or disconnect/reset before headers","code":503}';
const htmlPage = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n";
const unparsableRoot = "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGUgYXQgYWxs\n-----END CERTIFICATE-----\n";

/** Starts a proxy in front of the agent at `upstream` (`host:port`). */
export async function startFaultProxy(upstream: string): Promise<FaultProxy> {
  const [upstreamHost, upstreamPort] = upstream.split(":") as [string, string];
  let faults: { path: RegExp; fault: Fault }[] = [];
  const recorded: ProxiedRequest[] = [];
  const pending = new Set<Pending>();
  const otherKey = generateKeyPairSync("ec", { namedCurve: "P-256" }).privateKey.export({ type: "sec1", format: "pem" }).toString();

  const faultFor = (path: string) => faults.find((f) => f.path.test(path))?.fault;

  /** Forwards to the agent, applying a fault that alters real replies (a mangled reply is asked for without index/wait, so it comes at once). */
  function forward(req: IncomingMessage, body: Buffer, res: ServerResponse, url: URL, fault: Fault | undefined, again: boolean): void {
    const target = new URL(url);
    const mangles = fault?.kind === "leaf-key-mismatch" || fault?.kind === "unparsable-roots" || fault?.kind === "replace-roots";
    // A request asked again after a fault was injected is answered at once, not after its blocking wait;
    // so is a mangled reply that the client refuses (it asks again without blocking anyway).
    if (again || (mangles && fault.kind !== "replace-roots")) {
      target.searchParams.delete("index");
      target.searchParams.delete("wait");
    }
    if (fault?.kind === "index-backwards" && target.searchParams.has("index") && !again) {
      target.searchParams.set("index", String(Number(target.searchParams.get("index")) + fault.by));
    }
    const upstreamRequest = request(
      { host: upstreamHost, port: Number(upstreamPort), method: req.method, path: target.pathname + target.search, headers: { ...req.headers, host: upstream } },
      (upstreamResponse) => {
        const chunks: Buffer[] = [];
        upstreamResponse.on("data", (chunk: Buffer) => chunks.push(chunk));
        upstreamResponse.on("end", () => {
          pending.delete(entry);
          let replyBody = Buffer.concat(chunks);
          const headers = { ...upstreamResponse.headers };
          delete headers["content-length"];
          delete headers["transfer-encoding"];
          if (fault?.kind === "index-backwards" && headers["x-consul-index"]) {
            headers["x-consul-index"] = String(Math.max(1, Number(headers["x-consul-index"]) - fault.by));
          }
          if (mangles && upstreamResponse.statusCode === 200) {
            const value = JSON.parse(replyBody.toString());
            if (fault.kind === "leaf-key-mismatch") value.PrivateKeyPEM = otherKey;
            else if (fault.kind === "replace-roots") {
              value.Roots = [{ ...value.Roots[0], ID: "replaced", Name: "replacement root", RootCert: fault.pem, IntermediateCerts: null, Active: true }];
              value.ActiveRootID = "replaced";
            } else for (const root of value.Roots ?? []) root.RootCert = unparsableRoot;
            replyBody = Buffer.from(JSON.stringify(value));
          }
          res.writeHead(upstreamResponse.statusCode ?? 502, { ...headers, "content-length": String(replyBody.length) });
          res.end(replyBody);
        });
      },
    );
    let abandoned = false;
    const abandon = () => {
      abandoned = true;
      pending.delete(entry);
      upstreamRequest.destroy();
    };
    const entry: Pending = {
      path: url.pathname,
      redo: () => {
        abandon();
        answer(req, body, res, url, true);
      },
    };
    pending.add(entry);
    // The client gave up (timeout, cancelled watch): stop waiting on the agent for it.
    res.on("close", () => pending.has(entry) && abandon());
    upstreamRequest.on("error", () => {
      pending.delete(entry);
      if (!abandoned && !res.headersSent) res.destroy();
    });
    upstreamRequest.end(body);
  }

  function answer(req: IncomingMessage, body: Buffer, res: ServerResponse, url: URL, again = false): void {
    const fault = faultFor(url.pathname);
    recorded.push({ at: Date.now(), method: req.method ?? "", path: url.pathname, query: url.search, userAgent: req.headers["user-agent"] ?? "", fault: fault?.kind });
    switch (fault?.kind) {
      case "garbage-json":
        res.writeHead(200, { "content-type": "application/json", "x-consul-index": "1" });
        return void res.end(garbageBody);
      case "wrong-shape":
        res.writeHead(200, { "content-type": "application/json", "x-consul-index": "1" });
        return void res.end(wrongShapeBody);
      case "truncated": {
        const whole = JSON.stringify({ TrustDomain: "x.consul", Roots: [{ ID: "a", RootCert: unparsableRoot.repeat(20) }] });
        res.writeHead(200, { "content-type": "application/json", "content-length": String(whole.length) });
        res.write(whole.slice(0, whole.length / 2), () => res.socket?.destroy());
        return;
      }
      case "html-error":
        res.writeHead(502, { "content-type": "text/html" });
        return void res.end(htmlPage);
      case "status-storm":
        res.writeHead(500, { "content-type": "text/plain" });
        return void res.end("rpc error making call: No cluster leader\n");
      case "huge":
        return streamHuge(res, fault.bytes ?? 50 * 1024 * 1024);
      default:
        return forward(req, body, res, url, fault, again);
    }
  }

  const server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on("data", (chunk: Buffer) => chunks.push(chunk));
    req.on("end", () => {
      answer(req, Buffer.concat(chunks), res, new URL(req.url ?? "/", `http://${upstream}`));
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const port = (server.address() as AddressInfo).port;

  return {
    httpAddr: `127.0.0.1:${port}`,
    inject(path, fault) {
      faults = [{ path, fault }, ...faults];
      for (const p of [...pending]) if (path.test(p.path)) p.redo();
    },
    clear() {
      faults = [];
    },
    requests: () => recorded,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A 200 whose body never ends before `bytes` ("[0,0,0,…"): a client must give up on it by itself. */
function streamHuge(res: ServerResponse, bytes: number): void {
  res.writeHead(200, { "content-type": "application/json" });
  res.write("[");
  const block = Buffer.from("0,".repeat(32 * 1024));
  let sent = 1;
  const pump = () => {
    while (sent < bytes && !res.destroyed) {
      sent += block.length;
      if (!res.write(block)) return void res.once("drain", pump);
    }
    if (!res.destroyed) res.end("0]");
  };
  res.on("error", () => undefined);
  pump();
}
