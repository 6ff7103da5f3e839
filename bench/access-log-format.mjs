#!/usr/bin/env node
// What an access-log format costs HAProxy per request, apart from everything
// else: one HAProxy on one core answering 200 itself (`http-request return`)
// with the frontend's log lines exactly as the controller renders them
// (controller/access-log.ts) and the authorizer's variables set as on a real
// request, its lines written to a file; wrk on the other
// core, kept-alive, 16 connections. The figure is CPU µs per request (the core
// is saturated: 1e6 / requests per second), and the format's cost is its
// difference from a frontend that logs nothing.
//   nolog    `no log`
//   builtin  `option httplog` (HAProxy's own line; connect-haproxy's default without AccessLogs)
//   default  Consul's default JSON access-log format, as proxy-defaults with AccessLogs Enabled gives it
//   short    a one-field JSON format ({"v":"%CONNECT_VERDICT%"})
//   node bench/access-log-format.mjs [--rounds N] [--seconds S]   (after npm run build)
import { cpus } from "node:os";
import { parseArgs } from "node:util";
import { planAccessLog, accessLogFrontendLines } from "../dist/controller/access-log.js";
import { startHaproxy } from "../dist/test/harness/haproxy.js";
import { freePorts } from "../dist/test/harness/ports.js";
import { runProgram, stopAll } from "../dist/test/harness/processes.js";
import { runWrk } from "./lib/load.mjs";
import { median, spread } from "./lib/report.mjs";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "3" }, seconds: { type: "string", default: "4" } } });
const rounds = Number(values.rounds);
const seconds = Number(values.seconds);

const accessLog = (format) => accessLogFrontendLines(planAccessLog({ Enabled: true, Type: "stdout", ...(format ? { JSONFormat: JSON.stringify(format) } : {}) }), "http", false);
const variants = {
  nolog: ["no log"],
  builtin: ["log stdout format raw local0 info", "option httplog"],
  default: accessLog(undefined),
  short: accessLog({ v: "%CONNECT_VERDICT%" }),
};

function config(port, lines) {
  return [
    "global",
    "    nbthread 1",
    "defaults",
    "    mode http",
    "    timeout client 10s",
    "    timeout server 10s",
    "    timeout connect 1s",
    "frontend fe",
    `    bind 127.0.0.1:${port}`,
    ...lines.map((line) => `    ${line}`),
    // What the authorizer sets on a real request, as long as it is (str() takes no spaces, commas or parentheses), in every variant.
    "    http-request set-var(txn.connect_spiffe) str(spiffe://fc7d8248-a80d-9e19-aac8-af1615c62036.consul/ns/default/dc/dc1/svc/web)",
    "    http-request set-var(txn.connect_reason) str(L7_intention_default/web_=>_default/api_precedence_9_permission_1:_allow)",
    "    http-request set-var(txn.connect_allowed) bool(true)",
    "    http-request return status 200 content-type text/plain string ok",
    "",
  ].join("\n");
}

runProgram("access-log-format", async () => {
  const cpu = cpus().length >= 2 ? { haproxy: "0", load: "1" } : {};
  const [port] = await freePorts(1);
  const samples = Object.fromEntries(Object.keys(variants).map((id) => [id, []]));
  try {
    for (let round = 0; round < rounds; round++) {
      for (const id of Object.keys(variants)) {
        const haproxy = await startHaproxy(config(port, variants[id]), { name: id, cpu: cpu.haproxy, logToFile: true });
        try {
          const run = await runWrk({ port, seconds, connections: 16, path: "/api/items/42", headers: { "User-Agent": "wrk" }, cpu: cpu.load });
          if (run.errorCount > 0) throw new Error(`${id}: ${JSON.stringify(run.errors)}`);
          samples[id].push(1e6 / run.requestsPerSecond);
          console.error(`round ${round + 1} ${id}: ${Math.round(run.requestsPerSecond)} requests/s`);
        } finally {
          await haproxy.stop();
        }
      }
    }
  } finally {
    await stopAll();
  }
  const us = (values) => Math.round(median(values) * 100) / 100;
  console.log(JSON.stringify({
    secondsPerRun: seconds,
    rounds,
    cpuMicrosecondsPerRequest: Object.fromEntries(Object.keys(variants).map((id) => [id, us(samples[id])])),
    formatCostMicroseconds: Object.fromEntries(Object.keys(variants).filter((id) => id !== "nolog").map((id) => [id, Math.round((median(samples[id]) - median(samples.nolog)) * 100) / 100])),
    noise: { nologSpread: spread(samples.nolog) },
  }, null, 2));
  return 0;
});
