// Declarations for the part of HAProxy 2.6's Lua API that the authorizer uses.
//
// Traps this file encodes (see ../../shared/NOTES.md):
// - `core` is a namespace called with a dot (`core.tcp()`): @noSelf.
// - TXN, fetches, sockets and applets are objects called with a colon
//   (`txn.f:ssl_c_der()`, `sock:connect()`): plain method interfaces.
// - `txn.f:x()` returns nil when the fetch fails; `txn.sf:x()` returns "".
// - Fetches that return booleans return integers 0/1, and 0 is true in Lua:
//   compare with `=== 1`, never test truthiness.
// - Sample fetches and converters may not yield; actions, tasks and CLI
//   handlers may (sockets, sleeps).

/** A wall-clock reading from `core.now()`. */
export interface HaproxyTime {
  sec: number;
  usec: number;
}

/** Callback of `core.register_action`: runs in a coroutine, may yield. */
export type ActionFunction = (this: void, txn: Txn, ...args: string[]) => void | number;

/** Callback of `core.register_cli`: gets the applet, then every word of the command line. */
export type CliFunction = (this: void, applet: CliApplet, ...words: string[]) => void;

/** @noSelf */
export interface Core {
  /** Syslog levels, as `core.log` takes them. */
  readonly emerg: number;
  readonly alert: number;
  readonly crit: number;
  readonly err: number;
  readonly warning: number;
  readonly notice: number;
  readonly info: number;
  readonly debug: number;

  /**
   * `actions` lists where the action may be used ("tcp-req", "tcp-res",
   * "http-req", "http-res"). `nbArgs` words after the action name are
   * MANDATORY in HAProxy 2.6 (tried: `lua.x` registered with 1 argument and
   * used bare fails with "expect 1 arguments"; one registered with 0 rejects
   * any word that is not `if`/`unless`).
   */
  register_action(name: string, actions: string[], fn: ActionFunction, nbArgs?: number): void;
  /** Adds a command to the stats socket; `path` are the leading words. */
  register_cli(path: string[], usage: string, fn: CliFunction): void;
  /** Adds `lua.<name>` for `http-request use-service`; `fn` runs in the HTTP applet's coroutine and may yield. */
  register_service(name: string, mode: "http", fn: (this: void, applet: HttpApplet) => void): void;
  /** Runs `fn` once in its own coroutine after start-up; it may loop and sleep. */
  register_task(fn: (this: void) => void): void;
  /**
   * Runs `fn` once HAProxy has parsed its whole configuration, before it
   * serves: a `setenv` below `lua-load` is visible then, not at load (tried
   * on 2.6.12). An error raised in `fn` stops the start-up (exit 1, "Lua init: …").
   */
  register_init(fn: (this: void) => void): void;

  /** Sets `key` to `value` in a map haproxy.cfg references by this file name (raises "unknown map file" otherwise). */
  set_map(file: string, key: string, value: string): void;
  /** Removes `key` from that map (no error when absent). */
  del_map(file: string, key: string): void;

  /** The fields of `show info` (e.g. `Stopping`: 1 once a soft stop or reload began), as numbers or strings. */
  get_info(): LuaTable<string, string | number>;

  /** A new cosocket. Never keep one in a global: it belongs to its thread. */
  tcp(): Socket;
  now(): HaproxyTime;
  /** Yield for `ms` milliseconds (not allowed in fetches/converters). */
  msleep(ms: number): void;
  sleep(seconds: number): void;
  /** Give the hand back to the scheduler; resumes on the next loop. */
  yield(): void;

  log(level: number, message: string): void;
  Debug(message: string): void;
  Info(message: string): void;
  Warning(message: string): void;
  Alert(message: string): void;
}

/** Action return codes (global `act`). There is no "allow": CONTINUE is the default. */
export interface ActionCodes {
  readonly CONTINUE: number;
  readonly STOP: number;
  readonly YIELD: number;
  readonly ERROR: number;
  readonly DONE: number;
  readonly DENY: number;
  readonly ABORT: number;
  readonly INVALID: number;
}

