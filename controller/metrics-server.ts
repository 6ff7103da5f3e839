// The sidecar's one scrape endpoint (envoy_prometheus_bind_addr, or
// --metrics-addr): GET /metrics answers HAProxy's built-in Prometheus exporter
// (read on its unix socket), the authorizer's counters (`connect metrics` on
// its control service) and the controller's own, in one text; GET /ready answers
// 200 once HAProxy serves the current configuration with a valid leaf, 503
// with the reason otherwise. A part that cannot be read is left out and its
// connect_haproxy_scrape_part_up is 0, so the rest is still scraped.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import { requestOverUnixSocket } from "./authorizer-control.js";
import type { Logger } from "./logger.js";

export interface ScrapeSources {
  /** HAProxy's statistics (frontends, backends, servers). */
  haproxy(): Promise<string>;
  /** The Lua authorizer's counters. */
  authorizer(): Promise<string>;
  /** The controller's own. */
  controller(): Promise<string>;
  readiness(): { ready: boolean; reason: string };
}

export const prometheusContentType = "text/plain; version=0.0.4; charset=utf-8";

/** Pure: "host:port", "[v6]:port" or ":port" → where to listen (host "" is every address). */
export function parseListenAddress(address: string): { host: string; port: number } {
  const match = /^(?:\[([^\]]+)\]|([^:\s]*)):(\d+)$/.exec(address.trim());
  const port = Number(match?.[3]);
  if (!match || !Number.isInteger(port) || port < 1 || port > 65535) throw new Error(`metrics address must be host:port, got "${address}"`);
  return { host: match[1] ?? match[2] ?? "", port };
}

/** GET `path` on an HTTP server listening on a unix socket; rejects on a non-200 answer. */
export async function getOverUnixSocket(socketPath: string, path: string, timeoutMs = 5000): Promise<string> {
  const answer = await requestOverUnixSocket(socketPath, "GET", path, timeoutMs);
  if (answer.status !== 200) throw new Error(`${socketPath}${path} answered ${answer.status}`);
  return answer.body;
}

/** Pure: the parts of a scrape in one exposition text, with one up gauge per part. */
export function joinScrape(parts: { name: string; text: string | undefined }[]): string {
  const body = parts
    .filter((part) => part.text !== undefined && part.text.trim() !== "")
    .map((part) => (part.text!.endsWith("\n") ? part.text! : `${part.text}\n`))
    .join("");
  const up = parts.map((part) => `connect_haproxy_scrape_part_up{part="${part.name}"} ${part.text === undefined ? 0 : 1}`);
  return `${body}# HELP connect_haproxy_scrape_part_up Whether this scrape could read the part (haproxy, authorizer, controller).\n# TYPE connect_haproxy_scrape_part_up gauge\n${up.join("\n")}\n`;
}

export class MetricsServer {
  private server?: Server;
  private address?: string;

  constructor(private readonly sources: ScrapeSources, private readonly logger: Logger) {}

  /** Listens on `address` (closing the previous listener if it differs); undefined stops listening. */
  async listen(address: string | undefined): Promise<void> {
    if (address === this.address) return;
    await this.close();
    if (address === undefined) return;
    const { host, port } = parseListenAddress(address);
    const server = createServer((req, res) => void this.handle(req, res));
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(port, host || undefined, () => resolve());
    });
    server.on("error", (err) => this.logger.error(`metrics listener on ${address} failed: ${err.message}`));
    this.server = server;
    this.address = address;
    this.logger.info("serving metrics and readiness", { address, metrics: "/metrics", ready: "/ready" });
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.address = undefined;
    if (!server) return;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const path = (req.url ?? "/").split("?")[0];
    if (req.method !== "GET" && req.method !== "HEAD") return this.answer(res, 405, "text/plain", "only GET\n");
    if (path === "/ready") {
      const { ready, reason } = this.sources.readiness();
      return this.answer(res, ready ? 200 : 503, "text/plain", `${reason}\n`);
    }
    if (path !== "/metrics") return this.answer(res, 404, "text/plain", "try /metrics or /ready\n");
    const read = (name: string, produce: () => Promise<string>) =>
      produce().then(
        (text) => ({ name, text }),
        (err: Error) => {
          this.logger.debug(`metrics: cannot read the ${name} part`, { error: err.message });
          return { name, text: undefined };
        },
      );
    const parts = await Promise.all([read("haproxy", () => this.sources.haproxy()), read("authorizer", () => this.sources.authorizer()), read("controller", () => this.sources.controller())]);
    this.answer(res, 200, prometheusContentType, joinScrape(parts));
  }

  private answer(res: ServerResponse, status: number, contentType: string, body: string): void {
    res.writeHead(status, { "Content-Type": contentType, "Content-Length": Buffer.byteLength(body) });
    res.end(body);
  }
}
