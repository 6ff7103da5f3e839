// The soak's pure part (test/harness/soak.ts runs it): which verdict each
// connection should have met at the moment it was made, how each one is
// classified, the per-minute table, the resource bounds, and the report.
// No I/O here: the unit tests feed it made-up attempts and samples.

/** A flow of traffic: one client identity to one destination, through the client's sidecar. */
export type Verdict = "allow" | "deny";

/** One connection (TCP) or request (HTTP, on its own connection), as the client saw it. */
export interface Attempt {
  flow: string;
  /** Epoch ms when it was opened, and when the client had its answer (or gave up). */
  start: number;
  end: number;
  /** The destination application's own answer came back (db: `<name> answered: …`; api: 200 `api GET …`). */
  answered: boolean;
  /** Who answered (db, db-2, api), or why nothing did (ECONNREFUSED, closed, timeout, HTTP 403, …). */
  detail: string;
}

/** An intention written: from `at` (before the PUT was sent) the flow's expected verdict is `verdict`. */
export interface VerdictChange {
  flow: string;
  at: number;
  verdict: Verdict;
}

/** A documented window in which an allowed connection of `flows` may fail (e.g. a controller stopped by SIGTERM). */
export interface FailureWindow {
  name: string;
  flows: string[];
  from: number;
  to: number;
}

export type Classification =
  | "allowed-succeeded"
  | "allowed-failed"
  | "allowed-failed-in-window"
  | "denied-refused"
  | "denied-answered"
  | "grace-answered"
  | "grace-refused";

/**
 * How long after an intention is written both verdicts are accepted on its
 * flow. The controller and the authorizer enforce a flip in about 10 ms
 * (docs/controller.md, benchmark: median 7 ms, max 19 ms); the window adds
 * Consul's blocking query to the agent's intention cache, the authorizer's
 * intentions watch, and a connection opened just before the write and decided
 * just after it. A flip not enforced within it shows as wrongly allowed or
 * failed allowed connections, never hidden.
 */
export const defaultGraceMs = 1000;

/** Pure: the flow's changes (oldest first), each with its verdict. */
function changesOf(flow: string, changes: readonly VerdictChange[]): VerdictChange[] {
  return changes.filter((change) => change.flow === flow).sort((a, b) => a.at - b.at);
}

const overlaps = (start: number, end: number, from: number, to: number) => start <= to && end >= from;

/**
 * Pure: what one attempt was. Its expected verdict is the last change written
 * before it opened; a connection open at any moment of a grace window (from a
 * change's write to `graceMs` after) may have either verdict. The first change
 * of each flow is its initial state (written before traffic began), so it has
 * no grace window.
 */
export function classifyAttempt(attempt: Attempt, changes: readonly VerdictChange[], windows: readonly FailureWindow[], graceMs = defaultGraceMs): Classification {
  const flowChanges = changesOf(attempt.flow, changes);
  if (flowChanges.length === 0) throw new Error(`flow ${attempt.flow} has no intention: its expected verdict is unknown`);
  const inGrace = flowChanges.slice(1).some((change) => overlaps(attempt.start, attempt.end, change.at, change.at + graceMs));
  if (inGrace) return attempt.answered ? "grace-answered" : "grace-refused";
  const expected = [...flowChanges].reverse().find((change) => change.at <= attempt.start)?.verdict ?? flowChanges[0]!.verdict;
  if (expected === "deny") return attempt.answered ? "denied-answered" : "denied-refused";
  if (attempt.answered) return "allowed-succeeded";
  const inWindow = windows.some((window) => window.flows.includes(attempt.flow) && overlaps(attempt.start, attempt.end, window.from, window.to));
  return inWindow ? "allowed-failed-in-window" : "allowed-failed";
}

export interface Counts {
  connections: number;
  allowedSucceeded: number;
  /** Allowed connections that failed outside every documented window: 0 is the promise. */
  allowedFailed: number;
  allowedFailedInWindows: number;
  deniedRefused: number;
  /** Denied connections the destination answered: always 0. */
  wronglyAllowed: number;
  graceAnswered: number;
  graceRefused: number;
}

export const emptyCounts = (): Counts => ({ connections: 0, allowedSucceeded: 0, allowedFailed: 0, allowedFailedInWindows: 0, deniedRefused: 0, wronglyAllowed: 0, graceAnswered: 0, graceRefused: 0 });

