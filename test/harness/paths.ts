// Where the checkout's pieces are. This module runs from test/harness/ (vitest)
// and from dist/test/harness/ (the build the benchmarks and the demo import),
// so the root is found, not counted in "../".
import { existsSync, readFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

function findRepoRoot(from: string): string {
  for (let dir = from; ; dir = dirname(dir)) {
    if (existsSync(join(dir, "package.json"))) return dir;
    if (dirname(dir) === dir) throw new Error(`no package.json above ${from}`);
  }
}

export const repoRoot = findRepoRoot(dirname(fileURLToPath(import.meta.url)));
export const luaBundlePath = join(repoRoot, "dist", "connect-haproxy.lua");
export const controllerCli = join(repoRoot, "dist", "controller", "cli.js");
/** The Node flags of the controller's shebang (`#!/usr/bin/env -S node <flags>`), for launching it as `node <flags> cli.js`. */
export function controllerNodeFlags(): string[] {
  const shebang = readFileSync(controllerCli, "utf8").split("\n", 1)[0] ?? "";
  return /^#!\/usr\/bin\/env -S node(?: (.*))?$/.exec(shebang)?.[1]?.split(" ").filter(Boolean) ?? [];
}
/** The applications the tests, the demo and the benchmarks run behind sidecars. */
export const appsDir = join(repoRoot, "test", "apps");
export const dbApp = join(appsDir, "db-app.mjs");
export const webApp = join(appsDir, "web-app.mjs");
export const httpEchoApp = join(appsDir, "http-echo-app.mjs");
export const trafficClient = join(appsDir, "traffic-client.mjs");
