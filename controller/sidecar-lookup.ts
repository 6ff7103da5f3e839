// Finding the sidecar's registration on the local agent at start, waiting
// (with backoff) while the agent is unreachable.
import { backoffDelayMs } from "./blocking-query.js";
import type { Clock } from "./clock.js";
import { ConsulError, type ConsulClient } from "./consul-client.js";
import type { AgentServiceRegistration } from "./consul-replies.js";
import type { Logger } from "./logger.js";
import { findSidecarRegistration } from "./sidecar-spec.js";

/** The sidecar cannot be identified: a usage problem (exit code 2). */
export class LookupError extends Error {}

export interface SidecarSelector {
  sidecarFor?: string;
  proxyId?: string;
}

export async function findSidecar(consul: ConsulClient, selector: SidecarSelector, logger: Logger, clock: Clock, signal: AbortSignal): Promise<AgentServiceRegistration> {
  for (let failures = 1; ; failures++) {
    try {
      const found = findSidecarRegistration(await consul.listAgentServices(signal), selector);
      if (!found.ok) throw new LookupError(found.message);
      if (failures > 1) logger.info("Consul is reachable again");
      return found.registration;
    } catch (err) {
      if (!(err instanceof ConsulError) || err.kind !== "unreachable") throw err;
      if (failures === 1) logger.warn(`${err.message}; retrying with backoff until it answers`);
      await clock.sleep(backoffDelayMs(failures, 500, 10_000, clock.random()), signal);
      if (signal.aborted) throw new ConsulError("aborted", err.endpoint, "stopped while waiting for Consul");
    }
  }
}
