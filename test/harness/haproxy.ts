// A real HAProxy process (Debian's haproxy 2.6) for integration tests.
import { mkdtempSync, writeFileSync, rmSync } from "node:fs";
import { execFile } from "node:child_process";
import { createConnection } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { startProcess, waitFor, type StartedProcess } from "./processes.js";

const run = promisify(execFile);

export const repoRoot = new URL("../..", import.meta.url).pathname.replace(/\/$/, "");
export const luaBundlePath = join(repoRoot, "dist", "connect-haproxy.lua");

export function haproxyBinary(): string {
  return process.env.HAPROXY_BIN ?? "haproxy";
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

/** Sends one command to a stats socket and returns the whole answer. */
export function runtimeCommand(socketPath: string, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let answer = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`stats socket ${socketPath}: no answer to "${command}" in ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("connect", () => socket.end(command.endsWith("\n") ? command : `${command}\n`));
    socket.on("data", (chunk) => (answer += chunk.toString()));
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

export interface HaproxyInstance {
  readonly dir: string;
  readonly configFile: string;
  readonly statsSocket: string;
  readonly process: StartedProcess;
  command(cmd: string): Promise<string>;
  stop(): Promise<void>;
}

/**
 * Writes `config` to a fresh directory and runs HAProxy on it in the foreground.
 * `{{STATS_SOCKET}}` and `{{DIR}}` in the text are replaced; if the config has no
 * stats socket one is added to `global`. Waits until the socket answers.
 */
export async function startHaproxy(config: string, options: { env?: NodeJS.ProcessEnv; files?: Record<string, string> } = {}): Promise<HaproxyInstance> {
  const dir = mkdtempSync(join(tmpdir(), "ch-haproxy-"));
  const statsSocket = join(dir, "stats.sock");
  let text = config.replaceAll("{{STATS_SOCKET}}", statsSocket).replaceAll("{{DIR}}", dir);
  if (!/stats socket/.test(text)) text = text.replace(/^global\s*$/m, `global\n    stats socket ${statsSocket} mode 600 level admin`);
  for (const [name, content] of Object.entries(options.files ?? {})) writeFileSync(join(dir, name), content, { mode: 0o600 });
  const configFile = join(dir, "haproxy.cfg");
  writeFileSync(configFile, text);
  await checkHaproxyConfig(configFile, options.env);
  const proc = startProcess("haproxy", haproxyBinary(), ["-db", "-f", configFile], { env: { ...process.env, ...options.env } });
  const instance: HaproxyInstance = {
    dir,
    configFile,
    statsSocket,
    process: proc,
    command: (cmd) => runtimeCommand(statsSocket, cmd),
    async stop() {
      await proc.stop("SIGUSR1", 3000);
      rmSync(dir, { recursive: true, force: true });
    },
  };
  try {
    await waitFor("haproxy stats socket", async () => ((await runtimeCommand(statsSocket, "show info")).includes("Pid:") ? true : undefined), {
      process: proc,
    });
  } catch (err) {
    await instance.stop();
    throw err;
  }
  return instance;
}
