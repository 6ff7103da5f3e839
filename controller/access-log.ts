// Pure: proxy-defaults `AccessLogs` → HAProxy's log lines. Envoy's format
// operators (as Consul hands them to Envoy, agent/xds/accesslogs) are
// translated to HAProxy log-format aliases and sample fetches; what HAProxy
// 2.6 cannot give is logged as "-" and named in one warning line each.
import type { AccessLogsConfig } from "./consul-replies.js";

export type LogMode = "http" | "tcp";

/** Where the access log goes: HAProxy writes it itself (a file through a descriptor the controller opens: accessLogFileDescriptor). */
export type AccessLogSink = { kind: "stdout" } | { kind: "stderr" } | { kind: "file"; path: string };

/** One HAProxy log-format, with the per-request rules it needs. */
export interface TranslatedFormat {
  /** log-format text (unquoted; `%` of literal text already doubled). */
  format: string;
  /** Request headers to capture, in capture-slot order (`capture.req.hdr(n)`). */
  requestHeaders: { name: string; length: number }[];
  /** Response headers to capture (`capture.res.hdr(n)`). */
  responseHeaders: { name: string; length: number }[];
  /** START_TIME needs the start recorded in a variable (HAProxy 2.6 has no fetch for the accept date). */
  startTime: boolean;
  /** Operators logged as "-" (or approximated with a note), for the warnings. */
  notes: string[];
}

export interface AccessLog {
  sink: AccessLogSink;
  http: TranslatedFormat;
  tcp: TranslatedFormat;
  /** DisableListenerLogs false: failures before a stream (TLS handshakes; error-log-format on the public listener) and before any rule are logged too. */
  listenerLogs: boolean;
  warnings: string[];
}

/** Consul's default JSON access-log format (agent/xds/accesslogs), when neither format is given. */
export const consulDefaultJsonFormat: Record<string, string> = {
  start_time: "%START_TIME%",
  route_name: "%ROUTE_NAME%",
  method: "%REQ(:METHOD)%",
  path: "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%",
  protocol: "%PROTOCOL%",
  response_code: "%RESPONSE_CODE%",
  response_flags: "%RESPONSE_FLAGS%",
  response_code_details: "%RESPONSE_CODE_DETAILS%",
  connection_termination_details: "%CONNECTION_TERMINATION_DETAILS%",
  bytes_received: "%BYTES_RECEIVED%",
  bytes_sent: "%BYTES_SENT%",
  duration: "%DURATION%",
  upstream_service_time: "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%",
  x_forwarded_for: "%REQ(X-FORWARDED-FOR)%",
  user_agent: "%REQ(USER-AGENT)%",
  request_id: "%REQ(X-REQUEST-ID)%",
  authority: "%REQ(:AUTHORITY)%",
  upstream_host: "%UPSTREAM_HOST%",
  upstream_cluster: "%UPSTREAM_CLUSTER%",
  upstream_local_address: "%UPSTREAM_LOCAL_ADDRESS%",
  downstream_local_address: "%DOWNSTREAM_LOCAL_ADDRESS%",
  downstream_remote_address: "%DOWNSTREAM_REMOTE_ADDRESS%",
  requested_server_name: "%REQUESTED_SERVER_NAME%",
  upstream_transport_failure_reason: "%UPSTREAM_TRANSPORT_FAILURE_REASON%",
};

/** Default length of a captured header (Envoy's REQ(X):N limits it explicitly). */
const defaultCaptureLength = 256;
const spiffeVar = "txn.connect_spiffe";

function startVar(mode: LogMode): string {
  return mode === "http" ? "txn.connect_start" : "sess.connect_start";
}

/** A fetch's value, escaped for a JSON string (invalid UTF-8 dropped), or raw in a text format. */
function fetched(expression: string, json: boolean): string {
  return json ? `%[${expression},json(utf8s)]` : `%[${expression}]`;
}

