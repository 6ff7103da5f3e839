// The controller's client of the authorizer's control service, against a
// stand-in HTTP server on a unix socket: the paths it asks for, and that an
// answer other than 200 (or not the expected one) is an error naming it.
import { mkdtempSync, rmSync } from "node:fs";
import { createServer, type Server } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizerControl, commandPath } from "../../controller/authorizer-control.js";

let dir: string;
let server: Server;
const asked: string[] = [];
const answers = new Map<string, [number, string]>();

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "ch-control-"));
  server = createServer((req, res) => {
    asked.push(`${req.method} ${req.url}`);
    const [status, body] = answers.get(req.url ?? "") ?? [404, `unknown command: ${req.url}\n`];
    res.writeHead(status, { "content-type": "text/plain" }).end(body);
  });
  await new Promise<void>((resolve) => server.listen(join(dir, "control.sock"), resolve));
});
afterAll(async () => {
  await new Promise((resolve) => server.close(resolve));
  rmSync(dir, { recursive: true, force: true });
});

describe("AuthorizerControl", () => {
  it("names a command's words in the path, escaped", () => {
    expect(commandPath(["connect", "sync", "web", "42"])).toBe("/connect/sync/web/42");
    expect(commandPath(["connect", "sync", "a b/c", "1"])).toBe("/connect/sync/a%20b%2Fc/1");
  });

  it("reads with GET and changes with POST, and parses the revoked connections", async () => {
    const control = new AuthorizerControl(join(dir, "control.sock"));
    answers.set("/connect/cache/flush", [200, "flushed 3 cached verdicts\n"]);
    answers.set("/connect/sync/db/7", [200, "db current index 7 (wanted 7)\n"]);
    answers.set("/connect/revoked", [200, "127.0.0.1:40000 db spiffe://td/ns/default/dc/dc1/svc/web 12s denied by intention\n"]);
    asked.length = 0;
    expect(await control.flushCache()).toBe("flushed 3 cached verdicts\n");
    await control.syncIntentions("db", 7);
    const revoked = await control.revoked();
    expect(asked).toEqual(["POST /connect/cache/flush", "POST /connect/sync/db/7", "GET /connect/revoked"]);
    expect(revoked).toHaveLength(1);
    expect(revoked[0]).toMatchObject({ client: "127.0.0.1:40000", target: "db", source: "spiffe://td/ns/default/dc/dc1/svc/web" });
  });

  it("throws with the authorizer's answer on another status or an unexpected answer", async () => {
    const control = new AuthorizerControl(join(dir, "control.sock"));
    answers.set("/connect/sync/db/9", [200, "db behind index 7 (wanted 9)\n"]);
    answers.set("/connect/metrics", [500, "error: broken\n"]);
    await expect(control.syncIntentions("db", 9)).rejects.toThrow('the authorizer refused "connect sync db 9": db behind index 7 (wanted 9)');
    await expect(control.metrics()).rejects.toThrow('the authorizer refused "connect metrics": error: broken');
    await expect(control.command("GET", ["connect", "nothing"])).rejects.toThrow("unknown command: /connect/nothing");
    await expect(new AuthorizerControl(join(dir, "absent.sock")).flushCache()).rejects.toThrow(/ENOENT/);
  });
});
