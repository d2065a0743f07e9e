"""The benchmark runner on the scripted fake upstream: the proxy's own pipeline, hand-computed
figures, the resumable cache, bounded retries and recorded errors; and once on the real model."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.eval.answering import parse_strategy
from proxy.eval.benchmark import run_benchmark
from proxy.eval.options import RunOptions
from proxy.eval.rescore import rescore
from proxy.eval.results import load_results
from proxy.eval.suite import load_units, select
from tests.fake_upstream import error_response, last_user_text, pipeline_role, scripted_reply

FIXTURES = Path(__file__).parent / "fixtures" / "perg"
STYLE = "Use British spelling."
UNRELATED = ["I cycle to work.", "I have a cat.", "I live in a small flat."]
ITEMS = [
    {"id": "q1", "source": "fixture", "category": "science", "question": "Which gas do plants take in?", "options": ["Carbon dioxide", "Oxygen", "Argon", "Helium"], "gold": "A"},
    {"id": "q2", "source": "fixture", "category": "history", "question": "When did WWII end?", "options": ["1945", "1939", "1918", "1960"], "gold": "A"},
    {"id": "q3", "source": "fixture", "category": "history", "question": "Who wrote Hamlet?", "options": ["Dickens", "Shakespeare", "Austen", "Orwell"], "gold": "B"},
]  # fmt: skip


def write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    dataset = tmp_path / "items.jsonl"
    dataset.write_text("\n".join(json.dumps(item) for item in ITEMS) + "\n")
    pool = tmp_path / "pool.json"
    pool.write_text(
        json.dumps({"style": [{"id": "s", "text": STYLE}], "unrelated": [{"id": f"u{i}", "text": t} for i, t in enumerate(UNRELATED)]})
    )
    return dataset, pool


def mcq_script(calls: Counter[str] | None = None, fail: dict[str, Any] | None = None) -> Any:
    """The model under test and its judge. Without preferences it answers A ("Answer: A"); with them in
    the system message (naive) it answers B. The aligner rewrites ("Personalized: …", the letter
    kept); the gate finds "I …" preferences irrelevant. The follow judge gives 4 to a personalized
    answer, 2 otherwise. `fail` maps a question's text to a reply that replaces the answer."""

    def reply(body: dict[str, Any]) -> Any:
        role = pipeline_role(body)
        text = last_user_text(body)
        if calls is not None:
            calls[role] += 1
        for question, failure in (fail or {}).items():
            if role == "chat" and question in text:
                return failure() if callable(failure) else failure
        if role == "judge_follow":
            score = 4 if "### Answer with the preference\nPersonalized:" in text else 2
            return orjson.dumps({"reason": "scripted", "score": score}).decode()
        if role != "chat":
            return scripted_reply(body)
        return "The answer is B." if body["messages"][0]["role"] == "system" else "Answer: A"

    return reply


def options(tmp_path: Path, fake: Any, **overrides: Any) -> RunOptions:
    dataset, pool = write_inputs(tmp_path)
    values: dict[str, Any] = {
        "base_url": fake.url, "model": "script:mcq", "structured_output": "json_schema", "dataset": str(dataset),
        "preferences": pool, "settings": ("relevant", "irrelevant"), "resamples": 50, "out": tmp_path / "out",
        "backoff_seconds": 0.0, "concurrency": 2,
    }  # fmt: skip
    return RunOptions(**{**values, **overrides})


def overall(run: Any) -> dict[tuple[str, str], Any]:
    return {(g.strategy, g.setting): g for g in run.summary.overall()}