/** Operators that are one HAProxy alias in HTTP and TCP alike (none can print a quote or a backslash). */
const sameInBothModes: Record<string, string> = {
  DOWNSTREAM_REMOTE_ADDRESS: "%ci:%cp",
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS: "%ci:%cp",
  DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT: "%ci",
  DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT: "%ci",
  DOWNSTREAM_LOCAL_ADDRESS: "%fi:%fp",
  DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT: "%fi",
  DOWNSTREAM_TLS_VERSION: "%sslv",
  DOWNSTREAM_TLS_CIPHER: "%sslc",
  UPSTREAM_CLUSTER: "%b",
  UPSTREAM_HOST: "%si:%sp",
  UPSTREAM_LOCAL_ADDRESS: "%bi:%bp",
  HOSTNAME: "%H",
};

interface Operator {
  name: string;
  argument?: string;
  maxLength?: number;
}

/** An operator's HAProxy expression; `numeric` when it always prints a number (unquoted in JSON). */
type Expression = { text: string; numeric?: boolean; note?: string } | { unsupported: true };

class FormatBuilder {
  readonly requestHeaders: { name: string; length: number }[] = [];
  readonly responseHeaders: { name: string; length: number }[] = [];
  startTime = false;
  readonly notes = new Set<string>();
  readonly used = new Set<string>();

  constructor(readonly mode: LogMode, readonly json: boolean) {}

  private captured(list: { name: string; length: number }[], name: string, maxLength?: number): number {
    const lower = name.toLowerCase();
    const existing = list.findIndex((header) => header.name === lower);
    if (existing >= 0) return existing;
    list.push({ name: lower, length: maxLength ?? defaultCaptureLength });
    return list.length - 1;
  }

  expression({ name, argument, maxLength }: Operator): Expression {
    const http = this.mode === "http";
    const dash = { text: "-" };
    const alias = sameInBothModes[name];
    if (alias) return { text: alias };
    switch (name) {
      case "START_TIME": {
        this.startTime = true;
        const v = startVar(this.mode);
        // ISO 8601 UTC with milliseconds, as Envoy's default (no ms_utime converter in 2.6).
        const text = `%[var(${v}),div(1000),utime(%Y-%m-%dT%H:%M:%S)].%[var(${v}),mod(1000),add(1000),json,bytes(1,3)]Z`;
        return argument ? { text, note: `%START_TIME(${argument})%: custom time formats are not supported; logged as ISO 8601 UTC with milliseconds` } : { text };
      }
      case "DOWNSTREAM_PEER_URI_SAN":
        return { text: fetched(`var(${spiffeVar})`, this.json) };
      case "REQUESTED_SERVER_NAME":
        return { text: fetched("ssl_fc_sni", this.json) };
      case "PROTOCOL":
        return http ? { text: "%HV" } : dash;
      case "RESPONSE_CODE":
        return http ? { text: "%ST", numeric: true } : { text: "0", numeric: true };
      case "RESPONSE_FLAGS":
        return { text: "%ts", note: "%RESPONSE_FLAGS%: HAProxy's two-letter termination state (e.g. -- normal, PR denied by the proxy, SC no server, CD client aborted; docs/controller.md maps them to Envoy's flags)" };
      case "BYTES_RECEIVED":
        return { text: "%U", numeric: true };
      case "BYTES_SENT":
        return { text: "%B", numeric: true };
      case "DURATION":
        return { text: http ? "%Ta" : "%Tt", numeric: true };
      case "CONNECT_VERDICT":
        return { text: "%[var(txn.connect_allowed),iif(allow,deny)]" };
      case "CONNECT_REASON":
        return { text: fetched("var(txn.connect_reason)", this.json) };
      case "REQ": {
        if (!argument) return { unsupported: true };
        if (!http) return dash;
        // `A?B`: A, else B. Nothing rewrites the path before the log, so the original path is :PATH.
        const [first, second] = argument.split("?").map((part) => part.toUpperCase());
        const header = first === "X-ENVOY-ORIGINAL-PATH" && second ? second : first!;
        if (header === ":PATH") return { text: fetched("capture.req.uri", this.json) };
        if (header === ":METHOD") return { text: "%HM" };
        if (header.startsWith(":") && header !== ":AUTHORITY") return { unsupported: true };
        const slot = this.captured(this.requestHeaders, header === ":AUTHORITY" ? "host" : header, maxLength);
        return { text: fetched(`capture.req.hdr(${slot})`, this.json) };
      }
      case "RESP": {
        if (!argument) return { unsupported: true };
        if (!http) return dash;
        const header = argument.toUpperCase();
        // Envoy's own header: the time the upstream took, which is HAProxy's server response time.
        if (header === "X-ENVOY-UPSTREAM-SERVICE-TIME") return { text: "%Tr", numeric: true };
        if (header.startsWith(":")) return { unsupported: true };
        const slot = this.captured(this.responseHeaders, header, maxLength);
        return { text: fetched(`capture.res.hdr(${slot})`, this.json) };
      }
      default:
        return { unsupported: true };
    }
  }

