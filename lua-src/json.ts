// A small strict JSON decoder (RFC 8259) and a string encoder, enough for the
// agent's replies. Objects become LuaTable<string, unknown>, arrays 1-based
// Lua arrays; `null` becomes the `jsonNull` sentinel so arrays keep their
// length. Errors are values: decode(text) returns value, or nil and a message.

const byte = string.byte;
const sub = string.sub;
const find = string.find;
const match = string.match;
const char = string.char;
const format = string.format;
const concat = table.concat;

/** Ends the unescaped run of a string: a quote, a backslash or a control character (not DEL, which JSON allows). */
const STRING_STOP = '["\\' + char(0) + "-" + char(31) + "]";

/** Stands for JSON null (nil cannot live in arrays). */
export const jsonNull = new LuaTable();

const MAX_DEPTH = 64;

const B_QUOTE = 0x22;
const B_BACKSLASH = 0x5c;
const B_LBRACE = 0x7b;
const B_RBRACE = 0x7d;
const B_LBRACKET = 0x5b;
const B_RBRACKET = 0x5d;
const B_COMMA = 0x2c;
const B_COLON = 0x3a;

const SIMPLE_ESCAPES = new LuaTable<number, string>();
SIMPLE_ESCAPES.set(0x22, '"');
SIMPLE_ESCAPES.set(0x5c, "\\");
SIMPLE_ESCAPES.set(0x2f, "/");
SIMPLE_ESCAPES.set(0x62, "\b");
SIMPLE_ESCAPES.set(0x66, "\f");
SIMPLE_ESCAPES.set(0x6e, "\n");
SIMPLE_ESCAPES.set(0x72, "\r");
SIMPLE_ESCAPES.set(0x74, "\t");

/** Thrown (as a table) inside the decoder and caught once at the top. */
interface DecodeFailure {
  jsonError: string;
}

function fail(pos: number, why: string): never {
  const failure: DecodeFailure = { jsonError: format("%s at byte %d", why, pos) };
  error(failure as unknown as string, 0);
}

function skipSpace(text: string, pos: number): number {
  const [, last] = find(text, "^[ \t\r\n]*", pos);
  return (last as number) + 1;
}

function utf8(code: number): string {
  if (code < 0x80) return char(code);
  if (code < 0x800) return char(0xc0 | (code >>> 6), 0x80 | (code & 0x3f));
  if (code < 0x10000) return char(0xe0 | (code >>> 12), 0x80 | ((code >>> 6) & 0x3f), 0x80 | (code & 0x3f));
  return char(0xf0 | (code >>> 18), 0x80 | ((code >>> 12) & 0x3f), 0x80 | ((code >>> 6) & 0x3f), 0x80 | (code & 0x3f));
}

function readHex4(text: string, pos: number): number {
  const digits = match(text, "^%x%x%x%x", pos)[0];
  if (digits === undefined) fail(pos, "bad \\u escape");
  return tonumber(digits, 16) as number;
}

/** Decodes the string whose opening quote is at `pos`; returns it and the position after the closing quote. */
function readString(text: string, pos: number): LuaMultiReturn<[string, number]> {
  const start = pos + 1;
  // Fast path: no escapes, no control characters.
  const [stop] = find(text, STRING_STOP, start);
  if (stop === undefined) fail(pos, "unterminated string");
  if (byte(text, stop) === B_QUOTE) return $multi(sub(text, start, stop - 1), stop + 1);

  const parts: string[] = [];
  let cursor = start;
  for (;;) {
    const [next] = find(text, STRING_STOP, cursor);
    if (next === undefined) fail(pos, "unterminated string");
    const b = byte(text, next);
    if (next > cursor) parts.push(sub(text, cursor, next - 1));
    if (b === B_QUOTE) return $multi(concat(parts), next + 1);
    if (b !== B_BACKSLASH) fail(next, "control character in string");
    const escape = byte(text, next + 1);
    if (escape === undefined) fail(next, "unterminated string");
    if (escape === 0x75) {
      let code = readHex4(text, next + 2);
      cursor = next + 6;
      if (code >= 0xd800 && code <= 0xdbff) {
        if (sub(text, cursor, cursor + 1) !== "\\u") fail(cursor, "lone high surrogate");
        const low = readHex4(text, cursor + 2);
        if (low < 0xdc00 || low > 0xdfff) fail(cursor, "bad low surrogate");
        code = 0x10000 + (code - 0xd800) * 0x400 + (low - 0xdc00);
        cursor = cursor + 6;
      } else if (code >= 0xdc00 && code <= 0xdfff) {
        fail(next, "lone low surrogate");
      }
      parts.push(utf8(code));
    } else {
      const replacement = SIMPLE_ESCAPES.get(escape);
      if (replacement === undefined) fail(next, "bad escape");
      parts.push(replacement);
      cursor = next + 2;
    }
  }
}

