// CPU time and memory of processes, read from /proc (Linux): what the
// benchmarks account, and what stop() uses to find what a process left behind.
import { readFileSync, readdirSync } from "node:fs";

/** USER_HZ: 100 on every Linux this runs on (sysconf(_SC_CLK_TCK)). */
const CLOCK_TICKS = 100;

/** The fields of /proc/<pid>/stat after the command name (which may hold spaces). */
function statFields(pid: number | string): string[] {
  const text = readFileSync(`/proc/${pid}/stat`, "utf8");
  return text.slice(text.lastIndexOf(")") + 2).split(" ");
}

/** utime + stime of one process in seconds; undefined once it is gone. */
export function cpuSeconds(pid: number): number | undefined {
  try {
    const fields = statFields(pid);
    // fields[0] is field 3 (state): utime is field 14, stime field 15.
    return (Number(fields[11]) + Number(fields[12])) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

/**
 * utime alone: the process's own code (Lua included), without the kernel's
 * network work, which varies most between runs on a shared machine.
 */
export function userCpuSeconds(pid: number): number | undefined {
  try {
    return Number(statFields(pid)[11]) / CLOCK_TICKS;
  } catch {
    return undefined;
  }
}

function statusKb(pid: number, key: string): number | undefined {
  try {
    const match = new RegExp(`^${key}:\\s+(\\d+) kB`, "m").exec(readFileSync(`/proc/${pid}/status`, "utf8"));
    return match ? Number(match[1]) : undefined;
  } catch {
    return undefined;
  }
}

/** Peak resident set size (VmHWM) in kB. */
export const peakRssKb = (pid: number) => statusKb(pid, "VmHWM");
export const rssKb = (pid: number) => statusKb(pid, "VmRSS");
/** Resident anonymous memory (RssAnon) in kB: the process's own heap and stacks, not the binaries' pages that every process of the same program shares. */
export const anonRssKb = (pid: number) => statusKb(pid, "RssAnon");

/** Every live descendant of `pid` (children, grandchildren, ...). */
export function descendantPids(pid: number): number[] {
  const childrenOf = new Map<number, number[]>();
  for (const entry of readdirSync("/proc")) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const parent = Number(statFields(entry)[1]);
      if (!childrenOf.has(parent)) childrenOf.set(parent, []);
      childrenOf.get(parent)!.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  const found: number[] = [];
  const queue = [pid];
  while (queue.length) {
    for (const child of childrenOf.get(queue.shift()!) ?? []) {
      found.push(child);
      queue.push(child);
    }
  }
  return found;
}

export function commandName(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, "utf8").trim();
  } catch {
    return undefined;
  }
}

/** A process measured as the root of a group: what startProcess returns will do. */
export interface MeasuredRoot {
  readonly name: string;
  readonly pid: number;
  noteDescendants?(): void;
}

/** CPU seconds per pid, as one sample saw them. */
export type CpuSample = Map<number, number>;

/**
 * A group of processes measured together (one sidecar: the controller and its
 * HAProxy master and workers). Roots are given; descendants are found at each
 * sample, so workers started by a reload are counted from their start.
 */
export class ProcessGroup<Root extends MeasuredRoot = MeasuredRoot> {
  readonly peakKb = new Map<number, number>();
  /** Largest RssAnon seen per process. */
  readonly peakAnonKb = new Map<number, number>();
  readonly commands = new Map<number, string>();

  constructor(
    readonly name: string,
    public roots: Root[],
  ) {}

  pids(): number[] {
    const pids = new Set<number>();
    for (const root of this.roots) {
      if (cpuSeconds(root.pid) === undefined) continue;
      pids.add(root.pid);
      root.noteDescendants?.();
      for (const pid of descendantPids(root.pid)) pids.add(pid);
    }
    return [...pids];
  }

  /** CPU seconds per live pid, and the peak RSS seen so far per pid. */
  sample(): CpuSample {
    const cpu: CpuSample = new Map();
    for (const pid of this.pids()) {
      const seconds = cpuSeconds(pid);
      if (seconds === undefined) continue;
      cpu.set(pid, seconds);
      if (!this.commands.has(pid)) this.commands.set(pid, commandName(pid) ?? "?");
      const peak = peakRssKb(pid);
      if (peak !== undefined) this.peakKb.set(pid, Math.max(this.peakKb.get(pid) ?? 0, peak));
      const anon = anonRssKb(pid);
      if (anon !== undefined) this.peakAnonKb.set(pid, Math.max(this.peakAnonKb.get(pid) ?? 0, anon));
    }
    return cpu;
  }

  /** Sum of the peak RSS of every process of the group seen so far (an upper bound of the group's peak). */
  peakRssKb(): number {
    let sum = 0;
    for (const kb of this.peakKb.values()) sum += kb;
    return sum;
  }

  /** Sum of the largest anonymous resident memory of every process seen (sampled, so a lower bound of the true peak). */
  peakAnonRssKb(): number {
    let sum = 0;
    for (const kb of this.peakAnonKb.values()) sum += kb;
    return sum;
  }

  /** Processes by name with their peak RSS, for the JSON. */
  describePeaks(): { pid: number; command: string; peakRssKb: number }[] {
    return [...this.peakKb].map(([pid, kb]) => ({ pid, command: this.commands.get(pid) ?? "?", peakRssKb: kb }));
  }

  /** CPU seconds between two samples, by command name (node = the controller, haproxy, consul). */
  cpuByCommand(before: CpuSample, after: CpuSample): Record<string, number> {
    const byCommand: Record<string, number> = {};
    for (const [pid, seconds] of after) {
      const command = this.commands.get(pid) ?? "?";
      byCommand[command] = (byCommand[command] ?? 0) + seconds - (before.get(pid) ?? 0);
    }
    return byCommand;
  }
}

/** CPU seconds spent between two samples (a pid that appeared counts from zero). */
export function cpuBetween(before: CpuSample, after: CpuSample): number {
  let total = 0;
  for (const [pid, seconds] of after) total += seconds - (before.get(pid) ?? 0);
  return total;
}

/** Jiffies of the whole machine from /proc/stat: busy and total. */
export function machineCpu(): { busySeconds: number; totalSeconds: number } {
  const line = readFileSync("/proc/stat", "utf8").split("\n")[0]!;
  const values = line.trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal guest guest_nice; guest is inside user.
  const [user = 0, nice = 0, system = 0, idle = 0, iowait = 0, irq = 0, softirq = 0, steal = 0] = values;
  const busy = user + nice + system + irq + softirq + steal;
  return { busySeconds: busy / CLOCK_TICKS, totalSeconds: (busy + idle + iowait) / CLOCK_TICKS };
}
