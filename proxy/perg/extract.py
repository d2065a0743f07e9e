"""Answer extraction: the option letter a free-text reply commits to, or None.

Deterministic rules, strongest first. The first rule that finds anything decides: one letter is the
answer; different letters at the same strength make the reply ambiguous (None, weaker rules are not
consulted, so a hedge is never turned into an answer by accident).

1. a final answer: `\\boxed{B}`, `<answer>B</answer>`, `Final answer: B` (the last one wins);
2. an answer statement: `Answer: B`, `the correct answer is (C).`, `the correct option is B`
   (the last one wins, so a self-correction counts);
3. the last non-empty line is a bare letter: `B`, `B.`, `(B)`, `B)`, `**B**`;
4. an affirmation: `I think it's B`, `I'd go with B`, `B is correct`;
5. lines that start with a lettered option: `B. Paris`, `C) 42`;
6. `Option B` / `Choice B`, or a parenthesised `(B)` anywhere;
7. the text of an option, casefolded, whole words only; a mention right after `not`, `rather than`,
   `instead of` does not count, nor does an option contained in a longer option also mentioned,
   nor a one-letter option text.

Only letters of existing options count: with four options `E`, or the pronoun `I`, never do. A bare
lowercase letter counts only where it cannot be an English word (`answer: b`, not `answer is a bit`).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .datasets import LETTERS, normalize_text

Fallback = Callable[[str, Sequence[str]], Awaitable[str | None]]
"""An optional second opinion (an LLM asked for the letter): gets the reply and the options, returns
text that is itself run through `extract_letter`. Its errors propagate to the caller."""

_TOKEN = re.compile(r"""\s*["'“‘]?\s*(?:[(\[]\s*(?P<enclosed>[A-Za-z])\s*[)\]]|(?P<bare>[A-Za-z])(?!\w)(?!['’]\w))""")
_LOWER_END = re.compile(r"""\s*(?:$|[.,;:!?)\]"'”’])""")
_VERB = r"\s*(?:is|would be|should be|must be|will be|=|:|-|–)\s*:?\s*(?:option|choice|letter)?\s*:?"
_FINAL = re.compile(r"\\boxed\{|<answer>|\bfinal answer" + _VERB, re.IGNORECASE)
_ANSWER = re.compile(r"\b(?:answer|option|choice)" + _VERB, re.IGNORECASE)
_AFFIRM = re.compile(
    r"\b(?:i(?:'d| would| will|'ll)? (?:choose|pick|select|go with|say)|go with|i (?:think|believe)"
    r"(?: it(?:'s| is))?|it(?:'s| is)|my (?:choice|pick|guess) is)\s*(?:option|choice|letter)?",
    re.IGNORECASE,
)
_CORRECT = re.compile(
    r"(?:\b(?i:option|choice)\s+|(?<![A-Za-z]\s)(?<![\w(\[]))[(\[]?([A-Z])[)\]]?"
    r"\s+is\s+(?:the\s+)?(?i:correct|right|true|best)\b"
)
_BARE_LINE = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.):]?$")
_LETTERED_LINE = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\-–](?:\s|$)", re.MULTILINE)
_NAMED = re.compile(r"\b(?i:option|choice)\s+[(\[]?([A-Z])[)\]]?(?!\w)|\(([A-Z])\)")
_NEGATION = re.compile(
    r"(?:\bnot|n't|\bnever|\bnor|\brather than|\binstead of)\s+(?:the\s+|an?\s+)?"
    r"(?:[^.;:!?]{0,40}?(?:,|\bor|\bnor)\s+)?$"  # also the later items of `not X, Y or Z`
)
_MARKUP = re.compile(r"[*`]|__")


class Extraction(BaseModel):
    """The letter a reply commits to and which path found it (`none`: counted as unextractable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    letter: str | None
    method: Literal["rule", "fallback", "none"]


def extract_letter(text: str | None, options: Sequence[str]) -> str | None:
    """The option letter `text` commits to, or None (no answer, or an ambiguous one)."""
    letters = LETTERS[: len(options)]
    if not text or not letters:
        return None
    clean = _MARKUP.sub("", text).replace("’", "'").strip()
    for rule in _RULES:
        found = rule(clean, letters, options)
        if found:
            return found[0] if len(set(found)) == 1 else None
    return None


async def extract_answer(text: str | None, options: Sequence[str], fallback: Fallback | None = None) -> Extraction:
    """`extract_letter`, then the optional fallback when the rules find no single letter."""
    letter = extract_letter(text, options)
    if letter is not None:
        return Extraction(letter=letter, method="rule")
    if fallback is None or not text:
        return Extraction(letter=None, method="none")
    reply = await fallback(text, tuple(options))
    letter = extract_letter(reply, options)
    return Extraction(letter=letter, method="fallback" if letter else "none")


def _letter_at(text: str, position: int, letters: str) -> str | None:
    """The option letter written at `position` (after an anchor such as `answer:`), if any."""
    match = _TOKEN.match(text, position)
    if match is None:
        return None
    bare = match.group("bare")
    if bare is not None and bare.islower() and not _LOWER_END.match(text, match.end()):
        return None
    letter = (bare or match.group("enclosed")).upper()
    return letter if letter in letters else None


def _anchored(pattern: re.Pattern[str], text: str, letters: str) -> list[str]:
    found = [_letter_at(text, match.end(), letters) for match in pattern.finditer(text)]
    return [letter for letter in found if letter is not None]


def _final_answer(text: str, letters: str, options: Sequence[str]) -> list[str]:
    return _anchored(_FINAL, text, letters)[-1:]


def _answer_statement(text: str, letters: str, options: Sequence[str]) -> list[str]:
    return _anchored(_ANSWER, text, letters)[-1:]


def _bare_last_line(text: str, letters: str, options: Sequence[str]) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = _BARE_LINE.match(lines[-1]) if lines else None
    letter = match.group(1).upper() if match else None
    return [letter] if letter and letter in letters else []


def _affirmation(text: str, letters: str, options: Sequence[str]) -> list[str]:
    stated = [m.group(1) for m in _CORRECT.finditer(text) if m.group(1) in letters]
    return _anchored(_AFFIRM, text, letters) + stated


def _lettered_lines(text: str, letters: str, options: Sequence[str]) -> list[str]:
    return [letter for letter in _LETTERED_LINE.findall(text) if letter in letters]


def _named_option(text: str, letters: str, options: Sequence[str]) -> list[str]:
    named = (a or b for a, b in _NAMED.findall(text))
    return [letter for letter in named if letter in letters]


def _option_text(text: str, letters: str, options: Sequence[str]) -> list[str]:
    folded = text.casefold()
    texts = {letter: normalize_text(option) for letter, option in zip(letters, options, strict=True)}
    mentioned = {letter for letter, option in texts.items() if _matchable(option) and _affirmed_mention(folded, option)}
    longest = [letter for letter in mentioned if not any(other != letter and texts[letter] in texts[other] for other in mentioned)]
    return sorted(longest)


def _matchable(option: str) -> bool:
    """A one-letter option text (`S`, `C`) cannot be told from an option letter or a word fragment."""
    return not (len(option) == 1 and option.isalpha())


def _affirmed_mention(folded: str, option: str) -> bool:
    for match in re.finditer(rf"(?<![\w']){re.escape(option)}(?!\w)", folded):
        if not _NEGATION.search(folded[max(0, match.start() - 60) : match.start()]):
            return True
    return False


_RULES = (
    _final_answer,
    _answer_statement,
    _bare_last_line,
    _affirmation,
    _lettered_lines,
    _named_option,
    _option_text,
)
