// A few counters and gauges in Prometheus's text exposition format (0.0.4),
// written here rather than loaded: the prom-client package alone added 13 MB
// to the controller's RSS (node -e "import('prom-client')": 39 → 52 MB).
type Labels = Record<string, string>;

const escapeLabel = (value: string) => value.replace(/\\/g, "\\\\").replace(/\n/g, "\\n").replace(/"/g, '\\"');
const escapeHelp = (text: string) => text.replace(/\\/g, "\\\\").replace(/\n/g, "\\n");

/** One metric family: a name, its help and type, and a value per label set. */
export class MetricFamily {
  private readonly values = new Map<string, { labels: Labels; value: number }>();

  constructor(
    readonly name: string,
    private readonly help: string,
    private readonly type: "counter" | "gauge",
    /** Read at every scrape (a gauge of something the controller does not track as events). */
    private readonly read?: () => number | undefined,
  ) {}

  inc(labels: Labels = {}, by = 1): void {
    const key = JSON.stringify(labels);
    const entry = this.values.get(key);
    if (entry) entry.value += by;
    else this.values.set(key, { labels, value: by });
  }

  set(value: number, labels: Labels = {}): void {
    this.values.set(JSON.stringify(labels), { labels, value });
  }

  reset(): void {
    this.values.clear();
  }

  /** Pure on its state: the family's lines, with a trailing newline. */
  text(): string {
    if (this.read) {
      const value = this.read();
      this.reset();
      if (value !== undefined) this.set(value);
    }
    const lines = [`# HELP ${this.name} ${escapeHelp(this.help)}`, `# TYPE ${this.name} ${this.type}`];
    for (const { labels, value } of this.values.values()) {
      const pairs = Object.entries(labels).map(([label, text]) => `${label}="${escapeLabel(text)}"`);
      lines.push(`${this.name}${pairs.length ? `{${pairs.join(",")}}` : ""} ${Number.isFinite(value) ? value : String(value).replace("Infinity", "Inf")}`);
    }
    return `${lines.join("\n")}\n`;
  }
}
