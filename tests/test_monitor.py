"""The online monitor on the scripted fake upstream as judge: sampling, exact verdicts, judge
failures and retries, shadow runs, the queue (overflow, drain), the sample store and drill-down."""

from __future__ import annotations

import asyncio
import uuid

import httpx2
import orjson
import pytest

from proxy.config import MonitorSettings
from proxy.monitor.sampler import Sampler, fraction
from proxy.server.services import SERVICES
from tests.conftest import ADMIN_KEY, CLIENT_KEY, wait_for
from tests.fake_upstream import pipeline_role

STYLE = "Answer in the style of a pirate."
UNRELATED = "I have a dog named Max."
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
SERVED = {"model": "echo", "strategy": "pref_aligner", "role": "served", "relevance": "relevant"}


def monitored(start_proxy, strategy="pref_aligner", **monitor):
    settings = {"enabled": True, "sample_rate": 1.0, "workers": 1, "store_samples": True, **monitor}
    return start_proxy(personalization={"default_strategy": strategy}, monitor=settings)


def chat(proxy, prefs=(STYLE,), stream=False, model="echo", user=None) -> httpx2.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "What is the capital of France?"}], "stream": stream}
    body["personalization"] = {"preferences": list(prefs), **({"user_id": user} if user else {})}
    return httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=30)


def judged(proxy, labels=SERVED) -> float:
    return proxy.metric("perg_monitor_judged_total", labels)


def judge_script(consistency="consistent", score=4, relevant=True):
    def reply(body):
        role = pipeline_role(body)
        if role == "judge_consistency":
            return (
                consistency
                if consistency.startswith("{") or " " in consistency
                else orjson.dumps({"reason": "r", "verdict": consistency}).decode()
            )
        if role == "judge_follow":
            return score if isinstance(score, str) else orjson.dumps({"reason": "r", "score": score}).decode()
        return orjson.dumps({"reason": "r", "relevant": relevant}).decode()

    return reply


def test_sampling_is_deterministic_and_nested():
    ids = [uuid.uuid4().hex for _ in range(4000)]
    small = {i for i in ids if fraction(i, b"secret") < 0.05}
    large = {i for i in ids if fraction(i, b"secret") < 0.20}
    assert small <= large
    assert 0.03 < len(small) / len(ids) < 0.07 and 0.17 < len(large) / len(ids) < 0.23
    assert fraction("abc", b"secret") == fraction("abc", b"secret") and 0 <= fraction("abc", b"secret") < 1


def test_the_client_cannot_choose_to_be_sampled():
    """An id that sha256 puts under 1% (what a client could search for offline) is sampled at the
    rate like any other once the decision is keyed by the server's secret; replicas sharing the
    secret agree, and a process without one draws its own."""
    import hashlib

    chosen = [i for i in (f"id-{n}" for n in range(20000)) if int(hashlib.sha256(i.encode()).hexdigest()[:16], 16) / 2**64 < 0.01]
    assert len(chosen) > 100
    settings = MonitorSettings(enabled=True, sample_rate=0.01, sampling_secret="shared-secret")
    one, two = Sampler(settings), Sampler(settings)
    sampled = [i for i in chosen if one.decide(i, "m", "naive", True)[0]]
    assert len(sampled) < 0.1 * len(chosen)  # about 1%, not 100%
    assert all(one.decide(i, "m", "naive", True) == two.decide(i, "m", "naive", True) for i in chosen)
    unkeyed = Sampler(MonitorSettings(enabled=True, sample_rate=0.5))
    other = Sampler(MonitorSettings(enabled=True, sample_rate=0.5))
    assert [unkeyed.decide(i, "m", "naive", True) for i in chosen] != [other.decide(i, "m", "naive", True) for i in chosen]


def test_sampler_filters():
    sampler = Sampler(
        MonitorSettings(enabled=True, sample_rate=1.0, shadow_rate=0.0, filters={"models": ["gpt-*"], "strategies": ["naive"]})
    )
    assert sampler.decide("r", "gpt-4o", "naive", True) == (True, False)
    assert sampler.decide("r", "llama", "naive", True) == (False, False)
    assert sampler.decide("r", "gpt-4o", "pref_aligner", True) == (False, False)
    assert sampler.decide("r", "gpt-4o", "naive", False) == (False, False)  # has preferences
    assert Sampler(MonitorSettings(enabled=False, sample_rate=1.0)).decide("r", "m", "naive", True) == (False, False)


