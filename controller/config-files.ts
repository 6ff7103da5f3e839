// Writes HAProxy's files atomically (temp file + rename in the same directory),
// with private material readable by the owner only.
import { mkdirSync, renameSync, writeFileSync, openSync, fsyncSync, closeSync, chmodSync } from "node:fs";
import { dirname, basename, join } from "node:path";
import type { DesiredState } from "./desired-state.js";
import { renderHaproxyConfig } from "./haproxy-config.js";

export function writeFileAtomic(path: string, content: string, mode: number): void {
  mkdirSync(dirname(path), { recursive: true, mode: 0o700 });
  const temporary = join(dirname(path), `.${basename(path)}.${process.pid}.tmp`);
  writeFileSync(temporary, content, { mode });
  chmodSync(temporary, mode);
  const fd = openSync(temporary, "r");
  fsyncSync(fd);
  closeSync(fd);
  renameSync(temporary, path);
}

/** Everything HAProxy loads at start, so a reload or restart reproduces the running state. */
export function writeHaproxyFiles(state: DesiredState): void {
  writeFileAtomic(state.paths.leafCertificateFile, state.leafCertificatePem, 0o600);
  writeFileAtomic(state.paths.caRootsFile, state.caRootsPem, 0o644);
  // HAProxy loads the map at start (empty): its entries live only in the running process.
  // Empty: the authorizer fills it at run time (passes, and the native L7 rules' guard once confirmed).
  writeFileAtomic(state.paths.passMap, "", 0o600);
  writeFileAtomic(state.paths.serverPassMap, "", 0o600);
  writeFileAtomic(state.paths.configFile, renderHaproxyConfig(state), 0o600);
}
