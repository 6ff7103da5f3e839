// A minimal HTTP/1.1 client for the local Consul agent over an HAProxy
// cosocket: one request per connection (`Connection: close`), a reply parser
// that accepts bytes in any split (tested in test/lua/http_spec.lua), bodies
// delimited by Content-Length, chunked encoding or the end of the
// connection, and hard caps on every size.

import type { Socket } from "./haproxy";

const byte = string.byte;
const sub = string.sub;
const find = string.find;
const match = string.match;
const lower = string.lower;
const format = string.format;
const concat = table.concat;

const MAX_LINE = 8192;
const MAX_HEAD = 32768;
/**
 * The most one receive(n) asks for: HAProxy's cosocket can only hold
 * tune.bufsize (16 kB by default), so a larger n is satisfied only by the
 * connection's end. (Not the whole story: on 2.6.12 an 18 kB chunked reply of
 * /v1/agent/self still intermittently completes only at the read timeout;
 * see intention-watch.ts, which reads it rarely for that reason.)
 */
const MAX_READ = 8192;

const STATUS_LINE = 1;
const HEADER_LINE = 2;
const BODY_BY_LENGTH = 3;
const CHUNK_SIZE_LINE = 4;
const CHUNK_DATA = 5;
const CHUNK_END_LINE = 6;
const TRAILER_LINE = 7;
const BODY_UNTIL_CLOSE = 8;
const DONE = 9;
const FAILED = 10;

export interface HttpReply {
  status: number;
  /** Lowercased names; repeated headers joined with ", ". */
  headers: LuaTable<string, string>;
  body: string;
}

/** Incremental reply parser: feed() bytes as they come, finish() at end of stream. */
export class HttpReplyParser {
  state = STATUS_LINE;
  error: string | undefined = undefined;
  status = 0;
  headers = new LuaTable<string, string>();
  private buffer = "";
  private bodyParts: string[] = [];
  private bodyLength = 0;
  private remaining = 0;
  private headBytes = 0;

  constructor(private readonly maxBody: number) {}

  done(): boolean {
    return this.state === DONE;
  }

  /** What the socket should read next: "*l" (a line), a byte count, or 0 when finished. */
  want(): "*l" | number {
    const state = this.state;
    if (state === BODY_BY_LENGTH || state === CHUNK_DATA) return Math.min(this.remaining, MAX_READ);
    if (state === BODY_UNTIL_CLOSE) return Math.min(this.maxBody - this.bodyLength + 1, MAX_READ);
    if (state === DONE || state === FAILED) return 0;
    return "*l";
  }

  reply(): HttpReply | undefined {
    if (this.state !== DONE) return undefined;
    return { status: this.status, headers: this.headers, body: concat(this.bodyParts) };
  }

  /** The connection ended: complete a read-until-close body, or fail. */
  finish(): void {
    if (this.state === BODY_UNTIL_CLOSE) this.state = DONE;
    else if (this.state !== DONE && this.state !== FAILED) this.fail("connection closed before the reply was complete");
  }

  feed(data: string): void {
    if (this.state === DONE || this.state === FAILED) return;
    this.buffer = this.buffer === "" ? data : this.buffer + data;
    while (this.buffer !== "" && this.state !== DONE && this.state !== FAILED) {
      const state = this.state;
      if (state === BODY_BY_LENGTH || state === CHUNK_DATA || state === BODY_UNTIL_CLOSE) {
        this.takeBody();
      } else {
        const [newline] = find(this.buffer, "\n", 1, true);
        if (newline === undefined) {
          if (this.buffer.length > MAX_LINE) this.fail("header line too long");
          return;
        }
        if (newline > MAX_LINE) return this.fail("header line too long");
        let line = sub(this.buffer, 1, newline - 1);
        if (byte(line, line.length) === 0x0d) line = sub(line, 1, line.length - 1);
        this.buffer = sub(this.buffer, newline + 1);
        this.headBytes += newline;
        if (this.headBytes > MAX_HEAD) return this.fail("reply head too large");
        this.takeLine(line);
      }
    }
  }

