// The drift check's pure half: `show servers state` parsed, and the repairs
// for each slot HAProxy runs differently from the running state.
import { describe, expect, it } from "vitest";
import type { DesiredState } from "../../controller/desired-state.js";
import { parseServersState } from "../../controller/runtime-api.js";
import { serverDrift } from "../../controller/server-drift.js";

// HAProxy 2.6.12's `show servers state` (format 1), trimmed to one backend. A
// slot rendered `disabled` keeps CMAINT (4) once set ready (slot1: serving).
const answer = `1
# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port
3 upstream_db 1 slot1 127.0.0.1 2 4 1 1 40 1 0 2 0 0 0 0 - 21001 - 1 0 - - 0
3 upstream_db 2 slot2 127.0.0.1 0 5 1 1 3 1 0 0 0 0 0 0 - 21002 - 1 0 - - 0
3 upstream_db 3 slot3 0.0.0.0 0 1 1 1 40 1 0 0 0 0 0 0 - 0 - 1 0 - - 0
3 upstream_db 4 slot4 127.0.0.1 2 8 1 1 40 1 0 2 0 0 0 0 - 21004 - 1 0 - - 0
3 upstream_db 5 slot5 127.0.0.1 2 0 1 1 40 1 0 2 0 0 0 0 - 21005 - 1 0 - - 0
`;

const instance = (n: number) => ({ id: `node/db-${n}`, address: "127.0.0.1", port: 21000 + n });
const desired = {
  upstreams: [{ backends: [{ name: "upstream_db", slots: [
    { name: "slot1", instance: instance(1) },
    { name: "slot2", instance: instance(2) },
    { name: "slot3" },
    { name: "slot4", instance: instance(4) },
    { name: "slot5" },
    { name: "slot6", instance: instance(6) },
  ] }] }],
} as unknown as DesiredState;

describe("parseServersState", () => {
  it("reads each server's address, port and state (maint, drain, ready)", () => {
    expect(parseServersState(answer).map((s) => `${s.backend}/${s.server} ${s.address}:${s.port} ${s.state}`)).toEqual([
      "upstream_db/slot1 127.0.0.1:21001 ready",
      "upstream_db/slot2 127.0.0.1:21002 maint",
      "upstream_db/slot3 0.0.0.0:0 maint",
      "upstream_db/slot4 127.0.0.1:21004 drain",
      "upstream_db/slot5 127.0.0.1:21005 ready",
    ]);
  });
});

describe("serverDrift", () => {
  it("repairs each slot that differs, says how, and leaves matching and unknown slots alone", () => {
    const repairs = serverDrift(desired, parseServersState(answer));
    expect(repairs).toEqual([
      { kind: "set-server", backend: "upstream_db", server: "slot2", address: "127.0.0.1", port: 21002, ready: true, change: "drift: upstream_db/slot2 is maint in HAProxy, should be ready at 127.0.0.1:21002 (instance node/db-2)" },
      { kind: "set-server", backend: "upstream_db", server: "slot4", address: "127.0.0.1", port: 21004, ready: true, change: "drift: upstream_db/slot4 is drain at 127.0.0.1:21004 in HAProxy, should be ready at 127.0.0.1:21004 (instance node/db-4)" },
      { kind: "set-server", backend: "upstream_db", server: "slot5", ready: false, change: "drift: upstream_db/slot5 is ready at 127.0.0.1:21005 in HAProxy, should be maint (free slot)" },
    ]);
  });

  it("repairs an address changed behind the controller's back", () => {
    const moved = parseServersState(answer.replace("slot1 127.0.0.1 2 4", "slot1 10.9.9.9 2 4"));
    expect(serverDrift(desired, moved)[0]).toMatchObject({ server: "slot1", address: "127.0.0.1", port: 21001, change: "drift: upstream_db/slot1 is ready at 10.9.9.9:21001 in HAProxy, should be ready at 127.0.0.1:21001 (instance node/db-1)" });
  });
});
