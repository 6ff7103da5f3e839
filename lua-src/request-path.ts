// The path an L7 rule is matched against must be the path the application
// gets. HAProxy normalizes it before the action runs (haproxy.cfg, in this
// order: percent-decode-unreserved strict, percent-to-uppercase strict,
// path-merge-slashes, path-strip-dot, path-strip-dotdot full); this module
// computes the same normal form and refuses a request whose path is not
// already in it (the lines were left out, or a case they do not cover), so a
// rule is never matched against a path the application reads differently.
// Refused outright, because no normal form is safe: an encoded "/" or "\"
// (%2F, %5C: the application may decode them into separators), a backslash,
// invalid percent-encoding, a NUL, a path that does not start with "/".
// Proved by test/lua/request_path_spec.lua.

const find = string.find;
const gsub = string.gsub;
const upper = string.upper;
const char = string.char;
const sub = string.sub;
const concat = table.concat;

/** Percent-encoded bytes that are decoded (RFC 3986 unreserved: ALPHA DIGIT - . _ ~). */
function decodeUnreserved(hex: string): string {
  const code = tonumber(hex, 16) as number;
  if (
    (code >= 0x41 && code <= 0x5a) || (code >= 0x61 && code <= 0x7a) || (code >= 0x30 && code <= 0x39) ||
    code === 0x2d || code === 0x2e || code === 0x5f || code === 0x7e
  ) return char(code);
  return "%" + upper(hex);
}

/** RFC 3986 5.2.4 on an absolute path whose slashes are already merged. */
function removeDotSegments(path: string): string {
  const output: string[] = [];
  let count = 0;
  let position = 2;
  let trailingSlash = false;
  const length = path.length;
  while (position <= length + 1) {
    const [slash] = find(path, "/", position, true);
    const last = slash === undefined;
    const segment = sub(path, position, last ? length : (slash as number) - 1);
    if (segment === "..") {
      if (count > 0) {
        output[count - 1] = undefined as unknown as string;
        count--;
      }
      trailingSlash = true;
    } else if (segment === ".") {
      trailingSlash = true;
    } else {
      count++;
      output[count - 1] = segment;
      trailingSlash = false;
    }
    if (last) break;
    position = (slash as number) + 1;
  }
  const joined = "/" + concat(output, "/", 1, count);
  return trailingSlash && count > 0 ? joined + "/" : joined;
}

/**
 * The normal form of `path` (no query), or nil and why it cannot be
 * normalized safely. Cheap when the path needs nothing (the usual case).
 */
export function normalizePath(path: string): LuaMultiReturn<[string | undefined, string | undefined]> {
  if (sub(path, 1, 1) !== "/") return $multi(undefined, "the path does not start with /");
  if (find(path, "[%%\\%z]")[0] === undefined && find(path, "//", 1, true)[0] === undefined && find(path, "/.", 1, true)[0] === undefined) {
    return $multi(path, undefined);
  }
  if (find(path, "%z")[0] !== undefined) return $multi(undefined, "a NUL byte in the path");
  if (find(path, "\\", 1, true)[0] !== undefined) return $multi(undefined, "a backslash in the path");
  let normal = path;
  if (find(path, "%", 1, true)[0] !== undefined) {
    if (find(path, "%%%x?[^%x]")[0] !== undefined || find(path, "%%%x?$")[0] !== undefined) return $multi(undefined, "invalid percent-encoding in the path");
    if (find(path, "%%2[fF]")[0] !== undefined || find(path, "%%5[cC]")[0] !== undefined) return $multi(undefined, "an encoded / or \\ (%2F, %5C) in the path");
    if (find(path, "%%00")[0] !== undefined) return $multi(undefined, "an encoded NUL (%00) in the path");
    [normal] = gsub(path, "%%(%x%x)", decodeUnreserved);
  }
  [normal] = gsub(normal, "//+", "/");
  if (find(normal, "/.", 1, true)[0] !== undefined) normal = removeDotSegments(normal);
  return $multi(normal, undefined);
}

/**
 * Checks the path HAProxy will forward: returns "" when it is in normal form,
 * else why the request is refused.
 */
export function pathProblem(path: string | undefined): string {
  if (path === undefined || path === "") return "no request path";
  const [normal, problem] = normalizePath(path);
  if (normal === undefined) return problem as string;
  if (normal !== path) return "the path is not normalized (add the http-request normalize-uri lines before the action)";
  return "";
}
