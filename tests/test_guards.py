"""The guards on every rewrite, the verifier, and the gate's rules, on the scripted fake upstream,
streamed and not: no rewrite that fails a check reaches the client; the draft is served instead
(`x-perg-aligned: fallback`), counted with its reason."""

from __future__ import annotations

import httpx2
import orjson
import pytest

from proxy.pipeline.guards import FinalAnswer, answer_kept, check_rewrite, final_answer, structured_draft
from tests.conftest import CLIENT_KEY
from tests.fake_upstream import pipeline_role, scripted_reply

BULLETS = ("Use bullet points.",)
MCQ = "Which planet is the largest?\n\nA. Mars\nB. Jupiter\nC. Venus\nD. Earth\n\nAnswer with the letter of the correct option (A, B, C or D)."
COLORS = "Name three primary colors."
COLORS_DRAFT = "The three primary colors are red, blue, and yellow."
LONG_DRAFT = (
    "Rain forms when water vapour in the air cools and condenses into droplets around tiny particles of dust; "
    "the droplets merge until they are heavy enough to fall as rain."
)


# ------------------------------------------------------------------------------------ the checks


@pytest.mark.parametrize(
    ("draft", "rewrite", "finish", "query", "reason"),
    [
        (COLORS_DRAFT, "Here's a rewritten answer to the previous question:", "stop", COLORS, "lead_in_only"),
        (COLORS_DRAFT, "**Rewritten answer:**\n\n---", "stop", COLORS, "lead_in_only"),
        (COLORS_DRAFT, "- Red\n- Blue\n- Yellow", "length", COLORS, "truncated_reply"),
        (COLORS_DRAFT, "Name three primary colors.", "stop", COLORS, "echo"),
        (COLORS_DRAFT, "### Preferences\n- Use bullet points.", "stop", COLORS, "echo"),
        (COLORS_DRAFT, "- Red\n- Green\n- Yellow", "stop", COLORS, "answer_dropped"),
        (LONG_DRAFT, "- Rain falls.", "stop", "Why does it rain?", "too_short"),
        ("The answer is B.", "- The answer is C.", "stop", MCQ, "answer_changed"),
        ("B. Jupiter", "- Mars is the largest planet.", "stop", MCQ, "answer_changed"),
        ("B. Jupiter", "- A gas giant, the largest planet.", "stop", MCQ, "answer_dropped"),
        ("The answer is B.", "- A. Mars\n- B. Jupiter", "stop", MCQ, "answer_changed"),
        ("It is 42 km away.", "- About 42 miles away.", "stop", "How far is it?", "answer_changed"),
        ("It is 42 km away.", "- About 40 km away.", "stop", "How far is it?", "answer_dropped"),
        ("Yes, water boils at 100 °C at sea level.", "- No: it depends.", "stop", "Does water boil at 100 °C?", "answer_changed"),
    ],
)
def test_a_rewrite_failing_a_check_is_named(draft, rewrite, finish, query, reason):
    assert check_rewrite(draft, rewrite, finish, query, BULLETS) == reason


@pytest.mark.parametrize(
    ("draft", "rewrite", "query"),
    [
        (COLORS_DRAFT, "- Red\n- Blue\n- Yellow", COLORS),
        ("The answer is B.", "- The answer is **B**: Jupiter.", MCQ),
        ("B. Jupiter", "- Jupiter, the gas giant.", MCQ),  # the option's words instead of its letter
        ("B. Jupiter", "- B. Jupiter", MCQ),  # an option line is an answer, not an echo of the question
        ("It is 42 km away.", "- It is 42 km away.", "How far is it?"),
        ("Yes, water boils at 100 °C at sea level.", "- Yes: at sea level, 100 °C.", "Does water boil at 100 °C?"),
        (LONG_DRAFT, "- Water vapour cools and condenses on dust.\n- The droplets merge and fall as rain.", "Why does it rain?"),
    ],
)
def test_a_faithful_rewrite_passes(draft, rewrite, query):
    assert check_rewrite(draft, rewrite, "stop", query, BULLETS) is None