  /** One string of the Envoy format (a JSON value or the whole text format) → log-format text. */
  translate(value: string, literal: (text: string) => string): { text: string; numeric: boolean } {
    const pieces: string[] = [];
    let numericOnly: boolean | undefined;
    let last = 0;
    let operators = 0;
    for (const match of value.matchAll(operatorPattern)) {
      pieces.push(literal(value.slice(last, match.index)));
      last = match.index! + match[0].length;
      operators += 1;
      const operator: Operator = { name: match[1]!, ...(match[3] !== undefined ? { argument: match[3] } : {}), ...(match[5] ? { maxLength: Number(match[5]) } : {}) };
      const display = match[0];
      this.used.add(operator.name === "REQ" && /PATH/i.test(operator.argument ?? "") ? "REQ(:PATH)" : operator.name);
      const expression = this.expression(operator);
      if ("unsupported" in expression) {
        this.notes.add(`${display}: not supported by connect-haproxy; logged as "-"`);
        pieces.push("-");
        numericOnly = false;
        continue;
      }
      if (expression.note) this.notes.add(expression.note);
      if (operator.maxLength && !/capture\.re[qs]\.hdr/.test(expression.text)) this.notes.add(`${display}: the length limit :${operator.maxLength} is not applied`);
      pieces.push(expression.text);
      numericOnly = (numericOnly ?? true) && Boolean(expression.numeric);
    }
    pieces.push(literal(value.slice(last)));
    const whole = operators === 1 && new RegExp(`^${operatorPattern.source}$`).test(value);
    return { text: pieces.join(""), numeric: whole && numericOnly === true };
  }
}

/** Envoy's command operators: %NAME%, %NAME(arg)%, %NAME(arg):N%. */
const operatorPattern = /%([A-Z][A-Z0-9_]*)(\(([^)]*)\))?(:(\d+))?%/g;

/** Literal text of a log-format: `%` doubled (HAProxy reads `%` as the start of an alias). */
function logLiteral(text: string): string {
  return text.replace(/%/g, "%%");
}

/** Literal text inside a JSON string. */
function jsonLiteral(text: string): string {
  return logLiteral(JSON.stringify(text).slice(1, -1));
}

type JsonFormatValue = string | number | boolean | null | JsonFormatValue[] | { [key: string]: JsonFormatValue };

function renderJsonValue(builder: FormatBuilder, value: JsonFormatValue): string {
  if (typeof value === "string") {
    const { text, numeric } = builder.translate(value, jsonLiteral);
    return numeric ? text : `"${text}"`;
  }
  if (value === null || typeof value !== "object") return logLiteral(JSON.stringify(value));
  if (Array.isArray(value)) return `[${value.map((item) => renderJsonValue(builder, item)).join(",")}]`;
  return `{${Object.entries(value).map(([key, item]) => `"${jsonLiteral(key)}":${renderJsonValue(builder, item)}`).join(",")}}`;
}