const countKey: Record<Classification, keyof Counts> = {
  "allowed-succeeded": "allowedSucceeded",
  "allowed-failed": "allowedFailed",
  "allowed-failed-in-window": "allowedFailedInWindows",
  "denied-refused": "deniedRefused",
  "denied-answered": "wronglyAllowed",
  "grace-answered": "graceAnswered",
  "grace-refused": "graceRefused",
};

export function addTo(counts: Counts, classification: Classification): void {
  counts.connections += 1;
  counts[countKey[classification]] += 1;
}

/** One sample of a sidecar's processes (soak.ts reads /proc every few seconds). */
export interface ResourceSample {
  at: number;
  sidecar: string;
  /** The controller (node) process: resident memory and open descriptors. */
  controllerRssKb: number;
  controllerFds: number;
  /** Every HAProxy process of the sidecar (master and workers, old ones still finishing included). */
  haproxyRssKb: number;
  haproxyFds: number;
  haproxyProcesses: number;
}

/** A line of a controller's log that changed HAProxy: a reload (or a new master) or a runtime operation. */
export interface AppliedChange {
  at: number;
  sidecar: string;
  kind: "reload" | "runtime";
  change: string;
}

/** Pure: a controller's log line → the change it applied, if it says one (the `applied change` lines, docs/controller.md). */
export function parseAppliedChange(line: string, sidecar: string): AppliedChange | undefined {
  const match = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) INFO  applied change change=("(?:[^"\\]|\\.)*"|\S+) path="?([^"]*)"?/.exec(line);
  if (!match) return undefined;
  const change = match[2]!.startsWith('"') ? (JSON.parse(match[2]!) as string) : match[2]!;
  const path = match[3]!;
  const kind = /reload|new master/.test(path) ? "reload" : /^runtime API|^stats socket|^authorizer control/.test(path) ? "runtime" : undefined;
  return kind ? { at: Date.parse(match[1]!), sidecar, kind, change } : undefined;
}

/** A controller's line saying its HAProxy died (a crash: the controller restarts it). */
export interface HaproxyExit {
  at: number;
  sidecar: string;
  line: string;
  /** The core file HAProxy left, when it left one (the soak runs the sidecars with core dumps on). */
  core?: string;
}

/** Pure: `HAProxy exited unexpectedly; restarting it code=139 …` → the exit, if the line says one. */
export function parseHaproxyExit(line: string, sidecar: string): HaproxyExit | undefined {
  const match = /^(\d{4}-\d\d-\d\dT[\d:.]+Z) ERROR HAProxy exited unexpectedly/.exec(line);
  return match ? { at: Date.parse(match[1]!), sidecar, line } : undefined;
}

export interface MinuteRow extends Counts {
  minute: number;
  reloads: number;
  runtimeOperations: number;
  /** Medians over the minute's samples, summed over the sidecars (MB, count). */
  controllerRssMb: number;
  haproxyRssMb: number;
  controllerFds: number;
  haproxyFds: number;
}

export interface EventRecord {
  name: string;
  /** Epoch ms it began and ended (the scheduler's own work: a PUT, a restart until serving). */
  from: number;
  to: number;
  note?: string;
}

export interface FlipEnforcement {
  flow: string;
  verdict: Verdict;
  at: number;
  /** From the write to the first attempt after which every attempt (until the next change) met the new verdict; undefined if none did. */
  enforcedAfterMs?: number;
  /** Attempts opened after the write, and closed before the next one, that still met the old verdict. */
  oldVerdictAttempts: number;
}

/** Pure: per flip (not the initial state), how long the old verdict was still seen. */
export function flipEnforcement(attempts: readonly Attempt[], changes: readonly VerdictChange[]): FlipEnforcement[] {
  const flows = [...new Set(changes.map((change) => change.flow))];
  const result: FlipEnforcement[] = [];
  for (const flow of flows) {
    const flowChanges = changesOf(flow, changes);
    flowChanges.forEach((change, index) => {
      if (index === 0) return;
      const until = flowChanges[index + 1]?.at ?? Infinity;
      // A connection still open when the next change is written is in that
      // change's grace window (classifyAttempt): it meets neither verdict.
      const after = attempts.filter((a) => a.flow === flow && a.start >= change.at && a.end < until).sort((a, b) => a.start - b.start);
      const meetsNew = (a: Attempt) => a.answered === (change.verdict === "allow");
      const lastOld = after.map(meetsNew).lastIndexOf(false);
      const firstSettled = after[lastOld + 1];
      result.push({
        flow,
        verdict: change.verdict,
        at: change.at,
        enforcedAfterMs: firstSettled ? firstSettled.start - change.at : undefined,
        oldVerdictAttempts: after.filter((a) => !meetsNew(a)).length,
      });
    });
  }
  return result.sort((a, b) => a.at - b.at);
}

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}

