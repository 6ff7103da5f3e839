// Real HAProxy processes (Debian's haproxy 2.6) run on a given configuration,
// and their stats sockets, reached with the controller's own client.
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { execFile, execFileSync } from "node:child_process";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { sendRuntimeCommand } from "../../controller/runtime-api.js";
import { capabilitiesOf, parseHaproxyVersion, type HaproxyVersion, type RuntimeCapabilities } from "../../controller/haproxy-version.js";
import { startProcess, waitFor, type StartedProcess } from "./processes.js";

export { sendRuntimeCommand };

const run = promisify(execFile);

export function haproxyBinary(): string {
  return process.env.HAPROXY_BIN ?? "haproxy";
}

/** The HAProxy under test (HAPROXY_BIN): its version, as the controller reads it, and so what the controller lets it change at run time. */
export function haproxyUnderTest(): { version: HaproxyVersion; capabilities: RuntimeCapabilities } {
  const output = execFileSync(haproxyBinary(), ["-v"], { encoding: "utf8" });
  const version = parseHaproxyVersion(output);
  if (!version) throw new Error(`cannot read the version of ${haproxyBinary()}: ${output.split("\n")[0]}`);
  return { version, capabilities: capabilitiesOf(version) };
}

/** `haproxy -c -f file`: resolves with its output, rejects with it when the check fails. */
export async function checkHaproxyConfig(configFile: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  try {
    const { stdout, stderr } = await run(haproxyBinary(), ["-c", "-f", configFile], { env: { ...process.env, ...env } });
    return stdout + stderr;
  } catch (err) {
    const e = err as { stdout?: string; stderr?: string; message: string };
    throw new Error(`haproxy -c rejected ${configFile}:\n${e.stdout ?? ""}${e.stderr ?? e.message}`);
  }
}

/** Pure: "Name: value" lines (`show info`, `connect cache stats`) → object, numbers where they are numbers. */
export function parseKeyValues(text: string): Record<string, string | number> {
  const values: Record<string, string | number> = {};
  for (const line of text.split("\n")) {
    const match = /^([\w.-]+):\s*(.*)$/.exec(line.trim());
    if (!match) continue;
    values[match[1]!] = /^-?\d+(\.\d+)?$/.test(match[2]!) ? Number(match[2]) : match[2]!;
  }
  return values;
}

/** Pure: one counter of `show stat` (CSV under a `# pxname,svname,…` header): `row` is FRONTEND, BACKEND or a server's name. */
export function statCounter(csv: string, proxy: string, row: string, column: string): number {
  const [header, ...rows] = csv.trim().split("\n");
  const columns = header!.replace(/^# /, "").split(",");
  const cells = rows.map((line) => line.split(",")).find((line) => line[0] === proxy && line[1] === row);
  if (!cells) throw new Error(`show stat has no ${row} row for ${proxy}`);
  if (!columns.includes(column)) throw new Error(`show stat has no column ${column}`);
  return Number(cells[columns.indexOf(column)] || 0);
}

/** The smallest configuration that runs `luaFile`: lua-load, and an idle TCP frontend on `port` (HAProxy starts no process without a proxy). */
export function luaLoadConfig(luaFile: string, port: number): string {
  return `global
    lua-load ${luaFile}
defaults
    mode tcp
    timeout connect 1s
    timeout client 5s
    timeout server 5s
frontend idle
    bind 127.0.0.1:${port}
`;
}

export interface HaproxyInstance {
  readonly name: string;
  readonly dir: string;
  readonly configFile: string;
  readonly statsSocket: string;
  readonly process: StartedProcess;
  command(cmd: string): Promise<string>;
  /** Soft stop (SIGUSR1: what is in flight finishes), bounded to 3 s. */
  stop(): Promise<void>;
}

export interface HaproxyOptions {
  /** Environment added to this process's (what `setenv` would otherwise give, e.g. CONSUL_HTTP_ADDR). */
  env?: NodeJS.ProcessEnv;
  /** Files written into the instance's directory first (certificates). */
  files?: Record<string, string>;
  /** The directory for its files, kept after stop(); by default a fresh one, removed by stop(). */
  dir?: string;
  /** Names the process and its files: `<name>.cfg`, `<name>.sock` (default "haproxy"). */
  name?: string;
  /** A taskset CPU list to pin it to (benchmarks). */
  cpu?: string;
  /** Write its output (a log line per connection) to `<dir>/<name>.log` instead of memory. */
  logToFile?: boolean;
}

/**
 * Writes `config` and runs HAProxy on it in the foreground, after `haproxy -c`.
 * `{{STATS_SOCKET}}` and `{{DIR}}` in the text are replaced; if the config has
 * no stats socket, one is added to `global`. Waits until the socket answers.
 */
export async function startHaproxy(config: string, options: HaproxyOptions = {}): Promise<HaproxyInstance> {
  const name = options.name ?? "haproxy";
  const dir = options.dir ?? mkdtempSync(join(tmpdir(), "ch-haproxy-"));
  const removeDir = () => (options.dir ? undefined : rmSync(dir, { recursive: true, force: true }));
  let text = config.replaceAll("{{STATS_SOCKET}}", join(dir, `${name}.sock`)).replaceAll("{{DIR}}", dir);
  if (!/stats socket/.test(text)) text = text.replace(/^global\s*$/m, `global\n    stats socket ${join(dir, `${name}.sock`)} mode 600 level admin`);
  const statsSocket = /stats socket (\S+)/.exec(text)![1]!;
  for (const [file, content] of Object.entries(options.files ?? {})) writeFileSync(join(dir, file), content, { mode: 0o600 });
  const configFile = join(dir, `${name}.cfg`);
  writeFileSync(configFile, text);
  try {
    await checkHaproxyConfig(configFile, options.env);
  } catch (err) {
    removeDir();
    throw err;
  }
  const proc = startProcess(name, haproxyBinary(), ["-db", "-f", configFile], {
    env: { ...process.env, ...options.env },
    cpu: options.cpu,
    logFile: options.logToFile ? join(dir, `${name}.log`) : undefined,
  });
  const instance: HaproxyInstance = {
    name,
    dir,
    configFile,
    statsSocket,
    process: proc,
    command: (cmd) => sendRuntimeCommand(statsSocket, cmd),
    async stop() {
      await proc.stop("SIGUSR1", 3000);
      removeDir();
    },
  };
  try {
    await waitFor(`${name} stats socket`, async () => ((await sendRuntimeCommand(statsSocket, "show info")).includes("Pid:") ? true : undefined), {
      process: proc,
    });
  } catch (err) {
    await instance.stop();
    throw err;
  }
  return instance;
}
