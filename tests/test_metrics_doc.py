"""docs/metrics.md is generated from proxy/metrics.py and must be current."""

from __future__ import annotations

from pathlib import Path

from proxy.metrics import Metrics
from proxy.metrics_doc import render

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "metrics.md"


def exposed_names(metrics: Metrics) -> set[str]:
    """Every metric family the registry exposes, counters with `_total` as scraped."""
    names = set()
    for family in metrics.registry.collect():
        names.add(family.name + "_total" if family.type == "counter" else family.name)
    return names


def test_metrics_doc_is_current():
    assert DOC.read_text(encoding="utf-8") == render(), "docs/metrics.md is stale: python -m proxy.metrics_doc > docs/metrics.md"


def test_every_registered_metric_is_declared_and_documented():
    metrics = Metrics()
    declared = {item.name for item in metrics.declared}
    assert declared == exposed_names(metrics), "a metric was registered without Metrics._counter/_histogram/_gauge"
    text = DOC.read_text(encoding="utf-8")
    for name in declared:
        assert f"| `{name}` |" in text, name


def test_genai_mapping_uses_current_convention_names():
    text = render()
    for current in ("gen_ai.client.inference.duration", "gen_ai.client.inference.usage.input_tokens"):
        assert current in text
    mapped = {item.name: item.semconv for item in Metrics().declared}
    assert mapped["perg_upstream_duration_seconds"] == "gen_ai.client.inference.duration"
    assert "gen_ai.client.token.usage" not in mapped["perg_tokens_total"]
