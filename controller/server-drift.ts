// Pure: what HAProxy's server slots should be (the running DesiredState) against
// what `show servers state` says they are; one repairing runtime operation per
// slot that differs (someone's `set server … state maint` on the stats socket,
// a lost runtime command). The periodic drift check and SIGHUP run it.
import type { DesiredState } from "./desired-state.js";
import type { RuntimeOperation } from "./plan-changes.js";
import type { LiveServer } from "./runtime-api.js";

function describeLive(live: LiveServer): string {
  return `${live.state}${live.state === "maint" ? "" : ` at ${live.address}:${live.port}`}`;
}

export function serverDrift(desired: DesiredState, live: LiveServer[]): RuntimeOperation[] {
  const byName = new Map(live.map((server) => [`${server.backend}/${server.server}`, server]));
  const operations: RuntimeOperation[] = [];
  for (const backend of desired.upstreams.flatMap((upstream) => upstream.backends)) {
    for (const slot of backend.slots) {
      const name = `${backend.name}/${slot.name}`;
      const running = byName.get(name);
      // A slot HAProxy does not list is a configuration difference: a reload's business, not the drift check's.
      if (!running) continue;
      const instance = slot.instance;
      if (instance) {
        if (running.state === "ready" && running.address === instance.address && running.port === instance.port) continue;
        operations.push({
          kind: "set-server", backend: backend.name, server: slot.name, address: instance.address, port: instance.port, ready: true,
          change: `drift: ${name} is ${describeLive(running)} in HAProxy, should be ready at ${instance.address}:${instance.port} (instance ${instance.id})`,
        });
      } else if (running.state !== "maint") {
        operations.push({ kind: "set-server", backend: backend.name, server: slot.name, ready: false, change: `drift: ${name} is ${describeLive(running)} in HAProxy, should be maint (free slot)` });
      }
    }
  }
  return operations;
}
