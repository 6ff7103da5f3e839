// The one blocking-query loop every Consul watch runs on.
//
// Consul's rules (https://developer.hashicorp.com/consul/api-docs/features/blocking):
// - resume with the X-Consul-Index (or, for /v1/agent/service/:id, the
//   X-Consul-ContentHash) of the previous reply;
// - an index that goes backwards means the data was reset: start over from 0;
// - an index of 0 must never be sent back in a loop (it does not block): use 1;
// - the loop must be rate limited, and errors retried with capped backoff and jitter;
// - a reply with the same index is a timeout, not a change.
// `wait` stays under 20 s: some Consul 1.22.x releases cut HTTP requests at 30 s.
import type { BlockingCursor, ConsulPage } from "./consul-replies.js";
import type { Clock } from "./clock.js";

export type BlockingMode = "index" | "hash" | "poll";

export const defaultWaitSeconds = 15;

/** Pure: where the next request resumes, given the previous cursor and the reply. */
export function nextCursor(previous: BlockingCursor, page: ConsulPage<unknown>, mode: BlockingMode): BlockingCursor {
  if (mode === "hash") return page.contentHash ? { hash: page.contentHash } : {};
  if (mode === "poll" || page.index === undefined) return {};
  if (page.index <= 0) return { index: 1 };
  if (previous.index !== undefined && page.index < previous.index) return { index: 0 };
  return { index: page.index };
}

/** Pure: capped exponential backoff with jitter (between half and all of the capped delay). */
export function backoffDelayMs(consecutiveFailures: number, baseMs: number, maxMs: number, random: number): number {
  const exponent = Math.min(Math.max(consecutiveFailures - 1, 0), 30);
  const capped = Math.min(maxMs, baseMs * 2 ** exponent);
  return Math.round(capped / 2 + (capped / 2) * random);
}

export interface BlockingWatchOptions<T> {
  /** For logs: what is watched, e.g. "leaf certificate of web". */
  description: string;
  mode: BlockingMode;
  fetchPage(cursor: BlockingCursor, signal: AbortSignal): Promise<ConsulPage<T>>;
  /** Called with each value that differs from the last one delivered. */
  onChange(value: T): void;
  /** Called on each failed request (the loop retries by itself). */
  onError(error: unknown, consecutiveFailures: number): void;
  /**
   * Called once when the watch works again after failures: a blocking request
   * succeeded (or any request, in poll mode). A non-blocking read alone does not
   * count: an agent that lost its servers still answers those from its cache.
   */
  onRecovered?(): void;
  signal: AbortSignal;
  clock: Clock;
  waitSeconds?: number;
  /** Minimum time between two requests (rate limit). */
  minIntervalMs?: number;
  /** For "poll" mode (endpoints that cannot block, e.g. prepared queries). */
  pollIntervalMs?: number;
  backoffBaseMs?: number;
  backoffMaxMs?: number;
}

/** Runs until `signal` aborts; never throws. */
export async function runBlockingWatch<T>(options: BlockingWatchOptions<T>): Promise<void> {
  const { clock, signal, mode } = options;
  const waitSeconds = Math.min(options.waitSeconds ?? defaultWaitSeconds, 20);
  const minIntervalMs = options.minIntervalMs ?? 50;
  const pollIntervalMs = options.pollIntervalMs ?? 10_000;
  let cursor: BlockingCursor = {};
  let lastDelivered: string | undefined;
  let consecutiveFailures = 0;
  let lastRequestAt = Number.NEGATIVE_INFINITY;
  const failed = async (error: unknown) => {
    consecutiveFailures += 1;
    options.onError(error, consecutiveFailures);
    // Forget the index: the next success starts a fresh (non-blocking) read.
    cursor = {};
    await clock.sleep(backoffDelayMs(consecutiveFailures, options.backoffBaseMs ?? 250, options.backoffMaxMs ?? 30_000, clock.random()), signal);
  };

  while (!signal.aborted) {
    const sinceLast = clock.now() - lastRequestAt;
    if (sinceLast < minIntervalMs) await clock.sleep(minIntervalMs - sinceLast, signal);
    if (signal.aborted) break;
    lastRequestAt = clock.now();
    const blocking = (cursor.index ?? 0) > 0 || cursor.hash !== undefined;
    let page: ConsulPage<T>;
    try {
      // After failures, a short wait: a healthy agent then shows it within a second.
      page = await options.fetchPage({ ...cursor, waitSeconds: consecutiveFailures > 0 ? 1 : waitSeconds }, signal);
    } catch (error) {
      if (signal.aborted) break;
      await failed(error);
      continue;
    }
    if (blocking || mode === "poll") {
      if (consecutiveFailures > 0) options.onRecovered?.();
      consecutiveFailures = 0;
    }
    cursor = nextCursor(cursor, page, mode);
    const fingerprint = JSON.stringify(page.value);
    if (fingerprint !== lastDelivered) {
      try {
        options.onChange(page.value);
        lastDelivered = fingerprint;
      } catch (error) {
        // A value the consumer cannot take is a failed request (backoff), never an escaped rejection.
        await failed(error);
        continue;
      }
    }
    // A reply without the index (or hash) it should carry cannot block next time: pace the loop as a poll, not at the rate limit.
    const cannotBlock = mode === "poll" || (mode === "index" ? page.index === undefined : page.contentHash === undefined);
    if (cannotBlock) await clock.sleep(pollIntervalMs, signal);
  }
}
