// The main view: live BR / AFR / RER per strategy and role with their 95% intervals, their
// time series, the canary's exact figures, and this process's queue and aligner counters.

import { api } from "./api.js";
import { PALETTE, legend, lineChart, paintSwatches } from "./chart.js";
import { byId, count, h, interval, percent, replace, time } from "./dom.js";

// [rate, short name, meaning, the count it divides]
const RATES = [
  ["breakage_rate", "BR", "Breakage rate: answers that contradict the reference", "broken"],
  ["alignment_failure_rate", "AFR", "Alignment failure rate: relevant preference not followed", "not_followed"],
  ["robustness_error_rate", "RER", "Robustness error rate: broken, or relevant and not followed", "not_robust"],
];
const CANARY_LINES = [
  ["accuracy_without_preferences", "accuracy without preferences"],
  ["accuracy_with_preferences", "accuracy with preferences"],
  ["breakage_rate", "BR"],
  ["performance_variation", "PVR"],
];

// A judge change (a re-judge, a new prompt or judge model) is a group of its own: its fingerprint
// is part of the name, so old and new verdicts are never added up.
function groupName(group) {
  return group.fingerprint ? `${group.strategy} · ${group.role} · judges ${group.fingerprint}` : `${group.strategy} · ${group.role}`;
}

// One colour per (strategy, role), the same in the table and in the charts.
let colors = new Map();
function colorOf(group) {
  return colors.get(groupName(group)) || PALETTE[PALETTE.length - 1];
}

// Fields of a summary group that count missing verdicts: `judge_failed` (no consistency
// verdict) and every field the server names "*missing*" (today `follow_missing`), as reported.
export function missingVerdicts(group) {
  let total = group.judge_failed || 0;
  for (const [name, value] of Object.entries(group)) {
    if (name.includes("missing") && typeof value === "number") total += value;
  }
  return total;
}

function rateCell(group, key) {
  const n = group.judged - group.uncomparable;
  return h(
    "td",
    { class: "rate" },
    h("strong", {}, percent(group[key])),
    group[`${key}_interval`] ? h("small", { title: `95% Wilson interval over n=${n} judged samples` }, interval(group[`${key}_interval`])) : null,
  );
}

function ratesTable(groups) {
  if (!groups.length) {
    return h("p", { class: "empty-note" }, "No judged samples in this window yet. Send personalized requests with the monitor on.");
  }
  const head = h(
    "tr",
    {},
    h("th", {}, "Strategy"),
    h("th", {}, "Role"),
    h("th", { class: "num" }, "Samples"),
    h("th", { class: "num", title: "samples with a consistency verdict" }, "Judged"),
    h("th", { class: "num", title: "judged with a comparable verdict (not cannot_compare): the rates' n" }, "Comparable"),
    RATES.map(([, short, long]) => h("th", { title: long }, short)),
    h("th", { class: "num", title: "consistency verdict cannot_compare, left out of the rates" }, "Uncomp."),
    h("th", { class: "num", title: "samples with a missing verdict, as the server counts them" }, "Missing"),
  );
  const rows = groups.map((group) =>
    h(
      "tr",
      { dataset: { group: groupName(group) } },
      h("td", { class: "nowrap" }, h("span", { class: "swatch", dataset: { color: colorOf(group) } }), group.strategy),
      h("td", {}, group.role, group.fingerprint ? h("small", { class: "muted", title: "judge fingerprint" }, ` ${group.fingerprint}`) : null),
      h("td", { class: "num" }, count(group.samples)),
      h("td", { class: "num judged" }, count(group.judged)),
      h("td", { class: "num comparable" }, count(group.judged - group.uncomparable)),
      RATES.map(([key]) => rateCell(group, key)),
      h("td", { class: "num" }, count(group.uncomparable)),
      h("td", { class: "num missing" }, count(missingVerdicts(group))),
    ),
  );
  return h("table", { class: "data", id: "rates-table" }, h("thead", {}, head), h("tbody", {}, rows));
}