/** `txn.f`: sample fetches returning native types, or nil on failure. */
export interface Fetches {
  /** 1 if the connection uses SSL and a client certificate was presented, else 0. */
  ssl_c_used(): number | undefined;
  /** 0 when the client certificate chain verified, else the OpenSSL error code. */
  ssl_c_verify(): number | undefined;
  /** The client (leaf) certificate in DER, as a binary string. */
  ssl_c_der(): string | undefined;
  /**
   * The server (leaf) certificate of the backend connection in DER. Only
   * meaningful on the response side (tcp-response / http-response rules),
   * once the server connection's handshake is done; nil otherwise.
   */
  ssl_s_der(): string | undefined;
  /** SHA-1 of the server certificate (20 bytes), as `ssl_s_sha1`. */
  ssl_s_sha1(): string | undefined;
  /** 1 if the front connection is SSL. */
  ssl_fc(): number | undefined;
  src(): string | undefined;
  src_port(): number | undefined;
  /** The frontend's name. */
  fe_name(): string | undefined;
  /** HTTP only: the request's path, without the query (after normalize-uri rules that ran before). */
  path(): string | undefined;
  /** HTTP only: the request's method. */
  method(): string | undefined;
}

/** `txn.http`: present (non-nil) only on an HTTP stream (a `mode http` proxy). */
export interface HttpMessage {
  /** Header names lowercased → their values, in a 0-based array. */
  req_get_headers(): LuaTable<string, LuaTable<number, string>>;
}

export interface Txn {
  readonly f: Fetches;
  /** nil unless the stream is HTTP (hlua.c: IS_HTX_STRM), whichever rule set runs the action. */
  readonly http: HttpMessage | undefined;
  /** Stores a variable; `name` is scoped, e.g. "txn.connect_allowed". */
  set_var(name: string, value: string | number | boolean): void;
  get_var(name: string): string | number | boolean | undefined;
  log(level: number, message: string): void;
  Debug(message: string): void;
  Info(message: string): void;
  Warning(message: string): void;
  Alert(message: string): void;
}

/**
 * HAProxy's cosocket (class Socket). Semantics read in src/hlua.c (2.6):
 * - `connect` returns 1, or nil and a message.
 * - `receive("*l")` returns one line without its CR/LF; `receive(n)` waits
 *   for n bytes. On close (or timeout, which closes), what was buffered is
 *   returned as a short result; with nothing buffered: nil, "connection closed.".
 * - `settimeout(seconds)` takes fractional seconds and applies to the
 *   operations that follow.
 */
export interface Socket {
  connect(address: string, port?: number): LuaMultiReturn<[number | undefined, string | undefined]>;
  /** Returns the number of bytes queued, or nil/-1 on a closed socket. */
  send(data: string): number | undefined;
  receive(pattern: "*l" | "*a" | number): LuaMultiReturn<[string | undefined, string | undefined]>;
  settimeout(seconds: number): void;
  close(): void;
}

/** The applet given to a CLI handler (an AppletTCP bound to the stats socket). */
export interface CliApplet {
  send(text: string): void;
}

/** The applet given to an HTTP service (AppletHTTP): the request's fields, and the response, status and headers first. */
export interface HttpApplet {
  readonly method: string;
  /** The path without the query string. */
  readonly path: string;
  set_status(code: number, reason?: string): void;
  add_header(name: string, value: string): void;
  start_response(): void;
  send(text: string): void;
}

/** HAProxy's global `Regex` class (PCRE2 in Debian's build): `Regex.new(pattern, caseSensitive)`. */
export interface RegexClass {
  /** Returns true and the regex, or false and why (dot-called). */
  new: (this: void, pattern: string, caseSensitive: boolean) => LuaMultiReturn<[boolean, RegexObject | string]>;
}

/** A compiled HAProxy regex; `exec` is colon-called and searches (anchor the pattern for a full match). */
export interface RegexObject {
  exec(subject: string): boolean;
}
