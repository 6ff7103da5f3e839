// The soak's 2-minute version (the 10-minute one: npm run soak, bench/soak.mjs):
// the same code (test/harness/soak.ts), the same promises. It lives outside
// test/integration/ so that scripts/test.sh runs it once, on the default
// HAProxy, and not again for each HAProxy of the matrix.
import { mkdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { repoRoot } from "../harness/paths.js";
import { runSoak } from "../harness/soak.js";
import { soakMarkdown } from "../harness/soak-report.js";

const durationMs = 120_000;

describe("soak (2 minutes)", () => {
  it("lets no denied connection through, fails no allowed one outside the documented windows, and does not grow", async () => {
    const summary = await runSoak({ durationMs, log: (line) => console.log(line) });
    const report = soakMarkdown(summary);
    const results = join(repoRoot, ".cache", "test-results");
    mkdirSync(results, { recursive: true });
    writeFileSync(join(results, "soak.md"), report);
    writeFileSync(join(results, "soak.json"), `${JSON.stringify(summary, null, 2)}\n`);
    console.log(report);

    expect(summary.total.wronglyAllowed).toBe(0);
    expect(summary.total.allowedFailed).toBe(0);
    expect(summary.problems).toEqual([]);
    // Every kind of event ran, and each flip was enforced within its grace window.
    expect(new Set(summary.events.map((e) => e.name))).toEqual(new Set(["flip-allow", "flip-deny", "instance-join", "instance-leave", "controller-takeover", "controller-restart", "ca-rotation"]));
    for (const flip of summary.flips) expect(flip.enforcedAfterMs, `flip of ${flip.flow} to ${flip.verdict}`).toBeLessThanOrEqual(summary.graceMs);
    // The rotation renewed the leaves of the sidecars that ran through it (a reload or a runtime
    // swap each): db-1, web and evil at least (api's restart at +65 s may start with the new leaf).
    expect(summary.changesApplied.leafRenewals).toBeGreaterThanOrEqual(3);
  }, durationMs + 180_000);
});
