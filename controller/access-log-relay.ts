// The access log's last step. HAProxy 2.6 cannot write a file, and sends a
// frontend's notices (e.g. "Proxy … stopped" at every reload) to the same
// loggers as its access lines; so frontends log to a pipe (`log fd@3 format
// short`: non-blocking, a line is dropped rather than HAProxy waiting) and this
// keeps the lines at the access priority, strips it, and writes them to
// stdout, stderr or the file proxy-defaults names.
import { createWriteStream, type WriteStream } from "node:fs";
import { accessLinePriority, type AccessLog, type AccessLogSink } from "./access-log.js";
import type { Logger } from "./logger.js";

const newline = 0x0a;
/** Bounds how late a line reaches its sink (one write per interval instead of one per pipe read; the relay's cost: docs/controller.md). */
const flushIntervalMs = 50;
const priority = Buffer.from(accessLinePriority);

/** Pure: the access lines of `text` (complete lines only) and the incomplete rest. */
export function accessLinesOf(text: Buffer): { lines: Buffer[]; rest: Buffer } {
  const lines: Buffer[] = [];
  let start = 0;
  for (let end = text.indexOf(newline); end >= 0; end = text.indexOf(newline, start)) {
    const line = text.subarray(start, end + 1);
    if (line.subarray(0, priority.length).equals(priority)) lines.push(line.subarray(priority.length));
    start = end + 1;
  }
  return { lines, rest: text.subarray(start) };
}

export interface RelayOutputs {
  stdout: NodeJS.WritableStream;
  stderr: NodeJS.WritableStream;
}

export class AccessLogRelay {
  private sink?: AccessLogSink;
  private file?: WriteStream;
  private failed = false;
  private pending: Buffer = Buffer.alloc(0);
  /** Access lines waiting for the next flush: one write per interval, not per pipe read (reads come a line or two at a time). */
  private queued: Buffer[] = [];
  private flushTimer?: NodeJS.Timeout;

  constructor(private readonly logger: Logger, private readonly outputs: RelayOutputs = { stdout: process.stdout, stderr: process.stderr }) {}

  /** Writes to where `log` says from now on; drops what arrives while access logs are off. */
  follow(log: AccessLog | undefined): void {
    const sink = log?.sink;
    if (JSON.stringify(sink) === JSON.stringify(this.sink)) return;
    this.flush();
    this.file?.end();
    this.file = undefined;
    this.failed = false;
    this.sink = sink;
    if (sink?.kind !== "file") return;
    // O_APPEND keeps whole lines with copytruncate rotation; 640: the lines name clients and paths.
    const file = createWriteStream(sink.path, { flags: "a", mode: 0o640 });
    file.on("error", (err) => {
      if (this.failed) return;
      this.failed = true;
      this.logger.error(`cannot write the access log ${sink.path}: ${err.message}; its lines are dropped until proxy-defaults names a writable Path`);
    });
    this.file = file;
  }

  /** A chunk from HAProxy's pipe: whole lines are written at once, a partial one waits for its end. */
  write(chunk: Buffer): void {
    const { lines, rest } = accessLinesOf(this.pending.length > 0 ? Buffer.concat([this.pending, chunk]) : chunk);
    this.pending = Buffer.from(rest);
    if (lines.length === 0 || !this.sink) return;
    this.queued.push(...lines);
    this.flushTimer ??= setTimeout(() => this.flush(), flushIntervalMs);
  }

  /** Writes the queued lines now (a timer calls it; so do follow and close). */
  flush(): void {
    if (this.flushTimer) clearTimeout(this.flushTimer);
    this.flushTimer = undefined;
    if (this.queued.length === 0) return;
    const out = Buffer.concat(this.queued);
    this.queued = [];
    if (this.sink?.kind === "file") {
      if (this.file && !this.failed) this.file.write(out);
    } else if (this.sink) this.outputs[this.sink.kind].write(out);
  }

  close(): Promise<void> {
    this.flush();
    const file = this.file;
    this.file = undefined;
    this.sink = undefined;
    return file ? new Promise((resolve) => file.end(resolve)) : Promise.resolve();
  }
}