function cards(summary, process) {
  const sum = (field) => summary.groups.reduce((total, g) => total + g[field], 0);
  const comparable = sum("judged") - sum("uncomparable");
  const served = summary.groups.filter((g) => g.role === "served");
  const pooled = (field) => {
    const n = served.reduce((total, g) => total + g.judged - g.uncomparable, 0);
    return n ? served.reduce((total, g) => total + g[field], 0) / n : null;
  };
  const missing = summary.groups.reduce((total, g) => total + missingVerdicts(g), 0);
  const dropped = Object.values(process.dropped).reduce((a, b) => a + b, 0);
  const card = (label, value, detail, id) =>
    h("div", { class: "card", id }, h("span", { class: "label" }, label), h("span", { class: "value" }, value), h("span", { class: "detail" }, detail));
  return [
    card("Judged samples", count(sum("judged")), `${count(comparable)} comparable · ${count(sum("samples"))} sampled`, "card-judged"),
    card("Served BR", percent(pooled("broken")), "breakage, all served", "card-br"),
    card("Served AFR", percent(pooled("not_followed")), "relevant, not followed", "card-afr"),
    card("Served RER", percent(pooled("not_robust")), "broken or not followed", "card-rer"),
    card("Queue", count(process.monitor.queue_depth), `${count(dropped)} dropped · this process`, "card-queue"),
    card("Missing verdicts", count(missing), "in this window", "card-missing"),
  ];
}

function charts(series) {
  const times = series.groups.length ? series.groups[0].points.map((p) => p.start) : [];
  const boxes = RATES.map(([key, short, long, field]) =>
    lineChart({
      title: `${short} over time`,
      empty: "no comparable verdict in this window",
      note: `(${long.split(":")[0].toLowerCase()})`,
      times,
      format: percent,
      series: series.groups.map((group) => ({
        name: groupName(group),
        color: colorOf(group),
        values: group.points.map((p) => p[key]),
        lows: group.points.map((p) => (p[`${key}_interval`] ? p[`${key}_interval`][0] : null)),
        highs: group.points.map((p) => (p[`${key}_interval`] ? p[`${key}_interval`][1] : null)),
        tips: group.points.map((p) => `${p[field]}/${p.judged - p.uncomparable} judged`),
      })),
    }),
  );
  const key = legend(series.groups.map((group) => ({ name: groupName(group), color: colorOf(group) })));
  return [key, h("div", { class: "chart-row" }, boxes)];
}

function canaryTable(process) {
  const canary = process.canary;
  if (!canary.enabled) {
    return h("p", { class: "empty-note" }, "The canary is off in this process (monitor.canary.enabled; with several workers it runs in worker 0 only).");
  }
  const origins = new Set(canary.groups.map((g) => `${g.model} · ${g.strategy}`));
  const named = (g) => (origins.size > 1 ? `${g.model} · ${g.strategy} · ${g.setting}` : g.setting);
  const columns = [
    ["accuracy_without_preferences", "Acc. w/o", "accuracy without preferences"],
    ["accuracy_with_preferences", "Acc. with", "accuracy with preferences"],
    ["breakage_rate", "BR", "breakage rate over the items right without preferences"],
    ["performance_variation", "PVR", "performance variation over the items right either way"],
  ];
  const head = h(
    "tr",
    {},
    h("th", {}, "Setting"),
    h("th", { class: "num", title: "items probed" }, "n"),
    columns.map(([, short, long]) => h("th", { class: "num", title: long }, short)),
  );
  const row = (name, g, extra = {}) =>
    h(
      "tr",
      extra,
      h("td", {}, name),
      h("td", { class: "num" }, count(g.probes)),
      columns.map(([k]) => h("td", { class: "num", title: g[`${k}_interval`] ? `95% ${interval(g[`${k}_interval`])}` : "" }, percent(g[k]))),
    );
  const rows = canary.groups.map((g) => row(named(g), g));
  if (canary.groups.length !== 1) rows.push(row("all", canary.total, { class: "total" }));
  const origin = origins.size === 1 ? `${[...origins][0]}: ` : "";
  return [
    h("table", { class: "data compact", id: "canary-table" }, h("thead", {}, head), h("tbody", {}, rows)),
    h("p", { class: "muted small" }, `${origin}BR over the items right without preferences, PVR over those right either way.`),
  ];
}

