// The controller's token file: re-read when its stat changes (rename over it,
// in-place write), kept when it goes away or is emptied, and re-read at once on
// a 403 "ACL not found" (one retry); a fake HTTP server plays Consul.
import { mkdtempSync, renameSync, rmSync, unlinkSync, writeFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterEach, beforeEach, describe, expect, it } from "vitest";
import { ConsulClient, ConsulError } from "../../controller/consul-client.js";
import { TokenFile } from "../../controller/consul-token.js";
import { createLogger } from "../../controller/logger.js";

let dir: string;
let server: Server | undefined;
const lines: string[] = [];
const logger = createLogger("debug", (line) => lines.push(line));

beforeEach(() => {
  dir = mkdtempSync(join(tmpdir(), "ch-token-unit-"));
  lines.length = 0;
});
afterEach(async () => {
  rmSync(dir, { recursive: true, force: true });
  if (!server) return;
  server.closeAllConnections();
  await new Promise((resolve) => server!.close(resolve));
  server = undefined;
});

/** A rotation as secret managers do it: a new file renamed over the old. */
function rotate(path: string, token: string): void {
  writeFileSync(`${path}.new`, token, { mode: 0o600 });
  renameSync(`${path}.new`, path);
}

/** A Consul that knows only the tokens in `valid`; records the token of each request. */
async function consulKnowing(valid: Set<string>, seen: (string | undefined)[]): Promise<string> {
  server = createServer((req, res) => {
    const token = req.headers["x-consul-token"] as string | undefined;
    seen.push(token);
    if (token && valid.has(token)) {
      res.writeHead(200, { "content-type": "application/json", "x-consul-index": "5" });
      res.end(JSON.stringify({ ActiveRootID: "r", TrustDomain: "t.consul", Roots: [] }));
    } else {
      res.writeHead(403, { "content-type": "text/plain" });
      res.end("ACL not found");
    }
  });
  await new Promise<void>((resolve) => server!.listen(0, "127.0.0.1", resolve));
  return `127.0.0.1:${(server.address() as { port: number }).port}`;
}

describe("TokenFile", () => {
  it("follows a rename over the file and an in-place write, and says so without the token", () => {
    const path = join(dir, "token");
    writeFileSync(path, "token-A\n", { mode: 0o600 });
    const tokens = new TokenFile(path, logger);
    expect(tokens.current()).toBe("token-A");
    rotate(path, "token-B");
    expect(tokens.current()).toBe("token-B");
    writeFileSync(path, "token-C-longer");
    expect(tokens.current()).toBe("token-C-longer");
    expect(lines.filter((line) => line.includes(`ACL token file ${path} changed`))).toHaveLength(2);
    expect(lines.join("\n")).not.toMatch(/token-[ABC]/);
  });

  it("keeps the token when the file goes away or is emptied, one line each", () => {
    const path = join(dir, "token");
    writeFileSync(path, "token-A");
    const tokens = new TokenFile(path, logger);
    unlinkSync(path);
    expect(tokens.current()).toBe("token-A");
    expect(tokens.current()).toBe("token-A");
    expect(lines.filter((line) => line.includes("cannot read the ACL token file"))).toHaveLength(1);
    writeFileSync(path, "");
    expect(tokens.current()).toBe("token-A");
    expect(lines.filter((line) => line.includes("is empty; keeping the token read before"))).toHaveLength(1);
    expect(tokens.tokenRejected()).toBe(false);
  });

  it("fails at start when the file cannot be read", () => {
    expect(() => new TokenFile(join(dir, "missing"), logger)).toThrow(/ENOENT/);
  });
});

describe("ConsulClient with a token file", () => {
  it("retries once with the re-read token when Consul answers 403 ACL not found", async () => {
    const path = join(dir, "token");
    writeFileSync(path, "token-A");
    const seen: (string | undefined)[] = [];
    const valid = new Set(["token-A"]);
    const client = new ConsulClient({ httpAddr: await consulKnowing(valid, seen), tokens: new TokenFile(path, logger) });
    await client.caRoots({});
    // Rotated, and A deleted, between two requests: the stat finds the change first.
    rotate(path, "token-B");
    valid.clear();
    valid.add("token-B");
    await client.caRoots({});
    expect(seen).toEqual(["token-A", "token-B"]);
    client.close();
  });

  it("re-reads on 403 ACL not found even when the stat shows nothing, and retries once", async () => {
    const path = join(dir, "token");
    writeFileSync(path, "token-A");
    const seen: (string | undefined)[] = [];
    const valid = new Set(["token-B"]);
    const tokens = new TokenFile(path, logger);
    // A file source whose stat cannot tell (as on a file system with coarse times): only the 403 re-reads.
    let staleStat = true;
    const client = new ConsulClient({
      httpAddr: await consulKnowing(valid, seen),
      tokens: { current: () => (staleStat ? "token-A" : tokens.current()), tokenRejected: () => ((staleStat = false), rotate(path, "token-B"), tokens.tokenRejected()) },
    });
    expect((await client.caRoots({})).index).toBe(5);
    expect(seen).toEqual(["token-A", "token-B"]);
    client.close();
  });

  it("names a revoked token as such, in one line, after one re-read", async () => {
    const path = join(dir, "token");
    writeFileSync(path, "token-A");
    const seen: (string | undefined)[] = [];
    const client = new ConsulClient({ httpAddr: await consulKnowing(new Set(), seen), tokens: new TokenFile(path, logger) });
    const err = (await client.intentionsForDestination("web", {}).catch((e: unknown) => e)) as ConsulError;
    client.close();
    expect(seen).toEqual(["token-A"]);
    expect(err.kind).toBe("forbidden");
    expect(err.message).toMatch(/^ACL token rejected by Consul \(403 ACL not found\) for \/v1\/connect\/intentions\/match\?by=destination&name=web: the token was deleted or has expired/);
    expect(err.message).not.toContain("\n");
    expect(err.message).not.toContain("token-A");
  });
});
