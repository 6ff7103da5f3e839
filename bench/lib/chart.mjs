// A plain SVG bar chart: one panel per metric, one bar per set-up.
// No library: rectangles and text, sized so it reads on GitHub at 100%.

const COLORS = { direct: "#9e9e9e", plain: "#4a78b5", connect: "#2e9c5b", builtin: "#d07a2b", connectNoCache: "#7fc79d" };

function escapeXml(text) {
  return String(text).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" })[c]);
}

/** 1234.5 → "1,235"; 3.14159 → "3.14"; 0.0123 → "0.012". */
export function formatNumber(value) {
  if (value === undefined || value === null || Number.isNaN(value)) return "–";
  const abs = Math.abs(value);
  if (abs >= 100) return Math.round(value).toLocaleString("en-US");
  if (abs >= 10) return value.toFixed(1);
  if (abs >= 1) return value.toFixed(2);
  return value.toPrecision(2);
}

/**
 * panels: [{ title, unit, better: "higher"|"lower", reference?: { label, value },
 *            bars: [{ setup, label, short?, value }] }]
 * `reference` is printed, not drawn (the floor without proxies dwarfs the bars).
 * Returns the SVG text.
 */
export function barChartSvg({ title, subtitle, panels, columns = 3 }) {
  const panelWidth = 300;
  const panelHeight = 230;
  const gap = 20;
  const top = subtitle ? 62 : 44;
  const rows = Math.ceil(panels.length / columns);
  const legendHeight = 34;
  const width = columns * panelWidth + (columns + 1) * gap;
  const height = top + rows * (panelHeight + gap) + legendHeight;
  const out = [];
  out.push(
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${gap}" y="28" font-size="18" font-weight="bold" fill="#222">${escapeXml(title)}</text>`,
  );
  if (subtitle) out.push(`<text x="${gap}" y="48" font-size="12" fill="#555">${escapeXml(subtitle)}</text>`);

  const seen = new Map();
  panels.forEach((panel, index) => {
    const x0 = gap + (index % columns) * (panelWidth + gap);
    const y0 = top + Math.floor(index / columns) * (panelHeight + gap);
    out.push(`<g transform="translate(${x0},${y0})">`);
    out.push(`<rect width="${panelWidth}" height="${panelHeight}" fill="#fafafa" stroke="#ddd"/>`);
    const hint = panel.better === "lower" ? "lower is better" : "higher is better";
    out.push(`<text x="10" y="20" font-size="13" font-weight="bold" fill="#222">${escapeXml(panel.title)}</text>`);
    out.push(`<text x="10" y="36" font-size="11" fill="#777">${escapeXml(panel.unit)} · ${hint}</text>`);
    if (panel.reference && typeof panel.reference.value === "number") {
      out.push(`<text x="10" y="51" font-size="11" fill="#777">${escapeXml(`${panel.reference.label}: ${formatNumber(panel.reference.value)}`)}</text>`);
    }
    const bars = panel.bars.filter((b) => typeof b.value === "number" && Number.isFinite(b.value));
    const max = Math.max(...bars.map((b) => b.value), 0) || 1;
    const plotTop = 72;
    const plotBottom = panelHeight - 28;
    const plotHeight = plotBottom - plotTop;
    const slot = (panelWidth - 20) / Math.max(panel.bars.length, 1);
    const barWidth = Math.min(52, slot * 0.7);
    out.push(`<line x1="10" y1="${plotBottom}" x2="${panelWidth - 10}" y2="${plotBottom}" stroke="#999"/>`);
    panel.bars.forEach((bar, i) => {
      seen.set(bar.setup, bar.label);
      const cx = 10 + slot * i + slot / 2;
      const has = typeof bar.value === "number" && Number.isFinite(bar.value);
      const h = has ? Math.max(1, (bar.value / max) * plotHeight) : 0;
      const color = COLORS[bar.setup] ?? "#666";
      if (has) out.push(`<rect x="${(cx - barWidth / 2).toFixed(1)}" y="${(plotBottom - h).toFixed(1)}" width="${barWidth.toFixed(1)}" height="${h.toFixed(1)}" fill="${color}"/>`);
      out.push(
        `<text x="${cx.toFixed(1)}" y="${(plotBottom - h - 5).toFixed(1)}" font-size="11" text-anchor="middle" fill="#222">${escapeXml(has ? formatNumber(bar.value) : "n/a")}</text>`,
      );
      out.push(`<text x="${cx.toFixed(1)}" y="${plotBottom + 16}" font-size="10" text-anchor="middle" fill="#444">${escapeXml(bar.short ?? bar.label)}</text>`);
    });
    out.push("</g>");
  });

  let lx = gap;
  const ly = height - legendHeight / 2;
  for (const [setup, label] of seen) {
    out.push(`<rect x="${lx}" y="${ly - 9}" width="12" height="12" fill="${COLORS[setup] ?? "#666"}"/>`);
    out.push(`<text x="${lx + 17}" y="${ly + 1}" font-size="11" fill="#333">${escapeXml(label)}</text>`);
    lx += 17 + label.length * 6.2 + 18;
  }
  out.push("</svg>");
  return out.join("\n") + "\n";
}
