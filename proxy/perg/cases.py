"""PERG cases: preference pools, the three preference settings, and the multiple-choice prompt.

Settings (DESIGN.md, "PERG, exactly"):
- relevant: one style preference;
- irrelevant: `n_unrelated` unrelated preferences;
- mixed: the same unrelated preferences with the relevant case's style preference inserted at a
  random position, so mixed differs from irrelevant by exactly one relevant preference.

The paper's layout (`layout="paper"`, for `eval run --protocol paper`) differs: the irrelevant
setting always sends the same fixed preferences (`paper_irrelevant.json`, five written for this
project; the paper's come from PrefEval, whose licence forbids shipping them), and mixed inserts
the relevant preference in their middle (after the second of five).

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

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .cells import LETTERS
from .datasets import PREFERENCE_CATEGORIES, SETTINGS, DatasetError, Item, PreferenceItem, Setting, describe

BUILTIN_PREFERENCES = "preferences.json"
PAPER_IRRELEVANT = "paper_irrelevant.json"
PROMPT_VERSION = "mcq-v1"
"""Changes whenever `mcq_prompt` changes, so cached responses to an older prompt are not reused."""


class CasePreference(BaseModel):
    """One preference of a pool; `category` is one of the paper's five kinds (style preferences)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)
    text: str = Field(min_length=1)
    category: str | None = None

    @field_validator("category")
    @classmethod
    def _known_category(cls, value: str | None) -> str | None:
        if value is not None and value not in PREFERENCE_CATEGORIES:
            raise ValueError(f"category must be one of {', '.join(PREFERENCE_CATEGORIES)}")
        return value


class PreferencePool(BaseModel):
    """Style preferences (apply to any question) and unrelated ones (life outside the question)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    style: tuple[CasePreference, ...] = Field(min_length=1)
    unrelated: tuple[CasePreference, ...] = Field(min_length=1)


def load_preferences(path: str | Path | None = None) -> PreferencePool:
    """A pool in the shared-data `preferences.json` layout (`_about` keys ignored); built-in when no path."""
    name, text = _read(path, BUILTIN_PREFERENCES)
    try:
        data = json.loads(text)
        return PreferencePool(**{key: value for key, value in data.items() if not key.startswith("_")})
    except (ValueError, TypeError, AttributeError) as error:
        message = describe(error) if isinstance(error, ValidationError) else f"not a preference pool: {error}"
        raise DatasetError(name, [(1, message)]) from None


def load_paper_irrelevant(path: str | Path | None = None) -> tuple[str, ...]:
    """The fixed irrelevant preferences of the paper's protocol: `{"preferences": [text, …]}`."""
    name, text = _read(path, PAPER_IRRELEVANT)
    try:
        preferences = json.loads(text)["preferences"]
        if not isinstance(preferences, list) or not preferences or not all(isinstance(p, str) and p.strip() for p in preferences):
            raise ValueError("preferences must be a non-empty list of texts")
    except (ValueError, TypeError, KeyError) as error:
        raise DatasetError(name, [(1, f"not a list of preferences: {error}")]) from None
    return tuple(preferences)


def _read(path: str | Path | None, builtin: str) -> tuple[str, str]:
    if path is None:
        return builtin, (resources.files("proxy.perg") / "data" / builtin).read_text(encoding="utf-8")
    return str(path), Path(path).read_text(encoding="utf-8")


def build_cases(
    items: Iterable[Item],
    pool: PreferencePool,
    settings: Sequence[Setting] = SETTINGS,
    *,
    seed: int = 0,
    n_unrelated: int = 3,
    irrelevant: Sequence[str] | None = None,
) -> list[PreferenceItem]:
    """One case per item and setting, item-major, deterministic for a given seed. With `irrelevant`
    (the paper's layout) those fixed preferences replace the random unrelated ones."""
    unknown = [setting for setting in settings if setting not in SETTINGS]
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown}; choose from {list(SETTINGS)}")
    if irrelevant is None and not 1 <= n_unrelated <= len(pool.unrelated):
        raise ValueError(f"n_unrelated must be between 1 and {len(pool.unrelated)} (the pool's unrelated preferences)")
    return [_case(item, pool, setting, seed, n_unrelated, irrelevant) for item in items for setting in settings]


def _case(
    item: Item, pool: PreferencePool, setting: Setting, seed: int, n_unrelated: int, irrelevant: Sequence[str] | None
) -> PreferenceItem:
    style = _rng(seed, item.id, "style").choice(pool.style)
    if irrelevant is not None:
        unrelated, position = list(irrelevant), len(irrelevant) // 2
    else:
        unrelated = [p.text for p in _rng(seed, item.id, "unrelated").sample(pool.unrelated, n_unrelated)]
        position = _rng(seed, item.id, "position").randint(0, n_unrelated)
    if setting == "relevant":
        preferences = [style.text]
    elif setting == "irrelevant":
        preferences = unrelated
    else:
        preferences = unrelated[:]
        preferences.insert(position, style.text)
    category = style.category if setting != "irrelevant" else None
    return PreferenceItem(item=item, setting=setting, preferences=tuple(preferences), preference_category=category)


def _rng(seed: int, item_id: str, purpose: str) -> random.Random:
    digest = hashlib.sha256(f"{seed}\x1f{item_id}\x1f{purpose}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def option_lines(item: Item) -> str:
    """The options as `A. …` lines."""
    return "\n".join(f"{letter}. {option}" for letter, option in zip(item.letters, item.options, strict=True))


def mcq_prompt(item: Item) -> str:
    """The user message sent to the model: the question, options as `A. …`, and a request for the letter."""
    letters = LETTERS[: len(item.options)]
    listing = option_lines(item)
    choices = f"{', '.join(letters[:-1])} or {letters[-1]}"
    return f"{item.question}\n\n{listing}\n\nAnswer with the letter of the correct option ({choices})."