/** The fields every line carries (the issue's "client, verdict, reason"), unless the format already logs them. */
const connectFields: { key: string; operator: string; text: string }[] = [
  { key: "downstream_peer_uri_san", operator: "DOWNSTREAM_PEER_URI_SAN", text: "client" },
  { key: "connect_verdict", operator: "CONNECT_VERDICT", text: "verdict" },
  { key: "connect_reason", operator: "CONNECT_REASON", text: "reason" },
];

/** Pure: one Envoy format (a JSON object, or text) → HAProxy log-format for `mode`. */
export function translateFormat(format: { json: Record<string, JsonFormatValue> } | { text: string }, mode: LogMode): TranslatedFormat {
  if ("json" in format) {
    const builder = new FormatBuilder(mode, true);
    const object: Record<string, JsonFormatValue> = { ...format.json };
    const body = renderJsonValue(builder, object);
    const extra = connectFields
      .filter((field) => !builder.used.has(field.operator) && !(field.key in object))
      .map((field) => `"${field.key}":${renderJsonValue(builder, `%${field.operator}%`)}`);
    const text = extra.length === 0 ? body : `${body.slice(0, -1)}${body.length > 2 ? "," : ""}${extra.join(",")}}`;
    return result(builder, text);
  }
  const builder = new FormatBuilder(mode, false);
  // Envoy ends a text format with a newline; HAProxy ends every line itself.
  let { text } = builder.translate(format.text.replace(/\n+$/, ""), logLiteral);
  const extra = connectFields.filter((field) => !builder.used.has(field.operator));
  for (const field of extra) text += ` ${field.text}=${field.operator === "CONNECT_REASON" ? "%{+Q}[var(txn.connect_reason)]" : builder.translate(`%${field.operator}%`, logLiteral).text}`;
  return result(builder, text);
}

function result(builder: FormatBuilder, format: string): TranslatedFormat {
  return { format, requestHeaders: builder.requestHeaders, responseHeaders: builder.responseHeaders, startTime: builder.startTime, notes: [...builder.notes] };
}

