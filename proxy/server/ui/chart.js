// Time-series line charts drawn as SVG: one line per series, its 95% interval as a band, a dot
// (with a hover title) for every bucket that has data. No library: a few dozen points per line.

import { h, svg } from "./dom.js";

// The viewBox is about the size the chart is shown at (it scales with its box), so text stays legible.
const DEFAULT_WIDTH = 300;
const DEFAULT_HEIGHT = 150;
const PAD = { left: 38, right: 10, top: 10, bottom: 22 };
export const PALETTE = ["#2563eb", "#ea580c", "#16a34a", "#9333ea", "#db2777", "#0891b2", "#ca8a04", "#475569"];

function runs(values) {
  // Index ranges [start, end] of consecutive non-null values.
  const found = [];
  let start = null;
  values.forEach((value, index) => {
    if (value !== null && start === null) start = index;
    if (value === null && start !== null) {
      found.push([start, index - 1]);
      start = null;
    }
  });
  if (start !== null) found.push([start, values.length - 1]);
  return found;
}

function axisLabel(iso, long) {
  const date = new Date(iso);
  const hm = date.toLocaleTimeString("en-GB", { hour: "2-digit", minute: "2-digit", hour12: false });
  return long ? `${date.toLocaleDateString("en-GB", { day: "2-digit", month: "short" })} ${hm}` : hm;
}

export function lineChart({ title, times, series, format, note, empty = "no data in this window", width = DEFAULT_WIDTH, height = DEFAULT_HEIGHT }) {
  const plotWidth = width - PAD.left - PAD.right;
  const plotHeight = height - PAD.top - PAD.bottom;
  const step = times.length > 1 ? plotWidth / (times.length - 1) : 0;
  const x = (index) => PAD.left + (times.length > 1 ? index * step : plotWidth / 2);
  const y = (value) => PAD.top + (1 - Math.max(0, Math.min(1, value))) * plotHeight;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "chart", role: "img", "aria-label": title });

  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("line", { x1: PAD.left, x2: width - PAD.right, y1: y(tick), y2: y(tick), class: tick === 0 ? "axis" : "grid" }));
    root.append(svg("text", { x: PAD.left - 5, y: y(tick) + 3.5, class: "tick", "text-anchor": "end" }, `${tick * 100}%`));
  }
  if (times.length) {
    const span = new Date(times[times.length - 1]) - new Date(times[0]);
    const long = span > 36 * 3600 * 1000;
    const marks = [...new Set([0, Math.floor((times.length - 1) / 2), times.length - 1])];
    marks.forEach((index, i) => {
      const anchor = i === 0 && marks.length > 1 ? "start" : i === marks.length - 1 && marks.length > 1 ? "end" : "middle";
      root.append(svg("text", { x: x(index), y: height - 6, class: "tick", "text-anchor": anchor }, axisLabel(times[index], long)));
    });
  }

  let points = 0;
  series.forEach((line) => {
    const color = line.color;
    for (const [start, end] of runs(line.values)) {
      if (line.lows && line.highs) {
        const upper = [];
        const lower = [];
        for (let i = start; i <= end; i++) {
          if (line.lows[i] === null || line.highs[i] === null) continue;
          upper.push(`${x(i)},${y(line.highs[i])}`);
          lower.unshift(`${x(i)},${y(line.lows[i])}`);
        }
        if (upper.length > 1) root.append(svg("polygon", { points: [...upper, ...lower].join(" "), fill: color, class: "band" }));
        if (upper.length === 1) {
          root.append(svg("line", { x1: x(start), x2: x(start), y1: y(line.highs[start]), y2: y(line.lows[start]), stroke: color, class: "whisker" }));
        }
      }
      if (end > start) {
        const path = [];
        for (let i = start; i <= end; i++) path.push(`${x(i)},${y(line.values[i])}`);
        root.append(svg("polyline", { points: path.join(" "), stroke: color, class: "line" }));
      }
    }
    line.values.forEach((value, index) => {
      if (value === null) return;
      points += 1;
      const tip = `${line.name} · ${axisLabel(times[index], true)} · ${format(value)}${line.tips ? ` · ${line.tips[index]}` : ""}`;
      root.append(svg("circle", { cx: x(index), cy: y(value), r: 2.6, fill: color, class: "dot" }, svg("title", {}, tip)));
    });
  });
  if (!points) {
    root.append(svg("text", { x: PAD.left + plotWidth / 2, y: PAD.top + plotHeight / 2, class: "empty", "text-anchor": "middle" }, empty));
  }
  return h("figure", { class: "chart-box" }, h("figcaption", {}, title, note ? h("span", { class: "muted" }, ` ${note}`) : null), root);
}

export function legend(entries) {
  return h(
    "ul",
    { class: "legend" },
    entries.map((entry) => h("li", {}, h("span", { class: "swatch", dataset: { color: entry.color } }), entry.name)),
  );
}

// Swatch colours are set through the CSSOM (a style attribute would need 'unsafe-inline').
export function paintSwatches(root) {
  for (const swatch of root.querySelectorAll(".swatch[data-color]")) swatch.style.background = swatch.dataset.color;
}
