// The one way the loop acts on HAProxy: write its files, start it, apply one
// runtime operation, reload with a given validation, stop it. The process
// driver runs the real master process and runtime API; tests use a recording
// fake (test/unit/controller-loop.test.ts).
import { certificatePairProblem } from "./certificate-pair.js";
import type { Clock } from "./clock.js";
import { writeHaproxyFiles } from "./config-files.js";
import type { DesiredState, HaproxyPaths } from "./desired-state.js";
import { HaproxyProcess, type AccessLogFile } from "./haproxy-process.js";
import type { Logger } from "./logger.js";
import type { ReloadValidation, RuntimeOperation } from "./plan-changes.js";
import { AuthorizerControl } from "./authorizer-control.js";
import { RuntimeApi, type LiveServer } from "./runtime-api.js";

export interface ReloadTimings {
  checkMs: number;
  reloadMs: number;
  /** A new master took the listeners over instead of a reload (the access log file changed). */
  newMaster?: boolean;
}

export interface HaproxyDriver {
  readonly pid: number | undefined;
  /** Every file HAProxy loads (dual-write: a reload or restart reproduces `state`). */
  writeFiles(state: DesiredState): void;
  start(): Promise<void>;
  /** Throws when HAProxy refuses the operation; resolves with a line per thing it did worth logging (e.g. each connection closed). */
  runtime(operation: RuntimeOperation): Promise<string[]>;
  /** Validates the files as asked, then reloads (or starts a new master taking the listeners over, when the access log file changes); throws (HAProxy keeps running as it was) when refused. */
  reload(validation: ReloadValidation, state: DesiredState): Promise<ReloadTimings>;
  stop(): Promise<void>;
  /** Every server as HAProxy runs it now (`show servers state`), for the drift check. */
  liveServers(): Promise<LiveServer[]>;
}

/** Pure: the file HAProxy's access log loggers write through fd 3, if any. */
export function accessLogFile(state: Pick<DesiredState, "accessLog">): AccessLogFile {
  return state.accessLog?.sink.kind === "file" ? state.accessLog.sink.path : undefined;
}

/** Pure: how an operation reaches HAProxy, for the "applied change" log line. */
export function runtimePath(operation: RuntimeOperation): string {
  switch (operation.kind) {
    case "set-server":
      return `runtime API: set server${operation.address ? " addr + state ready" : " state maint"}`;
    case "update-certificate":
      return "runtime API: set ssl cert + commit ssl cert";
    case "update-ca-file":
      return "runtime API: set ssl ca-file + commit ssl ca-file";
    case "flush-authorization-cache":
      return "authorizer control: connect cache flush";
    case "sync-intentions":
      return "authorizer control: connect sync";
    case "revoke-connections":
      return "authorizer control: connect revoked; runtime API: show sess, shutdown session";
    case "enable-native-l7":
      return "authorizer control: connect l7-rules current";
  }
}

export interface ProcessDriverOptions {
  binary: string;
  paths: HaproxyPaths;
  /** HAProxy's environment: the Lua authorizer reads CONSUL_HTTP_ADDR / CONSUL_HTTP_TOKEN from it. */
  environment: NodeJS.ProcessEnv;
  logger: Logger;
  clock: Clock;
  stopTimeoutMs?: number;
}

export class ProcessDriver implements HaproxyDriver {
  private readonly process: HaproxyProcess;
  private readonly runtimeApi: RuntimeApi;
  private readonly authorizer: AuthorizerControl;
  /** The access log file the files just written want (HAProxy's fd 3). */
  private wantedAccessLog: AccessLogFile;

  constructor(options: ProcessDriverOptions) {
    this.runtimeApi = new RuntimeApi(options.paths.statsSocket);
    this.authorizer = new AuthorizerControl(options.paths.controlSocket);
    this.process = new HaproxyProcess({
      binary: options.binary,
      configFile: options.paths.configFile,
      masterSocket: options.paths.masterSocket,
      statsSocket: options.paths.statsSocket,
      environment: options.environment,
      logger: options.logger,
      clock: options.clock,
      stopTimeoutMs: options.stopTimeoutMs ?? 35_000,
    });
  }

  get pid(): number | undefined {
    return this.process.pid;
  }

  writeFiles(state: DesiredState): void {
    writeHaproxyFiles(state);
    this.wantedAccessLog = accessLogFile(state);
  }

  start(): Promise<void> {
    return this.process.start(this.wantedAccessLog);
  }

  async runtime(operation: RuntimeOperation): Promise<string[]> {
    switch (operation.kind) {
      case "set-server":
        await this.runtimeApi.setServer(operation.backend, operation.server, operation.address !== undefined ? { address: operation.address, port: operation.port! } : undefined, operation.ready);
        return [];
      case "update-certificate":
        await this.runtimeApi.replaceCertificate(operation.file, operation.pem);
        return [];
      case "update-ca-file":
        await this.runtimeApi.replaceCaFile(operation.file, operation.pem);
        return [];
      case "flush-authorization-cache":
        await this.authorizer.flushCache();
        return [];
      case "sync-intentions":
        await this.authorizer.syncIntentions(operation.target, operation.index);
        return [];
      case "enable-native-l7":
        await this.authorizer.enableNativeL7(operation.target, operation.index);
        return [];
      case "revoke-connections": {
        const revoked = (await this.authorizer.revoked()).filter((connection) => connection.target === operation.target);
        const closed = revoked.length === 0 ? [] : await this.runtimeApi.closeConnections(operation.frontend, revoked);
        return closed.map((c) => `closed ${c.client}: ${c.source} is now denied for ${c.target} (${c.reason})`);
      }
    }
  }

  async reload(validation: ReloadValidation, state: DesiredState): Promise<ReloadTimings> {
    if (validation === "key pair") {
      const problem = certificatePairProblem(state.leafCertificatePem);
      if (problem) throw new Error(`the new leaf certificate is unusable: ${problem}`);
    }
    const accessLog = accessLogFile(state);
    // A master holds fd 3 for good: a new file needs a new master (checked like any structural change).
    if (accessLog !== this.process.accessLogFile) return { ...(await this.process.restart(accessLog)), newMaster: true };
    return this.process.reload({ check: validation === "haproxy -c" });
  }

  async stop(): Promise<void> {
    await this.process.stop();
  }

  liveServers(): Promise<LiveServer[]> {
    return this.runtimeApi.serversState();
  }
}
