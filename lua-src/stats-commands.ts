// Runtime commands on HAProxy's stats socket (core.register_cli):
//   connect cache flush   drop every cached verdict (the controller calls it when intentions change)
//   connect cache stats   entries, hits, misses, agent calls, errors, ...
//   connect show config   the settings in effect; the token only as set / not set
// The numbers are those of the Lua state that answers: with lua-load (one
// shared state) that is the whole process.

import type { CliApplet, Core } from "./haproxy";
import type { AuthorizeContext } from "./authorize-action";
import { describeConfig } from "./config";

const format = string.format;

export function flushCommand(context: AuthorizeContext): string {
  const dropped = context.authorizer.flush();
  return format("flushed %d cached verdicts\n", dropped);
}

export function statsCommand(context: AuthorizeContext): string {
  const stats = context.authorizer.stats();
  return format(
    "entries: %d\ncapacity: %d\nhits: %d\nmisses: %d\nshared: %d\nagent_calls: %d\nerrors: %d\ngrace_allows: %d\nevictions: %d\ninflight: %d\nflushes: %d\ntrust_domain_lookups: %d\ncertificates_cached: %d\n",
    stats.entries, stats.capacity, stats.hits, stats.misses, stats.shared, stats.agentCalls, stats.errors,
    stats.graceAllows, stats.evictions, stats.inflight, stats.flushes, context.trustDomains.lookups, context.identities.size(),
  );
}

export function configCommand(context: AuthorizeContext): string {
  return describeConfig(context.config, context.trustDomains.describe());
}

function answer(applet: CliApplet, produce: (this: void, context: AuthorizeContext) => string, context: AuthorizeContext): void {
  const [ok, text] = pcall(produce, context);
  applet.send(ok ? text : "error: " + tostring(text) + "\n");
}

export function registerCommands(core: Core, context: AuthorizeContext): void {
  core.register_cli(["connect", "cache", "flush"], "connect cache flush : drop every cached authorization verdict", (applet) =>
    answer(applet, flushCommand, context));
  core.register_cli(["connect", "cache", "stats"], "connect cache stats : authorization cache counters", (applet) =>
    answer(applet, statsCommand, context));
  core.register_cli(["connect", "show", "config"], "connect show config : the authorizer's settings (never the token)", (applet) =>
    answer(applet, configCommand, context));
}
