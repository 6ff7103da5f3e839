// Capped exponential backoff with jitter, for the tasks that poll the agent
// (trust.ts, intention-watch.ts): the delay doubles per failure from `baseMs`
// up to `maxMs`, and is drawn between half and all of it.

/** `random` in [0, 1). The delay before the next attempt after `failures` (≥ 1) in a row. */
export function backoffDelayMs(failures: number, baseMs: number, maxMs: number, random: number): number {
  const capped = Math.min(maxMs, baseMs * 2 ** Math.min(failures - 1, 10));
  return Math.floor(capped / 2 + (capped / 2) * random);
}
