"""Answers through the proxy's own pipeline, in process, as the monitor's `Evaluator.answer` does.

Every answer is a `Turn` served by `serve_chat` on the benchmark's own `Upstreams` and a private
metrics registry: the same prompts, the same relevance gate, the same rewrite parsing and the same
fallbacks as live traffic, with nothing re-implemented. The no-preference baseline is the `off`
strategy with no preferences (the request goes upstream untouched).

Strategies by name: `naive`, `pref_aligner` (relevance gate `llm`, the proxy's default, without the
guards: the rewrite as stage 2 gives it), `pref_aligner_guarded` (the deterministic guards, the
proxy's default), `pref_aligner_verified` (the guards and the LLM verifier, `aligner.verify: llm`),
`pref_aligner_gate_<mode>` for the other gate modes (`off`, `aligner`: every preference goes to
the rewrite, which may answer UNCHANGED; no guards); and the paper's other baselines, `cot`, `icl` and
`self_critic`, built from plain calls (`baselines`). Under the paper's protocol `naive` and
`pref_aligner` are the paper's forms (`baselines` too) and the gate variants do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

from ..config import AlignerSettings, GateSettings, PersonalizationSettings, PromptFiles, UpstreamSettings
from ..metrics import private_metrics
from ..perg.cases import PROMPT_VERSION
from ..pipeline.chat import first_content
from ..pipeline.context import PipelineContext
from ..pipeline.guards import GUARDS_VERSION
from ..pipeline.inprocess import complete
from ..prompts.loader import Prompts, load_prompt
from ..upstream.client import Upstreams

GATE_MODES = ("llm", "aligner", "off")
BASELINE = "baseline"
PROMPTED = ("cot", "icl", "self_critic")
CHECKED = {"pref_aligner_guarded": "off", "pref_aligner_verified": "llm"}  # name -> aligner.verify, guards on


class EvalStrategy(NamedTuple):
    """A strategy of the benchmark: its name in the report, the pipeline's strategy, the gate mode."""

    name: str
    pipeline: str  # off | naive | pref_aligner (the proxy's) | prompted | paper_aligner (`baselines`)
    gate: str | None = None
    guards: bool = False
    verify: str = "off"


BASELINE_STRATEGY = EvalStrategy(BASELINE, "off")


def parse_strategy(name: str, protocol: str = "proxy") -> EvalStrategy:
    """`naive`, `pref_aligner`, `pref_aligner_gate_<llm|aligner|off>` (the proxy's protocol only),
    `cot`, `icl` or `self_critic`; anything else is a ValueError."""
    paper = protocol == "paper"
    if name == "naive":
        return EvalStrategy(name, "prompted" if paper else "naive")
    if name == "pref_aligner":
        return EvalStrategy(name, "paper_aligner") if paper else EvalStrategy(name, "pref_aligner", "llm")
    if name in PROMPTED:
        return EvalStrategy(name, "prompted")
    if not paper and name in CHECKED:
        return EvalStrategy(name, "pref_aligner", "llm", guards=True, verify=CHECKED[name])
    prefix = "pref_aligner_gate_"
    if not paper and name.startswith(prefix) and name[len(prefix) :] in GATE_MODES:
        return EvalStrategy(name, "pref_aligner", name[len(prefix) :])
    gates = [] if paper else [prefix + mode for mode in GATE_MODES]
    choices = ", ".join(["naive", "pref_aligner", *([] if paper else CHECKED), *gates, *PROMPTED])
    raise ValueError(f"unknown strategy {name!r} under the {protocol} protocol; choose from {choices}")


@dataclass(frozen=True, slots=True)
class Answer:
    """What a strategy served: the text of choice 0, and for Pref-Aligner the `x-perg-aligned`
    outcome (true, skipped, fallback, false) and the stage-1 draft."""

    text: str
    aligned: str | None = None
    draft: str | None = None
    reason: str | None = None  # why a fallback served the draft

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "aligned": self.aligned, "draft": self.draft, "reason": self.reason}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Answer:
        return cls(text=data["text"], aligned=data.get("aligned"), draft=data.get("draft"), reason=data.get("reason"))


class Answerer:
    """The in-process pipeline on one upstream; one `PipelineContext` per gate mode."""

    def __init__(self, upstream: UpstreamSettings, timeout: float, prompts: PromptFiles | None = None) -> None:
        self.metrics = private_metrics()
        self.upstreams = Upstreams((upstream,), self.metrics)
        self.prompts = Prompts.load(prompts or PromptFiles())
        self._timeout = timeout
        self._contexts: dict[tuple[str | None, bool, str], PipelineContext] = {}

    async def start(self) -> None:
        await self.upstreams.start()

    async def close(self) -> None:
        await self.upstreams.close()

    def context(self, strategy: EvalStrategy) -> PipelineContext:
        """The pipeline for a strategy's gate mode, guards and verifier; stage timeouts are the
        benchmark's call timeout, so a slow model is measured, not timed out into fallbacks."""
        key = (strategy.gate, strategy.guards, strategy.verify)
        if key not in self._contexts:
            settings = PersonalizationSettings(
                aligner=AlignerSettings(timeout_seconds=self._timeout, guards=strategy.guards, verify=strategy.verify),
                relevance_gate=GateSettings(mode=strategy.gate or "llm", timeout_seconds=self._timeout),
            )
            self._contexts[key] = PipelineContext(settings, self.upstreams, self.metrics, self.prompts)
        return self._contexts[key]

    def prompt_version(self, strategy: EvalStrategy) -> str:
        """The MCQ prompt's version and the versions of the pipeline prompts the strategy uses."""
        parts = [PROMPT_VERSION]
        if strategy.pipeline == "naive" or strategy.name in PROMPTED:
            parts.append(f"naive:{self.prompts.naive.version}")
        if strategy.pipeline == "pref_aligner":
            parts.append(f"aligner:{self.prompts.aligner.version}")
            if strategy.gate == "llm":
                parts.append(f"gate:{self.prompts.gate.version}")
            if strategy.guards:
                parts.append(f"guards:{GUARDS_VERSION}")
            if strategy.verify != "off":
                parts.append(f"verify:{load_prompt('judge_consistency').version}")
        return "+".join(parts)

    async def answer(self, request_id: str, body: dict[str, Any], strategy: EvalStrategy, preferences: tuple[str, ...]) -> Answer:
        """The answer `strategy` gives to a (non-streamed) request; failures raise."""
        data, turn = await complete(self.context(strategy), request_id, body, strategy.pipeline, preferences)
        aligned = turn.aligned if strategy.pipeline == "pref_aligner" else None
        return Answer(first_content(data)[0], aligned, turn.draft if aligned is not None else None, turn.fallback_reason)
