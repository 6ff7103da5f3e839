// HAProxy's master process (master-worker mode): start, validated reload
// through the master CLI, soft stop, and restart when it dies.
import { spawn, execFile, type ChildProcess } from "node:child_process";
import { closeSync, existsSync, openSync } from "node:fs";
import { once } from "node:events";
import { promisify } from "node:util";
import type { Logger } from "./logger.js";
import type { Clock } from "./clock.js";
import { parseHaproxyVersion, type HaproxyVersion } from "./haproxy-version.js";
import { parseShowProc, sendRuntimeCommand, type MasterProcessList } from "./runtime-api.js";

const execFileAsync = promisify(execFile);

export interface HaproxyProcessOptions {
  binary: string;
  configFile: string;
  masterSocket: string;
  statsSocket: string;
  /** HAProxy's environment: the Lua authorizer reads CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN from it. */
  environment: NodeJS.ProcessEnv;
  logger: Logger;
  clock: Clock;
  /** How long a soft stop may take before the master is killed. */
  stopTimeoutMs: number;
}

/** Where fd 3 of HAProxy leads (`log fd@3`: the access log file, access-log.ts); /dev/null without one, so the descriptor is never HAProxy's own. */
export type AccessLogFile = string | undefined;

export class HaproxyConfigError extends Error {}

/** `haproxy -v`'s version; undefined (with why) when the binary does not answer or says something unreadable. */
export async function readHaproxyVersion(binary: string): Promise<{ version?: HaproxyVersion; problem?: string }> {
  try {
    const { stdout } = await execFileAsync(binary, ["-v"], { timeout: 5000 });
    const version = parseHaproxyVersion(stdout);
    return version ? { version } : { problem: `unreadable version line "${stdout.split("\n")[0]}"` };
  } catch (err) {
    return { problem: (err as Error).message.split("\n")[0] };
  }
}

export class HaproxyProcess {
  private child?: ChildProcess;
  /** Masters replaced by restart(), soft-stopping while their connections end. */
  private retiring = new Set<ChildProcess>();
  /** The access log file the running master holds as fd 3 (it cannot change without a new master). */
  private heldAccessLog: AccessLogFile;
  private stopping = false;
  private restarts = 0;
  private exited?: Promise<unknown>;

  constructor(private readonly options: HaproxyProcessOptions) {}

  get pid(): number | undefined {
    return this.child?.pid;
  }

  /** `haproxy -c`: throws HaproxyConfigError with HAProxy's own words. */
  async check(): Promise<void> {
    try {
      await execFileAsync(this.options.binary, ["-c", "-q", "-f", this.options.configFile], { env: this.options.environment });
    } catch (err) {
      const e = err as { stderr?: string; stdout?: string; message: string };
      const detail = `${e.stdout ?? ""}${e.stderr ?? ""}`.trim() || e.message;
      throw new HaproxyConfigError(`haproxy -c rejected ${this.options.configFile}: ${detail}`);
    }
  }

  /**
   * Starts HAProxy. If a previous controller died and left its HAProxy running
   * (found through the master socket in the config dir), the new master takes
   * that HAProxy's listening sockets over (`-x`, through the stats socket's
   * `expose-fd listeners`) before the old one soft-stops: a controller restart
   * refuses no connection and cuts none.
   */
  async start(accessLog: AccessLogFile = undefined): Promise<void> {
    await this.check();
    const previous = await this.previousMaster();
    this.spawnMaster(accessLog, previous ? ["-x", this.options.statsSocket] : []);
    await this.waitUntilServing(previous?.workers[0]);
    if (!previous) return;
    try {
      process.kill(previous.masterPid, "SIGUSR1");
    } catch {
      // It went away by itself.
    }
    this.options.logger.info("took over the listeners of the HAProxy a previous controller left running; it now soft-stops", {
      previousMasterPid: previous.masterPid,
      pid: this.child?.pid,
    });
  }

  /** The master of an HAProxy left running by a previous controller, if its master socket still answers. */
  private async previousMaster(): Promise<MasterProcessList | undefined> {
    if (!existsSync(this.options.masterSocket)) return undefined;
    const list = await this.processList().catch(() => undefined);
    return list && list.masterPid > 0 && list.workers.length > 0 ? list : undefined;
  }

