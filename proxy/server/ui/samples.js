// The sample browser: judged samples filtered by verdict, strategy and role; one sample with
// its texts (the draft against the served answer as a word diff), the judges' scores and
// reasons, its labels, and a form to record a label.

import { api, segment } from "./api.js";
import { byId, h, message, replace, time } from "./dom.js";
import { changedShare, wordDiff } from "./diff.js";

const VERDICTS = ["consistent", "contradicts", "cannot_compare"];
let after = null;
let selected = null;

function filters() {
  return {
    verdict: byId("filter-verdict").value,
    strategy: byId("filter-strategy").value,
    role: byId("filter-role").value,
  };
}

function verdictBadge(sample) {
  const verdict = sample.verdict || "no verdict";
  return h("span", { class: `badge ${sample.verdict || "missing"}` }, verdict);
}

// `value` true reads `yes`; `good` says whether true is the good outcome.
function flag(value, yes, no, good = true) {
  if (value === null || value === undefined) return h("span", { class: "muted" }, `${yes}: undecided`);
  return h("span", { class: value === good ? "good" : "bad" }, value ? yes : no);
}

function row(sample) {
  return h(
    "tr",
    {
      class: sample.id === selected ? "selected" : "",
      dataset: { id: sample.id },
      tabindex: 0,
      onclick: () => openSample(sample.id),
      onkeydown: (event) => event.key === "Enter" && openSample(sample.id),
    },
    h("td", {}, time(sample.created_at)),
    h("td", {}, sample.strategy),
    h("td", {}, sample.role),
    h("td", {}, sample.relevance),
    h("td", {}, verdictBadge(sample)),
    h("td", { class: "num" }, sample.follow_score ?? "–"),
    h("td", { class: "num" }, sample.labels.length ? `${sample.labels.length} ✓` : ""),
  );
}

export async function listSamples(more = false) {
  const status = byId("samples-status");
  if (!more) after = null;
  const page = await api("monitor/samples", { query: { ...filters(), limit: 25, after } });
  const body = byId("samples-body");
  if (!more) body.replaceChildren();
  body.append(...page.data.map(row));
  after = page.last_id;
  byId("samples-more").hidden = !page.has_more;
  status.textContent = body.children.length ? `${body.children.length} sample(s) shown` : "No sample matches these filters.";
}

function textBlock(title, text) {
  return h("div", { class: "text-block" }, h("h4", {}, title), h("pre", {}, text ?? "–"));
}

function diffBlock(draft, answer) {
  const parts = wordDiff(draft || "", answer || "");
  const share = Math.round(changedShare(parts) * 100);
  return h(
    "div",
    { class: "text-block" },
    h("h4", {}, "Draft → served answer", h("span", { class: "muted" }, ` (word diff: ${share}% of the served text is new)`)),
    h("pre", { class: "diff", id: "sample-diff" }, parts.map((part) => (part.op === "same" ? part.text : h(part.op, {}, part.text)))),
  );
}

function judges(sample) {
  const reasons = sample.reasons || {};
  const item = (name, verdict, reason) => h("li", {}, h("strong", {}, name), " ", verdict, reason ? h("p", { class: "reason" }, reason) : null);
  return h(
    "ul",
    { class: "judges" },
    item("Relevance", sample.relevance, reasons.relevance),
    item("Consistency", verdictBadge(sample), reasons.consistency),
    item("Follow", sample.follow_score ? `${sample.follow_score} / 5` : h("span", { class: "muted" }, "not judged"), reasons.follow),
    h("li", {}, h("strong", {}, "Outcome"), " ", flag(sample.broken, "broken", "not broken", false), " · ", flag(sample.followed, "followed", "not followed"), " · ", flag(sample.robust, "robust", "not robust")),
  );
}

function labelForm(sample) {
  const scores = [1, 2, 3, 4, 5].map((score) =>
    h("label", { class: "score" }, h("input", { type: "radio", name: "label-score", value: score, required: true }), ` ${score}`),
  );
  const consistency = h("select", { id: "label-consistency", required: true }, h("option", { value: "" }, "consistency…"), VERDICTS.map((v) => h("option", { value: v }, v)));
  const status = h("span", { id: "label-status", class: "muted", role: "status" });
  const form = h(
    "form",
    { id: "label-form", class: "label-form" },
    h("h4", {}, "Record a label"),
    h("div", { class: "score-row" }, h("span", {}, "Follow score"), scores),
    h("div", {}, consistency, " ", h("button", { type: "submit", id: "label-save" }, "Save label"), " ", status),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const score = form.querySelector("input[name=label-score]:checked");
    status.textContent = "saving…";
    try {
      const label = await api(`monitor/samples/${segment(sample.id)}/label`, {
        method: "POST",
        body: { follow_score: Number(score.value), consistency: consistency.value },
      });
      await openSample(sample.id);
      byId("label-status").textContent = `Label ${label.id} saved.`;
      const listed = document.querySelector(`#samples-body tr[data-id="${CSS.escape(sample.id)}"] td:last-child`);
      if (listed) listed.textContent = `${(Number.parseInt(listed.textContent, 10) || 0) + 1} ✓`;
    } catch (error) {
      status.textContent = message(error);
    }
  });
  return form;
}

function labels(sample) {
  if (!sample.labels.length) return h("p", { class: "muted" }, "No label yet.");
  return h(
    "ul",
    { class: "labels", id: "sample-labels" },
    sample.labels.map((label) => h("li", {}, `${time(label.created_at, true)}: follow ${label.follow_score} / 5, ${label.consistency}`)),
  );
}

export async function openSample(id) {
  selected = id;
  for (const tr of byId("samples-body").children) tr.classList.toggle("selected", tr.dataset.id === id);
  const panel = byId("sample-detail");
  let sample;
  try {
    sample = await api(`monitor/samples/${segment(id)}`);
  } catch (error) {
    replace(panel, h("p", { class: "error" }, message(error)));
    return;
  }
  const texts = sample.texts;
  replace(
    panel,
    h("h2", {}, `Sample ${sample.id}`),
    h("p", { class: "muted small" }, `${time(sample.created_at, true)} · ${sample.model} · ${sample.strategy} · ${sample.role} · request ${sample.request_id}${sample.user_id ? ` · user ${sample.user_id}` : ""}`),
    texts
      ? [
          textBlock("Query", texts.query),
          h("div", { class: "text-block" }, h("h4", {}, "Preferences"), h("ul", { class: "prefs" }, texts.preferences.map((p) => h("li", {}, p)))),
          diffBlock(texts.reference, texts.answer),
        ]
      : h("p", { class: "empty-note" }, "The texts of this sample were not stored (monitor.store_samples: false)."),
    h("h4", {}, "Judges"),
    judges(sample),
    h("h4", {}, "Labels"),
    labels(sample),
    labelForm(sample),
  );
}

export function setUpSamples() {
  for (const id of ["filter-verdict", "filter-strategy", "filter-role"]) byId(id).addEventListener("change", () => listSamples().catch(showError));
  byId("samples-more").addEventListener("click", () => listSamples(true).catch(showError));
}

function showError(error) {
  byId("samples-status").textContent = message(error);
}
