// Every process a test, a benchmark or the demo starts is registered here and
// stopped by pid: when its user stops it, on Ctrl-C or SIGTERM
// (installCleanupHandlers), and, as a last resort, when Node exits.
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { closeSync, existsSync, openSync, readFileSync } from "node:fs";
import { once } from "node:events";
import { descendantPids } from "./process-stats.js";

export interface StartOptions extends SpawnOptions {
  /** A taskset CPU list ("1") to pin the process to; taskset execs the command, so the pid is the command's own. */
  cpu?: string;
  /**
   * Writes stdout and stderr to this file (truncated) instead of a pipe: a
   * process that logs a line per connection must not make this Node process
   * part of a measured data path.
   */
  logFile?: string;
  /**
   * stop() also stops, by pid, the descendants seen while the process ran (a
   * controller's HAProxy), should it leave them behind. Off by default: tests
   * kill a controller on purpose and expect its HAProxy to keep serving.
   */
  stopDescendants?: boolean;
}

export interface StartedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  readonly logFile?: string;
  /** What the process wrote, stdout and stderr interleaved; only the last `tail` characters if given. */
  output(tail?: number): string;
  /** True once the process has exited. */
  exited(): boolean;
  /** Its exit code, or the signal that ended it; undefined while it runs. */
  exitStatus(): number | NodeJS.Signals | undefined;
  /** Sends `signal` (SIGTERM by default), then SIGKILL after `graceMs`; resolves when it is gone. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
  /** How the last stop() went: how long it took, and whether it needed SIGKILL. */
  readonly stopped?: { ms: number; forced: boolean };
  /** Remembers its current descendants, so that stop() can reach them (with stopDescendants). */
  noteDescendants(): void;
}

interface Registered {
  readonly pid: number;
  readonly descendants: Set<number>;
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

const running = new Set<Registered>();

/** `command args`, or `taskset -c cpu command args`. */
function pinned(command: string, args: string[], cpu: string | undefined): [string, string[]] {
  return cpu === undefined ? [command, args] : ["taskset", ["-c", cpu, command, ...args]];
}

export function startProcess(name: string, command: string, args: string[], options: StartOptions = {}): StartedProcess {
  const { cpu, logFile, stopDescendants = false, ...spawnOptions } = options;
  const [file, argv] = pinned(command, args, cpu);
  const fd = logFile === undefined ? undefined : openSync(logFile, "w");
  const child = spawn(file, argv, { ...spawnOptions, stdio: ["ignore", fd ?? "pipe", fd ?? "pipe"] });
  if (fd !== undefined) closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  let log = "";
  const append = (chunk: Buffer) => {
    log += chunk.toString();
    if (log.length > 1_000_000) log = log.slice(-500_000);
  };
  child.stdout?.on("data", append);
  child.stderr?.on("data", append);
  let status: number | NodeJS.Signals | undefined;
  const exitedPromise = once(child, "exit").then((args) => {
    const [code, signal] = args as [number | null, NodeJS.Signals | null];
    status = signal ?? code ?? "SIGKILL";
  });
  const descendants = new Set<number>();
  const started: StartedProcess & Registered & { stopped?: { ms: number; forced: boolean } } = {
    name,
    child,
    pid: child.pid,
    logFile,
    descendants,
    output(tail?: number) {
      const text = logFile === undefined ? log : existsSync(logFile) ? readFileSync(logFile, "utf8") : "";
      return tail === undefined ? text : text.slice(-tail);
    },
    exited: () => status !== undefined,
    exitStatus: () => status,
    noteDescendants() {
      if (stopDescendants && status === undefined) for (const pid of descendantPids(child.pid!)) descendants.add(pid);
    },
    async stop(signal = "SIGTERM", graceMs = 5000) {
      try {
        if (status === undefined) {
          const begun = Date.now();
          let forced = false;
          started.noteDescendants();
          child.kill(signal);
          const timer = setTimeout(() => {
            forced = true;
            child.kill("SIGKILL");
          }, graceMs);
          await exitedPromise;
          clearTimeout(timer);
          started.stopped = { ms: Date.now() - begun, forced };
        }
        await stopLeftovers(descendants, graceMs);
      } finally {
        running.delete(started);
      }
    },
  };
  running.add(started);
  return started;
}

/** Signals a pid that may have exited meanwhile. */
function signalPid(pid: number, signal: NodeJS.Signals): void {
  try {
    process.kill(pid, signal);
  } catch {
    // already gone
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** SIGTERM, then SIGKILL after `graceMs`, to pids we saw as a process's descendants. */
async function stopLeftovers(pids: Set<number>, graceMs: number): Promise<void> {
  const left = [...pids].filter(alive);
  if (!left.length) return;
  for (const pid of left) signalPid(pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && left.some(alive)) await sleep(50);
  for (const pid of left.filter(alive)) signalPid(pid, "SIGKILL");
}

/** Runs a command to completion (killed after `timeoutMs`); resolves with its exit code (or signal) and output. */
export function runCommand(
  command: string,
  args: string[],
  { timeoutMs = 120_000, env, cpu, cwd }: { timeoutMs?: number; env?: NodeJS.ProcessEnv; cpu?: string; cwd?: string } = {},
): Promise<{ code: number | NodeJS.Signals; stdout: string; stderr: string }> {
  const [file, argv] = pinned(command, args, cpu);
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"], env: env ?? process.env, cwd });
    const registered: Registered = { pid: child.pid ?? 0, descendants: new Set(), stop: async () => void child.kill("SIGKILL") };
    running.add(registered);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (chunk: Buffer) => (stdout += chunk.toString()));
    child.stderr.on("data", (chunk: Buffer) => (stderr += chunk.toString()));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      running.delete(registered);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running.delete(registered);
      resolve({ code: code ?? signal ?? "SIGKILL", stdout, stderr });
    });
  });
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop("SIGTERM", 3000).catch(() => undefined)));
}

