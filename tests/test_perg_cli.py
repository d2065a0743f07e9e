"""`perg-proxy eval run | metrics | judge` as a user runs them (real processes for the commands that
talk to a model; `proxy.cli.main` in process for re-scoring)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.cli import main
from proxy.eval.calibration import calibrate, load_judge_labels
from proxy.eval.offline_commands import REFERENCE_LABELS
from proxy.eval.report import render_calibration
from tests.conftest import ROOT
from tests.fake_upstream import last_user_text, pipeline_role
from tests.test_perg_runner import mcq_script, write_inputs

FIXTURES = Path(__file__).parent / "fixtures" / "perg"


def perg(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "proxy", "eval", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_metrics_json_reproduces_the_hand_computed_figures(capsys) -> None:
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_letters.csv"), "--format", "json"]) == 0
    # by hand (see test_perg_rescore): Q* = {q1, q2, q3, q4, q5, q8}; BR 2/6, AFR 1/5, RER 3/5, PVR 3/7
    result = json.loads(capsys.readouterr().out)
    assert list(result)[:5] == ["breakage_rate", "alignment_failure_rate", "robustness_error_rate", "performance_variation", "n_q_star"]
    assert result["breakage_rate"] == pytest.approx(1 / 3)
    assert result["alignment_failure_rate"] == pytest.approx(1 / 3)  # q5's missing rating: not followed
    assert result["robustness_error_rate"] == pytest.approx(2 / 3)
    assert result["performance_variation"] == pytest.approx(3 / 7)
    assert (result["n_q_star"], result["n_follow_missing"]) == (6, 1)


def test_metrics_options(capsys) -> None:
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_letters.csv"), "--format", "json", "--setting", "irrelevant"]) == 0
    assert json.loads(capsys.readouterr().out)["robustness_error_rate"] == pytest.approx(1 / 3)  # Robust = Acc
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_letters.csv"), "--format", "json", "--follow-threshold", "4"]) == 0
    assert json.loads(capsys.readouterr().out)["alignment_failure_rate"] == pytest.approx(2 / 3)
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_nofollow.csv"), "--format", "json"]) == 0
    assert "alignment_failure_rate" not in json.loads(capsys.readouterr().out)
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_letters.csv"), "--format", "json", "--answers", "raw"]) == 0
    assert json.loads(capsys.readouterr().out)["columns"]["read_as"] == "raw answers"
    assert (
        main(["eval", "metrics", "--results", str(FIXTURES / "paper_aligner.csv"), "--format", "json", "--pref-column", "pref_answer"]) == 0
    )
    assert json.loads(capsys.readouterr().out)["breakage_rate"] == pytest.approx(2 / 3)
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_raw.csv"), "--format", "json", "--per-row"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["line"], r["nopref"], r["pref"]) for r in rows] == [
        (2, "B", "B"),
        (3, "B", "A"),
        (5, "A", "A"),
        (6, None, "A"),
        (7, "A", None),
    ]


def test_metrics_text(capsys) -> None:
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_raw.csv"), "--per-row"]) == 0
    out = capsys.readouterr().out
    assert "5 cases; Q* = 4 answered correctly without preferences" in out
    assert "read as raw answers; follow: followed_pref" in out
    assert "| breakage_rate | 50.0% |" in out and "| performance_variation | 60.0% |" in out
    assert "| breakage_rate over readable answers | 33.3% (Q* 3) |" in out
    assert "| unreadable without / with preferences | 20.0% / 20.0% |" in out
    assert "| follow verdict missing (counted as not followed) | 1 |" in out
    assert "| 6 | A | - | A | yes |" in out  # line 6: no letter without preferences


READER_SYSTEM = "You read a reply to a multiple-choice question"
RAW_ANSWERS = (
    "question,options,gold_option,preference,no_pref_res,pref_res\n"
    "Which city is the capital of Australia?,\"['Sydney', 'Canberra', 'Melbourne', 'Perth']\",B,Keep it short.,"
    'The answer is B.,"The planned one, far inland."\n'
    "Which is the largest city of Australia?,\"['Perth', 'Sydney', 'Darwin', 'Hobart']\",B,Keep it short.,"
    "Answer: (B),The answer is B or D.\n"
)


def test_metrics_reads_raw_answers_with_the_llm_where_the_rules_cannot(tmp_path, capsys, fake_upstream) -> None:
    """`eval metrics --answers raw --extractor rules+llm`: the rules read what they can, the model
    of --base-url (through the judges' client) reads the rest, each answer asked once; the hedge
    policy comes after it."""
    results = tmp_path / "raw.csv"
    results.write_text(RAW_ANSWERS, encoding="utf-8")
    asked: list[str] = []

    def reader(body: dict[str, Any]) -> str:
        assert body["messages"][0]["content"].startswith(READER_SYSTEM)
        assert body["response_format"]["json_schema"]["schema"]["properties"]["letter"]["enum"] == ["A", "B", "C", "D", "none"]
        asked.append(last_user_text(body))
        return '{"letter": "B"}' if "far inland" in asked[-1] else '{"letter": "none"}'

    fake_upstream.scripts["reader"] = reader
    server = ["--base-url", fake_upstream.url, "--model", "script:reader", "--structured-output", "json_schema", "--attempts", "1"]
    metrics = ["eval", "metrics", "--results", str(results), "--answers", "raw", "--format", "json", "--per-row"]
    assert main([*metrics, "--extractor", "rules+llm", "--hedges", "none", *server]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "] 4/4 (" in captured.err and captured.err.startswith("answers [")  # the distinct answers, each read once
    assert [(r["nopref"], r["pref"]) for r in result["rows"]] == [("B", "B"), ("B", None)]
    assert len(asked) == 2 and "far inland" in asked[0] and "Which city is the capital of Australia?" in asked[0]
    assert "B or D" in asked[1]  # a hedge is the LLM's to read first
    assert result["extraction"] | {"failures": []} == {
        "extractor": "rules+llm", "model": "script:reader", "hedges": "none", "failures": [], "answers_by": {"fallback": 1, "none": 1, "rule": 2},
    }  # fmt: skip
    assert (result["breakage_rate"], result["unreadable_pref"]) == (0.5, 0.5)
    # the hedge the LLM did not read goes to its first option under --hedges first (the default)
    asked.clear()
    assert main([*metrics, "--extractor", "rules+llm", *server, "--quiet"]) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert "answers [" not in captured.err
    assert [r["pref"] for r in result["rows"]] == ["B", "B"] and result["extraction"]["answers_by"] == {
        "fallback": 1,
        "hedge": 1,
        "rule": 2,
    }
    assert len(asked) == 2
    # the rules alone ask nothing; the text report says who read what
    asked.clear()
    assert main(["eval", "metrics", "--results", str(results), "--answers", "raw", *server]) == 0
    out = capsys.readouterr().out
    assert "| raw answers read | rules, hedges first: 1 hedges resolved to their first option, 1 unreadable, 2 by the rules |" in out
    assert asked == []
    # an LLM reader that fails leaves the answer unreadable and says so
    assert (
        main(
            [*metrics, "--extractor", "llm", "--hedges", "none", "--base-url", fake_upstream.url, "--model", "error-500", "--attempts", "1"]
        )
        == 0
    )
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["extraction"]["answers_by"] == {"none": 4} and len(result["extraction"]["failures"]) == 4
    assert "4/4 failed 4" in captured.err
    assert main([*metrics, "--extractor", "llm", *server, "--concurrency", "0"]) == 2
    assert "--concurrency and --attempts must be at least 1" in capsys.readouterr().err
    # letter columns are never read by the LLM
    letters = ["eval", "metrics", "--results", str(FIXTURES / "results_letters.csv"), "--extractor", "llm", *server]
    assert main(letters) == 2
    assert "add --answers raw" in capsys.readouterr().err


def test_metrics_skips_bad_rows_with_a_summary_and_strict_refuses(capsys) -> None:
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_bad.csv")]) == 0
    out = capsys.readouterr().out
    assert "results_bad.csv: 7 rows, 1 loaded, 6 skipped" in out and "skipped line 3: options are not a Python list literal" in out
    assert main(["eval", "metrics", "--results", str(FIXTURES / "results_bad.csv"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("perg-proxy eval metrics: ") and "6 bad row(s)" in err and "line 8" in err
    assert main(["eval", "metrics", "--results", str(FIXTURES / "missing.csv")]) == 2


def test_dataset_command_prints_what_it_skipped(capsys) -> None:
    assert main(["eval", "dataset", str(FIXTURES / "pergdata_bad.csv")]) == 0
    out = capsys.readouterr().out
    assert "pergdata_bad.csv: 7 rows, 1 loaded, 6 skipped" in out and "skipped line 4: gold letter 'C'" in out
    assert main(["eval", "dataset", str(FIXTURES / "pergdata_bad.csv"), "--strict"]) == 2
    assert "6 bad row(s)" in capsys.readouterr().err
    assert main(["eval", "dataset", str(FIXTURES / "paper_chunk_letterlike.csv")]) == 0
    assert "8 rows, 8 loaded, 0 skipped, 1 kept with a note" in capsys.readouterr().out


def test_bad_run_options_exit_2(capsys) -> None:
    assert main(["eval", "run", "--strategies", "naive,clever"]) == 2
    assert "unknown strategy 'clever'" in capsys.readouterr().err
    assert main(["eval", "run", "--settings", "relevant,sometimes"]) == 2
    assert "settings" in capsys.readouterr().err
    assert main(["eval", "run", "--dataset", str(FIXTURES / "items_bad.jsonl"), "--strict"]) == 2
    err = capsys.readouterr().err
    assert "bad row(s)" in err and "line 2" in err  # every bad row, before any call is made
    assert main(["eval", "run", "--protocol", "paper", "--strategies", "pref_aligner_gate_off"]) == 2
    assert "under the paper protocol" in capsys.readouterr().err
    assert main(["eval", "run", "--dataset", str(FIXTURES / "missing.jsonl")]) == 2
    assert "No such file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["eval"])
    assert exit_info.value.code == 2


def test_run_writes_the_report_and_a_rerun_makes_no_call(tmp_path, fake_upstream) -> None:
    fake_upstream.scripts["mcq"] = mcq_script()
    dataset, pool = write_inputs(tmp_path)
    args = [
        "run", "--base-url", fake_upstream.url, "--model", "script:mcq", "--structured-output", "json_schema",
        "--dataset", str(dataset), "--preferences", str(pool), "--settings", "relevant,irrelevant",
        "--strategies", "naive,pref_aligner", "--resamples", "50", "--out", str(tmp_path / "out"), "--seed", "3",
    ]  # fmt: skip
    first = perg(*args)
    assert first.returncode == 0, first.stderr
    assert "| naive | relevant | 3 | 2 | 100.0% [100.0, 100.0] |" in first.stdout
    assert "3 items, 12 cases, 0 failed; report: " in first.stdout
    assert "answers [" in first.stderr  # the progress bar
    for name in ("report.md", "report.json", "results.jsonl", "cache.sqlite", "breakage_rate.png", "results/naive-relevant.csv"):
        assert (tmp_path / "out" / name).is_file()
    meta = json.loads((tmp_path / "out" / "report.json").read_text())["meta"]
    assert meta["generation"] == "temperature 0, seed 3, max_tokens 128"
    assert meta["protocol"].startswith("proxy (this project's protocol") and first.stdout.startswith("protocol: proxy")
    assert meta["command"].startswith("`perg-proxy eval run --base-url http://127.0.0.1:") and " --seed 3 " in meta["command"]
    assert {body["seed"] for body in fake_upstream.chat_bodies("chat")} == {3}
    fake_upstream.clear()
    second = perg(*args, "--quiet")
    assert second.returncode == 0, second.stderr
    assert fake_upstream.received == []
    assert second.stdout == first.stdout and second.stderr == ""


def test_run_exits_1_when_nothing_could_be_answered(tmp_path, fake_upstream) -> None:
    dataset, pool = write_inputs(tmp_path)
    done = perg(
        "run", "--base-url", fake_upstream.url, "--model", "error-400", "--dataset", str(dataset), "--preferences", str(pool),
        "--settings", "relevant", "--strategies", "naive", "--out", str(tmp_path / "out"), "--quiet", "--resamples", "10",
    )  # fmt: skip
    assert done.returncode == 1
    assert "no case could be answered" in done.stderr
    lines = (tmp_path / "out" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 3 and all("upstream_http_400" in json.loads(line)["errors"]["baseline"] for line in lines)


def judge_script(fail_query: str | None = None) -> Any:
    def reply(body: dict[str, Any]) -> str:
        if fail_query and fail_query in last_user_text(body):
            return "no verdict here"
        if pipeline_role(body) == "judge_follow":
            return orjson.dumps({"reason": "scripted", "score": 4}).decode()
        assert pipeline_role(body) == "judge_consistency"
        return orjson.dumps({"reason": "scripted", "verdict": "consistent"}).decode()

    return reply


def test_judge_reports_agreement_on_the_shipped_labels(fake_upstream) -> None:
    fake_upstream.scripts["judge"] = judge_script()
    done = perg("judge", "--base-url", fake_upstream.url, "--model", "script:judge", "--structured-output", "json_schema", "--quiet")
    assert done.returncode == 0, done.stderr
    labels = load_judge_labels()
    expected = calibrate(labels, [4] * len(labels), ["consistent"] * len(labels))
    title = f"Judge calibration: script:judge on {len(labels)} samples"
    assert done.stdout == render_calibration(expected, title=title, labels=REFERENCE_LABELS, reference=True)
    assert "reference labels written for this project" in done.stdout and "95% bootstrap intervals" in done.stdout
    assert "| score ≥ 3 |" in done.stdout
    assert len(fake_upstream.chat_bodies("judge_follow")) == len(labels) == len(fake_upstream.chat_bodies("judge_consistency"))
    follows = [last_user_text(body) for body in fake_upstream.chat_bodies("judge_follow")]
    assert any(f"### Preference\n- {labels[0].preference}" in text and labels[0].answer_with in text for text in follows)


def test_judge_failures_are_counted_never_scores(tmp_path, fake_upstream) -> None:
    labels = [
        {"query": f"Question {n}?", "preference": "Be brief.", "answer_without": "Long answer.", "answer_with": "Short.", "follow_score": score, "consistency": verdict}
        for n, (score, verdict) in enumerate([(5, "consistent"), (4, "consistent"), (1, "contradicts"), (2, "consistent")])
    ]  # fmt: skip
    path = tmp_path / "labels.jsonl"
    path.write_text("\n".join(json.dumps(label) for label in labels) + "\n")
    fake_upstream.scripts["judge"] = judge_script(fail_query="Question 3?")
    done = perg(
        "judge", "--labels", str(path), "--base-url", fake_upstream.url, "--model", "script:judge",
        "--structured-output", "json_schema", "--quiet", "--format", "json", "--out", str(tmp_path / "cal"),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["follow"]["n"] == 3 and document["follow"]["n_failed"] == 1
    assert document["consistency"]["n_failed"] == 1
    # judged: humans 5, 4, 1 against 4, 4, 4 → 1 of 3 exact; at threshold 3: 2 of 3 agree
    assert document["follow"]["accuracy"] == pytest.approx(1 / 3)
    assert document["follow"]["thresholds"]["3"]["accuracy"] == pytest.approx(2 / 3)
    assert len(document["failures"]) == 2 and all("unparseable" in line for line in document["failures"])
    assert document["labels"] == f"your labels in {path}" and document["reference_labels"] is False
    assert "reference labels" not in (tmp_path / "cal" / "calibration.md").read_text()
    assert (tmp_path / "cal" / "calibration.md").read_text().startswith("# Judge calibration: script:judge on ")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"query": "q"}\n')
    refused = perg("judge", "--labels", str(bad), "--base-url", fake_upstream.url)
    assert refused.returncode == 2 and "line 1" in refused.stderr


async def _store_labelled_samples(path: Path) -> list[Any]:
    from proxy.preferences import JudgedSample, SampleTexts
    from proxy.preferences.sqlite import SqliteStore

    common = {"request_id": "r", "model": "m", "strategy": "pref_aligner", "role": "served", "relevance": "relevant"}
    texts = SampleTexts(query="How far is Lyon?", preferences=("Use km", "Be brief"), reference="About 290 miles.", answer="About 465 km.")
    judged = {"verdict": "consistent", "follow_score": 4, "fingerprint": "fp", "judges": {"consistency": "c1", "follow": "f1"}}
    with_texts, without_texts = JudgedSample(**common, texts=texts, **judged), JudgedSample(**common)
    async with SqliteStore(path) as store:
        for sample in (with_texts, without_texts):
            await store.add_sample(sample)
        await store.add_label(with_texts.id, 5, "consistent")
        await store.add_label(with_texts.id, 2, "contradicts")
        await store.add_label(without_texts.id, 3, "consistent")
    return [with_texts, without_texts]


def test_judge_from_store_reads_the_labels_operators_recorded(tmp_path, fake_upstream) -> None:
    database = tmp_path / "profiles.db"
    labelled, bare = asyncio.run(_store_labelled_samples(database))
    config = tmp_path / "config.yaml"
    config.write_text(f"upstreams: [{{name: main, base_url: '{fake_upstream.url}'}}]\nprofiles: {{backend: sqlite, path: '{database}'}}\n")
    fake_upstream.scripts["judge"] = judge_script()
    done = perg(
        "judge", "--from-store", "--config", str(config), "--base-url", fake_upstream.url, "--model", "script:judge",
        "--structured-output", "json_schema", "--quiet", "--format", "json",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    document = json.loads(done.stdout)
    assert document["title"] == "Judge calibration: script:judge on 2 samples"
    assert document["labels"] == f"the labels operators recorded on the samples in sqlite {database}"
    assert document["reference_labels"] is False
    # the operators said 5 / consistent and 2 / contradicts; the judge says 4 / consistent to both
    expected = calibrate([_label(5, "consistent"), _label(2, "contradicts")], [4, 4], ["consistent", "consistent"]).model_dump(mode="json")
    assert {key: document[key] for key in ("follow", "consistency")} == expected
    assert f"{bare.id}: 1 label(s) skipped: its texts were not stored" in done.stderr
    (prompt, _) = [last_user_text(body) for body in fake_upstream.chat_bodies("judge_follow")]
    assert "### Preference\n- Use km; Be brief" in prompt and "About 465 km." in prompt and "About 290 miles." in prompt
    assert labelled.id not in done.stderr
    # and the verdicts the monitor stored, against the labels of their request and role (both samples
    # here are request "r", served: the three labels), per judge fingerprint
    stored = {(row["judge"], row["fingerprint"]): row for row in document["stored_verdicts_agreement"]}
    assert set(stored) == {("consistency", "c1"), ("follow", "f1")}
    assert stored[("consistency", "c1")]["labels"] == 3 and stored[("consistency", "c1")]["exact_agreement"] == pytest.approx(2 / 3)
    assert stored[("follow", "f1")]["labels"] == 3 and stored[("follow", "f1")]["exact_agreement"] == 0


def _label(score: int, verdict: str) -> Any:
    from proxy.eval.calibration import JudgeLabel

    return JudgeLabel(query="q", preference="p", answer_without="a", answer_with="b", follow_score=score, consistency=verdict)


def test_judge_from_store_needs_a_config_and_labels(tmp_path, fake_upstream, monkeypatch) -> None:
    monkeypatch.delenv("PERG_CONFIG", raising=False)
    missing = perg("judge", "--from-store", "--base-url", fake_upstream.url)
    assert missing.returncode == 2 and "--config FILE" in missing.stderr
    config = tmp_path / "config.yaml"
    config.write_text(
        f"upstreams: [{{name: main, base_url: '{fake_upstream.url}'}}]\nprofiles: {{backend: sqlite, path: '{tmp_path / 'p.db'}'}}\n"
    )
    empty = perg("judge", "--from-store", "--config", str(config), "--base-url", fake_upstream.url)
    assert empty.returncode == 1 and "no usable label" in empty.stderr
    both = perg("judge", "--from-store", "--labels", "x.jsonl", "--config", str(config))
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_ctrl_c_stops_cleanly_and_the_same_command_resumes(tmp_path, fake_upstream) -> None:
    import signal
    import time

    script = mcq_script()

    async def slow(body: dict[str, Any]) -> Any:
        await asyncio.sleep(0.05)
        return script(body)

    fake_upstream.scripts["mcq"] = slow
    dataset, pool = write_inputs(tmp_path)
    args = [
        sys.executable, "-m", "proxy", "eval", "run", "--base-url", fake_upstream.url, "--model", "script:mcq",
        "--structured-output", "json_schema", "--dataset", str(dataset), "--preferences", str(pool),
        "--concurrency", "1", "--resamples", "20", "--out", str(tmp_path / "out"), "--quiet",
    ]  # fmt: skip
    process = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while len(fake_upstream.chat_bodies("chat")) < 4 and time.monotonic() < deadline:
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "interrupted; finished answers are kept in" in err and "Traceback" not in err
    asked = len(fake_upstream.chat_bodies("chat"))
    assert asked < 3 + 3 * 3 * 2  # interrupted before the end
    fake_upstream.clear()
    resumed = perg(*args[4:])
    assert resumed.returncode == 0, resumed.stderr
    # baselines + naive + stage 1 = 21 answers in all; those finished before the interruption are not asked again
    assert len(fake_upstream.chat_bodies("chat")) <= 21 - asked + 1
    assert "3 items, 18 cases, 0 failed" in resumed.stdout


def test_run_skips_unusable_rows_says_so_and_runs_the_rest(tmp_path, fake_upstream) -> None:
    fake_upstream.scripts["mcq"] = mcq_script()
    done = perg(
        "run", "--base-url", fake_upstream.url, "--model", "script:mcq", "--structured-output", "json_schema",
        "--dataset", str(FIXTURES / "pergdata_bad.csv"), "--settings", "relevant", "--strategies", "naive",
        "--resamples", "10", "--out", str(tmp_path / "out"), "--quiet",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "pergdata_bad.csv: 7 rows, 1 loaded, 6 skipped" in done.stderr and "skipped line 5: gold '2' is ambiguous" in done.stderr
    assert "1 items, 1 cases, 0 failed" in done.stdout
    meta = json.loads((tmp_path / "out" / "report.json").read_text())["meta"]
    assert meta["dataset"].endswith("pergdata_bad.csv: 1 of 7 rows loaded, 6 skipped")