function canaryChart(series) {
  if (series.canary === null) return h("p", { class: "muted small" }, "Canary over time: the canary does not run in this process.");
  const points = series.canary;
  const chart = lineChart({
    title: "Canary over time",
    note: "(exact: gold answers; this process's runs)",
    times: points.map((p) => p.start),
    format: percent,
    width: 860,
    height: 130,
    series: CANARY_LINES.map(([key, name], index) => ({ name, color: PALETTE[(index + 4) % PALETTE.length], values: points.map((p) => p[key]) })),
  });
  return [chart, legend(CANARY_LINES.map(([, name], index) => ({ name, color: PALETTE[(index + 4) % PALETTE.length] })))];
}

function keyValues(entries, empty) {
  if (!entries.length) return h("p", { class: "muted" }, empty);
  return h("dl", { class: "kv" }, entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, count(v))]));
}

function processPanel(process, summary) {
  const m = process.monitor;
  const missing = summary.groups.reduce((sum, g) => sum + missingVerdicts(g), 0);
  const queue = [
    ["depth", m.queue_depth],
    ["capacity", m.queue_size],
    ...Object.entries(process.enqueued).map(([role, n]) => [`enqueued (${role})`, n]),
    ...Object.entries(process.dropped).map(([reason, n]) => [`dropped: ${reason}`, n]),
    ["missing verdicts (window)", missing],
    ...Object.entries(process.verdicts_missing).map(([judge, n]) => [`${judge} verdicts missing`, n]),
  ];
  const errors = process.judge_errors.map((e) => [`${e.judge}: ${e.reason}`, e.count]);
  const outcomes = process.aligner.map((a) => [`${a.strategy}: ${a.outcome}`, a.count]);
  const fallbacks = Object.entries(process.fallbacks).map(([reason, n]) => [`fallback: ${reason}`, n]);
  const agreement = (process.agreement ? process.agreement.fingerprints : []).map((row) => [
    `${row.judge} ${row.fingerprint}: κ ${row.kappa === null ? "n/a" : row.kappa.toFixed(2)} over`,
    row.labels,
  ]);
  return [
    h("h3", {}, "Queue"),
    keyValues(queue, ""),
    h("h3", { title: "Cohen's kappa of the stored verdicts against the labels recorded on samples, per judge fingerprint" }, "Judge agreement with labels"),
    keyValues(agreement, "no labels yet"),
    h("h3", {}, "Judge errors"),
    keyValues(errors, "none"),
    h("h3", {}, "Aligner outcomes"),
    keyValues([...outcomes, ...fallbacks], "no personalized requests yet"),
    h("p", { class: "muted small" }, `Process ${process.pid}: with several workers or replicas these counters are one process's (sum them in Prometheus).`),
  ];
}

export async function showRobustness(windowSeconds) {
  const query = { window_seconds: windowSeconds };
  const [summary, series, process] = await Promise.all([
    api("monitor/summary", { query }),
    api("monitor/series", { query: { ...query, buckets: 24 } }),
    api("monitor/process"),
  ]);
  const names = [...new Set([...summary.groups, ...series.groups].map(groupName))].sort();
  colors = new Map(names.map((name, index) => [name, PALETTE[index % PALETTE.length]]));
  replace(byId("cards"), cards(summary, process));
  replace(byId("rates"), ratesTable(summary.groups));
  replace(byId("charts"), charts(series));
  replace(byId("canary"), canaryTable(process));
  replace(byId("canary-chart"), canaryChart(series));
  replace(byId("process"), processPanel(process, summary));
  byId("window-note").textContent = `since ${time(summary.since, true)} · ${series.buckets} buckets of ${Math.round(series.bucket_seconds)} s`;
  paintSwatches(byId("view-robustness"));
  return process;
}
