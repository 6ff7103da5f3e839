// The command line through run(argv, out, err): help, usage errors, exit codes.
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { describe, expect, it } from "vitest";
import { exitCodes, luaBundlePath, run } from "../../controller/run.js";

function capture() {
  const sink = { text: "", write: (s: string) => ((sink.text += s), true) };
  return sink;
}

async function cli(...argv: string[]) {
  const out = capture();
  const err = capture();
  const code = await run(argv, out, err);
  return { code, out: out.text, err: err.text };
}

describe("connect-haproxy CLI", () => {
  it("explains itself, its environment defaults and its exit codes in --help", async () => {
    const { code, out: raw } = await cli("--help");
    expect(code).toBe(exitCodes.ok);
    expect(raw).toMatch(/Exit codes:\n\s+0 .*\n\s+1 .*\n\s+2 /);
    // commander wraps long lines: compare with whitespace collapsed
    const out = raw.replace(/\s+/g, " ");
    expect(out).toContain("--sidecar-for <service-id>");
    expect(out).toContain("--proxy-id <sidecar-id>");
    expect(out).toMatch(/default: "127\.0\.0\.1:8500", env: CONSUL_HTTP_ADDR/);
    expect(out).toContain("env: CONSUL_HTTP_TOKEN)");
    expect(out).toContain("env: CONSUL_HTTP_TOKEN_FILE");
    expect(out).toContain("env: CONSUL_CACERT");
    expect(out).toContain("--haproxy-bin");
    expect(out).toContain("--config-dir");
    expect(out).toContain("--log-level");
    expect(out).toContain("render [options]");
    expect(out).toContain("lua-path");
  });

  it("prints the Lua bundle's absolute path", async () => {
    const { code, out } = await cli("lua-path");
    expect(code).toBe(0);
    expect(out.trim()).toBe(luaBundlePath());
    expect(out.trim()).toMatch(/^\/.*\/dist\/connect-haproxy\.lua$/);
  });

  it("--version names the package, the HAProxy it would run and the Lua bundle, and exits 1 when HAProxy is not usable", async () => {
    const { version } = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")) as { version: string };
    const haproxyLine = execFileSync("haproxy", ["-v"], { encoding: "utf8" }).split("\n")[0]!.trim();
    let { code, out } = await cli("--version", "--haproxy-bin", "haproxy");
    expect(code).toBe(exitCodes.ok);
    expect(out.split("\n")).toEqual([
      `connect-haproxy ${version}`,
      `haproxy: ${haproxyLine} (haproxy)`,
      `lua bundle: connect-haproxy ${version} (${luaBundlePath()})`,
      "",
    ]);
    ({ code, out } = await cli("--version", "--haproxy-bin", "/nonexistent/haproxy"));
    expect(code).toBe(exitCodes.runtimeFailure);
    expect(out).toMatch(/^haproxy: not usable \(\/nonexistent\/haproxy: .*ENOENT\)$/m);
  });

  it("exits 2 on an unknown option", async () => {
    const { code, err } = await cli("--bogus");
    expect(code).toBe(exitCodes.usage);
    expect(err).toContain("unknown option '--bogus'");
  });

  it("exits 2 with one line when neither or both selectors are given", async () => {
    for (const argv of [[], ["--sidecar-for", "a", "--proxy-id", "b"]]) {
      const { code, err } = await cli(...argv);
      expect(code).toBe(exitCodes.usage);
      expect(err.trim().split("\n")).toHaveLength(1);
      expect(err).toContain("give exactly one of --sidecar-for <service-id> or --proxy-id <sidecar-id>");
    }
  });

  it("exits 2 on a bad log level or an unreadable token file", async () => {
    expect((await cli("--sidecar-for", "web-1", "--log-level", "loud")).code).toBe(exitCodes.usage);
    const missing = await cli("--sidecar-for", "web-1", "--token-file", "/nonexistent/token");
    expect(missing.code).toBe(exitCodes.usage);
    expect(missing.err).toContain("cannot read the token file /nonexistent/token: ENOENT");
  });

  it("render exits 2 on usage errors too", async () => {
    const { code, err } = await cli("render");
    expect(code).toBe(exitCodes.usage);
    expect(err).toContain("give exactly one of");
  });
});
