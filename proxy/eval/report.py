"""The benchmark report: `report.md`, `report.json` and PNG charts in an output folder.

Charts use matplotlib (the `eval` extra) through `Figure` and the Agg canvas, never pyplot's global
state. Without matplotlib, the markdown and JSON are still written and say how to get the charts.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from ..perg.rates import THRESHOLDS, Estimate, GroupMetrics
from .calibration import Calibration
from .summary import Summary

CHART_METRICS = (
    ("breakage_rate", "Breakage rate (BR)"),
    ("alignment_failure_rate", "Alignment failure rate (AFR)"),
    ("robustness_error_rate", "Robustness error rate (RER)"),
)
PAIRED_NOTE = "Exact McNemar test on accuracy with preferences, items paired across strategies."
FOLLOW_NOTE = 'Counts of judge scores 1–5, and AFR if "followed" meant a score of at least t.'
NO_CHARTS = "Charts need the `eval` extra: `pip install 'perg-proxy[eval]'` (matplotlib)."


class ReportFiles(BaseModel):
    """What `write_report` wrote; `charts_note` says why charts are missing, if they are."""

    model_config = ConfigDict(frozen=True)

    markdown: Path
    json_path: Path
    charts: tuple[Path, ...]
    charts_note: str | None = None


def write_report(
    summary: Summary, out_dir: str | Path, *, title: str = "PERG benchmark", meta: Mapping[str, Any] | None = None
) -> ReportFiles:
    """Write the report files into `out_dir` (created if needed) and say which were written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = dict(meta or {})
    try:
        charts, note = tuple(write_charts(summary, out)), None
    except ImportError:
        charts, note = (), NO_CHARTS
    markdown = out / "report.md"
    markdown.write_text(render_markdown(summary, title=title, meta=meta, charts=charts, note=note), encoding="utf-8")
    document = {"title": title, "meta": meta, "charts": [c.name for c in charts], **summary.model_dump(mode="json")}
    json_path = out / "report.json"
    json_path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return ReportFiles(markdown=markdown, json_path=json_path, charts=charts, charts_note=note)


def percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def estimate_cell(estimate: Estimate) -> str:
    """`12.5% [5.0, 21.0]`: the rate and its interval in percent; `n/a` when undefined."""
    if estimate.value is None:
        return "n/a"
    if estimate.low is None or estimate.high is None:
        return percent(estimate.value)
    return f"{percent(estimate.value)} [{100 * estimate.low:.1f}, {100 * estimate.high:.1f}]"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def render_markdown(
    summary: Summary,
    *,
    title: str,
    meta: Mapping[str, Any],
    charts: Sequence[Path] = (),
    note: str | None = None,
) -> str:
    lines = _intro(summary, title, meta)
    lines += ["", "## Overall", "", *_overall_table(summary.overall())]
    lines += ["", "## Paired tests", "", PAIRED_NOTE, "", *_paired_table(summary)]
    lines += ["", "## Follow scores", "", FOLLOW_NOTE, "", *_follow_table(summary.overall())]
    for dimension, heading in (("category", "By category"), ("preference_category", "By preference category"), ("source", "By source")):
        groups = [g for g in summary.groups if g.dimension == dimension]
        if groups:
            lines += ["", f"## {heading}", "", *_group_table(groups)]
    lines += ["", "## Charts", ""]
    lines += [f"![{name}]({chart.name})" for chart, (_, name) in zip(charts, CHART_METRICS, strict=False)]
    if note:
        lines.append(note)
    return "\n".join(lines) + "\n"


def _intro(summary: Summary, title: str, meta: Mapping[str, Any]) -> list[str]:
    level = f"{100 * summary.level:g}%"
    return [
        f"# {title}",
        "",
        *(f"- **{key}**: {value}" for key, value in meta.items()),
        f"- **intervals**: {level} percentile bootstrap, {summary.resamples} resamples, seed {summary.seed}",
        "",
        "Rates are over Q*, the cases answered correctly without preferences (PVR over all cases). "
        "BR: broken by the preferences; AFR: preference not followed; RER: not robust "
        "(wrong, or relevant preference not followed). Brackets: the interval, in percent. "
        "n/a: undefined (empty Q* or no relevant case). Unreadable answers count as wrong (the paper's rule); "
        "BR read is BR over the Q* cases whose answer with preferences could be read, beside it. "
        "A relevant case without a follow verdict (the judge failed) is not followed (the paper's rule) "
        "and is counted in `verdict missing`.",
    ]


def _overall_table(groups: Sequence[GroupMetrics]) -> list[str]:
    header = ["strategy", "setting", "n", "Q*", "acc no pref", "acc pref", "BR", "AFR", "RER", "PVR"]
    header += ["BR read", "unreadable no pref / pref", "verdict missing"]
    rows = [
        [
            g.strategy,
            g.setting,
            str(g.n_items),
            str(g.n_q_star),
            percent(g.accuracy_nopref),
            percent(g.accuracy_pref),
            *_rate_cells(g),
            f"{percent(g.breakage_rate_readable)} (of {g.n_q_star_readable})",
            f"{percent(g.unextractable_nopref)} / {percent(g.unextractable_pref)}",
            str(g.n_follow_missing),
        ]
        for g in groups
    ]
    return table(header, rows)


def _rate_cells(group: GroupMetrics) -> list[str]:
    estimates = (
        group.breakage_rate,
        group.alignment_failure_rate,
        group.robustness_error_rate,
        group.performance_variation,
    )
    return [estimate_cell(e) for e in estimates]


