#!/usr/bin/env node
// The second half of bench/authorizer.sh: a real HAProxy 2.6 running
// bench/authorizer-haproxy.lua against a real Consul dev agent on loopback
// (miss: one authorize round trip; hit: the CPU of a cached decision).
// Not a test: prints figures. Exit 0 done, 1 the measurement failed, 2 bad usage.
// Environment: CONSUL_BIN (required), BENCH_ITERATIONS (default 2000),
// BENCH_WAIT_TENTHS (how long to wait for the figures, in tenths of a second; default 1200).
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import { consulBinary, startConsulDev } from "../dist/test/harness/consul.js";
import { haproxyBinary, luaLoadConfig, startHaproxy } from "../dist/test/harness/haproxy.js";
import { luaBundlePath, repoRoot } from "../dist/test/harness/paths.js";
import { freePort } from "../dist/test/harness/ports.js";
import { installCleanupHandlers, runProgram, waitFor } from "../dist/test/harness/processes.js";

const firstLine = (command, args) => execFileSync(command, args, { encoding: "utf8" }).split("\n")[0].trim();

async function main() {
  let consulBin;
  try {
    consulBin = consulBinary();
  } catch (err) {
    console.error(`bench: ${err.message}`);
    return 2;
  }
  if (!existsSync(luaBundlePath)) {
    console.error(`bench: ${luaBundlePath} is missing: build first (npm run build)`);
    return 2;
  }
  installCleanupHandlers(console.error, "bench");
  const consul = await startConsulDev({ nodeName: "bench" });
  let haproxy;
  try {
    for (const name of ["web", "db"]) await consul.api("PUT", "/v1/agent/service/register", { Name: name, Port: 9999, Connect: { SidecarService: {} } });
    const clientUri = (await consul.api("GET", "/v1/agent/connect/ca/leaf/web")).ServiceURI;
    const port = await freePort();
    console.log(`== Real round trips: ${firstLine(haproxyBinary(), ["-v"]).split(" ").slice(0, 3).join(" ")}, ${firstLine(consulBin, ["version"])}, ${cpus().length} CPUs`);
    haproxy = await startHaproxy(luaLoadConfig(join(repoRoot, "bench", "authorizer-haproxy.lua"), port), {
      env: {
        CONSUL_HTTP_ADDR: consul.httpAddr,
        CH_BUNDLE: luaBundlePath,
        BENCH_CLIENT_URI: clientUri,
        BENCH_TARGET: "db",
        BENCH_ITERATIONS: process.env.BENCH_ITERATIONS ?? "2000",
      },
    });
    const output = await waitFor("the authorizer's figures", async () => (/^BENCH /m.test(haproxy.process.output()) ? haproxy.process.output() : undefined), {
      timeoutMs: Number(process.env.BENCH_WAIT_TENTHS ?? 1200) * 100,
      intervalMs: 100,
      process: haproxy.process,
    }).catch((err) => `${haproxy.process.output()}\n${err.message}`);
    const figures = output.split("\n").filter((line) => /^(miss|hit|BENCH)/.test(line) && !line.startsWith("BENCH DONE"));
    if (!figures.length) {
      console.error(`bench: HAProxy said:\n${output}`);
      return 1;
    }
    console.log(figures.join("\n"));
    return /^BENCH DONE/m.test(output) ? 0 : 1;
  } finally {
    await haproxy?.stop();
    await consul.stop();
  }
}

runProgram("bench", main);
