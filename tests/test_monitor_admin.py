"""The operator page's admin routes on the scripted fake upstream: series, this process's counters,
one sample, labels; and what they compute."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx2
import pytest

from proxy.perg.stats import wilson_interval
from proxy.preferences import JudgedSample, SampleTexts
from proxy.preferences.models import utcnow
from proxy.server.services import SERVICES
from tests.conftest import ADMIN_KEY, CLIENT_KEY, RunningProxy, wait_for
from tests.test_canary import canary_proxy
from tests.test_monitor import STYLE, chat, judge_script, monitored

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def store_of(proxy: RunningProxy) -> Any:
    return proxy.server.call(proxy.server.app[SERVICES].store.get())


def add(proxy: RunningProxy, **fields: Any) -> JudgedSample:
    values: dict[str, Any] = {
        "created_at": utcnow(), "request_id": "r", "model": "echo", "strategy": "pref_aligner",
        "role": "served", "relevance": "relevant", "verdict": "consistent", "broken": False, "followed": True, "robust": True,
        "follow_score": 4, "user_id": "ann",
    }  # fmt: skip
    sample = JudgedSample(**{**values, **fields})
    proxy.server.call(store_of(proxy).add_sample(sample))
    return sample


def get(proxy: RunningProxy, path: str, **params: Any) -> httpx2.Response:
    return httpx2.get(f"{proxy.url}{path}", params=params, headers=ADMIN, timeout=10)


# ------------------------------------------------------------------------------ series and rates


def test_series_buckets_counts_rates_and_wilson_intervals(start_proxy):
    proxy = monitored(start_proxy)
    # 10 buckets of 10 minutes, aligned to multiples of 10 minutes: put samples in buckets 1 and 8.
    since = datetime.fromisoformat(get(proxy, "/perg/monitor/series", window_seconds=6000, buckets=10).json()["since"])
    at = {1: since + timedelta(minutes=10, seconds=5), 8: since + timedelta(minutes=80, seconds=5)}
    for offset in (0, 1, 2):
        add(proxy, created_at=at[8] + timedelta(seconds=offset))
    add(proxy, created_at=at[8], verdict="contradicts", broken=True, robust=False)
    add(proxy, created_at=at[1], verdict="cannot_compare", broken=None, robust=None)
    add(proxy, created_at=at[8], strategy="naive", role="shadow", followed=False, robust=False)
    series = get(proxy, "/perg/monitor/series", window_seconds=6000, buckets=10).json()
    assert (series["object"], series["buckets"], series["bucket_seconds"]) == ("monitor.series", 10, 600.0)
    shift = round((datetime.fromisoformat(series["since"]) - since) / timedelta(minutes=10))  # 1 if the clock passed a boundary
    groups = {(g["strategy"], g["role"]): g["points"] for g in series["groups"]}
    assert set(groups) == {("naive", "shadow"), ("pref_aligner", "served")}
    served = groups["pref_aligner", "served"]
    expected = [0] * 10
    expected[1 - shift], expected[8 - shift] = 1, 4
    assert [p["samples"] for p in served] == expected
    full, uncomparable = served[8 - shift], served[1 - shift]
    assert (full["judged"], full["broken"], full["breakage_rate"]) == (4, 1, 0.25)
    assert full["breakage_rate_interval"] == pytest.approx(list(wilson_interval(1, 4)))
    assert uncomparable["uncomparable"] == 1 and uncomparable["breakage_rate"] is None and uncomparable["breakage_rate_interval"] is None
    assert served[0]["breakage_rate"] is None  # an empty bucket has no rate
    assert groups["naive", "shadow"][8 - shift]["alignment_failure_rate"] == 1.0
    assert series["canary"] is None  # the canary is off
    summary = get(proxy, "/perg/monitor/summary", window_seconds=6000).json()
    (group,) = [g for g in summary["groups"] if g["strategy"] == "pref_aligner"]
    assert group["breakage_rate"] == 0.25 and group["breakage_rate_interval"] == pytest.approx(list(wilson_interval(1, 4)))
    assert group["robustness_error_rate_interval"] == pytest.approx(list(wilson_interval(1, 4)))


@pytest.mark.parametrize(
    ("query", "param"),
    [({"buckets": "0"}, "buckets"), ({"buckets": "201"}, "buckets"), ({"buckets": "x"}, "buckets"), ({"window_seconds": "-1"}, "window_seconds"), ({"what": "1"}, "what"),
     ({"buckets": "\u00b2"}, "buckets"), ({"buckets": "\u0664"}, "buckets"), ({"buckets": "9" * 5000}, "buckets")],
)  # fmt: skip
def test_series_refuses_bad_parameters(proxy, query, param):
    response = get(proxy, "/perg/monitor/series", **query)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_canary_figures_and_their_history(start_proxy, fake_upstream, tmp_path):
    proxy = canary_proxy(start_proxy, fake_upstream, tmp_path, follow_score=2, settings=["relevant"])
    assert wait_for(
        lambda: proxy.metric("perg_canary_probes_total", {"model": "script:mcq", "strategy": "naive", "setting": "relevant"}) == 2
    )
    canary = get(proxy, "/perg/monitor/process").json()["canary"]
    assert canary["enabled"] is True
    (group,) = canary["groups"]
    # right without preferences, wrong with them (tests/test_canary.py): exact figures
    assert (group["setting"], group["probes"], group["accuracy_without_preferences"], group["accuracy_with_preferences"]) == (
        "relevant",
        2,
        1.0,
        0.0,
    )
    assert (group["breakage_rate"], group["alignment_failure_rate"], group["performance_variation"]) == (1.0, 1.0, 1.0)
    assert group["breakage_rate_interval"] == pytest.approx(list(wilson_interval(2, 2)))
    assert canary["total"]["probes"] == 2
    points = wait_for(
        lambda: [p for p in get(proxy, "/perg/monitor/series", window_seconds=300, buckets=5).json()["canary"] if p["probes"]]
    )
    (point,) = points
    assert (point["probes"], point["broken"], point["breakage_rate"], point["performance_variation"]) == (2, 2, 1.0, 1.0)


# ------------------------------------------------------------------------------ this process


def test_process_counters_are_this_processes_registry(start_proxy, fake_upstream):
    fake_upstream.scripts["judge"] = lambda body: "not json"
    proxy = start_proxy(
        personalization={"default_strategy": "pref_aligner", "aligner": {"model": "error-500"}},
        monitor={"enabled": True, "sample_rate": 1.0, "workers": 1, "judge": {"model": "script:judge", "max_retries": 0}},
    )
    assert chat(proxy).status_code == 200
    assert wait_for(lambda: get(proxy, "/perg/monitor/process").json()["judge_errors"])
    figures = get(proxy, "/perg/monitor/process").json()
    assert figures["object"] == "monitor.process" and figures["scope"] == "process" and isinstance(figures["pid"], int)
    assert figures["monitor"]["enabled"] is True and figures["monitor"]["queue_size"] == 1000
    assert figures["enqueued"] == {"served": 1}
    assert {"strategy": "pref_aligner", "outcome": "fallback", "count": 1} in figures["aligner"]
    assert figures["fallbacks"] == {"upstream_http_500": 1}
    # every judge failed: relevance, consistency and follow (relevance unknown: not asked) missing
    assert figures["verdicts_missing"] == {
        judge: int(proxy.metric("perg_monitor_verdicts_missing_total", {"judge": judge})) for judge in figures["verdicts_missing"]
    }
    assert figures["verdicts_missing"]["consistency"] == 1
    for row in figures["judge_errors"]:
        value = proxy.metric("perg_monitor_judge_errors_total", {"judge": row["judge"], "reason": row["reason"]})
        assert row["count"] == value > 0
    assert figures["canary"] == {"enabled": False, "groups": [], "total": figures["canary"]["total"]}


# ------------------------------------------------------------------------------ samples and labels


def test_a_label_is_stored_and_returned_with_its_sample(start_proxy, fake_upstream):
    fake_upstream.scripts["judge"] = judge_script("contradicts", 2)
    proxy = monitored(start_proxy, judge={"model": "script:judge"})
    chat(proxy, user="alice")
    (sample,) = wait_for(lambda: get(proxy, "/perg/monitor/samples").json()["data"])
    assert sample["labels"] == []
    url = f"{proxy.url}/perg/monitor/samples/{sample['id']}/label"
    response = httpx2.post(url, json={"follow_score": 4, "consistency": "consistent"}, headers=ADMIN, timeout=10)
    assert response.status_code == 200 and response.headers["cache-control"] == "no-store"
    label = response.json()
    assert label["object"] == "monitor.sample.label" and label["sample_id"] == sample["id"] and label["id"].startswith("lbl_")
    one = get(proxy, f"/perg/monitor/samples/{sample['id']}").json()
    assert one["object"] == "monitor.sample" and one["texts"]["query"] == "What is the capital of France?"
    assert [(x["follow_score"], x["consistency"]) for x in one["labels"]] == [(4, "consistent")]
    assert get(proxy, "/perg/monitor/samples", verdict="contradicts").json()["data"][0]["labels"] == one["labels"]
    # Deleting the user deletes the sample and its label.
    httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": [STYLE]}, headers=ADMIN, timeout=10)
    assert httpx2.delete(f"{proxy.url}/perg/profiles/alice", headers=ADMIN, timeout=10).status_code == 200
    gone = get(proxy, f"/perg/monitor/samples/{sample['id']}")
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "sample_not_found"
    assert proxy.server.call(store_of(proxy).labelled_samples()) == []


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"follow_score": 0, "consistency": "consistent"}, "follow_score"),
        ({"follow_score": 6, "consistency": "consistent"}, "follow_score"),
        ({"follow_score": "3", "consistency": "consistent"}, "follow_score"),
        ({"follow_score": True, "consistency": "consistent"}, "follow_score"),
        ({"follow_score": 3.0, "consistency": "consistent"}, "follow_score"),
        ({"consistency": "consistent"}, "follow_score"),
        ({"follow_score": 3, "consistency": "maybe"}, "consistency"),
        ({"follow_score": 3}, "consistency"),
        ({"follow_score": 3, "consistency": "consistent", "note": "x"}, "note"),
    ],
)
def test_bad_labels_are_refused_and_nothing_is_stored(start_proxy, body, param):
    proxy = monitored(start_proxy)
    sample = add(proxy)
    response = httpx2.post(f"{proxy.url}/perg/monitor/samples/{sample.id}/label", json=body, headers=ADMIN, timeout=10)
    assert response.status_code == 400 and response.json()["error"]["param"] == param
    assert get(proxy, f"/perg/monitor/samples/{sample.id}").json()["labels"] == []


def test_labels_need_an_existing_sample_and_the_admin_key(proxy):
    body = {"follow_score": 3, "consistency": "consistent"}
    missing = httpx2.post(f"{proxy.url}/perg/monitor/samples/smp_missing/label", json=body, headers=ADMIN, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "sample_not_found"
    client = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert httpx2.post(f"{proxy.url}/perg/monitor/samples/smp_missing/label", json=body, headers=client, timeout=10).status_code == 403
    assert httpx2.get(f"{proxy.url}/perg/monitor/samples/smp_missing", timeout=10).status_code == 401
    assert get(proxy, "/perg/monitor/samples/" + "x" * 300).status_code == 400


def test_stored_texts_come_back_for_the_word_diff(start_proxy):
    proxy = monitored(start_proxy)
    texts = SampleTexts(query="<b>q</b>", preferences=("p",), reference="The answer is B.", answer="Arr, the answer be B.")
    sample = add(proxy, texts=texts)
    assert get(proxy, f"/perg/monitor/samples/{sample.id}").json()["texts"] == texts.model_dump(mode="json")