const round1 = (value: number) => Math.round(value * 10) / 10;

/** Pure: the minute table (minute 1 is the first minute of traffic, from `startedAt`). */
export function minuteRows(
  startedAt: number,
  durationMs: number,
  attempts: readonly Attempt[],
  classify: (attempt: Attempt) => Classification,
  samples: readonly ResourceSample[],
  applied: readonly AppliedChange[],
): MinuteRow[] {
  const minutes = Math.max(1, Math.ceil(durationMs / 60_000));
  const minuteOf = (at: number) => Math.min(minutes - 1, Math.max(0, Math.floor((at - startedAt) / 60_000)));
  const rows: MinuteRow[] = Array.from({ length: minutes }, (_, index) => ({ minute: index + 1, ...emptyCounts(), reloads: 0, runtimeOperations: 0, controllerRssMb: 0, haproxyRssMb: 0, controllerFds: 0, haproxyFds: 0 }));
  for (const attempt of attempts) addTo(rows[minuteOf(attempt.start)]!, classify(attempt));
  for (const change of applied) {
    if (change.at < startedAt) continue;
    const row = rows[minuteOf(change.at)]!;
    if (change.kind === "reload") row.reloads += 1;
    else row.runtimeOperations += 1;
  }
  rows.forEach((row, index) => {
    const inMinute = samples.filter((sample) => minuteOf(sample.at) === index && sample.at >= startedAt);
    const sidecars = [...new Set(inMinute.map((sample) => sample.sidecar))];
    const perSidecar = (pick: (sample: ResourceSample) => number) => sidecars.reduce((sum, sidecar) => sum + median(inMinute.filter((s) => s.sidecar === sidecar).map(pick)), 0);
    row.controllerRssMb = round1(perSidecar((s) => s.controllerRssKb) / 1024);
    row.haproxyRssMb = round1(perSidecar((s) => s.haproxyRssKb) / 1024);
    row.controllerFds = Math.round(perSidecar((s) => s.controllerFds));
    row.haproxyFds = Math.round(perSidecar((s) => s.haproxyFds));
  });
  return rows;
}

/**
 * Growth allowed between the reference minute (minute 2, or minute 1 in a
 * run shorter than 3 minutes) and the last one, per sidecar that ran the
 * whole time, on the minute's median:
 * - controller RSS: 10 MB. A controller idles at 50-60 MB and V8 moves a few
 *   MB between collections; a leak of 1 kB per connection (about 1,300 a
 *   minute reach each sidecar) would add 10 MB in 8 minutes.
 * - HAProxy RSS (master + workers): 10 MB. A reload's old worker lives until
 *   its last connection ends (short connections here), and the median over
 *   the minute keeps it out; what stays is the master and one worker.
 * - descriptors: 10 per process group. Connections in flight (a few at a time)
 *   and the Consul watches' keep-alive sockets; a descriptor leaked per
 *   connection or per reload would exceed it within a minute.
 */
export const growthBounds = { controllerRssKb: 10 * 1024, haproxyRssKb: 10 * 1024, controllerFds: 10, haproxyFds: 10 };

export interface GrowthCheck {
  sidecar: string;
  what: keyof typeof growthBounds;
  reference: number;
  last: number;
  bound: number;
  ok: boolean;
}

/** Pure: the growth of each measure from the reference minute to the last, for the sidecars sampled in both. */
export function growthChecks(startedAt: number, durationMs: number, samples: readonly ResourceSample[], sidecars: readonly string[]): GrowthCheck[] {
  const minutes = Math.max(1, Math.ceil(durationMs / 60_000));
  const referenceMinute = minutes >= 3 ? 1 : 0;
  const lastMinute = minutes - 1;
  const minuteOf = (at: number) => Math.min(minutes - 1, Math.floor((at - startedAt) / 60_000));
  const inMinute = (sidecar: string, minute: number) => samples.filter((s) => s.sidecar === sidecar && s.at >= startedAt && minuteOf(s.at) === minute);
  const checks: GrowthCheck[] = [];
  for (const sidecar of sidecars) {
    const reference = inMinute(sidecar, referenceMinute);
    const last = inMinute(sidecar, lastMinute);
    if (reference.length === 0 || last.length === 0 || referenceMinute === lastMinute) continue;
    for (const what of Object.keys(growthBounds) as (keyof typeof growthBounds)[]) {
      const before = median(reference.map((s) => s[what]));
      const after = median(last.map((s) => s[what]));
      checks.push({ sidecar, what, reference: before, last: after, bound: growthBounds[what], ok: after - before <= growthBounds[what] });
    }
  }
  return checks;
}

