// The load generators: wrk (HTTP, Debian's wrk 4.1) and iperf3 (bulk TCP).
// Both run under bash so that `times` reports their exact CPU use after they
// exit (the children line), pinned with taskset.
import { join } from "node:path";
import { runCommand } from "../../dist/test/harness/processes.js";

const benchDir = new URL("..", import.meta.url).pathname;
export const wrkScript = join(benchDir, "wrk-report.lua");

const timedScript = 'taskset -c "$BENCH_CPU" "$@"; rc=$?; times >&2; exit $rc';

/** bash's `times` prints two lines; the second is the children's user and system time. */
export function parseTimes(stderr) {
  const lines = stderr.trimEnd().split("\n");
  const match = /^(\d+)m([\d.]+)s (\d+)m([\d.]+)s$/.exec(lines.at(-1) ?? "");
  if (!match) return undefined;
  return Number(match[1]) * 60 + Number(match[2]) + Number(match[3]) * 60 + Number(match[4]);
}

async function timed(command, args, { cpu, timeoutMs, env = {} }) {
  const result = await runCommand("bash", ["-c", timedScript, "bash", command, ...args], {
    timeoutMs,
    env: { ...process.env, ...env, BENCH_CPU: cpu === undefined ? "0-1023" : String(cpu) },
  });
  return { ...result, cpuSeconds: parseTimes(result.stderr) };
}

export function parseWrkJson(stdout) {
  const line = stdout.split("\n").find((l) => l.startsWith("WRK_JSON "));
  return line ? JSON.parse(line.slice("WRK_JSON ".length)) : undefined;
}

/**
 * One wrk run against http://127.0.0.1:port/. `close`: every request on a new
 * connection (Connection: close), so each one pays a new TCP and TLS handshake.
 */
export async function runWrk({ port, seconds, connections, close = false, delayMs, cpu, path = "/", headers = {} }) {
  const args = ["-t1", `-c${connections}`, `-d${seconds}s`, "--timeout", "5s", "-s", wrkScript];
  if (close) args.push("-H", "Connection: close");
  for (const [name, value] of Object.entries(headers)) args.push("-H", `${name}: ${value}`);
  args.push(`http://127.0.0.1:${port}${path}`);
  const result = await timed("wrk", args, { cpu, timeoutMs: (seconds + 30) * 1000, env: delayMs ? { WRK_DELAY_MS: String(delayMs) } : {} });
  const summary = parseWrkJson(result.stdout);
  if (result.code !== 0 || !summary) throw new Error(`wrk failed (exit ${result.code}):\n${result.stdout}\n${result.stderr}`);
  const seconds_ = summary.duration_us / 1e6;
  const errors = Object.values(summary.errors).reduce((a, b) => a + b, 0);
  return {
    tool: "wrk",
    connections,
    newConnectionPerRequest: close,
    delayMs,
    seconds: seconds_,
    requests: summary.requests,
    requestsPerSecond: summary.requests / seconds_,
    errors: summary.errors,
    errorCount: errors,
    latencyUs: summary.latency_us,
    clientCpuSeconds: result.cpuSeconds,
  };
}

/** One iperf3 stream to 127.0.0.1:port for `seconds` (the first second omitted: slow start). */
export async function runIperf3({ port, seconds, cpu }) {
  const args = ["-c", "127.0.0.1", "-p", String(port), "-t", String(seconds), "-O", "1", "-P", "1", "-J"];
  const result = await timed("iperf3", args, { cpu, timeoutMs: (seconds + 30) * 1000 });
  let report;
  try {
    report = JSON.parse(result.stdout);
  } catch {
    throw new Error(`iperf3 printed no JSON (exit ${result.code}):\n${result.stdout.slice(-2000)}\n${result.stderr}`);
  }
  if (report.error) throw new Error(`iperf3: ${report.error}`);
  const received = report.end?.sum_received;
  if (!received) throw new Error("iperf3: no sum_received in its report");
  return {
    tool: "iperf3",
    streams: 1,
    seconds: received.seconds,
    bytes: received.bytes,
    gbitPerSecond: received.bits_per_second / 1e9,
    retransmits: report.end?.sum_sent?.retransmits,
    clientCpuSeconds: result.cpuSeconds,
  };
}
