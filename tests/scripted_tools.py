"""A scripted tool-using model for the fake upstream, shared by the real-client tests.

Register it as `fake_upstream.scripts["weather"] = weather_loop` and ask for model
`script:weather`: it calls the client's `weather` tool first and answers from the tool's result
once the client has sent it back, on chat completions and on the native Responses API alike; the
proxy's own calls on that model (gate, stage 2) get the fake's usual scripted replies.
"""

from __future__ import annotations

import json
from typing import Any

from tests.fake_upstream import pipeline_role, scripted_reply

CALL_ID = "call_w1"


def weather_loop(body: dict[str, Any]) -> Any:
    if "messages" in body:  # chat completions: via_chat, and the proxy's own calls
        if pipeline_role(body) != "chat":
            return {"role": "assistant", "content": scripted_reply(body)}
        results = [json.loads(m["content"]) for m in body["messages"] if m.get("role") == "tool"]
        if results:
            return forecast_text(results[-1])
        call = {"id": CALL_ID, "type": "function", "function": {"name": "weather", "arguments": '{"city": "Paris"}'}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    results = [json.loads(item["output"]) for item in body["input"] if item.get("type") == "function_call_output"]
    if results:
        return forecast_text(results[-1])
    return [
        {
            "id": "fc_w1",
            "type": "function_call",
            "status": "completed",
            "call_id": CALL_ID,
            "name": "weather",
            "arguments": '{"city": "Paris"}',
        }
    ]


def forecast_text(forecast: dict[str, Any]) -> str:
    """What the model answers from the tool's result: {"city", "forecast", "celsius"}."""
    return f"It is {forecast['forecast']} in {forecast['city']}, {forecast['celsius']} degrees."


def requested_schema(body: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema an upstream request constrains its answer to: a Responses `text.format`, or a
    chat `response_format` in either form the proxy may send (json_schema, or json_object with a
    schema for upstreams such as llama_cpp.server)."""
    if "text" in body:
        return body["text"]["format"]["schema"]
    constraint = body["response_format"]
    return constraint["json_schema"]["schema"] if constraint["type"] == "json_schema" else constraint["schema"]
