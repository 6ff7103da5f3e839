// Entry point of dist/connect-haproxy.lua.
//
// Loaded by HAProxy (`lua-load`, a global `core` exists): reads the
// configuration from the environment and registers the actions, the CLI
// commands and the trust-domain task. Loaded anywhere else (busted, the
// benchmark): only returns the modules; `install(stubCore, getenv)` wires
// them to a stub exactly as HAProxy would.
//
// Actions (HAProxy 2.6 has no optional action arguments, so two names):
//   lua.connect_authorize <target>     target service name ("-" = CONNECT_DEFAULT_TARGET)
//   lua.connect_authorize_default      target from CONNECT_DEFAULT_TARGET
//   lua.connect_verify_upstream <svc>  (tcp-res, http-res) the server's certificate names <svc>

import type { Core, RegexClass, RegexObject } from "./haproxy";
import * as der from "./der";
import * as spiffe from "./spiffe";
import * as json from "./json";
import * as http from "./http";
import * as lru from "./lru";
import * as agent from "./agent";
import * as authorizer from "./authorizer";
import * as trust from "./trust";
import * as config from "./config";
import * as sanitize from "./sanitize";
import * as peerIdentity from "./peer-identity";
import * as failClosed from "./fail-closed";
import * as authorizeAction from "./authorize-action";
import * as statsCommands from "./stats-commands";
import * as metrics from "./metrics";
import * as verifyUpstreamAction from "./verify-upstream-action";
import * as intentions from "./intentions";
import * as intentionWatch from "./intention-watch";
import * as requestPath from "./request-path";
import * as connectionRegistry from "./connection-registry";
import * as requestPasses from "./request-passes";
import * as agentToken from "./agent-token";

export const version = "0.1.0";
export {
  der, spiffe, json, http, lru, agent, authorizer, trust, config, sanitize, peerIdentity, failClosed, authorizeAction, statsCommands, verifyUpstreamAction,
  intentions, intentionWatch, requestPath, connectionRegistry, requestPasses, agentToken,
};

export interface Installed {
  context: authorizeAction.AuthorizeContext;
  upstreamContext: verifyUpstreamAction.VerifyUpstreamContext;
  /** The trust-domain refresh loop (what the registered task runs). */
  refreshTask: (this: void) => void;
}

/**
 * HAProxy's `Regex` class as a compiler for intentions.ts (case-sensitive;
 * patterns arrive anchored). Without one, regex rules cannot be enforced and
 * refuse the requests they would decide.
 */
function regexCompiler(regexClass: RegexClass | undefined): intentions.RegexCompiler {
  return (pattern) => {
    if (regexClass === undefined) return $multi(undefined, "this HAProxy has no Regex class");
    const [ok, compiled] = regexClass.new(pattern, true);
    if (ok !== true) return $multi(undefined, tostring(compiled));
    return $multi(compiled as RegexObject, undefined);
  };
}

