// A small line chart drawn as SVG: time on x, one line per series. Hand-written
// because the dashboard needs one chart type with a legend, which is less code
// than vendoring and pinning a charting library.

const SVG = "http://www.w3.org/2000/svg";
// Okabe-Ito: distinguishable with the common colour-vision deficiencies.
export const PALETTE = ["#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000"];

function el(name, attrs = {}, text) {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** Round ``max`` up to a "nice" axis maximum and pick a tick step for it. */
export function niceScale(max, ticks = 4) {
  if (!(max > 0)) return { max: 1, step: 0.25 };
  const raw = max / ticks;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((s) => s >= raw);
  return { max: step * Math.ceil(max / step), step };
}

function formatNumber(v) {
  if (Math.abs(v) >= 1e6) return `${+(v / 1e6).toFixed(1)}M`;
  if (Math.abs(v) >= 1e4) return `${+(v / 1e3).toFixed(1)}k`;
  return String(+v.toFixed(2));
}

function formatClock(ms, seconds = false) {
  return new Date(ms).toISOString().slice(11, seconds ? 19 : 16);
}

/**
 * Draw ``series`` ([{name, color, points: [[timeMs, value], ...]}]) into ``svg``.
 * The SVG scales with its container (viewBox); text stays legible on a phone.
 */
export function drawLineChart(svg, series, { width = 640, height = 260, unit = "" } = {}) {
  const pad = { left: 48, right: 12, top: 12, bottom: 28 };
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const points = series.flatMap((s) => s.points);
  if (points.length === 0) {
    svg.append(el("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "empty" }, "No windows yet"));
    return;
  }
  let t0 = Math.min(...points.map((p) => p[0]));
  let t1 = Math.max(...points.map((p) => p[0]));
  if (t0 === t1) {
    t0 -= 30000;
    t1 += 30000;
  }
  const { max, step } = niceScale(Math.max(0, ...points.map((p) => p[1])));
  const x = (t) => pad.left + ((t - t0) / (t1 - t0)) * (width - pad.left - pad.right);
  const y = (v) => height - pad.bottom - (v / max) * (height - pad.top - pad.bottom);

  const grid = el("g", { class: "grid" });
  for (let v = 0; v <= max + step / 2; v += step) {
    grid.append(el("line", { x1: pad.left, x2: width - pad.right, y1: y(v), y2: y(v) }));
    grid.append(el("text", { x: pad.left - 6, y: y(v) + 4, "text-anchor": "end" }, formatNumber(v)));
  }
  const xticks = Math.min(6, Math.max(2, Math.round((t1 - t0) / 60000) + 1));
  const seconds = t1 - t0 < 10 * 60000;
  for (let i = 0; i < xticks; i++) {
    const t = t0 + ((t1 - t0) * i) / (xticks - 1);
    const anchor = i === 0 ? "start" : i === xticks - 1 ? "end" : "middle";
    grid.append(el("text", { x: x(t), y: height - 8, "text-anchor": anchor }, formatClock(t, seconds)));
  }
  svg.append(grid);

  for (const s of series) {
    const g = el("g", { class: "series", "data-series": s.name });
    const sorted = [...s.points].sort((a, b) => a[0] - b[0]);
    g.append(
      el("polyline", {
        points: sorted.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(" "),
        fill: "none",
        stroke: s.color,
        "stroke-width": 2,
        "stroke-linejoin": "round",
      }),
    );
    for (const [t, v] of sorted) {
      const dot = el("circle", { cx: x(t).toFixed(1), cy: y(v).toFixed(1), r: 3, fill: s.color });
      dot.append(el("title", {}, `${s.name} at ${formatClock(t, true)} UTC: ${formatNumber(v)}${unit}`));
      g.append(dot);
    }
    svg.append(g);
  }
}

/** A tiny trend line for a table cell: ``values`` oldest first. */
export function drawSparkline(svg, values, { width = 80, height = 20, color = PALETTE[0] } = {}) {
  svg.replaceChildren();
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  if (values.length < 2) return;
  const max = Math.max(...values, 1e-9);
  const step = width / (values.length - 1);
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / max) * (height - 2)).toFixed(1)}`);
  svg.append(el("polyline", { points: pts.join(" "), fill: "none", stroke: color, "stroke-width": 1.5 }));
}
