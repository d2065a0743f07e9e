"""The report writer: markdown with the tables, parseable JSON, real PNG charts (or a note without them)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from proxy.eval.calibration import calibrate, load_judge_labels
from proxy.eval.report import NO_CHARTS, render_calibration, write_report
from proxy.eval.summary import Summary, summarize
from proxy.perg.rates import Record

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _summary() -> Summary:
    records = []
    for strategy, broken in (("naive", {1, 2}), ("pref_aligner", {1})):
        for setting in ("relevant", "irrelevant"):
            for i in range(8):
                records.append(
                    Record(
                        item_id=f"q{i}",
                        strategy=strategy,
                        setting=setting,
                        relevant=setting == "relevant",
                        category="science" if i < 4 else "history",
                        source="perg-builtin",
                        correct_nopref=i < 6,
                        correct_pref=i < 6 and i not in broken,
                        followed=i % 3 != 0 if setting == "relevant" else None,
                        follow_score=(2 if i % 3 == 0 else 4) if setting == "relevant" else None,
                    )
                )
    return summarize(records, resamples=100, seed=2)


def test_report_files(tmp_path: Path) -> None:
    files = write_report(_summary(), tmp_path / "out", title="Example run", meta={"model": "fake-model"})
    assert files.charts_note is None
    assert [chart.name for chart in files.charts] == [
        "breakage_rate.png",
        "alignment_failure_rate.png",
        "robustness_error_rate.png",
    ]
    for chart in files.charts:
        assert chart.read_bytes().startswith(PNG_MAGIC)
        assert chart.stat().st_size > 5000

    markdown = files.markdown.read_text()
    assert markdown.startswith("# Example run\n")
    assert "- **model**: fake-model" in markdown
    assert "| strategy | setting | n | Q* | acc no pref | acc pref | BR | AFR | RER | PVR |" in markdown
    # naive, relevant: Q* = q0..q5 (6), broken q1, q2 → BR = 2/6 = 33.3%; followed: not q0, q3 → AFR = 2/6
    naive_row = next(line for line in markdown.splitlines() if line.startswith("| naive | relevant | 8 | 6 |"))
    assert "| 33.3% [" in naive_row
    assert "## Paired tests" in markdown and "| relevant | naive | pref_aligner | 8 |" in markdown
    assert "## By category" in markdown and "| naive | relevant | history |" in markdown
    assert "![Breakage rate (BR)](breakage_rate.png)" in markdown

    document = json.loads(files.json_path.read_text())
    assert document["title"] == "Example run"
    assert document["charts"] == [chart.name for chart in files.charts]
    overall = [g for g in document["groups"] if g["dimension"] == "all"]
    assert len(overall) == 4
    naive_relevant = next(g for g in overall if (g["strategy"], g["setting"]) == ("naive", "relevant"))
    assert naive_relevant["breakage_rate"]["value"] == pytest.approx(1 / 3)
    # score 2 for q0, q3, q6; score 4 for the other five
    assert naive_relevant["follow_scores"] == {"1": 0, "2": 3, "3": 0, "4": 5, "5": 0}
    assert document["resamples"] == 100 and len(document["paired"]) == 2


def test_report_without_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    files = write_report(_summary(), tmp_path)
    assert files.charts == ()
    assert files.charts_note == NO_CHARTS
    assert NO_CHARTS in files.markdown.read_text()
    assert json.loads(files.json_path.read_text())["charts"] == []
    assert not list(tmp_path.glob("*.png"))


def test_undefined_rates_render_as_na(tmp_path: Path) -> None:
    records = [Record(item_id="q", correct_nopref=False, correct_pref=False, extracted_nopref=False, extracted_pref=False)]
    files = write_report(summarize(records, resamples=10), tmp_path)
    row = next(line for line in files.markdown.read_text().splitlines() if line.startswith("| naive | relevant |"))
    assert row.count("n/a") == 4  # BR, AFR, RER and BR over readable answers undefined with an empty Q*
    assert json.loads(files.json_path.read_text())["groups"][0]["breakage_rate"]["value"] is None
    assert all(chart.read_bytes().startswith(PNG_MAGIC) for chart in files.charts)


def test_calibration_markdown() -> None:
    labels = load_judge_labels()
    follow = [min(5, label.follow_score + 1) for label in labels]
    consistency = [label.consistency for label in labels]
    consistency[0] = None
    calibration = calibrate(labels, follow, consistency, resamples=200)
    text = render_calibration(calibration)
    assert f"Follow judge: {len(labels)} judged, 0 failed." in text
    assert f"Consistency judge: {len(labels) - 1} judged, 1 failed. Accuracy 100.0%" in text
    assert "| score ≥ 3 |" in text
    # the shipped labels are reference labels written for this project, and the report says so
    assert "reference labels written for this project" in text and "human" not in text.split("not labels collected from")[0]
    assert "| reference \\ judge | consistent | contradicts | cannot_compare |" in text
    interval = calibration.follow.kappa_interval
    assert interval is not None and interval.low <= calibration.follow.kappa <= interval.high  # type: ignore[operator]
    assert f"κ {calibration.follow.kappa:.3f} [{interval.low:.3f}, {interval.high:.3f}]" in text
    own = render_calibration(calibration, labels="your labels in mine.jsonl", reference=False)
    assert "reference labels" not in own and "| label \\ judge |" in own and "Labels: your labels in mine.jsonl." in own
