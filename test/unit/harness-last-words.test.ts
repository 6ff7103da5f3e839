// The failure message of waitFor: a sidecar's own lines survive its traffic log.
import { describe, expect, it } from "vitest";
import { lastWords } from "../harness/processes.js";

describe("lastWords", () => {
  it("keeps the controller's and HAProxy's lines and only the last three traffic lines", () => {
    const traffic = Array.from({ length: 200 }, (_, n) => `127.0.0.1:${40000 + n} [27/Nov/2026:02:21:19.910] upstream_db upstream_db/<NOSRV> -1/-1/0 0 SC 1/1/0/0/0 0/0`);
    const output = ["2026-11-27T02:21:00.589Z INFO  watching Consul proxy=web-sidecar-proxy", ...traffic.slice(0, 100), "[NOTICE]   (10647) : Loading success.", ...traffic.slice(100)].join("\n");
    const words = lastWords(output);
    expect(words).toContain("INFO  watching Consul");
    expect(words).toContain("Loading success.");
    expect(words).toContain("(200 traffic lines; the last three:)");
    expect(words).toContain(":40199 [");
    expect(words).not.toContain(":40196 [");
  });

  it("is the plain tail when there is no traffic line", () => {
    expect(lastWords("a\nb")).toBe("a\nb");
  });
});