@pytest.mark.parametrize(
    ("consistency", "score", "expected"),
    [
        ("consistent", 4, {"judged": 1, "broken": 0, "not_followed": 0, "not_robust": 0, "uncomparable": 0}),
        ("contradicts", 4, {"judged": 1, "broken": 1, "not_followed": 0, "not_robust": 1, "uncomparable": 0}),
        ("consistent", 2, {"judged": 1, "broken": 0, "not_followed": 1, "not_robust": 1, "uncomparable": 0}),
        ("cannot_compare", 5, {"judged": 0, "broken": 0, "not_followed": 0, "not_robust": 0, "uncomparable": 1}),
    ],
)
def test_exact_verdicts_become_counters(start_proxy, fake_upstream, consistency, score, expected):
    fake_upstream.scripts["judge"] = judge_script(consistency, score)
    proxy = monitored(start_proxy, judge={"model": "script:judge"})
    assert chat(proxy).status_code == 200
    metric = "uncomparable" if expected["uncomparable"] else "judged"
    assert wait_for(lambda: proxy.metric(f"perg_monitor_{metric}_total", SERVED) == 1)
    for name, value in expected.items():
        assert proxy.metric(f"perg_monitor_{name}_total", SERVED) == value, name
    assert proxy.metric("perg_monitor_follow_score_count", {k: SERVED[k] for k in ("model", "strategy", "role")}) == 1
    assert (
        proxy.metric(
            "perg_monitor_follow_score_bucket", {"model": "echo", "strategy": "pref_aligner", "role": "served", "le": str(float(score))}
        )
        == 1
    )


def test_the_judges_see_the_draft_as_reference_and_the_served_answer(start_proxy, fake_upstream):
    proxy = monitored(start_proxy)
    chat(proxy)
    assert wait_for(lambda: judged(proxy) == 1)
    (consistency,) = fake_upstream.chat_bodies("judge_consistency")
    prompt = consistency["messages"][1]["content"]
    assert "### Reference answer\nWhat is the capital of France?" in prompt  # stage 1's draft (echo)
    assert "### Personalized answer\nPersonalized: What is the capital of France?" in prompt
    (follow,) = fake_upstream.chat_bodies("judge_follow")
    assert f"### Preference\n- {STYLE}" in follow["messages"][1]["content"]
    assert consistency["response_format"]["type"] == "json_object" and "schema" in consistency["response_format"]  # the default style
    assert consistency["temperature"] == 0


def test_irrelevant_preferences_are_not_follow_judged(start_proxy, fake_upstream):
    proxy = monitored(start_proxy)
    chat(proxy, prefs=[UNRELATED])
    labels = {**SERVED, "relevance": "irrelevant"}
    assert wait_for(lambda: judged(proxy, labels) == 1)
    assert fake_upstream.chat_bodies("judge_follow") == []
    assert proxy.metric("perg_monitor_not_followed_total", labels) == 0


@pytest.mark.parametrize(
    ("reply", "reason"),
    [("not json at all", "unparseable"), ('{"reason": "r", "verdict": "maybe"}', "invalid_verdict"), ('{"score": 9}', "invalid_verdict")],
)
def test_malformed_judge_replies_are_counted_failures_never_scores(start_proxy, fake_upstream, reply, reason):
    fake_upstream.scripts["judge"] = judge_script(consistency=reply, score=reply)
    proxy = monitored(start_proxy, judge={"model": "script:judge", "max_retries": 0})
    chat(proxy)
    assert wait_for(lambda: proxy.metric("perg_monitor_judge_errors_total", {"judge": "consistency", "reason": reason}) == 1)
    assert wait_for(lambda: proxy.metric("perg_monitor_judge_errors_total", {"judge": "follow", "reason": reason}) == 1)
    assert judged(proxy) == 0
    assert proxy.metric("perg_monitor_follow_score_count", {"model": "echo", "strategy": "pref_aligner", "role": "served"}) == 0


def test_judge_5xx_is_retried_then_counted(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "error-500", "max_retries": 2})
    chat(proxy)
    assert wait_for(lambda: proxy.metric("perg_monitor_judge_errors_total", {"judge": "relevance", "reason": "http_500"}) == 1, timeout=30)
    calls = [b for b in fake_upstream.chat_bodies() if b["model"] == "error-500"]
    assert len(calls) >= 3  # relevance: 1 try + 2 retries (then consistency, ...)


def test_judge_recovers_after_a_retry(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "flaky-1", "max_retries": 2})
    chat(proxy)
    # flaky-1 fails its first request only (503, retry-after 0); the retry succeeds.
    assert wait_for(lambda: proxy.metric("perg_monitor_judge_duration_seconds_count", {"judge": "follow"}) == 1, timeout=30)
    assert proxy.metric("perg_monitor_judge_errors_total", {"judge": "relevance", "reason": "http_503"}) == 0


