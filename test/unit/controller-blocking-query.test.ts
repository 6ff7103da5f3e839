import { describe, expect, it } from "vitest";
import { backoffDelayMs, nextCursor, runBlockingWatch } from "../../controller/blocking-query.js";
import type { Clock } from "../../controller/clock.js";
import type { BlockingCursor, ConsulPage } from "../../controller/consul-replies.js";

describe("nextCursor (Consul's index rules)", () => {
  it("resumes from the reply's index", () => {
    expect(nextCursor({ index: 5 }, { value: 1, index: 9 }, "index")).toEqual({ index: 9 });
  });
  it("resets to 0 when the index goes backwards", () => {
    expect(nextCursor({ index: 50 }, { value: 1, index: 7 }, "index")).toEqual({ index: 0 });
  });
  it("never resumes with 0: a reply index of 0 becomes 1", () => {
    expect(nextCursor({ index: 0 }, { value: 1, index: 0 }, "index")).toEqual({ index: 1 });
    expect(nextCursor({}, { value: 1, index: 0 }, "index")).toEqual({ index: 1 });
  });
  it("follows the content hash in hash mode", () => {
    expect(nextCursor({ hash: "a" }, { value: 1, contentHash: "b" }, "hash")).toEqual({ hash: "b" });
  });
  it("starts over when a reply carries no index", () => {
    expect(nextCursor({ index: 3 }, { value: 1 }, "index")).toEqual({});
  });
});

describe("backoffDelayMs", () => {
  it("doubles per failure, caps, and jitters within [half, all]", () => {
    expect(backoffDelayMs(1, 100, 10_000, 0)).toBe(50);
    expect(backoffDelayMs(1, 100, 10_000, 1)).toBe(100);
    expect(backoffDelayMs(3, 100, 10_000, 1)).toBe(400);
    expect(backoffDelayMs(30, 100, 10_000, 1)).toBe(10_000);
    expect(backoffDelayMs(30, 100, 10_000, 0)).toBe(5_000);
  });
});

/** A clock whose sleeps return at once but advance time, and are recorded. */
function fakeClock(): Clock & { sleeps: number[] } {
  let now = 1_000_000;
  const sleeps: number[] = [];
  return {
    sleeps,
    now: () => now,
    random: () => 1,
    async sleep(ms) {
      sleeps.push(ms);
      now += ms;
    },
    setTimer() {
      throw new Error("the watch loop sleeps; it sets no timers");
    },
  };
}

/** Runs a watch over scripted replies; stops when the script runs out. */
async function runScript<T>(mode: "index" | "hash" | "poll", script: (ConsulPage<T> | Error)[], extra: { minIntervalMs?: number; onChange?: (value: T) => void } = {}) {
  const controller = new AbortController();
  const clock = fakeClock();
  const cursors: BlockingCursor[] = [];
  const changes: T[] = [];
  const errors: number[] = [];
  let recovered = 0;
  let step = 0;
  await runBlockingWatch<T>({
    description: "test",
    mode,
    clock,
    signal: controller.signal,
    minIntervalMs: extra.minIntervalMs ?? 0,
    fetchPage: async (cursor) => {
      cursors.push(cursor);
      const reply = script[step++];
      if (step >= script.length) controller.abort();
      if (reply instanceof Error) throw reply;
      return reply!;
    },
    onChange: (value) => {
      extra.onChange?.(value);
      changes.push(value);
    },
    onError: (_err, failures) => errors.push(failures),
    onRecovered: () => recovered++,
  });
  return { cursors, changes, errors, recovered, clock };
}

