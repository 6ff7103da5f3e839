// A bounded least-recently-used map: a hash table from key to node plus a
// doubly linked list in use order, so get, set and eviction are O(1).
// Nothing here knows about time: expiry is the caller's business, which lets
// the caller still read an expired value (the agent-down grace period).

interface LruNode<V> {
  key: string;
  value: V;
  newer: LruNode<V> | undefined;
  older: LruNode<V> | undefined;
}

export class BoundedLru<V> {
  private nodes = new LuaMap<string, LruNode<V>>();
  private newest: LruNode<V> | undefined = undefined;
  private oldest: LruNode<V> | undefined = undefined;
  private count = 0;
  evictions = 0;

  constructor(readonly capacity: number) {}

  size(): number {
    return this.count;
  }

  /** The value, marked as most recently used. */
  get(key: string): V | undefined {
    const node = this.nodes.get(key);
    if (node === undefined) return undefined;
    if (node !== this.newest) {
      this.unlink(node);
      this.pushNewest(node);
    }
    return node.value;
  }

  /** The value, without touching the use order. */
  peek(key: string): V | undefined {
    const node = this.nodes.get(key);
    return node === undefined ? undefined : node.value;
  }

  set(key: string, value: V): void {
    const existing = this.nodes.get(key);
    if (existing !== undefined) {
      existing.value = value;
      if (existing !== this.newest) {
        this.unlink(existing);
        this.pushNewest(existing);
      }
      return;
    }
    if (this.count >= this.capacity) {
      const victim = this.oldest;
      if (victim === undefined) return; // capacity 0: cache nothing
      this.unlink(victim);
      this.nodes.delete(victim.key);
      this.count--;
      this.evictions++;
    }
    const node: LruNode<V> = { key, value, newer: undefined, older: undefined };
    this.nodes.set(key, node);
    this.pushNewest(node);
    this.count++;
  }

  delete(key: string): boolean {
    const node = this.nodes.get(key);
    if (node === undefined) return false;
    this.unlink(node);
    this.nodes.delete(key);
    this.count--;
    return true;
  }

  /** Drops everything at once; returns how many entries there were. */
  clear(): number {
    const dropped = this.count;
    this.nodes = new LuaMap();
    this.newest = undefined;
    this.oldest = undefined;
    this.count = 0;
    return dropped;
  }

  /** Keys from most to least recently used (for tests and diagnostics). */
  keys(): string[] {
    const keys: string[] = [];
    let node = this.newest;
    while (node !== undefined) {
      keys.push(node.key);
      node = node.older;
    }
    return keys;
  }

  private unlink(node: LruNode<V>): void {
    const { newer, older } = node;
    if (newer !== undefined) newer.older = older;
    else this.newest = older;
    if (older !== undefined) older.newer = newer;
    else this.oldest = newer;
    node.newer = undefined;
    node.older = undefined;
  }

  private pushNewest(node: LruNode<V>): void {
    node.older = this.newest;
    node.newer = undefined;
    if (this.newest !== undefined) this.newest.newer = node;
    this.newest = node;
    if (this.oldest === undefined) this.oldest = node;
  }
}

/** For Lua callers (tests), which cannot use `new`. */
export function newBoundedLru<V>(capacity: number): BoundedLru<V> {
  return new BoundedLru<V>(capacity);
}
