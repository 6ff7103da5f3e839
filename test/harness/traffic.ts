// Steady traffic for tests under faults: test/apps/traffic-client.mjs opens one
// short connection after another (one line out, one line back) and prints a
// JSON line per attempt; this reads them back, per time window.
import { trafficClient } from "./paths.js";
import type { Launcher } from "./mesh.js";
import type { StartedProcess } from "./processes.js";

export interface TrafficAttempt {
  /** When the connection was opened (ms since the epoch). */
  t: number;
  /** How long it took, until the reply or the failure. */
  ms: number;
  /** A reply line came back. */
  ok: boolean;
  /** The reply's first word: which instance answered. */
  who?: string;
  error?: string;
  /** Held mode: the number of the connection the exchange was on (a new one after each failure). */
  conn?: number;
}

export interface TrafficClient {
  readonly process: StartedProcess;
  /** Every attempt so far, or those opened in [from, to]. */
  attempts(from?: number, to?: number): TrafficAttempt[];
  stop(): Promise<void>;
}

/**
 * Starts the client against 127.0.0.1:`port` of the host `launch` runs on. `hold`: one
 * connection kept open, a line exchanged on it every interval (an attempt per exchange).
 */
export function startTrafficClient(launch: Launcher, name: string, port: number, { intervalMs = 20, maxSeconds = 600, hold = false }: { intervalMs?: number; maxSeconds?: number; hold?: boolean } = {}): TrafficClient {
  const proc = launch(`traffic ${name}`, process.execPath, [trafficClient, "--port", String(port), "--interval-ms", String(intervalMs), "--max-seconds", String(maxSeconds), ...(hold ? ["--hold"] : [])]);
  return {
    process: proc,
    attempts(from = 0, to = Infinity) {
      return proc
        .output()
        .split("\n")
        .filter((line) => line.startsWith("{"))
        .map((line) => JSON.parse(line) as TrafficAttempt)
        .filter((attempt) => attempt.t >= from && attempt.t <= to);
    },
    stop: () => proc.stop(),
  };
}