def _paired_table(summary: Summary) -> list[str]:
    if not summary.paired:
        return ["Only one strategy per setting: nothing to pair."]
    header = ["setting", "A", "B", "pairs", "acc A", "acc B", "only A right", "only B right", "p"]
    rows = [
        [
            t.setting,
            t.strategy_a,
            t.strategy_b,
            str(t.n_pairs),
            percent(t.accuracy_a),
            percent(t.accuracy_b),
            str(t.only_a_correct),
            str(t.only_b_correct),
            f"{t.p_value:.4g}",
        ]
        for t in summary.paired
    ]
    return table(header, rows)


def _follow_table(groups: Sequence[GroupMetrics]) -> list[str]:
    header = ["strategy", "setting", *(f"score {s}" for s in THRESHOLDS), *(f"AFR t={t}" for t in THRESHOLDS)]
    rows = [
        [g.strategy, g.setting]
        + [str(g.follow_scores.get(s, 0)) for s in THRESHOLDS]
        + [percent(g.afr_by_threshold.get(t)) for t in THRESHOLDS]
        for g in groups
    ]
    return table(header, rows)


def _group_table(groups: Sequence[GroupMetrics]) -> list[str]:
    header = ["strategy", "setting", "group", "n", "Q*", "BR", "AFR", "RER", "PVR"]
    rows = [[g.strategy, g.setting, g.group or "(none)", str(g.n_items), str(g.n_q_star), *_rate_cells(g)] for g in groups]
    return table(header, rows)


def write_charts(summary: Summary, out: Path) -> list[Path]:
    """One PNG per rate: bars per setting and strategy with the interval as error bars.
    Raises ImportError when matplotlib is not installed."""
    import matplotlib  # noqa: F401  (fails first and clearly when the extra is missing)
    from matplotlib.figure import Figure

    groups = summary.overall()
    settings = list(dict.fromkeys(g.setting for g in groups))
    strategies = list(dict.fromkeys(g.strategy for g in groups))
    paths = []
    for field, name in CHART_METRICS:
        figure = Figure(figsize=(6.4, 4.0), layout="constrained")
        _draw_bars(figure.subplots(), groups, settings, strategies, field)
        figure.axes[0].set_title(name)
        path = out / f"{field}.png"
        figure.savefig(path, format="png", dpi=100)
        paths.append(path)
    return paths


def _draw_bars(axes: Any, groups: Sequence[GroupMetrics], settings: list[str], strategies: list[str], field: str) -> None:
    width = 0.8 / max(len(strategies), 1)
    for n, strategy in enumerate(strategies):
        xs, heights, below, above = [], [], [], []
        for g in groups:
            estimate: Estimate = getattr(g, field)
            if g.strategy != strategy or estimate.value is None:
                continue
            xs.append(settings.index(g.setting) - 0.4 + width * (n + 0.5))
            heights.append(estimate.value)
            below.append(max(0.0, estimate.value - (estimate.low if estimate.low is not None else estimate.value)))
            above.append(max(0.0, (estimate.high if estimate.high is not None else estimate.value) - estimate.value))
        axes.bar(xs, heights, width, yerr=[below, above], capsize=4, label=strategy)
    axes.set_xticks(range(len(settings)), settings)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("rate over Q*")
    if strategies:
        axes.legend()


REFERENCE_NOTE = (
    "These are reference labels written for this project by its authors, not labels collected from "
    "human annotators: agreement with them says how well the judge matches the project's own reading. "
    "Pass `--labels FILE` to calibrate on your own human labels."
)


def render_calibration(calibration: Calibration, *, title: str = "Judge calibration", labels: str = "", reference: bool = True) -> str:
    """Markdown for `eval judge`: κ with its bootstrap interval, accuracy per threshold, confusion matrices."""
    follow, consistency = calibration.follow, calibration.consistency
    who = "reference" if reference else "label"
    lines = [f"# {title}", ""]
    if labels:
        lines += [f"Labels: {labels}.", ""]
    if reference:
        lines += [REFERENCE_NOTE, ""]
    lines += [
        f"Follow judge: {follow.n} judged, {follow.n_failed} failed. Exact agreement {percent(follow.accuracy)}; "
        f"κ {_kappa(follow.kappa, follow.kappa_interval)}, linear-weighted κ {_kappa(follow.kappa_linear, follow.kappa_linear_interval)}, "
        f"quadratic-weighted κ {_kappa(follow.kappa_quadratic, follow.kappa_quadratic_interval)} (95% bootstrap intervals).",
        "",
        *table(
            ["threshold", "accuracy", "κ [95% interval]"],
            [[f"score ≥ {t}", percent(a.accuracy), _kappa(a.kappa, a.kappa_interval)] for t, a in follow.thresholds.items()],
        ),
        "",
        f"Follow scores (rows: {who}, columns: judge):",
        "",
        *table(
            [f"{who} \\ judge", *follow.labels],
            [[h, *map(str, row)] for h, row in zip(follow.labels, follow.confusion, strict=True)],
        ),
        "",
        f"Consistency judge: {consistency.n} judged, {consistency.n_failed} failed. "
        f"Accuracy {percent(consistency.accuracy)}; κ {_kappa(consistency.kappa, consistency.kappa_interval)}.",
        "",
        *table(
            [f"{who} \\ judge", *consistency.labels],
            [[h, *map(str, row)] for h, row in zip(consistency.labels, consistency.confusion, strict=True)],
        ),
    ]
    return "\n".join(lines) + "\n"


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _kappa(value: float | None, interval: Any) -> str:
    if value is None or interval is None:
        return _number(value)
    return f"{value:.3f} [{interval.low:.3f}, {interval.high:.3f}]"
