// Every process the benchmark starts is recorded here and stopped by pid: when
// its set-up ends, on Ctrl-C or SIGTERM, and as a last resort when Node exits.
// Output goes to a log file, not a pipe: HAProxy logs one line per connection
// and a pipe would make this Node process part of the measured data path.
import { spawn } from "node:child_process";
import { closeSync, openSync, readFileSync, existsSync } from "node:fs";
import { once } from "node:events";
import { descendantPids } from "./proc-stats.mjs";

const running = new Set();

/**
 * Starts `command args` with stdout and stderr written to `logFile` (truncated); `cpu`
 * (a taskset CPU list like "1") pins it: taskset execs the command, so the
 * pid is the command's own.
 */
export function startProcess(name, command, args, { cpu, env, cwd, logFile }) {
  const fd = openSync(logFile, "w");
  const [file, argv] = cpu === undefined ? [command, args] : ["taskset", ["-c", String(cpu), command, ...args]];
  const child = spawn(file, argv, { stdio: ["ignore", fd, fd], env: env ?? process.env, cwd });
  closeSync(fd);
  if (child.pid === undefined) throw new Error(`${name}: could not start ${command}`);
  let exitedWith;
  const exited = once(child, "exit").then(([code, signal]) => {
    exitedWith = signal ?? code;
  });
  const started = {
    name,
    pid: child.pid,
    logFile,
    /** Descendants seen while it ran (a controller's HAProxy master and workers). */
    knownDescendants: new Set(),
    exited: () => exitedWith !== undefined,
    exitStatus: () => exitedWith,
    output: (tail = 4000) => (existsSync(logFile) ? readFileSync(logFile, "utf8").slice(-tail) : ""),
    /** Remembers the current descendants, so that stop() can reach them if the parent leaves them behind. */
    noteDescendants() {
      for (const pid of descendantPids(child.pid)) started.knownDescendants.add(pid);
    },
    /** How the last stop() went: { ms, forced } (forced: it needed SIGKILL). */
    stopped: undefined,
    async stop(signal = "SIGTERM", graceMs = 5000) {
      if (exitedWith === undefined) {
        const begun = Date.now();
        let forced = false;
        started.noteDescendants();
        child.kill(signal);
        const timer = setTimeout(() => {
          forced = true;
          child.kill("SIGKILL");
        }, graceMs);
        await exited;
        clearTimeout(timer);
        started.stopped = { ms: Date.now() - begun, forced };
      }
      // Anything it started and left behind, by pid (only pids we saw as its descendants).
      await killLeftovers(started.knownDescendants, graceMs);
      running.delete(started);
    },
  };
  running.add(started);
  return started;
}

/** Signals a pid that may have exited meanwhile. */
function signal(pid, name) {
  try {
    process.kill(pid, name);
  } catch {
    // already gone
  }
}

function alive(pid) {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

async function killLeftovers(pids, graceMs) {
  const left = [...pids].filter(alive);
  if (!left.length) return;
  for (const pid of left) signal(pid, "SIGTERM");
  const deadline = Date.now() + graceMs;
  while (Date.now() < deadline && left.some(alive)) await sleep(50);
  for (const pid of left.filter(alive)) signal(pid, "SIGKILL");
}

export async function stopAll() {
  await Promise.all([...running].map((p) => p.stop("SIGTERM", 3000).catch(() => {})));
}

export function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

const exitCallbacks = [];
/** Runs `callback` (synchronously) when the benchmark is interrupted, after its processes are stopped. */
export function onInterrupt(callback) {
  exitCallbacks.push(callback);
}

let handlersInstalled = false;
/** Ctrl-C / SIGTERM: stop everything we started, then exit 130 / 143. */
export function installCleanupHandlers(log = console.error) {
  if (handlersInstalled) return;
  handlersInstalled = true;
  let stopping = false;
  const onSignal = (signal, code) => async () => {
    if (stopping) return;
    stopping = true;
    log(`bench: ${signal}: stopping ${running.size} process(es)`);
    await stopAll();
    for (const callback of exitCallbacks) {
      try {
        callback();
      } catch {}
    }
    process.exit(code);
  };
  process.on("SIGINT", onSignal("SIGINT", 130));
  process.on("SIGTERM", onSignal("SIGTERM", 143));
  process.on("exit", () => {
    for (const p of running) {
      signal(p.pid, "SIGKILL");
      for (const pid of p.knownDescendants) signal(pid, "SIGKILL");
    }
  });
}

/** Polls `probe` until it returns something other than undefined; fails with the last reason. */
export async function waitFor(what, probe, { timeoutMs = 30000, intervalMs = 50, process: watched } = {}) {
  const deadline = Date.now() + timeoutMs;
  let lastError;
  for (;;) {
    if (watched?.exited()) throw new Error(`${what}: ${watched.name} exited (${watched.exitStatus()}):\n${watched.output()}`);
    try {
      const value = await probe();
      if (value !== undefined) return value;
    } catch (err) {
      lastError = err;
    }
    if (Date.now() > deadline) {
      throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${lastError instanceof Error ? lastError.message : lastError ?? "no answer"})`);
    }
    await sleep(intervalMs);
  }
}

/** Runs a command to completion; resolves with {code, stdout, stderr}. Bounded by timeoutMs. */
export function runCommand(command, args, { timeoutMs = 120000, env, cpu, cwd } = {}) {
  const [file, argv] = cpu === undefined ? [command, args] : ["taskset", ["-c", String(cpu), command, ...args]];
  return new Promise((resolve, reject) => {
    const child = spawn(file, argv, { stdio: ["ignore", "pipe", "pipe"], env: env ?? process.env, cwd });
    const tracked = { name: command, pid: child.pid, knownDescendants: new Set(), stop: async () => child.kill("SIGKILL") };
    running.add(tracked);
    let stdout = "";
    let stderr = "";
    child.stdout.on("data", (c) => (stdout += c));
    child.stderr.on("data", (c) => (stderr += c));
    const timer = setTimeout(() => child.kill("SIGKILL"), timeoutMs);
    child.on("error", (err) => {
      clearTimeout(timer);
      running.delete(tracked);
      reject(err);
    });
    child.on("close", (code, signal) => {
      clearTimeout(timer);
      running.delete(tracked);
      resolve({ code: code ?? signal, stdout, stderr });
    });
  });
}