export interface WindowCount extends FailureWindow {
  /** Attempts of the window's flows open during it, and those allowed ones that failed. */
  attempts: number;
  failed: number;
  /** First to last failure in the window (ms), if any failed. */
  failureSpanMs?: number;
}

export function windowCounts(windows: readonly FailureWindow[], attempts: readonly Attempt[], classify: (attempt: Attempt) => Classification): WindowCount[] {
  return windows.map((window) => {
    const inside = attempts.filter((a) => window.flows.includes(a.flow) && overlaps(a.start, a.end, window.from, window.to));
    const failed = inside.filter((a) => classify(a) === "allowed-failed-in-window");
    const span = failed.length ? Math.max(...failed.map((a) => a.end)) - Math.min(...failed.map((a) => a.start)) : undefined;
    return { ...window, attempts: inside.length, failed: failed.length, ...(span === undefined ? {} : { failureSpanMs: span }) };
  });
}

/** Pure: what the soak promises, as problems (empty: it held). */
export function soakProblems(total: Counts, perFlow: Record<string, Counts>, growth: readonly GrowthCheck[]): string[] {
  const problems: string[] = [];
  if (total.wronglyAllowed > 0) problems.push(`${total.wronglyAllowed} denied connection(s) answered by the destination (wrongly allowed)`);
  if (total.allowedFailed > 0) problems.push(`${total.allowedFailed} allowed connection(s) failed outside the documented windows`);
  for (const [flow, counts] of Object.entries(perFlow)) if (counts.connections < 10) problems.push(`flow ${flow} made only ${counts.connections} connection(s)`);
  for (const check of growth.filter((c) => !c.ok)) problems.push(`${check.sidecar}: ${check.what} grew from ${check.reference} to ${check.last} (bound +${check.bound})`);
  return problems;
}

export type SoakEventKind = "flip-allow" | "flip-deny" | "instance-join" | "instance-leave" | "controller-takeover" | "controller-restart" | "ca-rotation";

/** What one 100 s cycle does, at these seconds into it. */
const cycle: [number, SoakEventKind][] = [
  [5, "flip-allow"],
  [15, "instance-join"],
  [25, "flip-deny"],
  [35, "controller-takeover"],
  [42, "ca-rotation"],
  [50, "instance-leave"],
  [65, "controller-restart"],
  [80, "flip-allow"],
  [90, "flip-deny"],
];

/** Pure: the events of a run of `durationMs`: the cycle repeated, nothing in the last 10 s. */
export function soakSchedule(durationMs: number): { at: number; kind: SoakEventKind }[] {
  const events: { at: number; kind: SoakEventKind }[] = [];
  for (let start = 0; start < durationMs; start += 100_000) {
    for (const [seconds, kind] of cycle) if (start + seconds * 1000 <= durationMs - 10_000) events.push({ at: start + seconds * 1000, kind });
  }
  return events;
}

export interface SoakInput {
  startedAt: number;
  durationMs: number;
  intervalMs: number;
  graceMs: number;
  haproxyVersion: string;
  runDir: string;
  attempts: Attempt[];
  changes: VerdictChange[];
  windows: FailureWindow[];
  events: EventRecord[];
  samples: ResourceSample[];
  applied: AppliedChange[];
  haproxyExits: HaproxyExit[];
  /** The sidecars that ran the whole time (their growth is checked). */
  steadySidecars: string[];
}

export interface SoakSummary {
  date: string;
  durationMs: number;
  intervalMs: number;
  graceMs: number;
  haproxyVersion: string;
  runDir: string;
  total: Counts;
  perFlow: Record<string, Counts>;
  minutes: MinuteRow[];
  windows: WindowCount[];
  flips: FlipEnforcement[];
  /** Events relative to the start of traffic (ms). */
  events: (EventRecord & { atMs: number; tookMs: number })[];
  changesApplied: { reloads: number; runtimeOperations: number; leafRenewals: number; rootChanges: number; bySidecar: Record<string, { reloads: number; runtimeOperations: number }> };
  growth: GrowthCheck[];
  /** HAProxy processes that died under a controller (crashes), relative to the start of traffic. */
  haproxyExits: (HaproxyExit & { atMs: number })[];
  /** The allowed connections that failed and the denied ones answered, with what the client saw (at most 50). */
  wrongAttempts: (Attempt & { atMs: number; classification: Classification })[];
  problems: string[];
}