def test_a_preference_for_brevity_allows_a_much_shorter_rewrite():
    assert check_rewrite(LONG_DRAFT, "- Rain falls.", "stop", "Why does it rain?", ("Keep answers brief.",)) is None
    assert check_rewrite(LONG_DRAFT, "- Rain falls.", "stop", "Why does it rain?", ("Be formal.",)) == "too_short"


def test_drafts_without_a_recognisable_final_answer_are_not_held_to_one():
    assert final_answer(LONG_DRAFT, "Why does it rain?") is None
    assert final_answer("A. Mars\nB. Jupiter", MCQ) is None  # several options named: no commitment
    assert final_answer("The answer is B.", MCQ) == FinalAnswer("letter", "B")
    assert answer_kept(FinalAnswer("letter", "B"), "B", "no options in this question") == "answer_dropped"


@pytest.mark.parametrize(
    ("draft", "structured"),
    [
        ('{"name": "Ada", "born": 1815}', True),
        ("[1, 2, 3]", True),
        ('```json\n{"a": 1}\n```', True),
        ("```python\nprint('hi')\n```", True),
        ("Here it is:\n```python\nprint('hi')\n```", False),
        ("```a```\ntext\n```b```", False),
        ("42", False),
        ("{not json", False),
    ],
)
def test_structured_drafts(draft, structured):
    assert structured_draft(draft) is structured


# ------------------------------------------------------------------------ through the proxy


def scripted(draft: str, rewrite: str, *, verdict: str | None = None, finish_length: bool = False):
    """A model that answers the client with `draft`, the aligner with `rewrite`, the verifier
    with `verdict`, and the gate as the echo model does."""

    def answer(body):
        role = pipeline_role(body)
        if role == "chat":
            return draft
        if role == "aligner":
            return {"role": "assistant", "content": rewrite, **({"_finish": "length"} if finish_length else {})}
        if role == "judge_consistency" and verdict is not None:
            return orjson.dumps({"reason": "scripted", "verdict": verdict}).decode()
        return scripted_reply(body)

    return answer


def ask(proxy, query: str, *, stream: bool, prefs=BULLETS, **fields):
    body = {"model": "script:case", "messages": [{"role": "user", "content": query}], "personalization": {"preferences": list(prefs)}}
    body.update(fields)
    headers = {"Authorization": f"Bearer {CLIENT_KEY}", "Content-Type": "application/json"}
    if not stream:
        response = httpx2.post(f"{proxy.base_url}/chat/completions", content=orjson.dumps(body), headers=headers, timeout=30)
        assert response.status_code == 200, response.text
        data = response.json()
        return response.headers["x-perg-aligned"], data["choices"][0]["message"].get("content"), data
    body["stream"] = True
    body["stream_options"] = {"include_usage": True}
    with httpx2.stream("POST", f"{proxy.base_url}/chat/completions", content=orjson.dumps(body), headers=headers, timeout=30) as response:
        assert response.status_code == 200
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
        events = [orjson.loads(line) for line in lines]
        header = response.headers["x-perg-aligned"]
    text = "".join((choice.get("delta") or {}).get("content") or "" for event in events for choice in event.get("choices") or [])
    return header, text, events[-1]


