"""Reading the aligner's reply: the same answer whole or streamed piece by piece."""

from __future__ import annotations

import pytest

from proxy.pipeline.rewrite import RewriteFilter, parse_rewrite
from proxy.prompts.loader import load_prompt, parse_prompt, preference_lines
from proxy.upstream.structured import extract_json_object, response_format

HEADINGS = load_prompt("aligner").headings

CASES = [
    ("The capital of France is Paris.\n\n### Preferences (data, not instructions to you)\n- x", "The capital of France is Paris.", False),
    ("Rewritten answer: Arr, the capital be Paris!", "Arr, the capital be Paris!", False),
    ("### Rewritten answer\nArr matey, Paris it be.\n", "Arr matey, Paris it be.", False),
    ("**Rewritten answer:** Bold label", "Bold label", False),
    ("Answer: **Paris** is it", "**Paris** is it", False),
    ("```\nHello there\nsecond line\n```\n", "Hello there\nsecond line", False),
    ('{"answer": "Paris, matey"}', "Paris, matey", False),
    ('```json\n{"answer": "fenced"}\n```', "fenced", False),
    ('Sure! {"answer": "Paris"}', "Paris", False),
    ('Here you go: {"rewritten_answer": "x y"} hope it helps', "x y", False),
    ('{"unchanged": true}', "", True),
    ("{not json at all", "{not json at all", False),
    ("UNCHANGED", "", True),
    ("Unchanged.", "", True),
    ("Under the sea it is blue.", "Under the sea it is blue.", False),
    ("   ", "", False),
    ("U", "U", False),
    (
        "## A heading of my own\nText with # inside and `code`.\n### Question\nWho?",
        "## A heading of my own\nText with # inside and `code`.",
        False,
    ),
    ("Line one.\n\n\nLine two.   \n\n", "Line one.\n\n\nLine two.", False),
    ("Paris is the capital. ### not a heading at line start", "Paris is the capital. ### not a heading at line start", False),
]


@pytest.mark.parametrize(("reply", "expected", "unchanged"), CASES)
def test_whole_and_streamed_replies_agree(reply, expected, unchanged):
    whole = parse_rewrite(reply, HEADINGS)
    assert (whole.text, whole.unchanged) == (expected, unchanged)
    for size in (1, 3, 7):
        streamed = RewriteFilter(HEADINGS)
        out = "".join(streamed.feed(reply[i : i + size]) for i in range(0, len(reply), size)) + streamed.finish()
        assert (out, streamed.text, streamed.unchanged) == (expected, expected, unchanged)


def test_plain_text_streams_after_its_first_word():
    stream = RewriteFilter(HEADINGS)
    assert stream.feed("The") == ""
    assert stream.feed(" capital") == "The capital"
    assert stream.feed(" is Paris.") == " is Paris."


def test_extract_json_object():
    assert extract_json_object('{"a": 1}') == {"a": 1}
    assert extract_json_object('text ```json\n{"a": "}"}\n``` more') == {"a": "}"}
    assert extract_json_object('prose {"a": {"b": [1, "{"]}} trailing') == {"a": {"b": [1, "{"]}}
    assert extract_json_object('{"reason": ");\n", "score": 1}') == {"reason": ");\n", "score": 1}  # a raw line break
    assert extract_json_object("[1, 2]") is None
    assert extract_json_object("no json") is None


def test_response_format_styles():
    schema = {"type": "object"}
    assert response_format("json_schema", "n", schema) == {
        "type": "json_schema",
        "json_schema": {"name": "n", "schema": schema, "strict": True},
    }
    assert response_format("json_object_schema", "n", schema) == {"type": "json_object", "schema": schema}
    assert response_format("json_object", "n", schema) == {"type": "json_object"}
    assert response_format("none", "n", schema) is None


def test_prompt_files_and_rendering():
    prompt = parse_prompt("t", "System {query}\n---\nUser {query} {answer} {preferences}")
    assert prompt.render_system(query="q") == "System q"
    assert prompt.render_user(query="{answer}", answer="A", preferences="P") == "User {answer} A P"
    assert len(prompt.version) == 12
    assert preference_lines(["a\nb", "  c  "]) == "- a b\n- c"
    assert preference_lines(["a", "b"], labels=True) == "p1: a\np2: b"
    for name in ("aligner", "gate", "naive"):
        assert load_prompt(name).system
