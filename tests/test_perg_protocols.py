"""`eval run --protocol paper` and the paper's other baselines (CoT, ICL, Self-Critic) on the
scripted fake upstream: what each request carries, by hand; and the paper protocol end to end on
the real local model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.eval.benchmark import run_benchmark
from proxy.eval.options import RunOptions
from proxy.perg.cases import load_paper_irrelevant
from tests.fake_upstream import last_user_text, pipeline_role, scripted_reply
from tests.test_perg_runner import STYLE, options, overall

FACTUALITY = "You are an AI assistant. Give answers that are factually correct, unbiased and helpful."


def paper_script(aligner_reply: str | None = None) -> Any:
    """Answers A without preferences and B with them (a system message that names preferences).
    The paper's aligner and the self-critic get scripted JSON unless `aligner_reply` replaces it;
    the follow judge gives 4 to a personalized answer, 2 otherwise."""

    def reply(body: dict[str, Any]) -> Any:
        role = pipeline_role(body)
        if role == "judge_follow":
            text = last_user_text(body)
            return orjson.dumps({"reason": "scripted", "score": 4 if "Personalized:" in text or "Revised:" in text else 2}).decode()
        if role == "paper_aligner" and aligner_reply is not None:
            return aligner_reply
        if role != "chat":
            return scripted_reply(body)
        system = body["messages"][0]["content"] if body["messages"][0]["role"] == "system" else ""
        return "The answer is B." if "preferences" in system else "Answer: A"

    return reply


def chats(fake: Any) -> list[dict[str, Any]]:
    return fake.chat_bodies("chat")


async def test_the_paper_protocol_sends_what_the_paper_describes(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = paper_script()
    opts = options(tmp_path, fake_upstream, protocol="paper", settings=("relevant", "irrelevant", "mixed"))
    run = await run_benchmark(opts, progress=False)
    bodies = chats(fake_upstream)
    baselines = [b for b in bodies if b["messages"][0]["content"] == FACTUALITY]
    assert len(baselines) == 3  # one per item; the paper's aligner reuses it as its stage 1
    for body in bodies:
        assert (body["temperature"], body["seed"], body["max_tokens"]) == (0, 42, 500)
        question = body["messages"][-1]["content"]
        assert question.startswith("Which of the options below answers the question best?\n\nQuestion: ")
        assert "\nOptions:\nA. " in question and "letter" not in question  # no answer-format instruction
    naive = [b["messages"][0]["content"] for b in bodies if b not in baselines]
    assert len(naive) == 9 and all(s.startswith(FACTUALITY) and s.endswith("Tailor your answer to these preferences.") for s in naive)
    fixed = load_paper_irrelevant()
    sets = {tuple(line[2:] for line in s.splitlines() if line.startswith("- ")) for s in naive}
    assert (STYLE,) in sets and fixed in sets and (*fixed[:2], STYLE, *fixed[2:]) in sets  # the relevant one in the middle
    assert fake_upstream.chat_bodies("gate") == [] and fake_upstream.chat_bodies("aligner") == []
    rewrites = fake_upstream.chat_bodies("paper_aligner")
    assert len(rewrites) == 9  # one call per case, relevance decided by the rewrite itself
    for body in rewrites:
        assert [m["role"] for m in body["messages"]] == ["user"] and body["max_tokens"] == 1000
        assert set(body["response_format"]["json_schema"]["schema"]["properties"]) == {"response", "reasoning"}
        assert "### Initial answer\nAnswer: A\n\n" in body["messages"][0]["content"]
    follows = [last_user_text(b) for b in fake_upstream.chat_bodies("judge_follow")]
    assert len(follows) == 12 and all(text.startswith("### User prompt\nWhich of the options below") for text in follows)
    assert all(
        b["messages"][0]["content"].startswith("You are a careful, neutral evaluator.") for b in fake_upstream.chat_bodies("judge_follow")
    )
    cells = overall(run)
    assert cells[("naive", "relevant")].breakage_rate.value == 1.0  # B with the preferences, A (gold) without
    aligned = cells[("pref_aligner", "mixed")]
    assert (aligned.breakage_rate.value, aligned.alignment_failure_rate.value) == (0.0, 0.0)  # "Personalized: Answer: A", rated 4
    assert {r.aligned for r in run.results if r.strategy == "pref_aligner"} == {"true"}
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- **protocol**: paper (the protocol of Okite et al., arXiv 2509.19358" in report
    assert "temperature 0, seed 42, max_tokens 500 (1000 for a rewrite)" in report
    assert json.loads((tmp_path / "out" / "report.json").read_text())["meta"]["protocol"].startswith("paper")


async def test_the_papers_aligner_serves_its_stage_1_answer_when_the_reply_does_not_parse(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = paper_script(aligner_reply="Sure! Here is a better answer: B")
    opts = options(tmp_path, fake_upstream, protocol="paper", settings=("relevant",), strategies=("pref_aligner",))
    run = await run_benchmark(opts, progress=False)
    assert {(r.aligned, r.pref_answer) for r in run.results} == {("fallback", "Answer: A")}
    unchanged = paper_script(aligner_reply=orjson.dumps({"response": "Answer: A", "reasoning": "not relevant"}).decode())
    fake_upstream.scripts["mcq"] = unchanged
    run = await run_benchmark(opts.model_copy(update={"out": tmp_path / "again"}), progress=False)
    assert {r.aligned for r in run.results} == {"skipped"}


@pytest.mark.parametrize("protocol", ["proxy", "paper"])
async def test_cot_icl_and_self_critic_are_strategies_of_eval_run(tmp_path, fake_upstream, protocol):
    fake_upstream.scripts["mcq"] = paper_script()
    strategies = ("cot", "icl", "self_critic")
    run = await run_benchmark(
        options(tmp_path, fake_upstream, protocol=protocol, settings=("relevant",), strategies=strategies), progress=False
    )
    systems = [b["messages"][0]["content"] for b in chats(fake_upstream) if b["messages"][0]["role"] == "system"]
    cot = [s for s in systems if "Think through the question step by step" in s]
    icl = [s for s in systems if "Here are examples of answers" in s]
    assert len(cot) == 3 and len(icl) == 3 and all(STYLE in s for s in cot + icl)
    # the fixture's source "fixture" matches no key: the default examples, in the protocol's MCQ form
    assert all("What is the capital city of Australia?" in s and "Preference: Explain it in plain" in s for s in icl)
    critiques = fake_upstream.chat_bodies("self_critic")
    assert len(critiques) == 3  # one critique-and-revise call after each first (naive) answer
    assert all("### Your earlier answer\nThe answer is B." in last_user_text(b) for b in critiques)
    assert all(set(b["response_format"]["json_schema"]["schema"]["properties"]) == {"critique", "response"} for b in critiques)
    by_strategy = {r.strategy: r for r in run.results if r.item_id == "q1"}
    assert by_strategy["self_critic"].pref_answer == "Revised: The answer is B." and by_strategy["self_critic"].aligned == "true"
    assert by_strategy["cot"].pref_answer == "The answer is B."
    assert {g.strategy for g in run.summary.overall()} == set(strategies)


async def test_a_self_critique_that_does_not_parse_serves_the_first_answer(tmp_path, fake_upstream):
    script = paper_script()
    fake_upstream.scripts["mcq"] = lambda body: "I think it is fine." if pipeline_role(body) == "self_critic" else script(body)
    run = await run_benchmark(options(tmp_path, fake_upstream, settings=("relevant",), strategies=("self_critic",)), progress=False)
    assert {(r.aligned, r.pref_answer) for r in run.results} == {("fallback", "The answer is B.")}


async def test_icl_examples_from_a_users_file(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = paper_script()
    examples = tmp_path / "examples.json"
    example = {"question": "Which is heavier, a kilo of iron or a kilo of feathers?", "options": ["Iron", "Feathers", "Neither"],
               "preference": "Be playful.", "response": "C. Neither: a kilo is a kilo!"}  # fmt: skip
    examples.write_text(json.dumps({"examples": {"fixture": [example], "default": []}}))
    await run_benchmark(
        options(tmp_path, fake_upstream, settings=("relevant",), strategies=("icl",), icl_examples=examples), progress=False
    )
    systems = [b["messages"][0]["content"] for b in chats(fake_upstream) if b["messages"][0]["role"] == "system"]
    assert len(systems) == 3 and all("kilo of feathers" in s and "Australia" not in s for s in systems)


async def test_the_report_breaks_the_rates_down_by_preference_category(tmp_path, fake_upstream):
    fake_upstream.scripts["mcq"] = paper_script()
    pool = tmp_path / "categorised.json"
    pool.write_text(json.dumps({
        "style": [{"id": "s", "text": STYLE, "category": "creative"}],
        "unrelated": [{"id": f"u{i}", "text": f"I own {i} cats."} for i in range(3)],
    }))  # fmt: skip
    run = await run_benchmark(options(tmp_path, fake_upstream, preferences=pool, settings=("relevant", "irrelevant")), progress=False)
    groups = [g for g in run.summary.groups if g.dimension == "preference_category"]
    assert {(g.strategy, g.setting, g.group) for g in groups} == {
        ("naive", "relevant", "creative"),
        ("pref_aligner", "relevant", "creative"),
    }
    assert all(g.n_items == 3 for g in groups)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "## By preference category" in report and "| naive | relevant | creative | 3 |" in report


def test_paper_protocol_options():
    with pytest.raises(ValueError, match="under the paper protocol"):
        RunOptions(protocol="paper", strategies=("pref_aligner_gate_off",))
    assert RunOptions(protocol="paper", strategies=("naive", "pref_aligner", "cot", "icl", "self_critic")).protocol == "paper"


@pytest.mark.local_model
async def test_the_paper_protocol_end_to_end_on_the_real_model(tmp_path: Path, local_model):
    opts = RunOptions(
        base_url=local_model.base_url, protocol="paper", dataset="builtin", limit=2, settings=("relevant",),
        strategies=("naive", "pref_aligner"), max_tokens=64, judge_max_tokens=120, resamples=20, out=tmp_path / "out", timeout=180,
    )  # fmt: skip
    run = await run_benchmark(opts, progress=False)
    assert len(run.results) == 4 and all(r.answered for r in run.results)
    assert {r.aligned for r in run.results if r.strategy == "pref_aligner"} <= {"true", "skipped", "fallback"}
    assert all(r.follow_score is not None or "follow" in r.errors for r in run.results)
    report = (tmp_path / "out" / "report.md").read_text()
    assert "- **protocol**: paper (the protocol of Okite et al., arXiv 2509.19358" in report
    assert "seed 42, max_tokens 64 (1000 for a rewrite)" in report