  /** The access log file the running master writes (restart() changes it). */
  get accessLogFile(): AccessLogFile {
    return this.heldAccessLog;
  }

  /**
   * What becomes HAProxy's fd 3: /dev/null without an access log file, else a
   * pipe to `cat` writing the file. HAProxy makes a log descriptor
   * non-blocking with F_SETFL, which also clears O_APPEND (fd.c, 2.6 to 3.0),
   * so sidecars sharing one Path would write over each other's lines (seen in
   * access-logs-and-mesh-tls.test.ts). `cat`'s stdout is the file opened
   * O_APPEND; it copies whole writes, one read and one write per wake-up, with
   * no Node in the path. It ends by itself when the last HAProxy process
   * holding the pipe does. Throws with the path and the system's reason.
   */
  private accessLogDescriptor(path: AccessLogFile): { stdio: number | NodeJS.WritableStream; spawned(): void } {
    if (path === undefined) {
      const fd = openSync("/dev/null", "a");
      return { stdio: fd, spawned: () => closeSync(fd) };
    }
    let file: number;
    try {
      // 640: the lines name clients and paths.
      file = openSync(path, "a", 0o640);
    } catch (err) {
      throw new Error(`cannot open the access log ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    let writer: ChildProcess;
    try {
      writer = spawn("cat", [], { stdio: ["pipe", file, "inherit"] });
    } finally {
      closeSync(file);
    }
    writer.on("error", (err) => this.options.logger.error(`the access log writer for ${path} (cat) failed: ${err.message}; access lines are dropped`));
    writer.on("exit", (code, signal) => {
      if (code !== 0) this.options.logger.error(`the access log writer for ${path} (cat) exited (${signal ?? `code ${code}`}); access lines are dropped until HAProxy restarts`);
    });
    // Only HAProxy keeps the write end: cat sees the end of the pipe when HAProxy is gone.
    return { stdio: writer.stdin!, spawned: () => writer.stdin!.destroy() };
  }

  private spawnMaster(accessLog: AccessLogFile, extraArgs: string[] = []): void {
    const { binary, configFile, masterSocket, environment } = this.options;
    const accessLogFd = this.accessLogDescriptor(accessLog);
    // HAProxy writes its traffic log, the access log and its notices itself:
    // relaying them line by line through Node cost 70-150 µs of CPU per
    // connection (bench/, docs/benchmarks.md), and a pipe read per access line
    // cost 30-40 % of kept-alive requests/s (bench/http-pair.mjs).
    let child: ChildProcess;
    try {
      child = spawn(binary, ["-W", "-S", `${masterSocket},mode,600`, ...extraArgs, "-f", configFile], { env: environment, stdio: ["ignore", "inherit", "inherit", accessLogFd.stdio as never] });
    } finally {
      accessLogFd.spawned();
    }
    this.child = child;
    this.heldAccessLog = accessLog;
    this.exited = once(child, "exit");
    child.on("exit", (code, signal) => {
      if (this.stopping || this.child !== child) return;
      this.restarts += 1;
      const delayMs = Math.min(30_000, 500 * 2 ** Math.min(this.restarts - 1, 6));
      this.options.logger.error("HAProxy exited unexpectedly; restarting it", { code: code ?? undefined, signal: signal ?? undefined, restartInMs: delayMs, restarts: this.restarts });
      void this.options.clock.sleep(delayMs).then(() => {
        if (this.stopping) return;
        try {
          this.spawnMaster(this.heldAccessLog);
        } catch (err) {
          this.options.logger.error("HAProxy cannot be restarted", { error: (err as Error).message });
          return;
        }
        this.waitUntilServing(undefined).then(
          () => this.options.logger.info("HAProxy restarted", { pid: this.child?.pid }),
          (err: Error) => this.options.logger.error("HAProxy did not come back", { error: err.message }),
        );
      });
    });
  }

  /** Waits until a worker other than `previousWorker` answers on the stats socket. */
  private async waitUntilServing(previousWorker: number | undefined, timeoutMs = 15_000): Promise<number> {
    const deadline = this.options.clock.now() + timeoutMs;
    let lastError = "no answer";
    while (this.options.clock.now() < deadline) {
      if (this.child?.exitCode !== null && this.child?.exitCode !== undefined) throw new Error(`HAProxy exited with code ${this.child.exitCode}`);
      try {
        const match = /^Pid: (\d+)$/m.exec(await sendRuntimeCommand(this.options.statsSocket, "show info", 1000));
        if (match && Number(match[1]) !== previousWorker) return Number(match[1]);
        lastError = "still the old worker";
      } catch (err) {
        lastError = (err as Error).message;
      }
      await this.options.clock.sleep(25);
    }
    throw new Error(`HAProxy is not serving after ${timeoutMs} ms (${lastError})`);
  }

  private async waitForMaster(done: (list: MasterProcessList) => boolean, timeoutMs = 10_000): Promise<void> {
    const deadline = this.options.clock.now() + timeoutMs;
    for (;;) {
      const list = await this.processList().catch(() => undefined);
      if (list && done(list)) return;
      if (this.options.clock.now() > deadline) throw new Error(`HAProxy's master CLI did not confirm the reload within ${timeoutMs} ms`);
      await this.options.clock.sleep(25);
    }
  }

  async processList(): Promise<MasterProcessList> {
    return parseShowProc(await sendRuntimeCommand(this.options.masterSocket, "show proc"));
  }

  /**
   * Validated seamless reload: `haproxy -c` first (unless the caller validated
   * what changed itself), then `reload` on the master CLI. Resolves with timings.
   */
  reload(options: { check: boolean } = { check: true }): Promise<{ checkMs: number; reloadMs: number }> {
    return this.checkedThen(options.check, async () => {
      const before = await this.processList();
      // The master answers nothing (2.6) and re-executes itself; the new worker takes over the listeners.
      await sendRuntimeCommand(this.options.masterSocket, "reload").catch(() => "");
      await this.waitUntilServing(before.workers[0]);
      // The master re-executes itself: wait until its CLI answers again, with the reload counted.
      await this.waitForMaster((list) => list.reloads > before.reloads);
    });
  }

  /** `haproxy -c` (if asked), then `apply`; resolves with how long each took. */
  private async checkedThen(check: boolean, apply: () => Promise<void>): Promise<{ checkMs: number; reloadMs: number }> {
    const { clock } = this.options;
    const started = clock.now();
    if (check) await this.check();
    const checked = clock.now();
    await apply();
    return { checkMs: Math.round(checked - started), reloadMs: Math.round(clock.now() - checked) };
  }

  /**
   * A new master for what a reload cannot change (the access log file, fd 3):
   * validated like a reload, it takes the listeners over from the running
   * worker (`-x`, as start() does after a controller restart) and the old
   * master soft-stops, so no connection is refused or cut.
   */
  restart(accessLog: AccessLogFile): Promise<{ checkMs: number; reloadMs: number }> {
    return this.checkedThen(true, async () => {
      const old = this.child;
      const running = { exited: this.exited, accessLog: this.heldAccessLog };
      const before = await this.processList();
      this.spawnMaster(accessLog, ["-x", this.options.statsSocket]);
      try {
        await this.waitUntilServing(before.workers[0]);
      } catch (err) {
        // The running master stays in charge (it never let go of its listeners); the new one goes, unrestarted.
        const failed = this.child!;
        this.child = old;
        this.exited = running.exited;
        this.heldAccessLog = running.accessLog;
        failed.kill("SIGKILL");
        throw err;
      }
      if (old && old.exitCode === null && old.signalCode === null) {
        this.retiring.add(old);
        old.once("exit", () => this.retiring.delete(old));
        old.kill("SIGUSR1");
      }
    });
  }

  /** Soft stop (SIGUSR1): listeners close, established connections finish within the bound. */
  async stop(): Promise<void> {
    this.stopping = true;
    const child = this.child;
    const current = child && child.exitCode === null && child.signalCode === null && this.exited ? [this.softStop(child, this.exited)] : [];
    await Promise.all([...current, ...[...this.retiring].map((old) => this.softStop(old, once(old, "exit")))]);
  }

  private async softStop(child: ChildProcess, exited: Promise<unknown>): Promise<void> {
    child.kill("SIGUSR1");
    const killer = setTimeout(() => child.kill("SIGKILL"), this.options.stopTimeoutMs);
    await exited;
    clearTimeout(killer);
  }
}
