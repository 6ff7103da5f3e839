// The authorizer's control service (lua.connect_control), which the controller
// uses instead of the stats socket's Lua commands, on the real HAProxy under
// test: it answers the commands, and it keeps nothing per request, even when
// the client leaves while a command sleeps. The stats socket's Lua commands
// are measured beside it: HAProxy 2.6 never frees such a command's task, and
// a sleeping one can leave that task to wake a freed applet (the crash the
// soak met during revocations; HAProxy's fix is 21601f4a2, in 3.x).
import { createConnection } from "node:net";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { AuthorizerControl, requestOverUnixSocket } from "../../controller/authorizer-control.js";
import { unixSocketServiceLines } from "../../controller/metrics-config.js";
import { haproxyUnderTest, luaLoadConfig, startHaproxy, type HaproxyInstance } from "../harness/haproxy.js";
import { luaBundlePath } from "../harness/paths.js";
import { freePorts } from "../harness/ports.js";

let haproxy: HaproxyInstance;
let control: AuthorizerControl;
let controlSocket: string;

beforeAll(async () => {
  const [idlePort, closedPort] = await freePorts(2);
  const config = luaLoadConfig(luaBundlePath, idlePort!).replace(
    "global\n",
    // No agent answers here: the commands below need none.
    `global\n    nbthread 1\n    setenv CONSUL_HTTP_ADDR 127.0.0.1:${closedPort}\n    setenv CONNECT_TRUST_DOMAIN 11111111-2222-3333-4444-555555555555.consul\n`,
  );
  haproxy = await startHaproxy(`${config}${unixSocketServiceLines("connect_control", "{{DIR}}/control.sock", "lua.connect_control").join("\n")}\n`, { name: "haproxy-control" });
  controlSocket = `${haproxy.dir}/control.sock`;
  control = new AuthorizerControl(controlSocket);
});
afterAll(async () => {
  await haproxy?.stop();
});

/**
 * Objects in use per pool (`show pools`), by pool name and size (HAProxy
 * merges pools of one size): "used" less those free in the threads' caches.
 */
async function poolsInUse(): Promise<Map<string, number>> {
  const pools = new Map<string, number>();
  for (const match of (await haproxy.command("show pools")).matchAll(/Pool (\S+) \((\d+) bytes\) : \d+ allocated \(\d+ bytes\), (\d+) used \(~(\d+) by thread caches\)/g)) {
    pools.set(`${match[1]} (${match[2]} bytes)`, Number(match[3]) - Number(match[4]));
  }
  if (pools.size === 0) throw new Error("show pools listed no pool");
  return pools;
}

/** The pool that grew most between two snapshots, and by how many objects. */
function largestGrowth(before: Map<string, number>, after: Map<string, number>): { pool: string; objects: number } {
  let largest = { pool: "none", objects: 0 };
  for (const [pool, used] of after) {
    const objects = used - (before.get(pool) ?? 0);
    if (objects > largest.objects) largest = { pool, objects };
  }
  return largest;
}

/** Sends `command` to the control service and leaves after `ms`, without reading the answer. */
function leaveAfter(path: string, ms: number): Promise<void> {
  return new Promise((resolve) => {
    const socket = createConnection(controlSocket, () => socket.write(`POST ${path} HTTP/1.1\r\nhost: control\r\ncontent-length: 0\r\n\r\n`));
    socket.on("error", () => resolve());
    socket.on("close", () => resolve());
    setTimeout(() => socket.destroy(), ms);
  });
}

describe("the authorizer's control service on the HAProxy under test", () => {
  it("answers the commands the stats socket answers, 404 to an unknown one", async () => {
    const stats = await control.command("GET", ["connect", "cache", "stats"]);
    expect(stats).toMatch(/^entries: 0\ncapacity: 10000\n/);
    expect(stats.split("\n")[0]).toBe((await haproxy.command("connect cache stats")).split("\n")[0]);
    expect(await control.flushCache()).toBe("flushed 0 cached verdicts\n");
    expect(await control.metrics()).toMatch(/^# HELP /);
    expect(await control.revoked()).toEqual([]);
    // No agent: the list for db cannot be read, so sync waits its second and says "behind".
    await expect(control.syncIntentions("db", 5)).rejects.toThrow(/db behind index 0 \(wanted 5\)/);
    const unknown = await requestOverUnixSocket(controlSocket, "GET", "/connect/nothing");
    expect(unknown).toEqual({ status: 404, body: "unknown command: connect nothing\n" });
  });

  it("keeps nothing per request, even from clients that leave while `connect sync` sleeps", async () => {
    const requests = 300;
    const before = await poolsInUse();
    for (let i = 0; i < requests; i++) await control.command("GET", ["connect", "cache", "stats"]);
    // Each of these leaves while the command sleeps in core.msleep (it waits up to 1 s for the list).
    const leaving = 50;
    await Promise.all(Array.from({ length: leaving }, (_, i) => leaveAfter(`/connect/sync/t${i % 3}/99`, 20 + (i % 10) * 10)));
    // Their sleeps end within the command's second; then every applet and task is gone.
    await new Promise((resolve) => setTimeout(resolve, 1500));
    const growth = largestGrowth(before, await poolsInUse());
    expect(growth.objects, `${growth.pool} grew by ${growth.objects} objects over ${requests + leaving} requests`).toBeLessThan(leaving / 2);
    expect(haproxy.process.exited()).toBe(false);
    expect(await control.command("GET", ["connect", "cache", "stats"])).toMatch(/^entries: /);
  });

  it("the stats socket's Lua commands: one object kept per command before HAProxy 3.0, none after (why the controller does not use them)", async () => {
    const commands = 300;
    const before = await poolsInUse();
    for (let i = 0; i < commands; i++) await haproxy.command("connect cache stats");
    const growth = largestGrowth(before, await poolsInUse());
    const { version } = haproxyUnderTest();
    if (version.major < 3) expect(growth.objects, `${growth.pool} on ${version.line}`).toBeGreaterThanOrEqual(commands * 0.9);
    else expect(growth.objects, `${growth.pool} on ${version.line}`).toBeLessThan(commands / 10);
  });
});