/** Pure: the raw record of a run → its summary, with the problems found. */
export function summarizeSoak(input: SoakInput): SoakSummary {
  const classify = (attempt: Attempt) => classifyAttempt(attempt, input.changes, input.windows, input.graceMs);
  const inRun = input.attempts;
  const total = emptyCounts();
  const perFlow: Record<string, Counts> = {};
  for (const attempt of inRun) {
    const classification = classify(attempt);
    addTo(total, classification);
    addTo((perFlow[attempt.flow] ??= emptyCounts()), classification);
  }
  const applied = input.applied.filter((change) => change.at >= input.startedAt);
  const bySidecar: Record<string, { reloads: number; runtimeOperations: number }> = {};
  for (const change of applied) {
    const entry = (bySidecar[change.sidecar] ??= { reloads: 0, runtimeOperations: 0 });
    if (change.kind === "reload") entry.reloads += 1;
    else entry.runtimeOperations += 1;
  }
  const growth = growthChecks(input.startedAt, input.durationMs, input.samples, input.steadySidecars);
  const wrong = inRun
    .map((attempt) => ({ ...attempt, atMs: attempt.start - input.startedAt, classification: classify(attempt) }))
    .filter((a) => a.classification === "allowed-failed" || a.classification === "denied-answered");
  return {
    date: new Date(input.startedAt).toISOString(),
    durationMs: input.durationMs,
    intervalMs: input.intervalMs,
    graceMs: input.graceMs,
    haproxyVersion: input.haproxyVersion,
    runDir: input.runDir,
    total,
    perFlow,
    minutes: minuteRows(input.startedAt, input.durationMs, inRun, classify, input.samples, applied),
    windows: windowCounts(input.windows, inRun, classify),
    flips: flipEnforcement(inRun, input.changes).filter((flip) => flip.at >= input.startedAt),
    events: input.events.map((event) => ({ ...event, atMs: event.from - input.startedAt, tookMs: event.to - event.from })),
    changesApplied: {
      reloads: applied.filter((c) => c.kind === "reload").length,
      runtimeOperations: applied.filter((c) => c.kind === "runtime").length,
      leafRenewals: applied.filter((c) => c.change.includes("leaf certificate renewed")).length,
      rootChanges: applied.filter((c) => /CA roots changed/.test(c.change)).length,
      bySidecar,
    },
    growth,
    haproxyExits: input.haproxyExits.map((exit) => ({ ...exit, atMs: exit.at - input.startedAt })),
    wrongAttempts: wrong.slice(0, 50),
    problems: [...soakProblems(total, perFlow, growth), ...input.haproxyExits.map((exit) => `${exit.sidecar}'s HAProxy exited unexpectedly at +${exit.at - input.startedAt} ms: ${exit.line}${exit.core ? ` (core: ${exit.core})` : ""}`)],
  };
}

const seconds = (ms: number) => `${(ms / 1000).toFixed(1)} s`;

