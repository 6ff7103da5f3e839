// The sidecar's snapshot read once, without blocking: the same requests the
// watches make, each once. For `connect-haproxy render` and the benchmark's
// plain pair, which render what the controller would run without running it.
import type { ConsulClient } from "./consul-client.js";
import type { AgentServiceRegistration } from "./consul-replies.js";
import { fetchPart, watchKey } from "./consul-watches.js";
import type { ConsulSnapshot } from "./desired-state.js";
import { consulSnapshot, emptySnapshot, wantedWatches, withPart, type SidecarSnapshot } from "./sidecar-snapshot.js";
import { parseSidecarSpec } from "./sidecar-spec.js";

/** Every instance as read (no identity probe: nothing is dialled). */
export async function readSnapshotOnce(consul: ConsulClient, registration: AgentServiceRegistration, signal?: AbortSignal): Promise<ConsulSnapshot> {
  let snapshot: SidecarSnapshot = emptySnapshot(parseSidecarSpec(registration));
  // Twice: the chains read in the first round name the targets read in the second.
  const fetched = new Set<string>();
  for (let round = 0; round < 2; round++) {
    const ids = wantedWatches(snapshot).filter((id) => !fetched.has(watchKey(id)));
    ids.forEach((id) => fetched.add(watchKey(id)));
    const parts = await Promise.all(ids.map((id) => fetchPart(consul, id, {}, signal)));
    for (const page of parts) snapshot = withPart(snapshot, page.value);
  }
  const allInstances = {
    ...Object.fromEntries(Object.entries(snapshot.instances).map(([name, known]) => [name, known.entries])),
    ...snapshot.targetInstances,
  };
  return consulSnapshot(snapshot, allInstances);
}
