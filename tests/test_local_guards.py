"""The guards and the gate on the real local model (SmolLM2-135M behind llama_cpp.server), streamed
and not, with the issue's reproduction: "Name three primary colors." with "Use bullet points."
must never serve a lead-in alone. The model is weak and its rewrites vary: the tests assert what
the proxy guarantees (what is served passes every guard, or is the draft), never that a rewrite
is good."""

from __future__ import annotations

import httpx2
import openai
import pytest

from proxy.local_model import MODEL_ALIAS
from proxy.pipeline.guards import check_rewrite, substantive_lines
from tests.conftest import CLIENT_KEY, wait_for

pytestmark = pytest.mark.local_model
COLORS = "Name three primary colors."
BULLETS = ["Use bullet points."]
OPTIONS = {"temperature": 0, "seed": 3, "max_tokens": 80}


@pytest.fixture
def minimal_proxy(start_proxy, local_model):
    """The README's smallest configuration: one upstream, its base URL, nothing else about JSON."""
    return start_proxy(
        upstreams=[{"name": "local", "base_url": local_model.base_url}],
        personalization={"default_strategy": "pref_aligner"},
        server={"heartbeat_seconds": 300},
    )


def test_the_minimal_config_gets_a_working_gate(minimal_proxy):
    probed = lambda: httpx2.get(minimal_proxy.url + "/readyz", timeout=30).json()["structured_output"]["local"]  # noqa: E731
    assert wait_for(lambda: probed()["result"] != "pending", timeout=120)
    assert probed() == {"style": "json_object_schema", "result": "ok"}
    with openai.OpenAI(base_url=minimal_proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=180) as c:
        c.chat.completions.create(
            model=MODEL_ALIAS, messages=[{"role": "user", "content": COLORS}], extra_body={"personalization": {"preferences": BULLETS}},
            **OPTIONS,
        )  # fmt: skip
    decided = sum(minimal_proxy.metric("perg_gate_outcomes_total", {"outcome": o}) for o in ("relevant", "irrelevant"))
    assert decided == 1 and minimal_proxy.metric("perg_gate_outcomes_total", {"outcome": "failed_open"}) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_the_reproduction_never_serves_a_lead_in_alone(minimal_proxy, stream):
    extension = {"personalization": {"preferences": BULLETS, "return_draft": True}}
    messages = [{"role": "user", "content": COLORS}]
    with openai.OpenAI(base_url=minimal_proxy.base_url, api_key=CLIENT_KEY, max_retries=0, timeout=180) as c:
        if stream:
            raw = c.chat.completions.with_raw_response.create(
                model=MODEL_ALIAS, messages=messages, stream=True, extra_body=extension, **OPTIONS
            )
            chunks = list(raw.parse())
            text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
            field = chunks[-1].model_extra["personalization"]
        else:
            raw = c.chat.completions.with_raw_response.create(model=MODEL_ALIAS, messages=messages, extra_body=extension, **OPTIONS)
            completion = raw.parse()
            text, field = completion.choices[0].message.content, completion.model_extra["personalization"]
    aligned, draft = raw.headers["x-perg-aligned"], field["draft"]
    assert substantive_lines(text), f"a lead-in alone was served: {text!r}"
    assert aligned in {"true", "fallback", "skipped"}
    if aligned == "true":
        assert check_rewrite(draft, text, "stop", COLORS, tuple(BULLETS)) is None
    else:
        assert text == draft
    assert set(field["usage"]) == {"stage1", "gate", "stage2", "verify"} and field["usage"]["stage1"]["prompt_tokens"] > 0
