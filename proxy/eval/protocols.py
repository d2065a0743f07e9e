"""The two protocols of `eval run`: this project's (`proxy`, the default) and the paper's (`paper`).

Every structural difference lives here, so the runner asks the protocol rather than branching:
the request a question becomes, the strategies' prompts, the token caps, the generation seed,
the follow judge's rubric and the fixed irrelevant preferences. docs/eval.md lists the
differences point by point.

- `proxy`: the MCQ prompt asks for the letter (`cases.mcq_prompt`), no system prompt in the
  baseline, naive and Pref-Aligner through the proxy's own pipeline (its hedged naive prompt, its
  relevance gate, guards and rewrite), 3 random unrelated preferences from the pool, the run's
  seed and token cap, and the follow judge rating the change the preference made.
- `paper` (Okite et al., arXiv 2509.19358): a factuality system prompt in the baseline too, an
  MCQ user prompt with no answer-format instruction, the naive template asking to tailor the
  answer, 5 fixed irrelevant preferences with the relevant one in the middle for mixed, 500 answer
  tokens and 1,000 for a rewrite, temperature 0 and seed 42, the follow judge rating compliance,
  and the paper's Pref-Aligner: one rewrite call that itself decides relevance and replies in JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from ..perg.cases import load_paper_irrelevant, mcq_prompt, option_lines
from ..perg.datasets import Item
from ..prompts.loader import Prompt, load_prompt

ProtocolName = Literal["proxy", "paper"]
PROTOCOLS: tuple[ProtocolName, ...] = ("proxy", "paper")
PAPER_SEED = 42
PAPER_ANSWER_TOKENS = 500
PAPER_REWRITE_TOKENS = 1000
DESCRIPTIONS = {
    "proxy": "proxy (this project's protocol; docs/eval.md lists how it differs from the paper's)",
    "paper": "paper (the protocol of Okite et al., arXiv 2509.19358, as docs/eval.md describes it)",
}


@dataclass(frozen=True, slots=True)
class Protocol:
    name: ProtocolName
    answer_tokens: int
    rewrite_tokens: int
    generation_seed: int
    follow_prompt: str
    prompts: dict[str, Prompt]
    irrelevant: tuple[str, ...] | None = None

    @classmethod
    def create(cls, name: ProtocolName, *, max_tokens: int | None, seed: int) -> Protocol:
        """The protocol; `max_tokens` (given on the command line) overrides its answer cap."""
        shared = {key: load_prompt(f"paper_{key}") for key in ("cot", "icl", "self_critic")}
        if name == "proxy":
            tokens = max_tokens or 128
            return cls(name, tokens, tokens, seed, "judge_follow", shared)
        paper = {key: load_prompt(f"paper_{key}") for key in ("system", "mcq", "naive", "aligner")}
        tokens = max_tokens or PAPER_ANSWER_TOKENS
        return cls(name, tokens, PAPER_REWRITE_TOKENS, PAPER_SEED, "paper_judge_follow", {**shared, **paper}, load_paper_irrelevant())

    @property
    def paper(self) -> bool:
        return self.name == "paper"

    @property
    def description(self) -> str:
        return DESCRIPTIONS[self.name]

    def version(self) -> str:
        """Changes whenever a prompt of the protocol changes (part of every cache key)."""
        return self.name + ":" + ",".join(f"{key}={prompt.version}" for key, prompt in sorted(self.prompts.items()))

    def question(self, item: Item) -> str:
        """The user message a question becomes."""
        if self.paper:
            return self.prompts["mcq"].render_system(question=item.question, options=option_lines(item))
        return mcq_prompt(item)

    def baseline_messages(self, item: Item) -> list[dict[str, Any]]:
        """The request without preferences: the paper's has its factuality system prompt."""
        user = {"role": "user", "content": self.question(item)}
        if self.paper:
            return [{"role": "system", "content": self.prompts["system"].system}, user]
        return [user]

    def body(self, item: Item, model: str) -> dict[str, Any]:
        return {
            "model": model,
            "messages": self.baseline_messages(item),
            "temperature": 0,
            "seed": self.generation_seed,
            "max_tokens": self.answer_tokens,
        }