def test_naive_traffic_gets_a_background_reference(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, strategy="naive")
    assert chat(proxy).status_code == 200
    labels = {**SERVED, "strategy": "naive"}
    assert wait_for(lambda: judged(proxy, labels) == 1)
    chats = fake_upstream.chat_bodies("chat")
    assert len(chats) == 2  # the served naive call, and the monitor's reference without preferences
    assert STYLE not in orjson.dumps(chats[1]).decode()
    # background calls never count in the request metrics
    assert proxy.metric("perg_upstream_duration_seconds_count", {"upstream": "main", "stage": "forward", "outcome": "ok"}) == 1
    assert proxy.metric("perg_requests_total", {"route": "chat_completions", "method": "POST", "status": "200", "strategy": "naive"}) == 1


def test_streamed_answers_are_captured_and_judged(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, strategy="naive")
    assert chat(proxy, stream=True).status_code == 200
    assert wait_for(lambda: judged(proxy, {**SERVED, "strategy": "naive"}) == 1)
    prompt = fake_upstream.chat_bodies("judge_consistency")[0]["messages"][1]["content"]
    assert "### Personalized answer\nWhat is the capital of France?" in prompt


def test_shadow_runs_the_other_strategy_and_is_judged_the_same_way(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, shadow_rate=1.0)
    response = chat(proxy)
    assert response.json()["choices"][0]["message"]["content"] == "Personalized: What is the capital of France?"
    shadow = {**SERVED, "strategy": "naive", "role": "shadow"}
    assert wait_for(lambda: judged(proxy, shadow) == 1 and judged(proxy) == 1)
    naive_calls = [
        b for b in fake_upstream.chat_bodies("chat") if any(m["role"] == "system" and STYLE in m["content"] for m in b["messages"])
    ]
    assert len(naive_calls) == 1  # the shadow naive call, never returned to the client
    samples = httpx2.get(f"{proxy.url}/perg/monitor/samples?role=shadow", headers=ADMIN).json()["data"]
    assert [(s["strategy"], s["role"]) for s in samples] == [("naive", "shadow")]


def test_full_queue_drops_and_counts(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "hang", "timeout_seconds": 30}, queue_size=1, workers=1)
    for _ in range(4):
        assert chat(proxy).status_code == 200  # never failed, never slowed by the monitor
    assert wait_for(lambda: proxy.metric("perg_monitor_dropped_total", {"reason": "queue_full"}) == 2)
    assert proxy.metric("perg_monitor_enqueued_total", {"role": "served"}) == 2
    assert proxy.metric("perg_monitor_queue_depth") == 1


def test_queue_is_bounded_in_bytes_and_keeps_only_what_the_judges_read(start_proxy, fake_upstream):
    """Big bodies (600 KiB here; the issue queued 8 MiB ones): the queue holds them up to
    `queue_bytes`, not `queue_size` of them."""
    proxy = monitored(
        start_proxy, "naive", judge={"model": "hang", "timeout_seconds": 30}, queue_size=100, queue_bytes=1536 * 1024, workers=1
    )
    big = "x" * (600 * 1024)
    for _ in range(5):
        body = {"model": "echo", "messages": [{"role": "system", "content": big}, {"role": "user", "content": "q"}]}
        body["personalization"] = {"preferences": [STYLE]}
        response = httpx2.post(
            f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}, timeout=60
        )
        assert response.status_code == 200
    # one job in the worker (hung on its judge), two queued (1.2 MiB of 1.5), the last two dropped
    assert wait_for(lambda: proxy.metric("perg_monitor_dropped_total", {"reason": "queue_full"}) == 2)
    services = proxy.server.app[SERVICES]
    assert services.monitor.depth == 2 and 1200 * 1024 < services.monitor.queued_bytes <= 1536 * 1024


def test_a_job_with_a_reference_keeps_no_request_body():
    from proxy.monitor.job import job_of
    from proxy.turn import Reply, Turn

    turn = Turn(request_id="r", route="chat_completions", method="POST", headers={})
    turn.body = {"model": "m", "messages": [{"role": "system", "content": "s" * 100_000}, {"role": "user", "content": "q"}]}
    turn.model, turn.strategy, turn.preferences, turn.judge = "m", "pref_aligner", (STYLE,), True
    turn.draft, turn.answer = "draft", "answer"
    job = job_of(turn, Reply(200, {}, b"{}"))
    assert job.body == {"model": "m"} and job.query == "q" and job.size < 1000
    turn.shadow = True  # a shadow answer is made from the request: the body is kept, and counted
    job = job_of(turn, Reply(200, {}, b"{}"))
    assert job.body is turn.body and job.size > 100_000


