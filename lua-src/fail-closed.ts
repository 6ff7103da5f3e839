// The fail-closed frame of an action that publishes a verdict in txn
// variables for haproxy.cfg to enforce (`reject unless { var(...) -m bool }`).
//
// An error raised inside a Lua action does not stop HAProxy: it logs it and
// runs the next rule. So the evaluation runs under pcall, only a real `true`
// allows, and publishing runs under pcall too: whatever happens, the verdict
// variable ends up 1 or 0, and nothing raises into HAProxy (proved for both
// actions by the "fails closed" specs in test/lua). Module functions are
// passed in, not closures, so a call allocates nothing.

import type { Txn } from "./haproxy";
import type { ServiceIdentity } from "./spiffe";

/** allowed, reason, origin (what decided), and the identity to publish (nil for none). */
export type Verdict = LuaMultiReturn<[boolean, string, string, ServiceIdentity | undefined]>;

/** The origin of a verdict that an error forced. */
export const INTERNAL_ORIGIN = "internal";

/**
 * Runs `evaluate(context, txn, argument)`, then `publish(txn, ...)` with its
 * verdict, which must set `verdictVariable` last. Never raises. Returns the
 * verdict as published (a deny with the error as reason when either failed).
 */
export function runFailClosed<C>(
  evaluate: (this: void, context: C, txn: Txn, argument: string | undefined) => Verdict,
  publish: (this: void, txn: Txn, allowed: boolean, reason: string, identity: ServiceIdentity | undefined) => void,
  verdictVariable: string,
  context: C,
  txn: Txn,
  argument: string | undefined,
): Verdict {
  const [evaluated, first, second, third, fourth] = protect(evaluate, context, txn, argument);
  let allowed = false;
  let reason: string;
  let origin = INTERNAL_ORIGIN;
  let identity: ServiceIdentity | undefined = undefined;
  if (evaluated) {
    // Only a real `true` allows, whatever evaluate hands back.
    allowed = first === true;
    reason = typeof second === "string" ? second : "no reason given";
    origin = typeof third === "string" ? third : INTERNAL_ORIGIN;
    identity = fourth as ServiceIdentity | undefined;
  } else {
    reason = "internal error: " + tostring(first);
  }
  const [published, publishError] = pcall(publish, txn, allowed, reason, identity);
  if (!published) {
    // Could not even record the verdict: make sure an allow is not left behind.
    pcall(() => txn.set_var(verdictVariable, 0));
    allowed = false;
    reason = "internal error while setting variables: " + tostring(publishError);
    origin = INTERNAL_ORIGIN;
  }
  return $multi(allowed, reason, origin, identity);
}