describe("runBlockingWatch", () => {
  it("sends the previous index with a wait ≤ 20 s and starts non-blocking", async () => {
    const { cursors } = await runScript("index", [{ value: "a", index: 10 }, { value: "b", index: 12 }, { value: "b", index: 12 }]);
    expect(cursors[0]).toEqual({ waitSeconds: 15 });
    expect(cursors[1]).toEqual({ index: 10, waitSeconds: 15 });
    expect(cursors[2]).toEqual({ index: 12, waitSeconds: 15 });
    for (const c of cursors) expect(c.waitSeconds).toBeLessThanOrEqual(20);
  });

  it("delivers only changed values (a timeout reply is not a change)", async () => {
    const { changes } = await runScript("index", [
      { value: ["x"], index: 3 },
      { value: ["x"], index: 3 },
      { value: ["x"], index: 4 },
      { value: ["x", "y"], index: 5 },
    ]);
    expect(changes).toEqual([["x"], ["x", "y"]]);
  });

  it("resets a backwards index to 0 and never loops with 0", async () => {
    const { cursors } = await runScript("index", [
      { value: 1, index: 100 },
      { value: 2, index: 40 },
      { value: 3, index: 0 },
      { value: 4, index: 0 },
    ]);
    expect(cursors.map((c) => c.index)).toEqual([undefined, 100, 0, 1]);
  });

  it("follows the content hash in hash mode", async () => {
    const { cursors } = await runScript("hash", [{ value: 1, contentHash: "h1" }, { value: 2, contentHash: "h2" }, { value: 2, contentHash: "h2" }]);
    expect(cursors.map((c) => c.hash)).toEqual([undefined, "h1", "h2"]);
  });

  it("rate limits requests that return at once", async () => {
    const { clock } = await runScript("index", [{ value: 1, index: 1 }, { value: 2, index: 1 }, { value: 3, index: 1 }], { minIntervalMs: 250 });
    expect(clock.sleeps).toEqual([250, 250]);
  });

  it("backs off exponentially on errors, restarts from a fresh read, and recovers once a blocking request succeeds", async () => {
    const { errors, recovered, clock, cursors, changes } = await runScript("index", [
      { value: "a", index: 7 },
      new Error("down"),
      new Error("down"),
      new Error("down"),
      { value: "b", index: 9 },
      { value: "b", index: 9 },
    ]);
    expect(errors).toEqual([1, 2, 3]);
    expect(recovered).toBe(1);
    expect(clock.sleeps).toEqual([250, 500, 1000]);
    // The fresh read, then a blocking one with a short wait: it is what shows the agent healthy.
    expect(cursors[4]).toEqual({ waitSeconds: 1 });
    expect(cursors[5]).toEqual({ index: 9, waitSeconds: 1 });
    expect(changes).toEqual(["a", "b"]);
  });

  it("does not call a cached non-blocking answer a recovery: an agent without servers fails every blocking request", async () => {
    // The CA roots watch while the cluster has no leader: the agent answers fresh reads from its cache.
    const { errors, recovered, clock, changes } = await runScript("index", [
      { value: "roots", index: 7 },
      new Error("No cluster leader"),
      { value: "roots", index: 7 },
      new Error("No cluster leader"),
      { value: "roots", index: 7 },
      new Error("No cluster leader"),
      { value: "roots", index: 7 },
      { value: "roots", index: 8 },
    ]);
    expect(errors).toEqual([1, 2, 3]);
    expect(clock.sleeps).toEqual([250, 500, 1000]);
    expect(recovered).toBe(1);
    expect(changes).toEqual(["roots"]);
  });

  it("paces replies that carry no index (or hash) as a poll, not at the rate limit", async () => {
    const index = await runScript("index", [{ value: 1, index: 4 }, { value: 1 }, { value: 1 }, { value: 1, index: 5 }]);
    expect(index.clock.sleeps).toEqual([10_000, 10_000]);
    const hash = await runScript("hash", [{ value: 1 }, { value: 1, contentHash: "h" }]);
    expect(hash.clock.sleeps).toEqual([10_000]);
  });

  it("treats a value the consumer throws on as a failed request: backoff, and delivered again next time", async () => {
    let refusals = 1;
    const { errors, clock, changes, cursors } = await runScript(
      "index",
      [{ value: "bad", index: 3 }, { value: "bad", index: 3 }, { value: "good", index: 4 }],
      { onChange: (value) => { if (value === "bad" && refusals-- > 0) throw new TypeError("cannot read it"); } },
    );
    expect(errors).toEqual([1]);
    expect(clock.sleeps).toEqual([250]);
    expect(cursors[1]).toEqual({ waitSeconds: 1 });
    expect(changes).toEqual(["bad", "good"]);
  });

  it("sleeps the poll interval in poll mode", async () => {
    const { clock } = await runScript("poll", [{ value: 1 }, { value: 1 }]);
    expect(clock.sleeps).toEqual([10_000, 10_000]);
  });

  it("stops at once when cancelled, mid-request", async () => {
    const controller = new AbortController();
    let calls = 0;
    const done = runBlockingWatch({
      description: "test",
      mode: "index",
      clock: fakeClock(),
      signal: controller.signal,
      fetchPage: (_cursor, signal) =>
        new Promise<ConsulPage<unknown>>((_resolve, reject) => {
          calls++;
          signal.addEventListener("abort", () => reject(new Error("aborted")));
        }),
      onChange: () => {},
      onError: () => {
        throw new Error("an abort is not an error");
      },
    });
    setTimeout(() => controller.abort(), 10);
    await done;
    expect(calls).toBe(1);
  });
});