def test_shutdown_drains_then_counts_what_it_abandons(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "hang", "timeout_seconds": 30}, queue_size=10, workers=1, drain_seconds=0.3)
    for _ in range(3):
        chat(proxy)
    assert wait_for(lambda: proxy.metric("perg_monitor_enqueued_total", {"role": "served"}) == 3)
    proxy.stop()
    assert proxy.metric("perg_monitor_dropped_total", {"reason": "shutdown"}) == 3  # 1 in progress + 2 queued


def test_drain_finishes_queued_work_within_the_deadline(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "slow-100"}, queue_size=10, workers=1, drain_seconds=20)
    for _ in range(2):
        chat(proxy)
    proxy.stop()
    assert judged(proxy, {**SERVED, "model": "echo"}) == 2
    assert proxy.metric("perg_monitor_dropped_total", {"reason": "shutdown"}) == 0


def test_samples_drill_down_and_summary(start_proxy, fake_upstream):
    fake_upstream.scripts["judge"] = judge_script("contradicts", 2)
    proxy = monitored(start_proxy, judge={"model": "script:judge"})
    chat(proxy, user="alice")
    assert wait_for(lambda: judged(proxy) == 1)
    page = httpx2.get(f"{proxy.url}/perg/monitor/samples?verdict=contradicts", headers=ADMIN).json()
    (sample,) = page["data"]
    assert (sample["verdict"], sample["broken"], sample["followed"], sample["robust"], sample["follow_score"]) == (
        "contradicts",
        True,
        False,
        False,
        2,
    )
    assert sample["user_id"] == "alice" and set(sample["reasons"]) == {"relevance", "consistency", "follow"}
    assert sample["texts"]["answer"] == "Personalized: What is the capital of France?"
    assert httpx2.get(f"{proxy.url}/perg/monitor/samples?verdict=consistent", headers=ADMIN).json()["data"] == []
    summary = httpx2.get(f"{proxy.url}/perg/monitor/summary", headers=ADMIN).json()
    (group,) = summary["groups"]
    assert (group["strategy"], group["role"], group["breakage_rate"], group["robustness_error_rate"]) == (
        "pref_aligner",
        "served",
        1.0,
        1.0,
    )
    assert httpx2.get(f"{proxy.url}/perg/monitor/samples?verdict=maybe", headers=ADMIN).status_code == 400
    httpx2.put(f"{proxy.url}/perg/profiles/alice", json={"preferences": ["x"]}, headers=ADMIN)
    assert httpx2.delete(f"{proxy.url}/perg/profiles/alice", headers=ADMIN).status_code == 200
    assert httpx2.get(f"{proxy.url}/perg/monitor/samples", headers=ADMIN).json()["data"] == []  # the user's samples went too


def test_texts_are_kept_only_when_configured(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, store_samples=False)
    chat(proxy)
    assert wait_for(lambda: judged(proxy) == 1)
    (sample,) = wait_for(lambda: httpx2.get(f"{proxy.url}/perg/monitor/samples", headers=ADMIN).json()["data"])
    assert sample["texts"] is None


def test_a_hanging_judge_does_not_touch_the_request_path(start_proxy, fake_upstream):
    proxy = monitored(start_proxy, judge={"model": "hang", "timeout_seconds": 60})

    async def burst() -> list[int]:
        async with httpx2.AsyncClient(timeout=10) as client:
            body = {"model": "echo", "messages": [{"role": "user", "content": "q"}], "personalization": {"preferences": [STYLE]}}
            responses = await asyncio.gather(
                *(
                    client.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"})
                    for _ in range(20)
                )
            )
        return [r.status_code for r in responses]

    assert asyncio.run(burst()) == [200] * 20


def test_pref_aligner_stream_without_preferences_is_captured(start_proxy, fake_upstream):
    # with require_preferences off, a pref_aligner request without preferences passes through
    proxy = monitored(start_proxy, filters={"require_preferences": False})
    body = {"model": "echo", "messages": [{"role": "user", "content": "What is the capital of France?"}], "stream": True}
    assert (
        httpx2.post(f"{proxy.base_url}/chat/completions", json=body, headers={"Authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
    )
    assert wait_for(lambda: fake_upstream.chat_bodies("judge_consistency"))
    prompt = fake_upstream.chat_bodies("judge_consistency")[0]["messages"][1]["content"]
    assert "### Personalized answer\nWhat is the capital of France?" in prompt