/** Builds everything from `getenv` and registers it with `core`. */
export function install(core: Core, getenv: (this: void, name: string) => string | undefined): Installed {
  const seen = new LuaTable<string, string>();
  const settings = config.loadConfig(config.recordingGetenv(getenv, seen));
  // A setenv below lua-load is visible only once parsing ends: refuse to start without it rather than ignore it.
  core.register_init(() => {
    const late = config.lateSettings(seen, getenv);
    if (late !== undefined) error(late, 0);
  });
  const now = (): number => {
    const time = core.now();
    return time.sec * 1000 + time.usec / 1000;
  };
  // core.msleep takes an integer.
  const sleep = (ms: number): void => core.msleep(Math.max(1, Math.floor(ms)));
  const log = (level: string, message: string): void => {
    if (level === "warning") core.Warning(message);
    else if (level === "debug") core.Debug(message);
    else core.Info(message);
  };

  const token = new agentToken.AgentToken(settings.token, settings.tokenFile, { readFile: agentToken.readTokenFile, now, log });
  const client = agent.createAgentClient(() => core.tcp(), now, {
    address: settings.agentAddress,
    port: settings.agentPort,
    hostHeader: settings.agentHostHeader,
    token,
    connectTimeoutMs: settings.connectTimeoutMs,
    connectAttempts: http.socketConnectAttempts(tostring(core.get_info().get("Version"))),
    readTimeoutMs: settings.readTimeoutMs,
  });
  // A waiting connection gives up a little after the call it waits for must have ended.
  const waitLimitMs = settings.connectTimeoutMs + settings.readTimeoutMs + 500;
  const verdicts = new authorizer.Authorizer(
    {
      allowTtlMs: settings.allowTtlMs,
      denyTtlMs: settings.denyTtlMs,
      cacheSize: settings.cacheSize,
      agentDownGraceMs: settings.agentDownGraceMs,
      waitLimitMs,
    },
    { now, sleep, authorize: client.authorize },
  );
  const trustDomains = new trust.TrustDomainSource(
    settings.trustDomain,
    {
      fetchRoots: client.caRoots, now, sleep, log, random: () => math.random(), stopping: () => core.get_info().get("Stopping") === 1,
      // Passes skip the trust-domain check: none may outlive a change.
      changed: () => {
        context.passes.revokeAll();
        upstreamContext.passes.revokeAll();
      },
    },
    waitLimitMs,
  );
  const watch = new intentionWatch.IntentionWatch(
    {
      fetchIntentions: client.intentionsFor,
      defaultPolicy: client.defaultPolicy,
      authorize: client.authorize,
      trustDomain: () => trustDomains.current(),
      compileRegex: regexCompiler((_G as unknown as { Regex?: RegexClass }).Regex),
      now, sleep, log,
      random: () => math.random(),
      stopping: () => core.get_info().get("Stopping") === 1,
      startTask: (body) => core.register_task(body),
      // New TCP connections and every HTTP request see a change at once, not after a cached verdict expires.
      onChange: () => authorizeAction.flushVerdicts(context),
      // The controller's native L7 rules apply only if rendered from this very list.
      firstList: (target) => {
        if (target !== settings.nativeRulesTarget || settings.nativeRulesIndex === undefined) return;
        log("info", "connect-haproxy: native L7 rules: " + authorizeAction.switchOnNativeRules(context, target, settings.nativeRulesIndex));
      },
    },
    waitLimitMs,
  );
  const context: authorizeAction.AuthorizeContext = {
    config: settings,
    authorizer: verdicts,
    trustDomains,
    identities: new peerIdentity.PeerIdentities(peerIdentity.CLIENT_ROLE, trustDomains),
    intentions: watch,
    connections: new connectionRegistry.ConnectionRegistry(settings.cacheSize, now),
    passes: new requestPasses.RequestPasses(requestPasses.haproxyPassMap(core, settings.passMap), settings.cacheSize),
    globalLog: log,
    decisions: new metrics.DecisionCounters(),
    agentToken: token,
  };

  core.register_action("connect_authorize", ["tcp-req", "http-req"], (txn, target) => authorizeAction.authorizeTransaction(context, txn, target), 1);
  core.register_action("connect_authorize_default", ["tcp-req", "http-req"], (txn) => authorizeAction.authorizeTransaction(context, txn, undefined), 0);
  // Same trust domain as the authorizer; no agent call.
  const upstreamContext: verifyUpstreamAction.VerifyUpstreamContext = {
    identities: new peerIdentity.PeerIdentities(peerIdentity.SERVER_ROLE, trustDomains),
    passes: new requestPasses.RequestPasses(requestPasses.haproxyPassMap(core, settings.serverPassMap), peerIdentity.SERVER_ROLE.cacheSize),
  };
  core.register_action("connect_verify_upstream", ["tcp-res", "http-res"], (txn, service) => verifyUpstreamAction.verifyUpstreamTransaction(upstreamContext, txn, service), 1);
  statsCommands.registerCommands(core, context);
  const refreshTask = (): void => {
    if (settings.agentAddressError === undefined) trustDomains.runForever();
  };
  // First: the specs find the intention workers as the last tasks registered.
  if (settings.tokenFile !== undefined) core.register_task(() => token.runForever(() => core.get_info().get("Stopping") === 1, sleep));
  if (settings.trustDomain === undefined) core.register_task(refreshTask);
  if (settings.agentAddressError === undefined) {
    watch.startTasks();
    if (settings.defaultTarget !== undefined) watch.watch(settings.defaultTarget);
    // Its first list switches the native rules on: load it now, not at the first request.
    if (settings.nativeRulesTarget !== undefined) watch.watch(settings.nativeRulesTarget);
  }

  for (const warning of settings.warnings) core.Warning("connect-haproxy: " + warning);
  core.Info(
    "connect-haproxy " + version + ": agent " + settings.agentHostHeader + ", token " + (settings.token !== undefined ? "set" : "not set") +
      ", trust domain " + (settings.trustDomain ?? "from the agent"),
  );
  return { context, upstreamContext, refreshTask };
}

/** What the load inside HAProxy installed (for bench/authorizer-haproxy.lua); nil elsewhere. */
export let installed: Installed | undefined = undefined;

const host = (_G as unknown as { core?: Core }).core;
if (host !== undefined) installed = install(host, os.getenv);
