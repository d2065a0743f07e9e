"""What a hedge is read as: the hedge policy of answer extraction.

A hedge is a reply whose strongest rule names several options (`the answer is B or D`, a review
that finds two options correct, a conclusion naming both). The rules alone read it as no answer
(`none`, counted as wrong). The paper's reader, a one-token model then GPT-4o-mini, gives such a
reply a letter, mostly the first of the options it names. `first` mirrors it, as an explicit
guess rather than a reading: the hedge resolves to the one of its options that the reply
mentions first (by letter, `option B`, `(B)`, `B. …`, or by its text). A reply that names no
option at all stays unreadable under both policies. docs/eval.md gives the figures of each.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Literal

from .cells import normalize_text
from .statements import Hedge, matchable

HedgePolicy = Literal["none", "first"]
HEDGE_POLICIES: tuple[HedgePolicy, ...] = ("none", "first")
DEFAULT_HEDGES: HedgePolicy = "first"
"""The default of `eval`: figures comparable with the paper's, whose reader resolves hedges (`none`
would count them as wrong, and answers written with preferences hedge more: BR would read high)."""

_MENTION = re.compile(r"\b(?i:option|choice)\s+[(\[]?([A-Z])[)\]]?(?!\w)|\(([A-Z])\)|(?:^|(?<=\s))([A-Z])[.)](?=\s)", re.MULTILINE)


def first_named(text: str, found: Sequence[str], letters: str, options: Sequence[str]) -> str | None:
    """The one of the options a rule found (`found`, with the letters of its hedges) that `text`
    mentions first; the first found when the text mentions none of them (None if there is none)."""
    named = [letter for item in found for letter in (item.letters if isinstance(item, Hedge) else (item,)) if letter in letters]
    if not named:
        return None
    first: dict[str, int] = {}
    for match in _MENTION.finditer(text):
        letter = match.group(1) or match.group(2) or match.group(3)
        first.setdefault(letter, match.start())
    folded = text.casefold()
    for letter in set(named):
        option = normalize_text(options[letters.index(letter)])
        at = re.search(rf"(?<![\w']){re.escape(option)}(?!\w)", folded) if matchable(option) else None
        if at is not None and at.start() < first.get(letter, len(text)):
            first[letter] = at.start()
    return min(named, key=lambda letter: (first.get(letter, len(text)), named.index(letter)))