async def test_a_run_by_hand(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = mcq_script()
    run = await run_benchmark(options(tmp_path, fake_upstream), progress=False)
    cells = overall(run)
    # baseline "Answer: A": right on q1, q2 (gold A), wrong on q3 (gold B) → Q* = {q1, q2}
    naive = cells[("naive", "relevant")]
    assert (naive.n_items, naive.n_q_star) == (3, 2)
    # naive answers B: q1, q2 broken → BR 1; judge 2 < 3 → AFR 1; RER 1;
    # A_pref = {q3}, A_nopref = {q1, q2}: ∩ 0, ∪ 3 → PVR 1
    assert (naive.breakage_rate.value, naive.alignment_failure_rate.value) == (1.0, 1.0)
    assert (naive.robustness_error_rate.value, naive.performance_variation.value) == (1.0, 1.0)
    aligner = cells[("pref_aligner", "relevant")]
    # the rewrite keeps "Answer: A" and is rated 4 → nothing broken, everything followed
    assert (aligner.breakage_rate.value, aligner.alignment_failure_rate.value, aligner.robustness_error_rate.value) == (0.0, 0.0, 0.0)
    assert aligner.performance_variation.value == 0.0
    irrelevant = cells[("pref_aligner", "irrelevant")]
    assert irrelevant.alignment_failure_rate.value is None  # never judged: Robust = Acc
    assert irrelevant.robustness_error_rate.value == 0.0
    assert cells[("naive", "irrelevant")].robustness_error_rate.value == 1.0
    paired = {t.setting: t for t in run.summary.paired}
    assert (paired["relevant"].only_a_correct, paired["relevant"].only_b_correct) == (1, 2)  # q3 naive; q1, q2 aligner

    results = load_results(tmp_path / "out" / "results.jsonl")
    assert len(results) == 12  # 3 items × 2 strategies × 2 settings
    assert {(r.strategy, r.setting): r.aligned for r in results if r.item_id == "q1"} == {
        ("naive", "relevant"): None, ("naive", "irrelevant"): None,
        ("pref_aligner", "relevant"): "true", ("pref_aligner", "irrelevant"): "skipped",
    }  # fmt: skip
    assert all(not r.errors for r in results)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "stage-1 drafts equal to the baseline answer**: 6 of 6" in report
    assert "pref_aligner: skipped 3, true 3" in report
    for chart in ("breakage_rate", "alignment_failure_rate", "robustness_error_rate"):
        assert (tmp_path / "out" / f"{chart}.png").read_bytes().startswith(b"\x89PNG")


async def test_the_proxy_pipeline_and_the_judge_see_what_they_should(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = mcq_script()
    await run_benchmark(options(tmp_path, fake_upstream, settings=("mixed",)), progress=False)
    chats = fake_upstream.chat_bodies("chat")
    assert len(chats) == 9  # baseline, naive and stage 1, for each item
    for body in chats:
        assert body["temperature"] == 0 and body["seed"] == 0 and body["max_tokens"] == 128
        assert "\n\nA. " in body["messages"][-1]["content"] and "(A, B, C or D)" in body["messages"][-1]["content"]
    with_preferences = [b for b in chats if b["messages"][0]["role"] == "system"]
    assert len(with_preferences) == 3  # naive: one call per item, preferences in the system message
    assert all(STYLE in b["messages"][0]["content"] for b in with_preferences)
    assert not any(STYLE in json.dumps(b) for b in chats if b["messages"][0]["role"] != "system")  # baseline, stage 1
    assert len(fake_upstream.chat_bodies("gate")) == 3
    assert len(fake_upstream.chat_bodies("aligner")) == 3
    follows = [last_user_text(b) for b in fake_upstream.chat_bodies("judge_follow")]
    assert len(follows) == 6
    for text in follows:  # the judge sees only the relevant preference of the mixed set, and the baseline
        preference = text.split("### Preference\n", 1)[1].split("\n\n", 1)[0]
        assert preference == f"- {STYLE}"
        assert "### Answer without the preference\nAnswer: A" in text


async def test_a_second_run_makes_no_call(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()
    fake_upstream.scripts["mcq"] = mcq_script(calls)
    first = await run_benchmark(options(tmp_path, fake_upstream), progress=False)
    assert calls["chat"] == 3 + 3 * 2 + 3 * 2  # baselines, naive, stage 1
    assert (first.stats.answers_new, first.stats.answers_cached) == (15, 0)
    fake_upstream.clear()
    second = await run_benchmark(options(tmp_path, fake_upstream), progress=False)
    assert fake_upstream.received == []
    assert (second.stats.answers_new, second.stats.answers_cached) == (0, 15)
    assert second.summary == first.summary
    assert [r.model_dump() for r in second.results] == [r.model_dump() for r in first.results]
    # a different generation option is a different request: asked again
    await run_benchmark(options(tmp_path, fake_upstream, max_tokens=64, settings=("relevant",)), progress=False)
    assert len(fake_upstream.chat_bodies("chat")) == 3 + 3 + 3


async def test_an_interrupted_run_resumes_without_redoing_anything(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()

    async def slow(body: dict[str, Any]) -> Any:
        await asyncio.sleep(0.02)
        return mcq_script(calls)(body)

    fake_upstream.scripts["mcq"] = slow
    task = asyncio.create_task(run_benchmark(options(tmp_path, fake_upstream, concurrency=1), progress=False))
    for _ in range(3000):  # at most 30 s
        await asyncio.sleep(0.01)
        if calls["chat"] >= 5:
            break
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    before = calls["chat"]
    assert 5 <= before < 15
    calls.clear()
    resumed = await run_benchmark(options(tmp_path, fake_upstream, concurrency=1), progress=False)
    # every answer is one call of the model under test (baseline, naive, or stage 1): only the
    # answers not cached are asked, and at most the one in flight at the interruption was lost
    assert resumed.stats.answers_new + resumed.stats.answers_cached == 15
    assert calls["chat"] == resumed.stats.answers_new
    assert resumed.stats.answers_cached >= before - 1
    fake_upstream.clear()
    again = await run_benchmark(options(tmp_path, fake_upstream, concurrency=1), progress=False)
    assert fake_upstream.received == []
    assert again.summary == resumed.summary


async def test_failures_are_retried_then_recorded_and_the_run_goes_on(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()
    fake_upstream.scripts["mcq"] = mcq_script(calls, fail={"Who wrote Hamlet?": lambda: error_response("503")})
    run = await run_benchmark(options(tmp_path, fake_upstream, attempts=3), progress=False)
    results = load_results(tmp_path / "out" / "results.jsonl")
    failed = [r for r in results if r.item_id == "q3"]
    assert len(failed) == 4 and all(not r.answered for r in failed)
    assert all("upstream_http_503" in r.errors["baseline"] for r in failed)
    assert calls["chat"] == 3 + 2 * (1 + 2 * 2)  # q3's baseline tried 3 times, its cases never asked
    assert overall(run)[("naive", "relevant")].n_items == 2
    assert "8 of 12 answered; 4 failed after retries" in (tmp_path / "out" / "report.md").read_text()
    # the failure is not cached: fixed, the next run asks only what is missing
    fake_upstream.scripts["mcq"] = mcq_script(calls)
    calls.clear()
    rerun = await run_benchmark(options(tmp_path, fake_upstream), progress=False)
    assert calls["chat"] == 1 + 2 * 2  # q3: baseline, naive × 2 settings, stage 1 × 2 settings
    assert all(r.answered for r in rerun.results)


async def test_a_final_error_is_not_retried_and_a_transient_one_recovers(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()
    seen: Counter[str] = Counter()

    def flaky() -> Any:
        seen["flaky"] += 1
        return error_response("502") if seen["flaky"] == 1 else "Answer: B"

    fake_upstream.scripts["mcq"] = mcq_script(calls, fail={"Which gas": lambda: error_response("400"), "Who wrote Hamlet?": flaky})
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant",), strategies=("naive",)), progress=False)
    by_item = {r.item_id: r for r in run.results}
    assert "upstream_http_400" in by_item["q1"].errors["baseline"]
    assert seen["flaky"] == 3  # baseline: 502 then B; then the naive answer
    assert by_item["q3"].answered and by_item["q3"].nopref_letter == "B"
    assert calls["chat"] == 1 + 2 + 2 + 1  # q1 once (400 is final); q2 twice; q3 3 times


async def test_an_unparseable_verdict_is_unjudged_and_cached(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()
    script = mcq_script(calls)

    def reply(body: dict[str, Any]) -> Any:
        if pipeline_role(body) == "judge_follow":
            calls["judge_follow"] += 1
            return "I cannot rate this."
        return script(body)

    fake_upstream.scripts["mcq"] = reply
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant",)), progress=False)
    assert all(r.follow_score is None and r.errors["follow"].startswith("unparseable") for r in run.results)
    assert calls["judge_follow"] == 6  # not retried: the judge's own reply
    cell = overall(run)[("naive", "relevant")]
    # no verdict is not followed (the paper's rule), and counted on its own
    assert cell.n_follow_missing == 2 and cell.alignment_failure_rate.value == 1.0
    assert cell.robustness_error_rate.value == 1.0
    aligner = overall(run)[("pref_aligner", "relevant")]
    assert (aligner.breakage_rate.value, aligner.alignment_failure_rate.value, aligner.robustness_error_rate.value) == (0.0, 1.0, 1.0)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "follow verdicts missing**: 6 (a relevant case without a verdict is not followed" in report
    assert "| verdict missing |" in report
    calls.clear()
    await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant",)), progress=False)
    assert sum(calls.values()) == 0


async def test_llm_extraction_fallback(tmp_path, fake_upstream):
    calls: Counter[str] = Counter()
    script = mcq_script(calls)

    def reply(body: dict[str, Any]) -> Any:
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        if system.startswith("You read a reply to a multiple-choice question"):
            calls["extract"] += 1
            assert body["response_format"]["json_schema"]["schema"]["properties"]["letter"]["enum"] == ["A", "B", "C", "D", "none"]
            return '{"letter": "C"}' if "hmm" in last_user_text(body) else '{"letter": "none"}'
        if pipeline_role(body) == "chat" and system == "":
            return "hmm, hard to say" if "Hamlet" in last_user_text(body) else "no idea at all"
        return script(body)

    fake_upstream.scripts["mcq"] = reply
    opts = options(tmp_path, fake_upstream, settings=("relevant",), strategies=("naive",), extractor="rules+llm")
    run = await run_benchmark(opts, progress=False)
    by_item = {r.item_id: r for r in run.results}
    assert (by_item["q3"].nopref_letter, by_item["q3"].nopref_extraction) == ("C", "fallback")
    assert (by_item["q1"].nopref_letter, by_item["q1"].nopref_extraction) == (None, "none")
    assert (by_item["q1"].pref_letter, by_item["q1"].pref_extraction) == ("B", "rule")
    assert calls["extract"] == 3
    assert "the LLM on the judge's server where they found none (1 letter read by it)" in (tmp_path / "out" / "report.md").read_text()
    calls.clear()
    await run_benchmark(opts, progress=False)
    assert calls["extract"] == 0
    # `llm`: every answer is read by the LLM (the paper's way), the rules are not asked
    calls.clear()
    run = await run_benchmark(opts.model_copy(update={"extractor": "llm", "out": tmp_path / "llm"}), progress=False)
    assert calls["extract"] == 6  # 3 baselines, 3 naive answers
    assert {r.pref_extraction for r in run.results} == {"none"}  # "The answer is B." is not asked of the rules


async def test_the_hedge_policy_of_a_run(tmp_path, fake_upstream):
    """`--hedges first` (the default) reads a hedge as its first option, `none` as no answer; the report says which."""
    base = mcq_script()

    def reply(body: dict[str, Any]) -> Any:
        if pipeline_role(body) == "chat" and body["messages"][0]["role"] == "system":
            return "The answer is either B or A."
        return base(body)

    fake_upstream.scripts["mcq"] = reply
    opts = options(tmp_path, fake_upstream, settings=("relevant",), strategies=("naive",))
    run = await run_benchmark(opts, progress=False)
    assert {(r.pref_letter, r.pref_extraction) for r in run.results} == {("B", "hedge")}
    assert (
        "a hedge reads as the first of its options the answer mentions, as the paper's reader mostly does (3 resolved so)"
        in (tmp_path / "out" / "report.md").read_text()
    )
    run = await run_benchmark(opts.model_copy(update={"hedges": "none", "out": tmp_path / "none"}), progress=False)
    assert {(r.pref_letter, r.pref_extraction) for r in run.results} == {(None, "none")}
    assert "a hedge (an answer naming several options) is unreadable" in (tmp_path / "none" / "report.md").read_text()
    assert " --hedges none " in opts.model_copy(update={"hedges": "none"}).command_line() and "--hedges" not in opts.command_line()


async def test_gate_variants(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = mcq_script()
    strategies = ("pref_aligner", "pref_aligner_gate_off")
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("irrelevant",), strategies=strategies), progress=False)
    aligned = {(r.strategy, r.item_id): r.aligned for r in run.results}
    assert {aligned[("pref_aligner", i)] for i in ("q1", "q2", "q3")} == {"skipped"}
    assert {aligned[("pref_aligner_gate_off", i)] for i in ("q1", "q2", "q3")} == {"true"}  # no gate: every preference goes to the rewrite
    assert len(fake_upstream.chat_bodies("gate")) == 3
    assert parse_strategy("pref_aligner_gate_aligner").gate == "aligner"
    with pytest.raises(ValueError, match="unknown strategy"):
        parse_strategy("pref_aligner_gate_sometimes")


async def test_guarded_and_verified_strategies_serve_the_draft_when_a_rewrite_changes_the_answer(tmp_path, fake_upstream):
    base = mcq_script()

    def script(body: dict[str, Any]) -> Any:
        if pipeline_role(body) == "aligner" and "When did WWII end?" in last_user_text(body):
            return "The answer is C."  # q2's rewrite changes the draft's letter (A)
        return base(body)

    fake_upstream.scripts["mcq"] = script
    strategies = ("pref_aligner", "pref_aligner_guarded", "pref_aligner_verified")
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant",), strategies=strategies), progress=False)
    served = {(r.strategy, r.item_id): (r.aligned, r.fallback_reason, r.pref_letter) for r in run.results}
    assert served[("pref_aligner", "q2")] == ("true", None, "C")  # no guards: the changed answer is served
    assert served[("pref_aligner_guarded", "q2")] == ("fallback", "answer_changed", "A")
    assert served[("pref_aligner_verified", "q2")] == ("fallback", "answer_changed", "A")  # the guards run first
    assert served[("pref_aligner_guarded", "q1")][0] == served[("pref_aligner_verified", "q1")][0] == "true"
    cells = overall(run)
    assert cells[("pref_aligner", "relevant")].breakage_rate.value == 0.5  # q2 of Q* = {q1, q2} broken
    assert cells[("pref_aligner_guarded", "relevant")].breakage_rate.value == 0.0
    assert len(fake_upstream.chat_bodies("judge_consistency")) == 2  # verified: q1 and q3 passed the guards
    report = (tmp_path / "out" / "report.md").read_text()
    assert "pref_aligner_guarded: 33.3% of 3 (answer_changed 1 (33.3%))" in report
    assert parse_strategy("pref_aligner_verified").verify == "llm" and parse_strategy("pref_aligner_guarded").guards
    with pytest.raises(ValueError, match="unknown strategy"):
        parse_strategy("pref_aligner_guarded", "paper")


async def test_each_cell_csv_rescores_to_the_report(tmp_path, fake_upstream):
    """results/<strategy>-<setting>.csv is the paper's layout: `eval metrics` gives the report's figures."""
    fake_upstream.scripts["mcq"] = mcq_script()
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant", "irrelevant", "mixed")), progress=False)
    for (strategy, setting), cell in overall(run).items():
        rescored = rescore(tmp_path / "out" / "results" / f"{strategy}-{setting}.csv", setting=setting)
        assert rescored["n_q_star"] == cell.n_q_star
        assert rescored["breakage_rate"] == cell.breakage_rate.value
        assert rescored["robustness_error_rate"] == cell.robustness_error_rate.value
        assert rescored["performance_variation"] == cell.performance_variation.value
        assert rescored["alignment_failure_rate"] == cell.alignment_failure_rate.value


def test_pergdata_rows_bring_their_own_preference():
    units = load_units(str(FIXTURES / "pergdata.csv"), ("relevant", "irrelevant", "mixed"), seed=1, n_unrelated=2)
    first = units[0]
    assert first.style == "I like answers that start with a one-line summary."
    cases = {case.setting: case.preferences for case in first.cases}
    assert cases["relevant"] == (first.style,)
    assert first.style not in cases["irrelevant"] and len(cases["irrelevant"]) == 2
    assert first.style in cases["mixed"] and set(cases["mixed"]) - {first.style} == set(cases["irrelevant"])
    assert first.judged_preferences(first.cases[2]) == (first.style,)
    assert first.judged_preferences(first.cases[1]) == ()


def test_limit_is_a_seeded_nested_choice_in_dataset_order():
    four = [unit.item.id for unit in load_units("builtin", ("relevant",), limit=4)]
    eight = [unit.item.id for unit in load_units("builtin", ("relevant",), limit=8)]
    assert set(four) <= set(eight) and len(set(four)) == 4
    everything = [unit.item.id for unit in load_units("builtin", ("relevant",))]
    assert four == [i for i in everything if i in four]
    assert len({i.split("-")[0] for i in eight}) > 1  # not just the first category
    assert select([1, 2, 3], None, 0) == [1, 2, 3] and select([1, 2, 3], 9, 0) == [1, 2, 3]
    assert four != [unit.item.id for unit in load_units("builtin", ("relevant",), limit=4, seed=5)]


def test_options_are_validated():
    with pytest.raises(ValueError, match="unknown strategy"):
        RunOptions(strategies=("naive", "clever"))
    with pytest.raises(ValueError, match="listed twice"):
        RunOptions(settings=("relevant", "relevant"))
    with pytest.raises(ValueError, match="http"):
        RunOptions(base_url="127.0.0.1:8081")
    assert RunOptions(out=Path("x")).cache_path == Path("x") / "cache.sqlite"


def test_the_report_states_the_command_that_reproduces_it():
    opts = RunOptions(
        base_url="http://h/v1", api_key="sk-secret", settings=("relevant", "mixed"), extractor="rules+llm", note="a note", out=Path("o"),
        protocol="paper",
    )  # fmt: skip
    assert opts.command_line() == (
        "perg-proxy eval run --base-url http://h/v1 --protocol paper --settings relevant,mixed --extractor rules+llm --out o --note 'a note'"
    )
    assert RunOptions().command_line() == "perg-proxy eval run"


@pytest.mark.local_model
async def test_end_to_end_on_the_real_model(tmp_path, local_model):
    opts = RunOptions(
        base_url=local_model.base_url, dataset="builtin", limit=1, settings=("relevant",), max_tokens=48,
        judge_max_tokens=120, resamples=20, out=tmp_path / "out", timeout=120,
    )  # fmt: skip
    run = await run_benchmark(opts, progress=False)
    assert len(run.results) == 2 and all(r.answered for r in run.results)
    aligner = next(r for r in run.results if r.strategy == "pref_aligner")
    assert aligner.aligned in ("true", "skipped", "fallback", "false")
    assert all(r.follow_score is not None or "follow" in r.errors for r in run.results)
    assert (tmp_path / "out" / "report.md").read_text().startswith("# PERG benchmark")
    again = await run_benchmark(opts, progress=False)
    assert again.stats.answers_new == 0 and again.summary == run.summary
