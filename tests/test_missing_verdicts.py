"""One rule for a missing follow verdict, in `eval`, the online monitor and the canary: a relevant
case whose follow judge fails is NOT followed (the paper's rule), and is counted on its own
(`n_follow_missing` in eval, `perg_monitor_verdicts_missing_total{judge}` online), so a failing
judge never reads as a good model. A missing consistency verdict keeps a sample out of the ratios.

The same scenario everywhere: the model answers the gold letter with and without preferences
(nothing broken), the preference is relevant, and the follow judge never returns a verdict."""

from __future__ import annotations

import json
from typing import Any

import orjson

from proxy.eval.benchmark import run_benchmark
from tests.conftest import wait_for
from tests.fake_upstream import pipeline_role
from tests.test_monitor import SERVED, chat, monitored
from tests.test_perg_runner import options, overall

ITEMS = [
    {"id": "m1", "source": "missing", "question": "Which is a fruit?", "options": ["Apple", "Brick", "Chair", "Door"], "gold": "A"},
    {"id": "m2", "source": "missing", "question": "Which is a colour?", "options": ["Red", "Run", "Rock", "Rain"], "gold": "A"},
]


def no_follow_verdict(consistency: str = "consistent") -> Any:
    """Answers A with and without preferences; a relevant preference; the follow judge gives no verdict."""

    def reply(body: dict[str, Any]) -> str:
        role = pipeline_role(body)
        if role == "judge_follow":
            return "I would rather not say."
        if role == "judge_consistency":
            return consistency if " " in consistency else orjson.dumps({"reason": "r", "verdict": consistency}).decode()
        if role == "judge_relevance":
            return orjson.dumps({"reason": "r", "relevant": True}).decode()
        return "Answer: A"

    return reply


Rates = tuple[float, float, float, float]
"""Of the relevant cases answered right without preferences: broken, not followed, not robust,
and follow verdict missing, as shares."""


def shares(proxy, family: str, labels: dict[str, str], total: float, judge: str) -> Rates:
    """A proxy's `perg_{family}_*` counts and its missing verdicts of `judge`, as shares of `total`."""
    broken, not_followed, not_robust = (
        proxy.metric(f"perg_{family}_{name}_total", labels) for name in ("broken", "not_followed", "not_robust")
    )
    missing = proxy.metric("perg_monitor_verdicts_missing_total", {"judge": judge})
    return broken / total, not_followed / total, not_robust / total, missing / total


async def eval_rates(tmp_path, fake_upstream) -> Rates:
    fake_upstream.scripts["mcq"] = no_follow_verdict()
    (tmp_path / "eval").mkdir()
    run = await run_benchmark(options(tmp_path / "eval", fake_upstream, settings=("relevant",), strategies=("naive",)), progress=False)
    cell = overall(run)[("naive", "relevant")]
    assert cell.n_q_star == 2  # the runner's items q1, q2 (gold A); q3 is gold B
    rates = (cell.breakage_rate.value, cell.alignment_failure_rate.value, cell.robustness_error_rate.value)
    return (*rates, cell.n_follow_missing / cell.n_q_star)


def monitor_rates(start_proxy, fake_upstream) -> Rates:
    fake_upstream.scripts["judge"] = no_follow_verdict()
    proxy = monitored(start_proxy, judge={"model": "script:judge", "max_retries": 0})
    assert chat(proxy).status_code == 200
    assert wait_for(lambda: proxy.metric("perg_monitor_judged_total", SERVED) == 1)
    assert proxy.metric("perg_monitor_verdicts_missing_total", {"judge": "consistency"}) == 0
    return shares(proxy, "monitor", SERVED, proxy.metric("perg_monitor_judged_total", SERVED), judge="follow")


def canary_rates(start_proxy, fake_upstream, tmp_path) -> Rates:
    dataset = tmp_path / "canary.jsonl"
    dataset.write_text("\n".join(json.dumps(item) for item in ITEMS))
    fake_upstream.scripts["mcq"] = no_follow_verdict()
    proxy = start_proxy(
        personalization={"default_strategy": "naive"},
        monitor={
            "enabled": True, "sample_rate": 0.0, "judge": {"max_retries": 0},
            "canary": {"enabled": True, "interval_seconds": 3600, "items_per_run": 2, "dataset": str(dataset),
                       "settings": ["relevant"], "model": "script:mcq"},
        },
    )  # fmt: skip
    labels = {"model": "script:mcq", "strategy": "naive", "setting": "relevant"}
    assert wait_for(lambda: proxy.metric("perg_canary_probes_total", labels) == 2)
    return shares(proxy, "canary", labels, proxy.metric("perg_canary_probes_total", labels), judge="canary_follow")


async def test_eval_the_monitor_and_the_canary_count_a_missing_follow_verdict_the_same_way(start_proxy, fake_upstream, tmp_path):
    """The one scenario through all three: nothing broken, yet nothing followed (so not robust), and
    every case counted as missing its follow verdict."""
    everywhere = {
        "eval": await eval_rates(tmp_path, fake_upstream),
        "monitor": monitor_rates(start_proxy, fake_upstream),
        "canary": canary_rates(start_proxy, fake_upstream, tmp_path),
    }
    assert everywhere == dict.fromkeys(everywhere, (0.0, 1.0, 1.0, 1.0))


def test_the_monitor_leaves_a_sample_without_a_consistency_verdict_out_of_the_ratios(start_proxy, fake_upstream):
    fake_upstream.scripts["judge"] = no_follow_verdict(consistency="no verdict here")
    proxy = monitored(start_proxy, judge={"model": "script:judge", "max_retries": 0})
    assert chat(proxy).status_code == 200
    assert wait_for(lambda: proxy.metric("perg_monitor_verdicts_missing_total", {"judge": "consistency"}) == 1)
    assert wait_for(lambda: proxy.metric("perg_monitor_verdicts_missing_total", {"judge": "follow"}) == 1)
    for name in ("judged", "broken", "not_followed", "not_robust"):
        assert proxy.metric(f"perg_monitor_{name}_total", SERVED) == 0, name
