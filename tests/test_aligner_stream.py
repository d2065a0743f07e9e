"""`aligner_stream.stream_events` in process: what reaches the client, write by write, when
stage 2's chunks arrive together or a stage fails in a way nobody planned for."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import orjson
import pytest
from multidict import CIMultiDict

from proxy.pipeline import aligner_stream
from proxy.pipeline.aligner import Outcome, RewritePlan
from proxy.pipeline.chat import delta_choice
from proxy.turn import Turn
from proxy.upstream.events import DONE, HEARTBEAT

DRAFT = {
    "id": "chatcmpl-1",
    "model": "m",
    "created": 1,
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "draft"}, "finish_reason": "stop"}],
}


def turn() -> Turn:
    return Turn(
        request_id="r1", route="chat_completions", method="POST", headers={}, body={"model": "m", "messages": []}, strategy="pref_aligner"
    )


@pytest.fixture
def planned(monkeypatch):
    async def plan(turn, ctx):
        await asyncio.sleep(0.01)
        return RewritePlan(DRAFT, CIMultiDict(), "question", ("pirate",), None)

    monkeypatch.setattr(aligner_stream, "plan", plan)
    monkeypatch.setattr(aligner_stream, "record_stream", lambda turn, ctx, outcomes: None)


async def collect(events) -> list[bytes]:
    out = []
    async with asyncio.timeout(5):
        async for item in events:
            out.append(item)
    return out


async def test_chunks_ready_together_go_out_in_one_write(planned, monkeypatch):
    async def produce(turn, ctx, p, index, choice, queue):
        await queue.put((index, delta_choice(index, {"role": "assistant", "content": ""})))
        await queue.put((index, delta_choice(index, {"content": "Arr, "})))
        await asyncio.sleep(0.01)
        await queue.put((index, delta_choice(index, {"content": "matey."})))
        await queue.put((index, delta_choice(index, {}, "stop")))
        await queue.put((index, Outcome("Arr, matey.", "aligned", "true", "stop", draft="draft")))

    monkeypatch.setattr(aligner_stream, "produce", produce)
    writes = await collect(aligner_stream.stream_events(turn(), SimpleNamespace(heartbeat_seconds=5.0)))
    assert len(writes) == 3  # role + first text together; the rest together; then the end
    first = [orjson.loads(line[6:]) for line in writes[0].split(b"\n\n") if line]
    assert [c["choices"][0]["delta"] for c in first] == [{"role": "assistant", "content": ""}, {"content": "Arr, "}]
    assert all(c["id"] == "chatcmpl-1" and c["object"] == "chat.completion.chunk" for c in first)
    assert writes[-1].endswith(DONE)


async def test_heartbeats_while_stage_1_runs(monkeypatch):
    async def slow_plan(turn, ctx):
        await asyncio.sleep(0.25)
        return RewritePlan({**DRAFT, "choices": []}, CIMultiDict(), "question", ("pirate",), None)

    monkeypatch.setattr(aligner_stream, "plan", slow_plan)
    monkeypatch.setattr(aligner_stream, "record_stream", lambda turn, ctx, outcomes: None)
    writes = await collect(aligner_stream.stream_events(turn(), SimpleNamespace(heartbeat_seconds=0.1)))
    assert writes[:2] == [HEARTBEAT, HEARTBEAT] and writes[-1] == DONE


async def test_an_unforeseen_error_in_stage_2_ends_the_stream_instead_of_hanging(planned, monkeypatch):
    async def produce(turn, ctx, p, index, choice, queue):
        raise RuntimeError("a bug in stage 2")

    monkeypatch.setattr(aligner_stream, "produce", produce)
    with pytest.raises(RuntimeError, match="a bug in stage 2"):
        await collect(aligner_stream.stream_events(turn(), SimpleNamespace(heartbeat_seconds=0.1)))


async def test_chunks_before_a_failure_are_still_sent(planned, monkeypatch):
    async def produce(turn, ctx, p, index, choice, queue):
        await queue.put((index, delta_choice(index, {"role": "assistant", "content": ""})))
        await queue.put((index, delta_choice(index, {"content": "Arr"})))
        await queue.put((index, aligner_stream.StageTwoBroke("the aligner's stream broke")))

    monkeypatch.setattr(aligner_stream, "produce", produce)
    events = aligner_stream.stream_events(turn(), SimpleNamespace(heartbeat_seconds=5.0))
    writes = []
    with pytest.raises(aligner_stream.StageTwoBroke):
        async with asyncio.timeout(5):
            async for item in events:
                writes.append(item)
    assert b'"content":"Arr"' in b"".join(writes)
