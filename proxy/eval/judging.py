"""The benchmark's model-based judgements.

- `Judging`: the monitor's own judges (`proxy.perg.judges.Judge`: the paper's Likert follow
  rubric and the consistency check, constrained JSON validated into a verdict) on a judge upstream.
- `LetterExtractor`: the optional LLM reader of answers (`--extractor llm` or `rules+llm`), asked
  of the judge's model on the judge's server, like the judges; its reply is constrained to a letter
  or "none".
- `judge_labels`: both judges over labelled samples, for `perg-proxy eval judge`.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from ..perg.cells import LETTERS
from ..perg.judges import ConsistencyVerdict, FollowVerdict, Judge
from ..prompts.loader import parse_prompt
from ..upstream.sdk import client as sdk_client
from ..upstream.sdk import complete_json
from ..upstream.structured import response_format
from .calibration import Consistency, JudgeLabel
from .retry import describe_error, retried

EXTRACT_PROMPT = "extract_letter.txt"
EXTRACT_MAX_TOKENS = 24


class Judging:
    """The follow and consistency judges of one judge model on one OpenAI-compatible server."""

    def __init__(
        self, base_url: str, api_key: str, model: str, style: str, *, max_tokens: int, timeout: float, follow_prompt: str = "judge_follow"
    ) -> None:
        self.sdk = sdk_client(base_url, api_key, timeout=timeout, max_retries=0)
        self.judge = Judge.create(functools.partial(complete_json, self.sdk), style, max_tokens, follow_prompt)
        self.model = model

    def version(self, name: str) -> str:
        return self.judge.prompts[name].version

    async def follow(self, query: str, preferences: Sequence[str], without: str, with_: str) -> FollowVerdict:
        return await self.judge.follow(self.model, query, preferences, without, with_)

    async def consistency(self, query: str, reference: str, answer: str) -> ConsistencyVerdict:
        return await self.judge.consistency(self.model, query, reference, answer)

    async def close(self) -> None:
        await self.sdk.close()


class LetterExtractor:
    """Asks a model which option letter a reply chose (None: no single letter)."""

    def __init__(self, base_url: str, api_key: str, model: str, style: str, *, timeout: float) -> None:
        self.sdk = sdk_client(base_url, api_key, timeout=timeout, max_retries=0)
        text = (resources.files("proxy.perg") / "data" / EXTRACT_PROMPT).read_text(encoding="utf-8")
        self.prompt = parse_prompt("extract_letter", text)
        self.model = model
        self.style = style

    @property
    def version(self) -> str:
        return self.prompt.version

    async def letter(self, question: str, reply: str, options: Sequence[str]) -> str | None:
        letters = list(LETTERS[: len(options)])
        body: dict[str, Any] = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": self.prompt.system},
                {"role": "user", "content": self.prompt.render_user(question=question, reply=reply)},
            ],
            "temperature": 0,
            "max_tokens": EXTRACT_MAX_TOKENS,
        }
        schema = {
            "type": "object",
            "properties": {"letter": {"type": "string", "enum": [*letters, "none"]}},
            "required": ["letter"],
            "additionalProperties": False,
        }
        constraint = response_format(self.style, "perg_extracted_letter", schema)
        if constraint is not None:
            body["response_format"] = constraint
        value = (await complete_json(self.sdk, body)).get("letter")
        letter = value.strip().upper() if isinstance(value, str) else ""
        return letter if letter in letters else None

    async def close(self) -> None:
        await self.sdk.close()


async def judge_labels(
    judging: Judging,
    labels: Sequence[JudgeLabel],
    *,
    concurrency: int = 2,
    attempts: int = 3,
    backoff_seconds: float = 1.0,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[int | None], list[Consistency | None], list[str]]:
    """(follow scores, consistency verdicts, failure descriptions): one verdict per label, None
    where the judge failed after its retries (a counted failure, never a score)."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def verdict(name: str, call: Callable[[], Any]) -> Any:
        try:
            return await retried(call, attempts=attempts, backoff_seconds=backoff_seconds)
        except Exception as error:  # noqa: BLE001 - a judge failure is recorded, not raised
            failures.append(f"{name}: {describe_error(error)}")
            return None

    async def one(label: JudgeLabel) -> tuple[int | None, Consistency | None]:
        async with gate:
            follow = await verdict(
                "follow", lambda: judging.follow(label.query, (label.preference,), label.answer_without, label.answer_with)
            )
            consistency = await verdict("consistency", lambda: judging.consistency(label.query, label.answer_without, label.answer_with))
        if on_done is not None:
            on_done()
        return (follow.score if follow else None), (consistency.verdict if consistency else None)

    results = await asyncio.gather(*(one(label) for label in labels))
    return [score for score, _ in results], [verdict for _, verdict in results], failures