process.on("exit", () => {
  for (const p of running) {
    signalPid(p.pid, "SIGKILL");
    for (const pid of p.descendants) signalPid(pid, "SIGKILL");
  }
});

const interruptCallbacks: (() => void)[] = [];
/** Runs `callback` (synchronously) when the program is interrupted, after its processes are stopped. */
export function onInterrupt(callback: () => void): void {
  interruptCallbacks.push(callback);
}

let handlersInstalled = false;
/** For programs (benchmarks, the demo): Ctrl-C / SIGTERM stop everything started here, then exit 130 / 143. */
export function installCleanupHandlers(log: (message: string) => void = console.error, program = "harness"): void {
  if (handlersInstalled) return;
  handlersInstalled = true;
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals, code: number) => async () => {
    if (stopping) return;
    stopping = true;
    log(`${program}: ${signal}: stopping ${running.size} process(es)`);
    await stopAll();
    for (const callback of interruptCallbacks) {
      try {
        callback();
      } catch {
        // the others still run
      }
    }
    process.exit(code);
  };
  process.on("SIGINT", onSignal("SIGINT", 130));
  process.on("SIGTERM", onSignal("SIGTERM", 143));
}

/** waitFor for a yes/no condition: polls until `condition` holds. */
export async function waitUntil(
  what: string,
  condition: () => Promise<boolean>,
  options: { timeoutMs?: number; intervalMs?: number; process?: StartedProcess | readonly StartedProcess[] } = {},
): Promise<void> {
  await waitFor(what, async () => ((await condition()) ? true : undefined), options);
}

/** For programs: runs `main` and exits with the code it resolves to; if it throws, says so, stops every process still registered and exits 1. */
export function runProgram(program: string, main: () => Promise<number>): void {
  main().then(
    (code) => process.exit(code),
    async (err: unknown) => {
      console.error(`${program}: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}`);
      await stopAll();
      process.exit(1);
    },
  );
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** HAProxy's traffic log line (`client:port [date] frontend …`): many alike, rarely the reason. */
const trafficLine = /^\S+:\d+ \[\d\d\/\w{3}\/\d{4}:/;

/**
 * A process's last words for a failure message: its last 3,000 characters of
 * lines other than traffic lines (a sidecar's controller and HAProxy messages,
 * which the traffic of a waiting loop would push out), then the last three
 * traffic lines and how many were left out.
 */
export function lastWords(output: string): string {
  const lines = output.split("\n");
  const traffic = lines.filter((line) => trafficLine.test(line));
  const rest = lines.filter((line) => !trafficLine.test(line)).join("\n").slice(-3000);
  if (traffic.length === 0) return rest;
  return `${rest}\n(${traffic.length} traffic lines; the last three:)\n${traffic.slice(-3).join("\n")}`;
}

/**
 * Polls `probe` until it returns a value other than undefined, or fails with
 * the last reason and the watched processes' last output; fails at once when
 * a watched process exits.
 */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  {
    timeoutMs = 30_000,
    intervalMs = 50,
    process: watched,
  }: { timeoutMs?: number; intervalMs?: number; process?: StartedProcess | readonly StartedProcess[] } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  const watchedList: readonly StartedProcess[] = watched === undefined ? [] : Array.isArray(watched) ? watched : [watched as StartedProcess];
  let lastError: unknown;
  for (;;) {
    const gone = watchedList.find((p) => p.exited());
    if (gone) throw new Error(`${what}: ${gone.name} exited (${gone.exitStatus()}):\n${gone.output(4000)}`);
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const reason = lastError instanceof Error ? lastError.message : String(lastError ?? "no answer");
      // What the watched processes said last is usually why (a flake seen once in CI needs it to be understood).
      const said = watchedList.map((p) => `\n--- ${p.name}, last output:\n${lastWords(p.output())}`).join("");
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${reason})${said}`);
    }
    await sleep(intervalMs);
  }
}
