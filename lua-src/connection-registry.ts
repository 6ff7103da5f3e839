// Allowed TCP connections, so that an intention change can reach the ones
// already open. The action records each allowed connection's client address
// with its verified identity and target in a bounded table (the oldest is
// evicted first); `connect revoked` lists those whose source the current
// intention list now denies for their target, and the controller shuts them
// down through `show sess` / `shutdown session`.
//
// HTTP connections are not recorded: every request on them is decided
// afresh, so a kept-alive connection never carries a request past a deny.
// Entries are not removed when a connection closes (HAProxy gives Lua no such
// hook): a listed address that no longer has a session is simply not found.
// Its port may since belong to another client's connection (on loopback every
// sidecar dials from 127.0.0.1), so each line carries the seconds since the
// connection was recorded, and the controller closes only a session of that
// age (`show sess` prints it): never another connection that reused the port.

import type { ServiceIdentity } from "./spiffe";
import type { IntentionWatch } from "./intention-watch";
import { BoundedLru } from "./lru";
import { governingIntention } from "./intentions";

export interface RecordedConnection {
  address: string;
  port: string;
  frontend: string;
  target: string;
  identity: ServiceIdentity;
  /** When the connection was allowed (ms, the registry's clock). */
  recordedAtMs: number;
}

export class ConnectionRegistry {
  private readonly connections: BoundedLru<RecordedConnection>;

  constructor(
    capacity: number,
    private readonly now: (this: void) => number,
  ) {
    this.connections = new BoundedLru<RecordedConnection>(capacity);
  }

  record(address: string, port: string, frontend: string, target: string, identity: ServiceIdentity): void {
    const key = address + " " + port + " " + frontend;
    const recordedAtMs = this.now();
    const known = this.connections.peek(key);
    // The same client port again is a new connection: its time, not the old one's.
    if (known !== undefined && known.target === target && known.identity === identity) {
      known.recordedAtMs = recordedAtMs;
      return;
    }
    this.connections.set(key, { address, port, frontend, target, identity, recordedAtMs });
  }

  /** Whole seconds since `connection` was recorded (what `show sess` prints as a session's age). */
  ageSeconds(connection: RecordedConnection): number {
    return math.max(0, math.floor((this.now() - connection.recordedAtMs) / 1000));
  }

  size(): number {
    return this.connections.size();
  }

  /** Recorded connections, most recent first. */
  entries(): RecordedConnection[] {
    const result: RecordedConnection[] = [];
    for (const key of this.connections.keys()) {
      const entry = this.connections.peek(key);
      if (entry !== undefined) result.push(entry);
    }
    return result;
  }
}

/**
 * Why the current intentions deny `connection`'s source for its target, or
 * nil while they allow it (or while the target's list is unknown). TCP
 * semantics: an L7 intention denies; no intention → the default policy, when known.
 */
export function revocationReason(watch: IntentionWatch, connection: RecordedConnection): string | undefined {
  const [rules, problem] = watch.rulesForNow(connection.target);
  if (problem !== "" || rules === undefined || rules.list === undefined) return undefined;
  const identity = connection.identity;
  const intention = governingIntention(rules.list, identity.service, identity.namespace, identity.partition);
  if (intention === undefined) {
    if (rules.defaultAllow === false) return "no intention matched: " + rules.defaultReason;
    return undefined;
  }
  if (intention.problem !== undefined) return intention.reason;
  if (intention.permissions !== undefined) return "L7 intention on a TCP service: " + intention.label;
  if (!intention.allow) return intention.reason;
  return undefined;
}

/** `connect revoked`: one line per recorded connection whose source is now denied: `<ip>:<port> <target> <SPIFFE ID> <age>s <reason>`. */
export function revokedCommand(registry: ConnectionRegistry, watch: IntentionWatch): string {
  const lines: string[] = [];
  for (const connection of registry.entries()) {
    const reason = revocationReason(watch, connection);
    if (reason !== undefined) lines.push(connection.address + ":" + connection.port + " " + connection.target + " " + connection.identity.uri + " " + tostring(registry.ageSeconds(connection)) + "s " + reason);
  }
  return lines.length > 0 ? table.concat(lines, "\n") + "\n" : "";
}
