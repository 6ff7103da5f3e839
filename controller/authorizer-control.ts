// The Lua authorizer's control service: its commands (flush, sync, revoked,
// metrics, native L7 switch) over HTTP, on a unix socket only the controller
// reads (`lua.connect_control`, lua-src/stats-commands.ts). The stats socket
// answers the same commands for operators, but a controller sends them all
// day: HAProxy before 3.0 never frees a Lua CLI command's task (one 184-byte
// object per command on Debian 12's 2.6.12, measured), and a command that
// sleeps (`connect sync`) can leave that task to wake its freed applet, a
// use-after-free fixed upstream in 21601f4a2. An HTTP applet frees its task.
import { request } from "node:http";
import { unbracketed } from "./runtime-api.js";

export interface UnixHttpAnswer {
  status: number;
  body: string;
}

/** One HTTP request to a server listening on a unix socket; rejects only when no answer comes. */
export function requestOverUnixSocket(socketPath: string, method: string, path: string, timeoutMs = 5000): Promise<UnixHttpAnswer> {
  return new Promise((resolve, reject) => {
    const req = request({ socketPath, path, method, timeout: timeoutMs }, (res) => {
      const chunks: Buffer[] = [];
      res.on("data", (chunk: Buffer) => chunks.push(chunk));
      res.on("end", () => resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString() }));
      res.on("error", reject);
    });
    req.on("timeout", () => req.destroy(new Error(`no answer from ${socketPath}${path} within ${timeoutMs} ms`)));
    req.on("error", reject);
    req.end();
  });
}

export class AuthorizerControlError extends Error {
  constructor(readonly command: string, readonly answer: string) {
    super(`the authorizer refused "${command}": ${answer.trim().split("\n").slice(-1)[0] || "no answer"}`);
    this.name = "AuthorizerControlError";
  }
}

/** Pure: the control service's path for a command's words (`connect sync web 42` → `/connect/sync/web/42`). */
export function commandPath(words: string[]): string {
  return `/${words.map((word) => encodeURIComponent(word)).join("/")}`;
}

export class AuthorizerControl {
  constructor(private readonly socketPath: string, private readonly timeoutMs = 5000) {}

  /** A command's answer (GET reads, POST changes: the service takes either); throws unless 200 and `expected`. */
  async command(method: "GET" | "POST", words: string[], expected?: RegExp): Promise<string> {
    const answer = await requestOverUnixSocket(this.socketPath, method, commandPath(words), this.timeoutMs);
    if (answer.status !== 200 || (expected && !expected.test(answer.body))) throw new AuthorizerControlError(words.join(" "), answer.body || `status ${answer.status}`);
    return answer.body;
  }

  flushCache(): Promise<string> {
    return this.command("POST", ["connect", "cache", "flush"], /^flushed /);
  }

  /** The authorizer's counters in Prometheus text. */
  metrics(): Promise<string> {
    return this.command("GET", ["connect", "metrics"], /^# HELP /);
  }

  /** The authorizer uses no intention list for `target` older than `index` (it waits up to 1 s to catch up). */
  async syncIntentions(target: string, index: number): Promise<void> {
    await this.command("POST", ["connect", "sync", target, String(index)], / current /);
  }

  /**
   * Switches on haproxy.cfg's native L7 rules, rendered from `target`'s
   * intentions at `index` (controller/native-l7.ts): the authorizer does so
   * only if its own list is at that index. Throws with its answer otherwise.
   */
  async enableNativeL7(target: string, index: number): Promise<void> {
    await this.command("POST", ["connect", "l7-rules", "current", target, String(index)], / enabled /);
  }

  /** The recorded TCP connections whose source the current intentions deny. */
  async revoked(): Promise<RevokedConnection[]> {
    return parseRevoked(await this.command("GET", ["connect", "revoked"]));
  }
}

/** A live connection whose source the intentions now deny, as the authorizer's `connect revoked` names it. */
export interface RevokedConnection {
  /** `ip:port` of the client, as `show sess` prints it. */
  client: string;
  target: string;
  source: string;
  /** Seconds since the authorizer allowed it. */
  ageSeconds: number;
  reason: string;
}

/** Pure: `connect revoked` answers `<ip>:<port> <target> <source SPIFFE ID> <age>s <reason…>`, one per line. */
export function parseRevoked(answer: string): RevokedConnection[] {
  return answer
    .split("\n")
    .map((line) => /^(\S+:\d+) (\S+) (\S+) (\d+)s (.*)$/.exec(line.trim()))
    .filter((match): match is RegExpExecArray => match !== null)
    .map(([, client, target, source, age, reason]) => ({ client: unbracketed(client!), target: target!, source: source!, ageSeconds: Number(age), reason: reason! }));
}
