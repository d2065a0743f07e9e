"""The benchmark's model-based judgements.

- `Judging`: the monitor's own judges (`proxy.perg.judges.Judge`: the paper's Likert follow
  rubric and the consistency check, constrained JSON validated into a verdict) on a judge upstream.
- `LetterExtractor`: the optional LLM reader of answers (`--extractor llm` or `rules+llm`), asked
  of the judge's model on the judge's server, like the judges; its reply is constrained to a letter
  or "none".
- `judge_labels`: both judges over labelled samples, for `perg-proxy eval judge`.

Every call goes through the proxy's own `UpstreamClient` (the transport and the retry policy of
live traffic; `options.eval_upstream`), as the monitor's judges do (`perg.judges.ask_upstream`).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from ..errors import describe_error
from ..metrics import private_metrics
from ..perg.cells import LETTERS
from ..perg.judges import ConsistencyVerdict, FollowVerdict, Judge, ask_upstream
from ..prompts.loader import parse_prompt
from ..upstream.client import UpstreamClient
from ..upstream.structured import response_format
from .calibration import Consistency, JudgeLabel
from .options import eval_upstream

EXTRACT_PROMPT = "extract_letter.txt"
EXTRACT_MAX_TOKENS = 24


class JudgeServer:
    """The judge model's server, on the proxy's client: `ask_json(body)` gives a reply's JSON object."""

    def __init__(
        self,
        name: str,
        base_url: str,
        api_key: str,
        *,
        timeout: float,
        attempts: int,
        backoff_seconds: float,
        network: Mapping[str, Any] | None = None,
    ) -> None:
        settings = eval_upstream(
            name, base_url, api_key, timeout=timeout, attempts=attempts, backoff_seconds=backoff_seconds, network=network
        )
        self.client = UpstreamClient(settings, private_metrics())
        self.ask_json = functools.partial(
            ask_upstream, self.client, timeout=timeout, retries=settings.retries, request_id=f"perg-eval-{name}"
        )

    async def start(self) -> None:
        await self.client.start()

    async def close(self) -> None:
        await self.client.close()


class Judging(JudgeServer):
    """The follow and consistency judges of one judge model on one OpenAI-compatible server."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        model: str,
        style: str,
        *,
        max_tokens: int,
        timeout: float,
        follow_prompt: str = "judge_follow",
        attempts: int = 3,
        backoff_seconds: float = 1.0,
    ) -> None:
        super().__init__("judge", base_url, api_key, timeout=timeout, attempts=attempts, backoff_seconds=backoff_seconds)
        self.judge = Judge.create(self.ask_json, style, max_tokens, follow_prompt)
        self.model = model

    def version(self, name: str) -> str:
        return self.judge.prompts[name].version

    async def follow(self, query: str, preferences: Sequence[str], without: str, with_: str) -> FollowVerdict:
        return await self.judge.follow(self.model, query, preferences, without, with_)

    async def consistency(self, query: str, reference: str, answer: str) -> ConsistencyVerdict:
        return await self.judge.consistency(self.model, query, reference, answer)


class LetterExtractor(JudgeServer):
    """Asks a model which option letter a reply chose (None: no single letter)."""

    def __init__(
        self, base_url: str, api_key: str, model: str, style: str, *, timeout: float, attempts: int = 3, backoff_seconds: float = 1.0
    ) -> None:
        super().__init__("extractor", base_url, api_key, timeout=timeout, attempts=attempts, backoff_seconds=backoff_seconds)
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
        value = (await self.ask_json(body)).get("letter")
        letter = value.strip().upper() if isinstance(value, str) else ""
        return letter if letter in letters else None


async def judge_labels(
    judging: Judging,
    labels: Sequence[JudgeLabel],
    *,
    concurrency: int = 2,
    on_done: Callable[[], None] | None = None,
) -> tuple[list[int | None], list[Consistency | None], list[str]]:
    """(follow scores, consistency verdicts, failure descriptions): one verdict per label, None
    where the judge failed after its retries (the judging client's; a counted failure, never a score)."""
    gate = asyncio.Semaphore(concurrency)
    failures: list[str] = []

    async def verdict(name: str, call: Callable[[], Any]) -> Any:
        try:
            return await call()
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
