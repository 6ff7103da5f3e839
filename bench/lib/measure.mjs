// One set-up, measured: the application, the set-up's proxies, then each
// phase with CPU accounted for every process involved.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { parseKeyValues, sendRuntimeCommand, startHaproxy } from "../../dist/test/harness/haproxy.js";
import { appsDir } from "../../dist/test/harness/paths.js";
import { ProcessGroup, cpuBetween, machineCpu } from "../../dist/test/harness/process-stats.js";
import { sleep, startProcess, waitFor } from "../../dist/test/harness/processes.js";
import { runWrk, runIperf3 } from "./load.mjs";
import { startSetup } from "./setups.mjs";

/** The application: test/apps/http-ok.cfg, HAProxy answering 200 to every request, so it is never the bottleneck. */
async function startApp(ctx) {
  return startHaproxy(readFileSync(join(appsDir, "http-ok.cfg"), "utf8"), {
    dir: ctx.runDir,
    name: "app",
    cpu: ctx.cpu.b,
    env: { APP_PORT: String(ctx.ports.app) },
    logToFile: true,
  });
}

async function startIperf3Server(ctx) {
  const logFile = join(ctx.runDir, "iperf3-server.log");
  const proc = startProcess("iperf3 server", "iperf3", ["-s", "-B", "127.0.0.1", "-p", String(ctx.ports.app), "--forceflush"], { cpu: ctx.cpu.b, logFile });
  try {
    await waitFor("iperf3 server listening", async () => (proc.output(100000).includes("Server listening on") ? true : undefined), { process: proc });
  } catch (err) {
    await proc.stop("SIGKILL", 1000);
    throw err;
  }
  return proc;
}

/** The TLS lines of HAProxy's `show info` on db's side (rates over the last second). */
function tlsFigures(showInfo) {
  const info = parseKeyValues(showInfo);
  return {
    sslRate: info.SslRate,
    sslFrontendKeyRate: info.SslFrontendKeyRate,
    sslFrontendSessionReusePct: info.SslFrontendSessionReuse_pct,
  };
}

async function authorizerStats(setup) {
  if (!setup.authorizes || !setup.dbStatsSocket) return undefined;
  try {
    return parseKeyValues(await sendRuntimeCommand(setup.dbStatsSocket(), "connect cache stats"));
  } catch {
    return undefined;
  }
}

/**
 * Runs `load` while accounting CPU: the sidecars (per group), the application,
 * the Consul agent, the client (from bash's `times`), and the whole machine;
 * what the machine spent beyond these is "unattributed" (other work on the
 * machine, kernel softirq time): it says how noisy the phase was.
 */
async function phase(groups, load, { midway } = {}) {
  const before = groups.map((g) => g.sample());
  const machineBefore = machineCpu();
  const started = Date.now();
  const midwayResult = midway ? midway.sample(midway.afterMs).catch((err) => ({ error: err.message })) : undefined;
  const result = await load();
  const machineAfter = machineCpu();
  const after = groups.map((g) => g.sample());
  const byGroup = Object.fromEntries(groups.map((g, i) => [g.name, cpuBetween(before[i], after[i])]));
  const sidecarsByCommand = {};
  groups.forEach((g, i) => {
    if (!g.isSidecar) return;
    for (const [command, seconds] of Object.entries(g.cpuByCommand(before[i], after[i]))) sidecarsByCommand[command] = (sidecarsByCommand[command] ?? 0) + seconds;
  });
  const sidecars = groups.filter((g) => g.isSidecar).reduce((sum, g) => sum + byGroup[g.name], 0);
  const machineBusy = machineAfter.busySeconds - machineBefore.busySeconds;
  const machineTotal = machineAfter.totalSeconds - machineBefore.totalSeconds;
  const attributed = Object.values(byGroup).reduce((a, b) => a + b, 0) + (result.clientCpuSeconds ?? 0);
  return {
    ...result,
    wallSeconds: (Date.now() - started) / 1000,
    ...(midwayResult ? { midway: await midwayResult } : {}),
    cpu: {
      byGroup,
      sidecarsByCommand,
      sidecarsSeconds: sidecars,
      clientSeconds: result.clientCpuSeconds,
      machineBusySeconds: machineBusy,
      machineSeconds: machineTotal,
      unattributedSeconds: Math.max(0, machineBusy - attributed),
    },
  };
}

