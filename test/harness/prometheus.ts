// A real Prometheus (Debian's package, installed by scripts/install-deps.sh)
// scraping given targets every second, and its query API.
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { freePorts } from "./ports.js";
import { runCommand, startProcess, waitFor, type StartedProcess } from "./processes.js";

export interface PrometheusTarget {
  health: string;
  scrapeUrl: string;
  lastError: string;
}

export interface PrometheusServer {
  readonly url: string;
  readonly process: StartedProcess;
  /** An instant query; each sample as its labels and value. */
  query(expression: string): Promise<{ labels: Record<string, string>; value: number }[]>;
  targets(): Promise<PrometheusTarget[]>;
  stop(): Promise<void>;
}

/** `prometheus` scraping `targets` (host:port, path /metrics) every `scrapeIntervalS` seconds. */
export async function startPrometheus(targets: string[], { scrapeIntervalS = 1 }: { scrapeIntervalS?: number } = {}): Promise<PrometheusServer> {
  const dir = mkdtempSync(join(tmpdir(), "ch-prometheus-"));
  const [port] = await freePorts(1);
  const config = [
    "global:",
    `  scrape_interval: ${scrapeIntervalS}s`,
    `  scrape_timeout: ${scrapeIntervalS}s`,
    "scrape_configs:",
    "  - job_name: connect-haproxy",
    "    static_configs:",
    `      - targets: [${targets.map((t) => `"${t}"`).join(", ")}]`,
    "",
  ].join("\n");
  writeFileSync(join(dir, "prometheus.yml"), config);
  const proc = startProcess("prometheus", "prometheus", [
    `--config.file=${join(dir, "prometheus.yml")}`,
    `--storage.tsdb.path=${join(dir, "data")}`,
    `--web.listen-address=127.0.0.1:${port}`,
    "--log.level=warn",
  ]);
  const url = `http://127.0.0.1:${port}`;
  const api = async <T>(path: string): Promise<T> => {
    const res = await fetch(`${url}${path}`);
    const body = (await res.json()) as { status: string; data: T; error?: string };
    if (body.status !== "success") throw new Error(`prometheus ${path}: ${body.error ?? res.status}`);
    return body.data;
  };
  const server: PrometheusServer = {
    url,
    process: proc,
    async query(expression) {
      const data = await api<{ result: { metric: Record<string, string>; value: [number, string] }[] }>(`/api/v1/query?query=${encodeURIComponent(expression)}`);
      return data.result.map((sample) => ({ labels: sample.metric, value: Number(sample.value[1]) }));
    },
    async targets() {
      const data = await api<{ activeTargets: PrometheusTarget[] }>("/api/v1/targets");
      return data.activeTargets;
    },
    stop: () => proc.stop(),
  };
  await waitFor("prometheus ready", async () => ((await fetch(`${url}/-/ready`).catch(() => undefined))?.ok ? true : undefined), { process: proc });
  return server;
}

/** `promtool check metrics` on `text`: its exit code and what it said. */
export async function promtoolCheckMetrics(text: string): Promise<{ code: number | string; output: string }> {
  const dir = mkdtempSync(join(tmpdir(), "ch-promtool-"));
  const file = join(dir, "metrics.txt");
  writeFileSync(file, text);
  const result = await runCommand("sh", ["-c", `promtool check metrics < '${file}'`]);
  return { code: result.code, output: `${result.stdout}${result.stderr}` };
}