function readNumber(text: string, pos: number): LuaMultiReturn<[number, number]> {
  const [, last] = find(text, "^-?%d+", pos);
  if (last === undefined) fail(pos, "unexpected character");
  // RFC 8259: no leading zeros ("01"), no bare "-".
  if (match(text, "^-?0%d", pos)[0] !== undefined) fail(pos, "leading zero in number");
  let stop = last as number;
  const [, fracLast] = find(text, "^%.%d+", stop + 1);
  if (fracLast !== undefined) stop = fracLast as number;
  else if (byte(text, stop + 1) === 0x2e) fail(stop + 1, "bad fraction");
  const [, expLast] = find(text, "^[eE][-+]?%d+", stop + 1);
  if (expLast !== undefined) stop = expLast as number;
  const value = tonumber(sub(text, pos, stop));
  if (value === undefined) fail(pos, "bad number");
  return $multi(value, stop + 1);
}

function readValue(text: string, pos: number, depth: number): LuaMultiReturn<[unknown, number]> {
  pos = skipSpace(text, pos);
  const b = byte(text, pos);
  if (b === undefined) fail(pos, "unexpected end of input");
  if (b === B_QUOTE) return readString(text, pos);
  if (b === B_LBRACE) {
    if (depth >= MAX_DEPTH) fail(pos, "nested too deep");
    const object = new LuaTable<string, unknown>();
    pos = skipSpace(text, pos + 1);
    if (byte(text, pos) === B_RBRACE) return $multi(object, pos + 1);
    for (;;) {
      if (byte(text, pos) !== B_QUOTE) fail(pos, "expected a member name");
      const [key, afterKey] = readString(text, pos);
      pos = skipSpace(text, afterKey);
      if (byte(text, pos) !== B_COLON) fail(pos, "expected ':'");
      const [value, afterValue] = readValue(text, pos + 1, depth + 1);
      object.set(key, value);
      pos = skipSpace(text, afterValue);
      const separator = byte(text, pos);
      if (separator === B_RBRACE) return $multi(object, pos + 1);
      if (separator !== B_COMMA) fail(pos, "expected ',' or '}'");
      pos = skipSpace(text, pos + 1);
    }
  }
  if (b === B_LBRACKET) {
    if (depth >= MAX_DEPTH) fail(pos, "nested too deep");
    const array = new LuaTable<number, unknown>();
    let count = 0;
    pos = skipSpace(text, pos + 1);
    if (byte(text, pos) === B_RBRACKET) return $multi(array, pos + 1);
    for (;;) {
      const [value, afterValue] = readValue(text, pos, depth + 1);
      count++;
      array.set(count, value);
      pos = skipSpace(text, afterValue);
      const separator = byte(text, pos);
      if (separator === B_RBRACKET) return $multi(array, pos + 1);
      if (separator !== B_COMMA) fail(pos, "expected ',' or ']'");
      pos = pos + 1;
    }
  }
  if (sub(text, pos, pos + 3) === "true") return $multi(true, pos + 4);
  if (sub(text, pos, pos + 4) === "false") return $multi(false, pos + 5);
  if (sub(text, pos, pos + 3) === "null") return $multi(jsonNull, pos + 4);
  return readNumber(text, pos);
}

/** Decodes a complete JSON text. Returns the value, or nil and why. */
export function decode(text: string): LuaMultiReturn<[unknown, string | undefined]> {
  if (typeof text !== "string") return $multi(undefined, "JSON input is not a string");
  const [ok, value, stop] = protect(readValue, text, 1, 0);
  if (!ok) {
    const failure = value as unknown as DecodeFailure;
    if (type(failure) === "table" && failure.jsonError !== undefined) return $multi(undefined, "invalid JSON: " + failure.jsonError);
    // Not ours (e.g. out of memory): still an error value, never a raise.
    return $multi(undefined, "invalid JSON: " + tostring(value));
  }
  const end = skipSpace(text, stop as number);
  if (end <= text.length) return $multi(undefined, format("invalid JSON: trailing data at byte %d", end));
  return $multi(value, undefined);
}

const ESCAPE_OUT = new LuaTable<string, string>();
ESCAPE_OUT.set('"', '\\"');
ESCAPE_OUT.set("\\", "\\\\");

/** A JSON string literal for `value` (bytes ≥ 0x80 are passed through: input is UTF-8). */
export function encodeString(value: string): string {
  const [escaped] = string.gsub(value, '[%c"\\]', (c: string) => ESCAPE_OUT.get(c) ?? format("\\u%04x", byte(c)));
  return '"' + escaped + '"';
}
