"""Canary probes on the scripted fake upstream: exact accuracy, hence BR, AFR, RER and PVR."""

from __future__ import annotations

import json

import orjson

from tests.conftest import wait_for
from tests.fake_upstream import pipeline_role

ITEMS = [
    {"id": "c1", "source": "canary", "question": "Which is a fruit?", "options": ["Apple", "Brick", "Chair", "Door"], "gold": "A"},
    {"id": "c2", "source": "canary", "question": "Which is a colour?", "options": ["Red", "Run", "Rock", "Rain"], "gold": "A"},
]


def mcq_script(follow_score: int):
    """Answers the gold letter A without preferences and B with them (the naive system message)."""

    def reply(body):
        role = pipeline_role(body)
        if role == "judge_follow":
            return orjson.dumps({"reason": "r", "score": follow_score}).decode()
        if role != "chat":
            return "{}"
        with_preferences = any(m["role"] == "system" for m in body["messages"])
        return "The answer is B." if with_preferences else "Answer: A"

    return reply


def canary_proxy(start_proxy, fake_upstream, tmp_path, follow_score: int, settings: list[str]):
    dataset = tmp_path / "canary.jsonl"
    dataset.write_text("\n".join(json.dumps(item) for item in ITEMS))
    fake_upstream.scripts["mcq"] = mcq_script(follow_score)
    return start_proxy(
        personalization={"default_strategy": "naive"},
        monitor={
            "enabled": True,
            "sample_rate": 0.0,
            "canary": {
                "enabled": True,
                "interval_seconds": 3600,
                "items_per_run": 2,
                "dataset": str(dataset),
                "settings": settings,
                "model": "script:mcq",
            },
        },
    )


def test_canary_counts_exact_accuracy(start_proxy, fake_upstream, tmp_path):
    proxy = canary_proxy(start_proxy, fake_upstream, tmp_path, follow_score=2, settings=["relevant"])
    labels = {"model": "script:mcq", "strategy": "naive", "setting": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_canary_probes_total", labels) == 2)
    assert proxy.metric("perg_canary_correct_total", {**labels, "condition": "without_preferences"}) == 2
    assert proxy.metric("perg_canary_correct_total", {**labels, "condition": "with_preferences"}) == 0
    assert proxy.metric("perg_canary_broken_total", labels) == 2  # BR = 2/2
    assert proxy.metric("perg_canary_not_followed_total", labels) == 2  # score 2 < 3: AFR = 2/2
    assert proxy.metric("perg_canary_not_robust_total", labels) == 2
    assert proxy.metric("perg_canary_both_correct_total", labels) == 0
    assert proxy.metric("perg_canary_either_correct_total", labels) == 2  # PVR = 1 - 0/2 = 1
    # the canary's calls are not request traffic
    assert proxy.metric("perg_requests_total", {"route": "chat_completions", "method": "POST", "status": "200", "strategy": "naive"}) == 0


def test_irrelevant_canary_is_not_follow_judged(start_proxy, fake_upstream, tmp_path):
    proxy = canary_proxy(start_proxy, fake_upstream, tmp_path, follow_score=1, settings=["irrelevant"])
    labels = {"model": "script:mcq", "strategy": "naive", "setting": "irrelevant"}
    assert wait_for(lambda: proxy.metric("perg_canary_probes_total", labels) == 2)
    assert proxy.metric("perg_canary_not_followed_total", labels) == 0
    assert proxy.metric("perg_canary_not_robust_total", labels) == 2  # wrong with preferences: Robust = Acc
    assert fake_upstream.chat_bodies("judge_follow") == []


def test_builtin_dataset_loads_for_the_canary(start_proxy, fake_upstream):
    proxy = start_proxy(
        monitor={"enabled": True, "canary": {"enabled": True, "interval_seconds": 3600, "items_per_run": 1, "model": "echo"}}
    )
    assert wait_for(lambda: proxy.metric("perg_canary_probes_total", {"model": "echo", "strategy": "off", "setting": "relevant"}) == 1)
