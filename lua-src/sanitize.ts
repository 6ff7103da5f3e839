// The one sanitiser for untrusted text: reasons that may quote an agent's
// reply or a certificate's bytes, and SPIFFE IDs that failed to parse. What
// comes out is safe inside a double-quoted field of a log line and in a txn
// variable: bounded, with no control characters (no forged log lines), no
// double quotes and no backslashes (no escaping out of the quotes).

const gsub = string.gsub;
const sub = string.sub;

/** A reason in a log line: long enough for any of ours and Consul's. */
export const MAX_LOGGED_REASON_BYTES = 300;

/** At most `maxBytes` bytes of `text` (then "…"), with control characters, `"` and `\` replaced by "?". */
export function sanitize(text: string, maxBytes: number): string {
  const [clean] = gsub(text.length > maxBytes ? sub(text, 1, maxBytes) + "…" : text, '[%c"\\]', "?");
  return clean;
}

/** `text` sanitized and double-quoted, for a `reason="…"` field of a log line or a reason that quotes it. */
export function quoted(text: string, maxBytes: number = MAX_LOGGED_REASON_BYTES): string {
  return '"' + sanitize(text, maxBytes) + '"';
}
