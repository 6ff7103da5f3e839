// The ACL token the authorizer sends to the agent. From CONSUL_HTTP_TOKEN it
// is fixed; from CONSUL_HTTP_TOKEN_FILE it follows the file: a task re-reads
// it every RELOAD_MS, and a 403 "ACL not found" re-reads it at once (at most
// once per MIN_REREAD_MS), so a rotated token is used without a reload.
//
// Why a periodic read rather than a watch: HAProxy's Lua has no file events,
// and a read of a file this small costs a few microseconds of the task's
// thread every 2 s, never a connection's time.
// The token itself is never logged; the lines name the file.

const match = string.match;
const format = string.format;

/** How often the task re-reads the file. */
export const RELOAD_MS = 2000;
/** A burst of 403s (one per connection) re-reads the file at most this often. */
const MIN_REREAD_MS = 1000;

export interface AgentTokenDeps {
  readFile: (this: void, path: string) => LuaMultiReturn<[string | undefined, string | undefined]>;
  now: (this: void) => number;
  log: (this: void, level: string, message: string) => void;
}

/** The whole of a token file, trimmed; nil and why when it cannot be read. */
export function readTokenFile(path: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  const [file, openError] = io.open(path, "r");
  if (file === undefined) return $multi(undefined, format("CONSUL_HTTP_TOKEN_FILE: cannot read %s (%s)", path, tostring(openError)));
  const content = file.read("a") as string | undefined;
  file.close();
  const [token] = match(content ?? "", "^%s*(.-)%s*$");
  return $multi(token, undefined);
}

export class AgentToken {
  private lastReadAt = -1e18;
  /** The token the agent last answered "ACL not found" to (nil: none, or accepted since). */
  private rejectedToken: string | undefined = undefined;
  private unreadable = false;

  constructor(
    private value: string | undefined,
    /** The file it follows; nil for a fixed token. */
    readonly path: string | undefined,
    private readonly deps: AgentTokenDeps,
  ) {}

  current(): string | undefined {
    return this.value;
  }

  /** Re-reads the file; true when it gave another token. A missing or empty file keeps the token in use. */
  reload(): boolean {
    const path = this.path;
    if (path === undefined) return false;
    this.lastReadAt = this.deps.now();
    const [token, readError] = this.deps.readFile(path);
    if (token === undefined) {
      if (!this.unreadable) this.deps.log("warning", format("connect-haproxy: %s; keeping the token read before", tostring(readError)));
      this.unreadable = true;
      return false;
    }
    if (this.unreadable) this.deps.log("info", format("connect-haproxy: CONSUL_HTTP_TOKEN_FILE %s is readable again", path));
    this.unreadable = false;
    if (token === "" || token === this.value) return false;
    this.value = token;
    this.deps.log("info", format("connect-haproxy: CONSUL_HTTP_TOKEN_FILE %s changed: the next calls to the agent use the new token", path));
    return true;
  }

  /**
   * The agent answered 403 "ACL not found" to a call made with `sent`: one
   * warning per rejected token, and a fresh read of the file. True when that
   * gave another token (the call is worth one retry).
   */
  notFound(sent: string | undefined): boolean {
    const refused = sent ?? "";
    // The first refusal of a token always re-reads (the file may have changed since the task's last read); a burst, once a second.
    const changed = (refused !== this.rejectedToken || this.deps.now() - this.lastReadAt >= MIN_REREAD_MS) && this.reload();
    if (changed || sent !== this.value) return true;
    if (refused !== this.rejectedToken) {
      this.rejectedToken = refused;
      this.deps.log(
        "warning",
        format(
          "connect-haproxy: ACL token rejected by the Consul agent (403 ACL not found): it was deleted or has expired; decisions the verdict cache cannot answer are denied until %s",
          this.path !== undefined ? format("CONSUL_HTTP_TOKEN_FILE %s holds a valid one (re-read every %d s)", this.path, Math.floor(RELOAD_MS / 1000)) : "HAProxy is given a valid CONSUL_HTTP_TOKEN",
        ),
      );
    }
    return false;
  }

  /** The agent answered a call made with `sent`. */
  accepted(sent: string | undefined): void {
    if (this.rejectedToken === undefined || (sent ?? "") === this.rejectedToken) return;
    this.rejectedToken = undefined;
    this.deps.log("info", "connect-haproxy: the Consul agent accepts the ACL token again");
  }

  /** The task's body: re-reads the file every RELOAD_MS until HAProxy stops. */
  runForever(stopping: (this: void) => boolean, sleep: (this: void, ms: number) => void): void {
    while (!stopping()) {
      // Short sleeps, so that a soft stop is noticed at once.
      const until = this.deps.now() + RELOAD_MS;
      while (!stopping() && this.deps.now() < until) sleep(Math.min(500, until - this.deps.now()));
      if (!stopping()) this.reload();
    }
  }
}
