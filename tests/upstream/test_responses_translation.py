"""The Responses <-> chat completions translation (`via_chat`), as pure functions."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidRequest
from proxy.upstream.events import EventParser
from proxy.upstream.responses_chat import to_chat
from proxy.upstream.responses_events import replay
from proxy.upstream.responses_from_chat import ChatStreamTranslator, from_chat, output_text, served_text


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ({"text": {"format": {"type": "json_schema", "name": "n", "schema": {"type": "object"}, "strict": True}}},
         {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}, "strict": True}}}),
        ({"text": {"format": {"type": "json_object"}}}, {"response_format": {"type": "json_object"}}),
        ({"text": {"format": {"type": "text"}, "verbosity": "low"}}, {"verbosity": "low"}),
        ({"max_output_tokens": 7}, {"max_completion_tokens": 7}),
        ({"reasoning": {"effort": "low", "summary": "auto"}}, {"reasoning_effort": "low"}),
        ({"tool_choice": "required"}, {"tool_choice": "required"}),
        ({"tool_choice": {"type": "function", "name": "f"}}, {"tool_choice": {"type": "function", "function": {"name": "f"}}}),
        ({"temperature": 0.1, "top_p": 0.9, "parallel_tool_calls": False, "user": "u", "top_k": 5},
         {"temperature": 0.1, "top_p": 0.9, "parallel_tool_calls": False, "user": "u", "top_k": 5}),
        ({"store": True, "metadata": {"a": "b"}, "include": ["x"], "truncation": "auto"}, {}),
        ({"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}),
    ],
)  # fmt: skip
def test_request_fields(given, expected):
    chat = to_chat({"model": "m", "input": "hi", **given})
    assert chat == {"model": "m", "messages": [{"role": "user", "content": "hi"}], **expected}


def test_input_items_become_messages():
    chat = to_chat(
        {
            "model": "m",
            "instructions": "sys",
            "input": [
                {"type": "message", "role": "developer", "content": "dev"},
                {
                    "role": "user",
                    "content": [{"type": "input_text", "text": "look"}, {"type": "input_image", "image_url": "https://x/i.png"}],
                },
                {"role": "user", "content": [{"type": "input_text", "text": "one"}, {"type": "input_text", "text": "two"}]},
                {"id": "rs", "type": "reasoning", "summary": []},
                {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Let me check."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": [{"type": "input_text", "text": "done"}]},
            ],
        }
    )
    assert chat["messages"] == [
        {"role": "system", "content": "sys"},
        {"role": "developer", "content": "dev"},
        {"role": "user", "content": [{"type": "text", "text": "look"}, {"type": "image_url", "image_url": {"url": "https://x/i.png"}}]},
        {"role": "user", "content": "one\ntwo"},  # text parts only: one string (llama_cpp's templates take no list)
        {"role": "assistant", "content": "Let me check.", "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "done"},
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"previous_response_id": "r"}, "previous_response_id"),
        ({"background": True}, "background"),
        ({"input": [{"type": "computer_call_output"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]}, "input[0].content[0].type"),
        ({"tools": [{"type": "function", "name": "f"}, {"type": "file_search"}]}, "tools[1].type"),
        ({"tool_choice": {"type": "web_search"}}, "tool_choice"),
    ],
)
def test_untranslatable_fields_are_400s_naming_them(body, param):
    with pytest.raises(InvalidRequest) as caught:
        to_chat({"model": "m", "input": "hi", **body})
    assert caught.value.param == param


def test_background_false_and_store_are_fine():
    assert "background" not in to_chat({"model": "m", "input": "hi", "background": False, "store": True})


def test_a_completion_becomes_a_response():
    completion = {
        "id": "chatcmpl-1",
        "model": "m",
        "choices": [
            {
                "index": 0,
                "finish_reason": "length",
                "message": {
                    "role": "assistant", "content": "partial", "refusal": None,
                    "tool_calls": [{"id": "c9", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}],
                },
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7, "prompt_tokens_details": {"cached_tokens": 1}},
    }  # fmt: skip
    response = from_chat(completion, {"model": "m", "instructions": "i", "metadata": {"k": "v"}})
    assert response["id"] == "resp_chatcmpl-1" and response["object"] == "response"
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert [item["type"] for item in response["output"]] == ["message", "function_call"]
    assert response["output"][1]["call_id"] == "c9" and response["output"][1]["arguments"] == '{"a": 1}'
    assert output_text(response) == "partial"
    assert response["usage"]["input_tokens"] == 3 and response["usage"]["input_tokens_details"] == {"cached_tokens": 1}
    assert response["instructions"] == "i" and response["metadata"] == {"k": "v"} and response["store"] is False


def events(raw: bytes) -> list[dict]:
    return [orjson.loads(event.data) for event in EventParser().feed(raw) if event.data]


def test_chunks_become_events_in_order():
    translator = ChatStreamTranslator({"model": "m"})
    base = {"id": "c", "model": "m"}
    chunks = [
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "Hel"}}]},
        {**base, "choices": [{"index": 0, "delta": {"content": "lo"}}]},
        {
            **base,
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": '{"a"'}}]}}],
        },
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}}]},
        {**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]},
        {**base, "choices": [], "usage": {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}},
    ]
    raw = b"".join(translator.feed(chunk) for chunk in chunks) + translator.finish()
    seen = events(raw)
    kinds = [event["type"] for event in seen]
    assert kinds == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added", "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.completed",
    ]  # fmt: skip
    assert [event["sequence_number"] for event in seen] == list(range(len(seen)))
    final = seen[-1]["response"]
    assert output_text(final) == "Hello" and final["output"][1]["arguments"] == '{"a": 1}'
    assert final["usage"]["total_tokens"] == 5
    assert served_text(None, bytearray(raw)) == "Hello"


def test_replay_gives_the_same_response_back():
    response = from_chat(
        {"id": "x", "choices": [{"message": {"content": "Hi there", "refusal": "no"}, "finish_reason": "stop"}], "usage": None},
        {"model": "m"},
    )
    seen = events(b"".join(replay(response)))
    final = seen[-1]["response"]
    assert final["output"] == response["output"] and final["id"] == response["id"]
    assert [e["type"] for e in seen].count("response.refusal.done") == 1