  private fail(why: string): void {
    this.state = FAILED;
    this.error = why;
    this.buffer = "";
  }

  private takeBody(): void {
    const buffer = this.buffer;
    let take = buffer.length;
    if (this.state !== BODY_UNTIL_CLOSE && take > this.remaining) take = this.remaining;
    const piece = take === buffer.length ? buffer : sub(buffer, 1, take);
    this.buffer = take === buffer.length ? "" : sub(buffer, take + 1);
    this.bodyLength += take;
    if (this.bodyLength > this.maxBody) return this.fail(format("reply body larger than %d bytes", this.maxBody));
    this.bodyParts.push(piece);
    if (this.state === BODY_UNTIL_CLOSE) return;
    this.remaining -= take;
    if (this.remaining === 0) this.state = this.state === CHUNK_DATA ? CHUNK_END_LINE : DONE;
  }

  private takeLine(line: string): void {
    const state = this.state;
    if (state === STATUS_LINE) {
      const [code] = match(line, "^HTTP/1%.[01] (%d%d%d)");
      if (code === undefined || (line.length > 12 && byte(line, 13) !== 0x20)) return this.fail("malformed status line");
      this.status = tonumber(code) as number;
      this.state = HEADER_LINE;
    } else if (state === HEADER_LINE) {
      if (line === "") return this.endOfHead();
      const [name, value] = match(line, "^([^:%s]+):[ \t]*(.-)[ \t]*$");
      if (name === undefined) return this.fail("malformed header line");
      const key = lower(name);
      const previous = this.headers.get(key);
      if (previous === undefined) this.headers.set(key, value);
      else if (key === "content-length") {
        if (previous !== value) return this.fail("conflicting Content-Length headers");
      } else this.headers.set(key, previous + ", " + value);
    } else if (state === CHUNK_SIZE_LINE) {
      const [digits] = match(line, "^(%x+)[ \t]*;?");
      if (digits === undefined || digits.length > 7) return this.fail("malformed chunk size");
      const size = tonumber(digits, 16) as number;
      if (size === 0) {
        this.state = TRAILER_LINE;
      } else {
        if (this.bodyLength + size > this.maxBody) return this.fail(format("reply body larger than %d bytes", this.maxBody));
        this.remaining = size;
        this.state = CHUNK_DATA;
      }
    } else if (state === CHUNK_END_LINE) {
      if (line !== "") return this.fail("chunk not followed by CRLF");
      this.state = CHUNK_SIZE_LINE;
    } else if (state === TRAILER_LINE) {
      if (line === "") this.state = DONE;
    }
  }

  private endOfHead(): void {
    const status = this.status;
    if (status >= 100 && status < 200) {
      // An interim reply (100 Continue): the real one follows.
      this.headers = new LuaTable();
      this.state = STATUS_LINE;
      return;
    }
    if (status === 204 || status === 304) {
      this.state = DONE;
      return;
    }
    const transferEncoding = this.headers.get("transfer-encoding");
    const contentLength = this.headers.get("content-length");
    if (transferEncoding !== undefined) {
      if (contentLength !== undefined) return this.fail("both Transfer-Encoding and Content-Length");
      if (lower(transferEncoding) !== "chunked") return this.fail("unsupported Transfer-Encoding: " + transferEncoding);
      this.state = CHUNK_SIZE_LINE;
    } else if (contentLength !== undefined) {
      if (find(contentLength, "^%d+$")[0] === undefined || contentLength.length > 12) return this.fail("malformed Content-Length");
      const length = tonumber(contentLength) as number;
      if (length > this.maxBody) return this.fail(format("reply body larger than %d bytes", this.maxBody));
      this.remaining = length;
      this.state = length === 0 ? DONE : BODY_BY_LENGTH;
    } else {
      this.state = BODY_UNTIL_CLOSE;
    }
  }
}

