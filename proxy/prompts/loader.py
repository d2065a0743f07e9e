"""Prompt templates: files under `proxy/prompts/` (or the configured overrides), rendered safely.

A template file holds the system text, a line `---`, then the user template (no `---` means
system text only; a file that starts with `---` is a user template only). Placeholders are `{name}` (`{query}`, `{answer}`, `{preferences}`, …); values
are inserted verbatim in one pass (braces in them are harmless), and every preference is put on
one labelled line so that its text cannot pose as another section of the prompt.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from ..config import PromptFiles

SEPARATOR = "\n---\n"


@dataclass(frozen=True, slots=True)
class Prompt:
    name: str
    system: str
    user: str
    version: str
    # The section headings of the user template (`### …` lines): a model echoing one has
    # started to repeat the prompt. Read on every rewrite, so worked out once.
    headings: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "headings", tuple(line.strip() for line in self.user.splitlines() if line.startswith("### ")))

    def render_user(self, **values: str) -> str:
        return _fill(self.user, values)

    def render_system(self, **values: str) -> str:
        return _fill(self.system, values)


PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")


def _fill(template: str, values: dict[str, str]) -> str:
    """One pass over the template: a value that contains `{answer}` stays as it is."""
    return PLACEHOLDER.sub(lambda match: values.get(match.group(1), match.group(0)), template)


def parse_prompt(name: str, text: str) -> Prompt:
    """A template from its file's text; a file that starts with `---` has no system text."""
    system, _, user = ("\n" + text if text.startswith("---\n") else text).partition(SEPARATOR)
    version = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Prompt(name=name, system=system.strip(), user=user.strip(), version=version)


def load_prompt(name: str, override: Path | None = None) -> Prompt:
    if override is not None:
        return parse_prompt(name, Path(override).read_text(encoding="utf-8"))
    return parse_prompt(name, resources.files("proxy.prompts").joinpath(f"{name}.txt").read_text(encoding="utf-8"))


@dataclass(frozen=True, slots=True)
class Prompts:
    aligner: Prompt
    naive: Prompt
    gate: Prompt

    @classmethod
    def load(cls, files: PromptFiles) -> Prompts:
        return cls(
            aligner=load_prompt("aligner", files.aligner),
            naive=load_prompt("naive", files.naive),
            gate=load_prompt("gate", files.gate),
        )


def preference_lines(preferences: tuple[str, ...] | list[str], labels: bool = False) -> str:
    """One line per preference (`- text`, or `p1: text`), inner line breaks folded to spaces."""
    lines = []
    for index, text in enumerate(preferences, start=1):
        flat = " ".join(text.split())
        lines.append(f"p{index}: {flat}" if labels else f"- {flat}")
    return "\n".join(lines)
