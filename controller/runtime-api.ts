// HAProxy's runtime API (stats socket, level admin, or the master CLI): one
// command per connection, answers read whole, errors recognised in one place.
import { createConnection } from "node:net";
import type { RevokedConnection } from "./authorizer-control.js";

export class RuntimeApiError extends Error {
  constructor(readonly command: string, readonly answer: string) {
    super(`HAProxy refused "${command.split("\n")[0]}": ${answer.trim().split("\n").slice(-1)[0] ?? "no answer"}`);
    this.name = "RuntimeApiError";
  }
}

/** Sends one command and resolves with the whole answer (the socket closes after it). */
export function sendRuntimeCommand(socketPath: string, command: string, timeoutMs = 5000): Promise<string> {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    const chunks: Buffer[] = [];
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`no answer from ${socketPath} to "${command.split("\n")[0]}" within ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("connect", () => socket.end(command.endsWith("\n") ? command : `${command}\n`));
    socket.on("data", (chunk: Buffer) => chunks.push(chunk));
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(Buffer.concat(chunks).toString());
    });
  });
}

/** Pure: does this answer report a failure? (HAProxy answers 200 with prose.) */
export function answerIsError(answer: string): boolean {
  return /^(unknown command|no such|can't|cannot|unable|error|invalid|require|'[^']*' only|.*not found|.*failed|.*expects)/im.test(answer.trim());
}

/** Pure: a PEM payload for `<<`: no empty line inside (it would end the payload). */
export function payload(pem: string): string {
  return pem.split("\n").filter((line) => line.trim() !== "").join("\n");
}

// `set ssl …` answers "Transaction created/updated …"; anything else (even nothing) failed.
function expectTransaction(answer: string, command: string): void {
  if (!/transaction (created|updated)/i.test(answer)) throw new RuntimeApiError(command, answer || "no answer");
}

export class RuntimeApi {
  constructor(private readonly socketPath: string, private readonly timeoutMs = 5000) {}

  async command(command: string): Promise<string> {
    const answer = await sendRuntimeCommand(this.socketPath, command, this.timeoutMs);
    if (answerIsError(answer)) throw new RuntimeApiError(command, answer);
    return answer;
  }

  /**
   * A new address goes through maintenance first: leaving it resets the
   * health a passive check may have marked down, so a new instance in a slot
   * whose previous one was ejected starts in rotation (tried on 2.6.12).
   */
  async setServer(backend: string, server: string, target: { address: string; port: number } | undefined, ready: boolean): Promise<void> {
    if (target && ready) await this.command(`set server ${backend}/${server} state maint`);
    if (target) await this.command(`set server ${backend}/${server} addr ${target.address} port ${target.port}`);
    await this.command(`set server ${backend}/${server} state ${ready ? "ready" : "maint"}`);
  }

  /**
   * `set ssl cert` + `commit ssl cert`; aborts the transaction if the commit fails.
   * Throws when the certificate has no user left: HAProxy 2.6 and 3.0 forget a
   * certificate's users after `commit ssl ca-file` (the rebuilt instances are
   * not linked back to the certificate), so a commit then changes nothing.
   * Not used on HAProxy 2.6 listeners: see RuntimeCapabilities in haproxy-version.ts.
   */
  async replaceCertificate(file: string, pem: string): Promise<void> {
    expectTransaction(await this.command(`set ssl cert ${file} <<\n${payload(pem)}\n\n`), `set ssl cert ${file}`);
    await this.commitOrAbort("cert", file);
    const details = await this.command(`show ssl cert ${file}`);
    if (!/^Status: Used$/m.test(details)) {
      throw new RuntimeApiError(`commit ssl cert ${file}`, "the certificate is no longer linked to its listeners and servers (HAProxy 2.6 and 3.0 after commit ssl ca-file)");
    }
  }

  async replaceCaFile(file: string, pem: string): Promise<void> {
    expectTransaction(await this.command(`set ssl ca-file ${file} <<\n${payload(pem)}\n\n`), `set ssl ca-file ${file}`);
    await this.commitOrAbort("ca-file", file);
  }

  async serversState(): Promise<LiveServer[]> {
    return parseServersState(await this.command("show servers state"));
  }

  /**
   * Closes the live connections on `frontend` that the authorizer names as
   * revoked (`connect revoked`, after `connect sync`; Envoy only checks new
   * connections and requests): `show sess` gives each one's session, which
   * `shutdown session` closes.
   */
  async closeConnections(frontend: string, revoked: RevokedConnection[]): Promise<RevokedConnection[]> {
    if (revoked.length === 0) return [];
    const sessions = parseShowSess(await this.command("show sess"));
    const closed: RevokedConnection[] = [];
    for (const { connection, session } of sessionsToClose(revoked, sessions, frontend)) {
      await this.command(`shutdown session ${session.id}`);
      closed.push(connection);
    }
    return closed;
  }

  private async commitOrAbort(kind: "cert" | "ca-file", file: string): Promise<void> {
    try {
      const answer = await this.command(`commit ssl ${kind} ${file}`);
      if (!/Success!/.test(answer)) throw new RuntimeApiError(`commit ssl ${kind} ${file}`, answer);
    } catch (err) {
      await sendRuntimeCommand(this.socketPath, `abort ssl ${kind} ${file}`, this.timeoutMs).catch(() => undefined);
      throw err;
    }
  }
}

/** One server of `show servers state`: its address, port and what an operator or the controller made of it. */
export interface LiveServer {
  backend: string;
  server: string;
  address: string;
  port: number;
  /** maint: forced, inherited, from the configuration or DNS; drain: weight 0 by an operator. */
  state: "ready" | "maint" | "drain";
}

// srv_admin_state bits (HAProxy's SRV_ADMF_*): FMAINT, IMAINT, RMAINT; FDRAIN, IDRAIN. Not CMAINT (0x04):
// 2.6.12 keeps it on a slot configured `disabled` after `set server … state ready`, which then serves.
const adminMaint = 0x01 | 0x02 | 0x20;
const adminDrain = 0x08 | 0x10;

/** Pure: `show servers state` (format 1: be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state … srv_port at column 18). */
export function parseServersState(answer: string): LiveServer[] {
  return answer
    .split("\n")
    .map((line) => line.trim().split(/\s+/))
    .filter((columns) => columns.length > 18 && /^\d+$/.test(columns[0]!))
    .map((columns) => {
      const admin = Number(columns[6]);
      return {
        backend: columns[1]!,
        server: columns[3]!,
        address: columns[4]!,
        port: Number(columns[18]),
        state: admin & adminMaint ? "maint" : admin & adminDrain ? "drain" : "ready",
      };
    });
}

export interface MasterProcessList {
  masterPid: number;
  reloads: number;
  workers: number[];
  oldWorkers: number[];
}

/** Pure: parses the master CLI's `show proc`. */
export function parseShowProc(answer: string): MasterProcessList {
  const result: MasterProcessList = { masterPid: 0, reloads: 0, workers: [], oldWorkers: [] };
  let section: "current" | "old" = "current";
  for (const line of answer.split("\n")) {
    if (/^# old workers/.test(line)) section = "old";
    const cols = line.trim().split(/\s+/);
    if (cols.length < 3 || !/^\d+$/.test(cols[0]!)) continue;
    if (cols[1] === "master") {
      result.masterPid = Number(cols[0]);
      result.reloads = Number(cols[2]);
    } else if (cols[1] === "worker") {
      (section === "old" ? result.oldWorkers : result.workers).push(Number(cols[0]));
    }
  }
  return result;
}

export interface LiveSession {
  /** What `shutdown session` takes (the stream's address). */
  id: string;
  client: string;
  frontend: string;
  /** The server it was given (`srv=`): undefined while none is (`<none>`), e.g. while its rules still run. */
  server: string | undefined;
  /** Its age in seconds, as `show sess` can tell it: exact, or a range when it prints two units (`1h5m`: 3900–3959). */
  ageSeconds: { min: number; max: number } | undefined;
}

/** Pure: `show sess`: `0x55…: proto=tcpv4 src=127.0.0.1:37424 fe=public_listener be=local_app srv=app ts=08 epoch=0 age=3s …`. */
export function parseShowSess(answer: string): LiveSession[] {
  return answer
    .split("\n")
    .map((line) => /^(0x[0-9a-f]+): .*?\bsrc=(\S+) fe=(\S+) be=\S+ srv=(\S+).*? age=(\S+)/.exec(line))
    .filter((match): match is RegExpExecArray => match !== null)
    .map(([, id, client, frontend, server, age]) => ({ id: id!, client: unbracketed(client!), frontend: frontend!, server: server === "<none>" ? undefined : server, ageSeconds: parseHumanTime(age!) }));
}

const timeUnits: Record<string, number> = { d: 86_400, h: 3_600, m: 60, s: 1 };

/**
 * Pure: HAProxy's human_time() in seconds (`0s`, `5s`, `1m5s`, `1h5m`, `2d3h`).
 * It prints at most two units: with two, what is below the second is cut off.
 */
export function parseHumanTime(text: string): { min: number; max: number } | undefined {
  const parts = [...text.matchAll(/(\d+)([dhms])/g)];
  if (parts.length === 0 || parts.map((part) => part[0]).join("") !== text) return undefined;
  const min = parts.reduce((sum, [, count, unit]) => sum + Number(count) * timeUnits[unit!]!, 0);
  const last = timeUnits[parts[parts.length - 1]![2]!]!;
  return { min, max: parts.length === 2 ? min + last - 1 : min };
}

/**
 * Pure: the sessions to shut down for the revoked connections. Only a session
 * with the same client address, on `frontend`, given its server (its rules have
 * run: one still being decided is decided with the new intentions anyway, and
 * shutting a stream down in the middle of its Lua action is not safe on 2.6),
 * whose age matches the entry's (the entry may be an older connection that had
 * this client port: on loopback every sidecar dials from 127.0.0.1). A session
 * is at least as old as its entry (the decision follows the accept, by up to
 * the inspect-delay) and `show sess` truncates to seconds.
 */
export function sessionsToClose(revoked: RevokedConnection[], sessions: LiveSession[], frontend: string, slackSeconds = 7): { connection: RevokedConnection; session: LiveSession }[] {
  const matches: { connection: RevokedConnection; session: LiveSession }[] = [];
  for (const connection of revoked) {
    const session = sessions.find(
      (s) =>
        s.frontend === frontend &&
        s.client === connection.client &&
        s.server !== undefined &&
        s.ageSeconds !== undefined &&
        s.ageSeconds.max >= connection.ageSeconds - 1 &&
        s.ageSeconds.min <= connection.ageSeconds + slackSeconds,
    );
    if (session) matches.push({ connection, session });
  }
  return matches;
}

/** `[::1]:80` and `::1:80` name the same client. */
export function unbracketed(address: string): string {
  return address.replace(/^\[(.*)\](:\d+)$/, "$1$2");
}