/** Pure: proxy-defaults AccessLogs → the access log to render; undefined when not enabled (the built-in traffic line on stdout). */
export function planAccessLog(config: AccessLogsConfig | null | undefined): AccessLog | undefined {
  if (!config?.Enabled) return undefined;
  const warnings: string[] = [];
  let sink: AccessLogSink = { kind: "stdout" };
  const type = (config.Type ?? "").toLowerCase();
  if (type === "stderr") sink = { kind: "stderr" };
  else if (type === "file") {
    if (config.Path) sink = { kind: "file", path: config.Path };
    else warnings.push('access logs: Type "file" without a Path; logging to stdout');
  } else if (type !== "" && type !== "stdout") warnings.push(`access logs: unknown Type ${JSON.stringify(config.Type)}; logging to stdout`);

  let format: { json: Record<string, JsonFormatValue> } | { text: string } = { json: consulDefaultJsonFormat };
  if (config.JSONFormat) {
    if (config.TextFormat) warnings.push("access logs: both JSONFormat and TextFormat are set; JSONFormat is used (as Consul does)");
    try {
      const parsed = JSON.parse(config.JSONFormat) as unknown;
      if (parsed === null || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("not a JSON object");
      format = { json: parsed as Record<string, JsonFormatValue> };
    } catch (err) {
      warnings.push(`access logs: JSONFormat is not a JSON object (${(err as Error).message}); Consul's default JSON format is used`);
    }
  } else if (config.TextFormat) format = { text: config.TextFormat };

  const http = translateFormat(format, "http");
  const tcp = translateFormat(format, "tcp");
  const notes = [...new Set([...http.notes, ...tcp.notes])];
  warnings.push(...notes.map((note) => `access logs: ${note}`));
  if (config.DisableListenerLogs) {
    warnings.push("access logs: DisableListenerLogs: failures before a request (TLS handshakes) are not logged, nor are requests HAProxy refuses before reading them whole (400, 408), which Envoy would log");
  }
  return { sink, http, tcp, listenerLogs: !config.DisableListenerLogs, warnings };
}

/** A configuration word in single quotes: HAProxy interprets no escape (nor `$`) inside. */
function singleQuoted(text: string): string {
  return `'${text.replace(/'/g, `'\\''`)}'`;
}

/**
 * The frontend's only log target, written by HAProxy itself: its stdout, its
 * stderr, or the file the controller opened as fd 3 (HAProxy 2.6 cannot open
 * a file). HAProxy also sends a frontend's notices ("Proxy … stopped" at every
 * reload, at level warning) to the frontend's loggers, and a logger's level
 * only caps; so access lines are raised to `err` (the first rule of every
 * stream; `option log-separate-errors` raises those that fail before any rule
 * ran, and failed handshakes) and the logger keeps `err` and above: the
 * notices never reach the access log (checked on 2.6.12 and 3.0.11 by the
 * integration test, which parses every line of the file as JSON across reloads).
 * With DisableListenerLogs, failures before a stream stay at info and are dropped.
 */
export function accessLogTargetLines(sink: AccessLogSink, listenerLogs: boolean): string[] {
  const target = sink.kind === "file" ? `fd@${accessLogFileDescriptor}` : sink.kind;
  // 8 kB: Consul's default JSON format with long paths passes 1 kB (HAProxy's default).
  return ["no log", `log ${target} len 8192 format raw local0 err`, "tcp-request content set-log-level err", ...(listenerLogs ? ["option log-separate-errors"] : [])];
}

/**
 * Pure: the lines a frontend of `mode` gets for the access log, in order:
 * the target, the start time and captures (so a denied request logs them
 * too), then the formats. `publicListener` adds the handshake-failure lines.
 */
export function accessLogFrontendLines(log: AccessLog, mode: LogMode, publicListener: boolean): string[] {
  const translated = log[mode];
  const listenerLogs = publicListener && log.listenerLogs;
  // HAProxy runs tcp-request connection, then content, then http-request rules
  // whatever their order, and warns when they are written out of it.
  const connection: string[] = [];
  // A failed handshake has no request: its start is the connection's.
  if (translated.startTime && (mode === "tcp" || listenerLogs)) connection.push(`tcp-request connection set-var(${startVar("tcp")}) date(0,ms)`);
  // The target's level rule comes before any rule that refuses the stream.
  const lines = [...connection, ...accessLogTargetLines(log.sink, log.listenerLogs)];
  if (translated.startTime && mode === "http") lines.push(`http-request set-var(${startVar(mode)}) date(0,ms)`);
  for (const header of translated.requestHeaders) lines.push(`http-request capture req.hdr(${header.name}) len ${header.length}`);
  translated.responseHeaders.forEach((header, slot) => lines.push(`declare capture response len ${header.length}`, `http-response capture res.hdr(${header.name}) id ${slot}`));
  lines.push(`log-format ${singleQuoted(translated.format)}`);
  if (listenerLogs) lines.push(`error-log-format ${singleQuoted(translated.format.replaceAll(`var(${startVar("http")})`, `var(${startVar("tcp")})`))}`);
  return lines;
}

/** A frontend's log lines: the access log's when enabled, else the built-in ones the caller renders. */
export function frontendLogLines(log: AccessLog | undefined, mode: LogMode, publicListener: boolean, builtIn: string[]): string[] {
  return log ? accessLogFrontendLines(log, mode, publicListener) : builtIn;
}

/** The access log file's descriptor in HAProxy (haproxy-process.ts opens the file at spawn; it survives reloads, not a change of Path). */
export const accessLogFileDescriptor = 3;
