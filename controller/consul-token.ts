// The ACL token the controller sends to Consul: fixed (--token), or read from
// a file (--token-file) and re-read whenever the file changes, so a rotated
// token (new file renamed over the old, a Kubernetes secret's symlink swap, an
// in-place write) is used without a restart.
//
// Why a stat per request rather than fs.watch: a watch on the file loses track
// of it when a rename replaces it (its inode goes away), and a watch on the
// directory misses a symlink swapped further up; a stat follows the path as
// the next request would, costs one system call per Consul request (a few per
// watch every 15 s), and needs no handle to clean up. A 403 "ACL not found"
// also re-reads the file (tokenRejected), in case the stat could not tell.
import { readFileSync, statSync } from "node:fs";
import type { Logger } from "./logger.js";

export interface TokenSource {
  /** The token for the next request (undefined: none). */
  current(): string | undefined;
  /** Consul said the token does not exist: re-read it now. True when that gave another token (worth one retry). */
  tokenRejected(): boolean;
}

export function fixedToken(token: string | undefined): TokenSource {
  return { current: () => token || undefined, tokenRejected: () => false };
}

/** Pure: the parts of a file's stat that change when its content is replaced. */
export function fileVersion(stat: { ino: number; size: number; mtimeMs: number; ctimeMs: number }): string {
  return `${stat.ino}:${stat.size}:${stat.mtimeMs}:${stat.ctimeMs}`;
}

export class TokenFile implements TokenSource {
  private token: string | undefined;
  private version: string | undefined;
  private unreadable = false;

  /** Reads the file once; throws (with the reason) when it cannot be read at start. */
  constructor(
    readonly path: string,
    private readonly logger?: Logger,
  ) {
    this.version = fileVersion(statSync(path));
    this.token = readFileSync(path, "utf8").trim() || undefined;
  }

  current(): string | undefined {
    let version: string;
    try {
      version = fileVersion(statSync(this.path));
    } catch (error) {
      this.cannotRead(error);
      return this.token;
    }
    if (version !== this.version) this.reread(version);
    return this.token;
  }

  tokenRejected(): boolean {
    const before = this.token;
    try {
      this.reread(fileVersion(statSync(this.path)));
    } catch (error) {
      this.cannotRead(error);
    }
    return this.token !== before;
  }

  private reread(version: string): void {
    let text: string;
    try {
      text = readFileSync(this.path, "utf8");
    } catch (error) {
      this.cannotRead(error);
      return;
    }
    this.version = version;
    if (this.unreadable) this.logger?.info(`ACL token file ${this.path} is readable again`);
    this.unreadable = false;
    const token = text.trim() || undefined;
    if (token === this.token) return;
    // An empty file is a half-written one more often than a wish for no token: keep the last.
    if (token === undefined) {
      this.logger?.warn(`ACL token file ${this.path} is empty; keeping the token read before`);
      return;
    }
    this.token = token;
    this.logger?.info(`ACL token file ${this.path} changed: the next requests to Consul use the new token`);
  }

  /** One line when the file goes away; the last token stays in use. */
  private cannotRead(error: unknown): void {
    if (this.unreadable) return;
    this.unreadable = true;
    this.logger?.warn(`cannot read the ACL token file ${this.path} (${(error as NodeJS.ErrnoException).code ?? (error as Error).message}); keeping the token read before`);
  }
}
