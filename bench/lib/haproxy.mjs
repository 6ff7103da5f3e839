// HAProxy processes the benchmark runs itself: the application, and the
// hand-configured sidecar pairs (plain mTLS, and mTLS + the Lua authorizer).
//
// The sidecar configurations copy what the controller renders
// (controller/haproxy-config.ts): same global and defaults, same bind and
// server TLS options, same logging. The plain pair differs from the
// authorizing pair only by the lua-load line and the three authorization
// rules, so the difference between their figures is the authorizer's cost.
import { execFile } from "node:child_process";
import { writeFileSync } from "node:fs";
import { createConnection } from "node:net";
import { join } from "node:path";
import { promisify } from "node:util";
import { startProcess, waitFor } from "./processes.mjs";

const execFileAsync = promisify(execFile);

/** The application: answers every HTTP request with a 2-byte body, so it is never the bottleneck. */
export function appConfig({ port, statsSocket }) {
  return `global
    stats socket ${statsSocket} mode 600 level admin
defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend app
    bind 127.0.0.1:${port}
    http-request return status 200 content-type text/plain string ok
`;
}

const tcpLogFormat =
  '"%ci:%cp [%t] %ft %b/%s %Tw/%Tc/%Tt %B %ts %ac/%fc/%bc/%sc/%rc %sq/%bq client=%[var(txn.connect_spiffe)] allowed=%[var(txn.connect_allowed)] reason=%{+Q}[var(txn.connect_reason)]"';

function sidecarGlobal({ statsSocket, luaBundle, extraGlobal = [] }) {
  return [
    "global",
    ...extraGlobal.map((line) => `    ${line}`),
    "    log stdout format raw local0 info",
    `    stats socket ${statsSocket} mode 600 level admin`,
    "    stats timeout 2m",
    "    hard-stop-after 30s",
    "    ssl-server-verify required",
    ...(luaBundle ? [`    lua-load ${luaBundle}`] : []),
    "",
    "defaults",
    "    log global",
    "    mode tcp",
    "    option dontlognull",
    "    timeout connect 5s",
    "    timeout client 1h",
    "    timeout server 1h",
    "    retries 2",
    "    option redispatch",
    "",
  ];
}

function publicListener({ bindPort, crt, caFile, appPort, authorizeTarget }) {
  return [
    "frontend public_listener",
    "    mode tcp",
    `    bind 127.0.0.1:${bindPort} ssl crt ${crt} ca-file ${caFile} verify required`,
    `    log-format ${tcpLogFormat}`,
    ...(authorizeTarget
      ? [
          "    tcp-request inspect-delay 5s",
          `    tcp-request content lua.connect_authorize ${authorizeTarget}`,
          "    tcp-request content reject unless { var(txn.connect_allowed) -m bool }",
        ]
      : []),
    "    default_backend local_app",
    "",
    "backend local_app",
    "    mode tcp",
    "    timeout connect 5000ms",
    `    server app 127.0.0.1:${appPort}`,
    "",
  ];
}

/**
 * One sidecar's haproxy.cfg. With `luaBundle`: load the Lua authorizer and
 * guard the public listener with it; otherwise plain mTLS. `extraGlobal`:
 * lines added to `global` (the opt-in tuning set-ups).
 */
export function sidecarConfig({ service, statsSocket, crt, caFile, publicPort, appPort, upstream, luaBundle, extraGlobal }) {
  const lines = [
    `# bench: ${luaBundle ? "mTLS + Lua authorizer" : "plain mTLS"} sidecar for ${service}`,
    ...sidecarGlobal({ statsSocket, luaBundle, extraGlobal }),
    ...publicListener({ bindPort: publicPort, crt, caFile, appPort, authorizeTarget: luaBundle ? service : undefined }),
  ];
  if (upstream) {
    lines.push(
      `frontend ${upstream.name}`,
      "    mode tcp",
      `    bind 127.0.0.1:${upstream.bindPort}`,
      "    option tcplog",
      `    default_backend ${upstream.name}`,
      "",
      `backend ${upstream.name}`,
      "    mode tcp",
      "    balance roundrobin",
      "    timeout connect 5000ms",
      `    server ${upstream.name}_1 127.0.0.1:${upstream.serverPort} ssl crt ${crt} ca-file ${caFile} verify required`,
      "",
    );
  }
  return lines.join("\n");
}

/** Sends one command to a stats socket and returns the whole answer. */
export function runtimeCommand(socketPath, command, timeoutMs = 5000) {
  return new Promise((resolve, reject) => {
    const socket = createConnection(socketPath);
    let answer = "";
    const timer = setTimeout(() => {
      socket.destroy();
      reject(new Error(`stats socket ${socketPath}: no answer to "${command}" in ${timeoutMs} ms`));
    }, timeoutMs);
    socket.on("connect", () => socket.end(`${command}\n`));
    socket.on("data", (chunk) => (answer += chunk));
    socket.on("error", (err) => {
      clearTimeout(timer);
      reject(err);
    });
    socket.on("close", () => {
      clearTimeout(timer);
      resolve(answer);
    });
  });
}

/** "Name: value" lines (show info, connect cache stats) → object; numbers where they are numbers. */
export function parseKeyValues(text) {
  const values = {};
  for (const line of text.split("\n")) {
    const match = /^([\w.-]+):\s*(.*)$/.exec(line.trim());
    if (!match) continue;
    values[match[1]] = /^-?\d+(\.\d+)?$/.test(match[2]) ? Number(match[2]) : match[2];
  }
  return values;
}

/** Writes the config, checks it (haproxy -c), runs HAProxy in the foreground and waits for its stats socket. */
export async function startHaproxy(name, config, { dir, cpu, env, haproxyBin = "haproxy" }) {
  const configFile = join(dir, `${name}.cfg`);
  writeFileSync(configFile, config);
  const fullEnv = { ...process.env, ...env };
  try {
    await execFileAsync(haproxyBin, ["-c", "-q", "-f", configFile], { env: fullEnv });
  } catch (err) {
    throw new Error(`haproxy -c rejected ${configFile}:\n${err.stdout ?? ""}${err.stderr ?? err.message}`);
  }
  const statsSocket = /stats socket (\S+)/.exec(config)?.[1];
  const proc = startProcess(name, haproxyBin, ["-db", "-f", configFile], { cpu, env: fullEnv, logFile: join(dir, `${name}.log`) });
  const instance = {
    name,
    process: proc,
    statsSocket,
    command: (cmd) => runtimeCommand(statsSocket, cmd),
    // SIGUSR1: soft stop (finishes what is in flight); the grace bounds it.
    stop: () => proc.stop("SIGUSR1", 3000),
  };
  try {
    await waitFor(`${name} stats socket`, async () => ((await runtimeCommand(statsSocket, "show info")).includes("Pid:") ? true : undefined), { process: proc });
  } catch (err) {
    await proc.stop("SIGKILL", 1000);
    throw err;
  }
  return instance;
}
