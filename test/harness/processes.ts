// Every process a test starts is registered here and stopped by pid: when the
// test stops it, when its file ends, and, as a last resort, when the worker exits.
import { spawn, type ChildProcess, type SpawnOptions } from "node:child_process";
import { once } from "node:events";

export interface StartedProcess {
  readonly name: string;
  readonly child: ChildProcess;
  readonly pid: number;
  /** Everything the process wrote, stdout and stderr interleaved. */
  output(): string;
  /** True once the process has exited. */
  exited(): boolean;
  /** Sends `signal` (SIGTERM by default), then SIGKILL after `graceMs`; resolves when it is gone. */
  stop(signal?: NodeJS.Signals, graceMs?: number): Promise<void>;
}

const running = new Set<StartedProcess>();

export function startProcess(name: string, command: string, args: string[], options: SpawnOptions = {}): StartedProcess {
  const child = spawn(command, args, { stdio: ["ignore", "pipe", "pipe"], ...options });
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  let log = "";
  let hasExited = false;
  const append = (chunk: Buffer) => {
    log += chunk.toString();
    if (log.length > 1_000_000) log = log.slice(-500_000);
  };
  child.stdout?.on("data", append);
  child.stderr?.on("data", append);
  const exitedPromise = once(child, "exit").then(() => {
    hasExited = true;
  });
  const started: StartedProcess = {
    name,
    child,
    pid: child.pid,
    output: () => log,
    exited: () => hasExited,
    async stop(signal = "SIGTERM", graceMs = 5000) {
      running.delete(started);
      if (hasExited) return;
      child.kill(signal);
      const timer = setTimeout(() => child.kill("SIGKILL"), graceMs);
      await exitedPromise;
      clearTimeout(timer);
    },
  };
  running.add(started);
  return started;
}

export async function stopAll(): Promise<void> {
  await Promise.all([...running].map((p) => p.stop()));
}

process.on("exit", () => {
  for (const p of running) p.child.kill("SIGKILL");
});

/** Polls `probe` until it returns a value other than undefined, or fails with the last reason. */
export async function waitFor<T>(
  what: string,
  probe: () => Promise<T | undefined>,
  { timeoutMs = 30_000, intervalMs = 50, process: watched }: { timeoutMs?: number; intervalMs?: number; process?: StartedProcess } = {},
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let lastError: unknown;
  for (;;) {
    if (watched?.exited()) throw new Error(`${what}: ${watched.name} exited early:\n${watched.output().slice(-4000)}`);
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      const reason = lastError instanceof Error ? lastError.message : String(lastError ?? "no answer");
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${reason})`);
    }
    await new Promise((r) => setTimeout(r, intervalMs));
  }
}
