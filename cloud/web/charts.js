// Small hand-written SVG charts: bars (with an optional limit line) and lines. No library, no CDN.
const NS = "http://www.w3.org/2000/svg";

function el(name, attrs = {}, text) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== undefined) e.textContent = text;
  return e;
}

function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 2.5, 5, 10].map((m) => m * p).find((m) => m >= v);
}

// bars: [{label, value, color?}], opts: {height, format, limit, limitLabel, title}
export function barChart(bars, opts = {}) {
  const w = opts.width || 640, h = opts.height || 220, left = 56, bottom = 36, top = 12;
  const fmt = opts.format || String;
  const max = niceMax(Math.max(opts.limit || 0, ...bars.map((b) => b.value || 0)));
  const svg = el("svg", {viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "data-chart": "bar"});
  if (opts.title) svg.appendChild(el("title", {}, opts.title));
  const ph = h - top - bottom, pw = w - left - 8;
  for (let i = 0; i <= 4; i++) {
    const y = top + ph - (ph * i) / 4;
    svg.appendChild(el("line", {x1: left, x2: w - 8, y1: y, y2: y, stroke: "#e1e6e3"}));
    svg.appendChild(el("text", {x: left - 6, y: y + 4, "text-anchor": "end"}, fmt((max * i) / 4)));
  }
  const bw = pw / Math.max(1, bars.length);
  const every = Math.ceil(bars.length / 14);
  bars.forEach((b, i) => {
    const bh = (ph * (b.value || 0)) / max;
    const r = el("rect", {x: left + i * bw + bw * 0.12, y: top + ph - bh, width: Math.max(1, bw * 0.76), height: bh,
                          fill: b.color || "#1f7a4d"});
    r.appendChild(el("title", {}, `${b.label}: ${fmt(b.value)}`));
    svg.appendChild(r);
    if (i % every === 0) svg.appendChild(el("text", {x: left + i * bw + bw / 2, y: h - bottom + 16, "text-anchor": "middle"}, b.label));
  });
  if (opts.limit) {
    const y = top + ph - (ph * opts.limit) / max;
    svg.appendChild(el("line", {x1: left, x2: w - 8, y1: y, y2: y, stroke: "#b3261e", "stroke-dasharray": "5 3"}));
    svg.appendChild(el("text", {x: w - 10, y: y - 4, "text-anchor": "end", fill: "#b3261e"}, opts.limitLabel || fmt(opts.limit)));
  }
  return svg;
}

// points: [{x: ms, y}], opts: {height, format, limit, timeFormat}
export function lineChart(points, opts = {}) {
  const w = opts.width || 640, h = opts.height || 200, left = 56, bottom = 28, top = 10;
  const fmt = opts.format || String, tf = opts.timeFormat || ((x) => new Date(x).toISOString().slice(11, 19));
  const svg = el("svg", {viewBox: `0 0 ${w} ${h}`, width: "100%", role: "img", "data-chart": "line"});
  if (!points.length) return svg;
  const xs = points.map((p) => p.x), ys = points.map((p) => p.y);
  const x0 = Math.min(...xs), x1 = Math.max(...xs) || x0 + 1;
  let y0 = Math.min(...ys, opts.limit ?? Infinity), y1 = Math.max(...ys, opts.limit ?? -Infinity);
  if (y1 === y0) { y1 += 1; y0 -= 1; }
  const ph = h - top - bottom, pw = w - left - 8;
  const X = (x) => left + (pw * (x - x0)) / Math.max(1, x1 - x0), Y = (y) => top + ph - (ph * (y - y0)) / (y1 - y0);
  for (let i = 0; i <= 3; i++) {
    const v = y0 + ((y1 - y0) * i) / 3;
    svg.appendChild(el("line", {x1: left, x2: w - 8, y1: Y(v), y2: Y(v), stroke: "#e1e6e3"}));
    svg.appendChild(el("text", {x: left - 6, y: Y(v) + 4, "text-anchor": "end"}, fmt(v)));
  }
  svg.appendChild(el("text", {x: left, y: h - 8}, tf(x0)));
  svg.appendChild(el("text", {x: w - 8, y: h - 8, "text-anchor": "end"}, tf(x1)));
  svg.appendChild(el("polyline", {points: points.map((p) => `${X(p.x).toFixed(1)},${Y(p.y).toFixed(1)}`).join(" "),
                                 fill: "none", stroke: "#1f7a4d", "stroke-width": 1.5}));
  if (opts.limit !== undefined && opts.limit !== null) {
    svg.appendChild(el("line", {x1: left, x2: w - 8, y1: Y(opts.limit), y2: Y(opts.limit), stroke: "#b3261e", "stroke-dasharray": "5 3"}));
  }
  return svg;
}
