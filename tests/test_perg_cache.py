"""The response cache (keys, persistence), failure descriptions, and the progress bar (the retry
policy eval shares with live traffic is tested in tests/upstream/)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from proxy.errors import CallFailed, UpstreamStatusError, describe_error
from proxy.eval.cache import CacheKey, ResponseCache, fingerprint
from proxy.eval.progress import Progress, duration

KEY = CacheKey(
    kind="answer",
    item_id="q1",
    setting="relevant",
    strategy="naive",
    model="m",
    prompt_version="mcq-v1+naive:abc",
    inputs=fingerprint({"a": 1}, ["p"]),
)


def test_entries_survive_a_reopen(tmp_path: Path) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert cache.get(KEY) is None
        cache.put(KEY, {"text": "Answer: A", "seconds": 0.5})
        assert cache.get(KEY) == {"text": "Answer: A", "seconds": 0.5}
        assert (cache.hits, cache.misses) == (1, 1)
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        assert cache.get(KEY) == {"text": "Answer: A", "seconds": 0.5}
        assert len(cache) == 1


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "follow"},
        {"item_id": "q2"},
        {"setting": "mixed"},
        {"strategy": "pref_aligner"},
        {"model": "other"},
        {"prompt_version": "mcq-v2+naive:abc"},
        {"inputs": fingerprint({"a": 2}, ["p"])},
    ],
)
def test_every_part_of_the_key_matters(tmp_path: Path, change: dict[str, str]) -> None:
    with ResponseCache(tmp_path / "c.sqlite") as cache:
        cache.put(KEY, {"text": "x"})
        assert cache.get(KEY.model_copy(update=change)) is None


def test_fingerprint_ignores_dict_order_only() -> None:
    assert fingerprint({"a": 1, "b": 2}) == fingerprint({"b": 2, "a": 1})
    assert fingerprint(["x", "y"]) != fingerprint(["y", "x"])


def test_errors_are_described_in_one_bounded_line() -> None:
    assert describe_error(UpstreamStatusError(503, b'{"error": {"message": "busy"}}', {})) == "upstream_http_503: busy"
    assert describe_error(CallFailed("unparseable", "x" * 1000)).startswith("unparseable: xxx")
    assert len(describe_error(CallFailed("unparseable", "x" * 1000))) == 300
    assert describe_error(TimeoutError()) == "TimeoutError"


def test_progress_without_a_terminal_prints_a_line_every_tenth() -> None:
    stream = io.StringIO()
    bar = Progress(20, "answers", stream=stream)
    for index in range(20):
        bar.advance(cached=index % 2)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 11  # the first answer, then every 10%
    assert lines[0].startswith("answers [#...........................] 1/20 (")
    assert lines[-1].startswith("answers [############################] 20/20 cached 10 (")
    silent = io.StringIO()
    Progress(5, "x", stream=silent, enabled=False).advance()
    assert silent.getvalue() == ""


def test_durations() -> None:
    assert [duration(s) for s in (5, 65, 3725)] == ["5s", "1m05s", "1h02m"]
