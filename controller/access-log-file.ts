// The `Type: file` access log: HAProxy 2.6 cannot write a file itself, so it
// logs to a pipe (`log fd@3`, non-blocking: a line is dropped rather than
// HAProxy waiting) and this appends what arrives, chunk by chunk (no per-line
// work), to the file proxy-defaults names.
import { createWriteStream, type WriteStream } from "node:fs";
import type { AccessLog } from "./access-log.js";
import type { Logger } from "./logger.js";

export class AccessLogFile {
  private path?: string;
  private stream?: WriteStream;
  private failed = false;

  constructor(private readonly logger: Logger) {}

  /** Appends to the file `log` names from now on; nothing when it logs elsewhere (the pipe stays drained). */
  follow(log: AccessLog | undefined): void {
    const path = log?.sink.kind === "file" ? log.sink.path : undefined;
    if (path === this.path) return;
    this.stream?.end();
    this.stream = undefined;
    this.path = path;
    this.failed = false;
    if (path === undefined) return;
    // O_APPEND: several writers and copytruncate rotation keep whole lines.
    const stream = createWriteStream(path, { flags: "a", mode: 0o640 });
    stream.on("error", (err) => {
      if (this.failed) return;
      this.failed = true;
      this.logger.error(`cannot write the access log ${path}: ${err.message}; its lines are dropped until proxy-defaults names a writable Path`);
    });
    this.stream = stream;
  }

  write(chunk: Buffer): void {
    if (this.stream && !this.failed) this.stream.write(chunk);
  }

  close(): Promise<void> {
    const stream = this.stream;
    this.stream = undefined;
    this.path = undefined;
    return stream ? new Promise((resolve) => stream.end(resolve)) : Promise.resolve();
  }
}