/**
 * Measures one set-up. plan: { warmupSeconds, newConn: {seconds, connections},
 * keepAlive: {seconds, connections}, paced: {seconds, connections, delayMs},
 * bulk: {seconds} };
 * a phase missing from the plan is skipped.
 */
export async function measureSetup(id, ctx, plan, log) {
  let app = await startApp(ctx);
  let setup;
  let iperfServer;
  const result = { setup: id };
  try {
    const startBegun = Date.now();
    setup = await startSetup(id, ctx);
    result.startupSeconds = (Date.now() - startBegun) / 1000;
    const sidecars = setup.sidecars.map((g) => Object.assign(g, { isSidecar: true }));
    const appGroup = new ProcessGroup("app", [app.process]);
    const agentGroup = new ProcessGroup("consul agent", [ctx.consul.process]);
    const groups = [...sidecars, appGroup, agentGroup];
    const port = setup.entryPort;
    const client = ctx.cpu.a;

    if (plan.warmupSeconds) await runWrk({ port, seconds: plan.warmupSeconds, connections: plan.newConn.connections, close: true, cpu: client });
    if (plan.newConn) {
      // HAProxy's TLS figures are rates over the last second: read them midway.
      const midway = setup.dbStatsSocket
        ? { afterMs: (plan.newConn.seconds * 1000) / 2, sample: async (ms) => (await sleep(ms), tlsFigures(await sendRuntimeCommand(setup.dbStatsSocket(), "show info"))) }
        : undefined;
      const statsBefore = await authorizerStats(setup);
      result.newConn = await phase(groups, () => runWrk({ port, ...plan.newConn, close: true, cpu: client }), { midway });
      const statsAfter = await authorizerStats(setup);
      if (statsBefore && statsAfter) {
        result.newConn.authorizer = Object.fromEntries(
          ["hits", "misses", "shared", "agent_calls", "errors"].map((k) => [k, (statsAfter[k] ?? 0) - (statsBefore[k] ?? 0)]),
        );
      }
      log(`  ${id}: new connections ${result.newConn.requestsPerSecond.toFixed(0)}/s (errors ${result.newConn.errorCount})`);
    }
    if (plan.keepAlive) {
      result.keepAlive = await phase(groups, () => runWrk({ port, ...plan.keepAlive, cpu: client }));
      log(`  ${id}: keep-alive ${result.keepAlive.requestsPerSecond.toFixed(0)} req/s, p99 ${result.keepAlive.latencyUs.p99} µs`);
    }
    if (plan.paced) {
      result.paced = await phase(groups, () => runWrk({ port, ...plan.paced, cpu: client }));
      log(`  ${id}: light load ${result.paced.requestsPerSecond.toFixed(0)} req/s: p50 ${result.paced.latencyUs.p50} µs, p99 ${result.paced.latencyUs.p99} µs`);
    }
    if (plan.bulk) {
      // Same port, other application: the proxies dial the application per connection.
      await app.stop();
      app = undefined;
      iperfServer = await startIperf3Server(ctx);
      appGroup.roots = [iperfServer];
      result.bulk = await phase(groups, () => runIperf3({ port, ...plan.bulk, cpu: client }));
      log(`  ${id}: bulk ${result.bulk.gbitPerSecond.toFixed(2)} Gbit/s`);
    }
    for (const g of groups) g.sample();
    result.sidecars = sidecars.map((g) => ({ name: g.name, peakRssKb: g.peakRssKb(), peakAnonRssKb: g.peakAnonRssKb(), processes: g.describePeaks() }));
    result.details = await setup.details().catch((err) => ({ error: err.message }));
  } finally {
    await setup?.stop();
    // How long each sidecar took to exit, and whether it had to be killed.
    result.shutdown = setup?.sidecars.flatMap((g) => g.roots.map((r) => ({ process: r.name, ...r.stopped })));
    await iperfServer?.stop("SIGTERM", 3000);
    await app?.stop();
  }
  return result;
}