/** Pure: the summary as the markdown report (bench/results/soak.md). */
export function soakMarkdown(summary: SoakSummary): string {
  const lines: string[] = [];
  const { total } = summary;
  lines.push(`# Soak: ${Math.round(summary.durationMs / 60_000)} minutes`, "");
  lines.push(`${summary.date}, ${summary.haproxyVersion}, Consul dev agent (\`npm run soak\`, bench/soak.mjs; what it does: docs/benchmarks.md, "Soak").`, "");
  lines.push(
    `**${summary.problems.length === 0 ? "Held" : "Did not hold"}**: ${total.connections} connections, ${total.wronglyAllowed} wrongly allowed, ` +
      `${total.allowedFailed} allowed connections failed outside the documented windows (${total.allowedFailedInWindows} inside them), ` +
      `${total.graceAnswered + total.graceRefused} in the ${summary.graceMs} ms grace windows after intention flips.`,
    "",
  );
  for (const problem of summary.problems) lines.push(`- problem: ${problem}`);
  if (summary.problems.length) lines.push("");
  lines.push("## Per minute", "");
  lines.push("| minute | connections | allowed ok | failed allowed (outside windows) | failed allowed (in windows) | denied refused | wrongly allowed | grace (answered / refused) | reloads | runtime ops | controllers RSS MB | HAProxy RSS MB | controllers fds | HAProxy fds |");
  lines.push("| --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: | --: |");
  for (const row of summary.minutes) {
    lines.push(
      `| ${row.minute} | ${row.connections} | ${row.allowedSucceeded} | ${row.allowedFailed} | ${row.allowedFailedInWindows} | ${row.deniedRefused} | ${row.wronglyAllowed} | ${row.graceAnswered} / ${row.graceRefused} | ${row.reloads} | ${row.runtimeOperations} | ${row.controllerRssMb} | ${row.haproxyRssMb} | ${row.controllerFds} | ${row.haproxyFds} |`,
    );
  }
  lines.push("", "RSS and descriptors: the minute's median per sidecar, summed over the sidecars running (4, or 5 while db-2 is in).", "");
  lines.push("## Per flow", "", "| flow | connections | allowed ok | failed allowed (outside / in windows) | denied refused | wrongly allowed | grace (answered / refused) |", "| --- | --: | --: | --: | --: | --: | --: |");
  for (const [flow, c] of Object.entries(summary.perFlow)) lines.push(`| ${flow} | ${c.connections} | ${c.allowedSucceeded} | ${c.allowedFailed} / ${c.allowedFailedInWindows} | ${c.deniedRefused} | ${c.wronglyAllowed} | ${c.graceAnswered} / ${c.graceRefused} |`);
  lines.push("", "## Windows", "", "| window | flows | from | length | connections | failed allowed | first to last failure |", "| --- | --- | --: | --: | --: | --: | --: |");
  lines.push(`| intention flips (${summary.flips.length}): both verdicts accepted | the flipped flow | each flip | ${summary.graceMs} ms | ${total.graceAnswered + total.graceRefused} | (either verdict) | |`);
  const start = Date.parse(summary.date);
  for (const w of summary.windows) lines.push(`| ${w.name} | ${w.flows.join(", ")} | +${seconds(w.from - start)} | ${seconds(w.to - w.from)} | ${w.attempts} | ${w.failed} | ${w.failureSpanMs === undefined ? "" : `${w.failureSpanMs} ms`} |`);
  lines.push("", "## Intention flips: enforcement", "", "| at | flow | to | enforced after (ms) | attempts with the old verdict |", "| --: | --- | --- | --: | --: |");
  for (const f of summary.flips) lines.push(`| +${seconds(f.at - start)} | ${f.flow} | ${f.verdict} | ${f.enforcedAfterMs ?? "never"} | ${f.oldVerdictAttempts} |`);
  lines.push("", "\"Enforced after\": from the intention's write to the opening of the first connection after which every connection met the new verdict; it cannot be shorter than the traffic's pace (one connection per flow every " + `${summary.intervalMs} ms or so).`);
  lines.push("", "## Events", "", "| at | event | took | what happened |", "| --: | --- | --: | --- |");
  for (const e of summary.events) lines.push(`| +${seconds(e.atMs)} | ${e.name} | ${seconds(e.tookMs)} | ${e.note ?? ""} |`);
  const a = summary.changesApplied;
  lines.push("", `Changes the controllers applied during the run: ${a.reloads} reloads, ${a.runtimeOperations} runtime operations; ${a.leafRenewals} leaf renewals, ${a.rootChanges} root changes. Per sidecar: ${Object.entries(a.bySidecar).map(([s, c]) => `${s} ${c.reloads} reloads, ${c.runtimeOperations} runtime`).join("; ")}.`);
  lines.push("", "## Growth (reference minute → last minute, median)", "", "| sidecar | measure | reference | last | bound | ok |", "| --- | --- | --: | --: | --: | --- |");
  for (const g of summary.growth) lines.push(`| ${g.sidecar} | ${g.what} | ${g.reference} | ${g.last} | +${g.bound} | ${g.ok ? "yes" : "**no**"} |`);
  if (summary.haproxyExits.length) {
    lines.push("", "## HAProxy exits (crashes)", "", "| at | sidecar | the controller's line |", "| --: | --- | --- |");
    for (const exit of summary.haproxyExits) lines.push(`| +${exit.atMs} ms | ${exit.sidecar} | \`${exit.line}\` |`);
  }
  if (summary.wrongAttempts.length) {
    lines.push("", "## Wrong answers", "", "| at | flow | classification | what the client saw |", "| --: | --- | --- | --- |");
    for (const w of summary.wrongAttempts) lines.push(`| +${w.atMs} ms | ${w.flow} | ${w.classification} | ${w.detail} |`);
  }
  return `${lines.join("\n")}\n`;
}