/**
 * Pure: how many attempts HAProxy makes for one Lua socket connect(). From
 * 2.9-dev10 (commit cf07cb96b, still so in 3.3) its LUA-SOCKET proxy gets the
 * default `retries 3`: a refused or timed-out connect is tried again, one
 * socket timeout apart, four attempts in all (measured on 3.0.11: a refused
 * connect with settimeout(1) fails after 3.0 s, and reaches a listener that
 * appears 1.5 s later; 2.6 fails at once).
 */
export function socketConnectAttempts(haproxyVersion: string): number {
  const [major, minor] = match(haproxyVersion, "^(%d+)%.(%d+)");
  if (major === undefined) return 1;
  const [x, y] = [tonumber(major) as number, tonumber(minor) as number];
  return x > 2 || (x === 2 && y >= 9) ? 4 : 1;
}

/** The bytes of a request; `token` adds X-Consul-Token. */
export function buildRequest(method: string, path: string, host: string, token: string | undefined, body: string | undefined): string {
  const lines = [method + " " + path + " HTTP/1.1", "Host: " + host, "User-Agent: connect-haproxy", "Accept: application/json", "Connection: close"];
  if (token !== undefined && token !== "") lines.push("X-Consul-Token: " + token);
  if (body !== undefined) {
    lines.push("Content-Type: application/json");
    lines.push("Content-Length: " + tostring(body.length));
  }
  return concat(lines, "\r\n") + "\r\n\r\n" + (body ?? "");
}

export interface ExchangeOptions {
  address: string;
  port: number;
  /** Bounds the whole connect(), every attempt HAProxy makes for it (socketConnectAttempts). */
  connectTimeoutMs: number;
  connectAttempts: number;
  readTimeoutMs: number;
  maxBody: number;
  /** Milliseconds, monotonic enough to tell a timeout from a close. */
  now: (this: void) => number;
}

function readReply(socket: Socket, request: string, options: ExchangeOptions, parser: HttpReplyParser): string | undefined {
  // HAProxy applies the socket's timeout to each attempt.
  socket.settimeout(options.connectTimeoutMs / options.connectAttempts / 1000);
  const started = options.now();
  const [connected, connectError] = socket.connect(options.address, options.port);
  if (connected === undefined) {
    return format("cannot connect to the agent at %s:%d (%s)", options.address, options.port, connectError ?? "no reason");
  }
  socket.settimeout(options.readTimeoutMs / 1000);
  const sent = socket.send(request);
  if (sent === undefined || sent < request.length) return "connection to the agent closed while sending the request";
  for (;;) {
    const want = parser.want();
    if (want === 0) break;
    const [data] = socket.receive(want);
    if (data === undefined) {
      parser.finish();
      break;
    }
    if (want === "*l") parser.feed(data + "\r\n");
    else {
      parser.feed(data);
      // HAProxy hands back a short read only when the connection ended.
      if (data.length < want) parser.finish();
    }
  }
  if (parser.done()) return undefined;
  const elapsed = options.now() - started;
  if (elapsed >= options.readTimeoutMs) return format("no complete reply from the agent within %d ms (%s)", options.readTimeoutMs, parser.error ?? "timeout");
  return "bad reply from the agent: " + (parser.error ?? "unknown error");
}

/**
 * One request/reply exchange on a fresh socket, which is always closed.
 * Never raises: socket API errors come back as values.
 */
export function exchange(openSocket: (this: void) => Socket, request: string, options: ExchangeOptions): LuaMultiReturn<[HttpReply | undefined, string | undefined]> {
  const parser = new HttpReplyParser(options.maxBody);
  let socket: Socket | undefined;
  const [ok, problem] = pcall(() => {
    socket = openSocket();
    return readReply(socket, request, options, parser);
  });
  if (socket !== undefined) pcall(() => socket!.close());
  if (!ok) return $multi(undefined, "agent request failed: " + tostring(problem));
  if (problem !== undefined) return $multi(undefined, problem as string);
  return $multi(parser.reply(), undefined);
}

/** For Lua callers (tests), which cannot use `new`. */
export function newReplyParser(maxBody: number): HttpReplyParser {
  return new HttpReplyParser(maxBody);
}