CASES = [
    pytest.param(COLORS, COLORS_DRAFT, "Here's a rewritten answer to the previous question:", "lead_in_only", id="lead-in only"),
    pytest.param(MCQ, "The answer is B.", "- The answer is C.", "answer_changed", id="option letter changed"),
    pytest.param("How far is it?", "It is 42 km away.", "- About 40 km away.", "answer_dropped", id="number changed"),
    pytest.param(COLORS, COLORS_DRAFT, "Name three primary colors.", "echo", id="echoed prompt"),
    pytest.param("Why does it rain?", LONG_DRAFT, "- Rain falls.", "too_short", id="much shorter"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize(("query", "draft", "rewrite", "reason"), CASES)
def test_a_failing_rewrite_never_reaches_the_client(start_proxy, fake_upstream, stream, query, draft, rewrite, reason):
    fake_upstream.scripts["case"] = scripted(draft, rewrite)
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    header, text, _ = ask(proxy, query, stream=stream)
    assert (header, text) == ("fallback", draft) or (stream and header == "pending")
    assert text == draft and rewrite not in text
    assert proxy.metric("perg_aligner_fallbacks_total", {"reason": reason}) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_truncated_rewrite_serves_the_draft(start_proxy, fake_upstream, stream):
    fake_upstream.scripts["case"] = scripted(COLORS_DRAFT, "- Red\n- Blue\n- Yel", finish_length=True)
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    header, text, _ = ask(proxy, COLORS, stream=stream)
    assert (header, text) == ("fallback", COLORS_DRAFT)
    assert proxy.metric("perg_aligner_fallbacks_total", {"reason": "truncated_reply"}) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_faithful_rewrite_is_served(start_proxy, fake_upstream, stream):
    fake_upstream.scripts["case"] = scripted(COLORS_DRAFT, "- Red\n- Blue\n- Yellow")
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    header, text, last = ask(proxy, COLORS, stream=stream)
    assert (header, text) == ("true", "- Red\n- Blue\n- Yellow")
    assert "draft" not in last["personalization"]  # the draft only with return_draft


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
@pytest.mark.parametrize("draft", ['{"colors": ["red", "blue", "yellow"]}', '```json\n{"colors": ["red"]}\n```'], ids=["json", "fenced"])
def test_a_structured_draft_is_never_rewritten(start_proxy, fake_upstream, stream, draft):
    fake_upstream.scripts["case"] = scripted(draft, "- Red\n- Blue\n- Yellow")
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner"})
    header, text, _ = ask(proxy, COLORS, stream=stream)
    assert (header, text) == ("false", draft)
    assert not fake_upstream.chat_bodies("aligner")


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_a_verifier_saying_contradicts_serves_the_draft(start_proxy, fake_upstream, stream):
    fake_upstream.scripts["case"] = scripted(COLORS_DRAFT, "- Red\n- Blue\n- Yellow, the colors of paint", verdict="contradicts")
    aligner = {"verify": "llm", "verify_streams": "buffer"}
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner", "aligner": aligner})
    header, text, last = ask(proxy, COLORS, stream=stream)
    assert (header, text) == ("fallback", COLORS_DRAFT)
    assert proxy.metric("perg_aligner_fallbacks_total", {"reason": "verifier"}) == 1
    (verify,) = fake_upstream.chat_bodies("judge_consistency")
    assert verify["response_format"]["type"] == "json_object" and "verdict" in verify["response_format"]["schema"]["properties"]
    assert COLORS_DRAFT in verify["messages"][1]["content"]
    assert last["personalization"]["usage"]["verify"]["total_tokens"] > 0


def test_a_consistent_verdict_serves_the_rewrite_and_counts_its_usage(start_proxy, fake_upstream):
    fake_upstream.scripts["case"] = scripted(COLORS_DRAFT, "- Red\n- Blue\n- Yellow", verdict="consistent")
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner", "aligner": {"verify": "llm"}})
    header, text, data = ask(proxy, COLORS, stream=False)
    assert (header, text) == ("true", "- Red\n- Blue\n- Yellow")
    parts = data["personalization"]["usage"]
    assert set(parts) == {"stage1", "gate", "stage2", "verify"}
    for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
        assert data["usage"][key] == sum(part[key] for part in parts.values())


def test_streams_are_not_verified_unless_buffered(start_proxy, fake_upstream):
    fake_upstream.scripts["case"] = scripted(COLORS_DRAFT, "- Red\n- Blue\n- Yellow", verdict="contradicts")
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner", "aligner": {"verify": "llm"}})
    header, text, _ = ask(proxy, COLORS, stream=True)
    assert (header, text) == ("true", "- Red\n- Blue\n- Yellow")
    assert not fake_upstream.chat_bodies("judge_consistency")


def test_without_guards_the_rewrite_is_served_as_before(start_proxy, fake_upstream):
    fake_upstream.scripts["case"] = scripted("The answer is B.", "- The answer is C.")
    proxy = start_proxy(personalization={"default_strategy": "pref_aligner", "aligner": {"guards": False}})
    assert ask(proxy, MCQ, stream=False)[:2] == ("true", "- The answer is C.")
