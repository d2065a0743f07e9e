"""PERG cases: preference pools, the three preference settings, and the multiple-choice prompt.

Settings (DESIGN.md, "PERG, exactly"):
- relevant: one style preference;
- irrelevant: `n_unrelated` unrelated preferences;
- mixed: the same unrelated preferences with the relevant case's style preference inserted at a
  random position, so mixed differs from irrelevant by exactly one relevant preference.

Choices come from a random generator seeded by `sha256(seed, item id, purpose)`, so a case does not
depend on which other items are in the run or in which order they come.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .datasets import LETTERS, SETTINGS, DatasetError, Item, PreferenceItem, Setting, describe

BUILTIN_PREFERENCES = "preferences.json"
PROMPT_VERSION = "mcq-v1"
"""Changes whenever `mcq_prompt` changes, so cached responses to an older prompt are not reused."""


class CasePreference(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)


class PreferencePool(BaseModel):
    """Style preferences (apply to any question) and unrelated ones (life outside the question)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: tuple[CasePreference, ...] = Field(min_length=1)
    unrelated: tuple[CasePreference, ...] = Field(min_length=1)


def load_preferences(path: str | Path | None = None) -> PreferencePool:
    """A pool in the shared-data `preferences.json` layout (`_about` keys ignored); built-in when no path."""
    if path is None:
        name = BUILTIN_PREFERENCES
        text = (resources.files("proxy.perg") / "data" / BUILTIN_PREFERENCES).read_text(encoding="utf-8")
    else:
        name = str(path)
        text = Path(path).read_text(encoding="utf-8")
    try:
        data = json.loads(text)
        return PreferencePool(**{key: value for key, value in data.items() if not key.startswith("_")})
    except (ValueError, TypeError, AttributeError) as error:
        message = describe(error) if isinstance(error, ValidationError) else f"not a preference pool: {error}"
        raise DatasetError(name, [(1, message)]) from None


def build_cases(
    items: Iterable[Item],
    pool: PreferencePool,
    settings: Sequence[Setting] = SETTINGS,
    *,
    seed: int = 0,
    n_unrelated: int = 3,
) -> list[PreferenceItem]:
    """One case per item and setting, item-major, deterministic for a given seed."""
    unknown = [setting for setting in settings if setting not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    if not 1 <= n_unrelated <= len(pool.unrelated):
        raise ValueError(f"n_unrelated must be between 1 and {len(pool.unrelated)} (the pool's unrelated preferences)")
    return [_case(item, pool, setting, seed, n_unrelated) for item in items for setting in settings]


def _case(item: Item, pool: PreferencePool, setting: Setting, seed: int, n_unrelated: int) -> PreferenceItem:
    style = _rng(seed, item.id, "style").choice(pool.style).text
    unrelated = [p.text for p in _rng(seed, item.id, "unrelated").sample(pool.unrelated, n_unrelated)]
    if setting == "relevant":
        preferences = [style]
    elif setting == "irrelevant":
        preferences = unrelated
    else:
        preferences = unrelated[:]
        preferences.insert(_rng(seed, item.id, "position").randint(0, n_unrelated), style)
    return PreferenceItem(item=item, setting=setting, preferences=tuple(preferences))


def _rng(seed: int, item_id: str, purpose: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x1f{item_id}\x1f{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def mcq_prompt(item: Item) -> str:
    """The user message sent to the model: the question, options as `A. …`, and a request for the letter."""
    letters = LETTERS[: len(item.options)]
    listing = "\n".join(f"{letter}. {option}" for letter, option in zip(letters, item.options, strict=True))
    choices = f"{', '.join(letters[:-1])} or {letters[-1]}"
    return f"{item.question}\n\n{listing}\n\nAnswer with the letter of the correct option ({choices})."
