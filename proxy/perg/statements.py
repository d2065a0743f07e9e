"""Where a reply states its answer in running text: answer statements and the pieces every rule
reads (the letter or option text written at a position, copies of the option list). The order of
the rules, and the rules that read whole lines, are in `extract`.

An answer statement is `Answer: B`, `the correct answer is (C).`, `The best answer to the question
"…" is E. White House` (a quoted span is read over, the window ends at the sentence's end), `the
answer is most likely B`, `the answer is Canberra` (an option's text), `the best place is a
cupboard (B)`, or said the other way round: `Option B is the correct answer`, `option B, "…", is
the most accurate answer`, `we can focus on option C as the most likely answer`. The last one in a
reply wins; one naming two letters (`is B and D`, `A or C`) is a hedge (`HEDGE`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .cells import normalize_text

HEDGE = "?"
"""What a statement naming two letters yields: an ambiguity, never an answer."""

_TOKEN = re.compile(r"""\s*["'“‘]?\s*(?:[(\[]\s*(?P<enclosed>[A-Za-z])\s*[)\]]|(?P<bare>[A-Za-z])(?!\w)(?!['’]\w))""")
_LOWER_END = re.compile(r"""\s*(?:$|[.,;:!?)\]"'”’])""")
_SECOND_LETTER = re.compile(r"""\s*(?:,|/|&|\band\b|\bor\b)\s*(?:option\s+|choice\s+)?[(\[]?[A-Z][)\]]?(?![\w'’])""")
VERB = r"\s*(?:is|would be|should be|must be|will be|=|:|-|–)\s*:?\s*(?:option|choice|letter)?\s*:?"
_ANSWER = re.compile(r"\b(?:answer|option|choice)" + VERB, re.IGNORECASE)
_SAME_SENTENCE = r"(?:(?![.!?](?:\s|$))[^\n]){0,160}?"
SENTENCE_END = re.compile(r"[.!?](?:\s|$)|\n\s*\n")
_STATEMENT_ANCHOR = re.compile(
    r"\b(?:answer|option|choice|conclusion)s?\b|\bbest (?:fits|answers|describes|matches|fit|answer|describe|match)\b", re.IGNORECASE
)
_PARENTHESISED = re.compile(r"\((?:option\s+|choice\s+)?([A-Z])\)", re.IGNORECASE)
_WORD_AFTER = re.compile(r"\s+(?!(?:is|or|and|because|since|as|would|was)\b)[a-z]")
_ARTICLE = re.compile(r"(?:the|an?)\s+", re.IGNORECASE)
QUOTED = re.compile(r'"[^"\n]{1,400}"|“[^”\n]{1,400}”')
_STATEMENT_VERB = re.compile(
    r"\b(?:is|would be|should be|must be|will be|remains)\b\s*:?\s*(?:(?:most\s+)?(?:likely|probably|clearly|definitely)\s+)?"
    r"(?:(?:the\s+)?(?:option|choice|letter)\s*:?\s*)?",
    re.IGNORECASE,
)
_ASSESSED = re.compile(
    r"(?:\b(?i:option|choice)\s+[(\[]?(?P<letter>[A-Z])[)\]]?|(?:^|(?<=\n)|(?<=[,:;] ))(?P<lettered>[A-Z])[.)](?=\s))(?![\w'’])"
    r"""(?:\s*[,:(]?\s*["'“]?""" + _SAME_SENTENCE + r"""["'”)]?\s*,?)?"""
    r"\s+(?i:is|would be|seems to be|appears to be)\s+(?i:the\s+|a\s+)?(?i:most\s+|best\s+|only\s+)?"
    r"(?i:correct|right|best|accurate|appropriate|suitable|reasonable|fitting|plausible|true|valid|likely)\b"
    r"|\b(?i:option|choice)\s+[(\[]?(?P<chosen>[A-Z])[)\]]?(?![\w'’])\s+(?i:as)\s+(?i:the|our)\s+"
    r"(?i:most likely|best|correct|right|most accurate|most appropriate|final)\b"
)
_ECHO_LINE = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\-–]\s+(?:(?![.!?]\s)[^\n]){1,200}$")


def strip_option_lists(text: str) -> str:
    """The reply without its copies of the option list: runs of two or more consecutive lines that
    each give one option, letters in increasing order (`A. Sydney` / `B. Canberra` …). A copy of
    the options is no answer, and must not hide the answer written after it."""
    lines = text.splitlines()
    keep = [True] * len(lines)
    start = 0
    while start < len(lines):
        end = start
        while (
            end < len(lines)
            and (match := _ECHO_LINE.match(lines[end]))
            and (
                end == start or match.group(1) > _ECHO_LINE.match(lines[end - 1]).group(1)  # type: ignore[union-attr]
            )
        ):
            end += 1
        if end - start >= 2:
            keep[start:end] = [False] * (end - start)
        start = max(end, start + 1)
    return "\n".join(line for line, kept in zip(lines, keep, strict=True) if kept)


def letter_at(text: str, position: int, letters: str) -> str | None:
    """The option letter written at `position` (after an anchor such as `answer:`), if any;
    `HEDGE` when a second letter follows it (`B and D`, `A or C`)."""
    match = _TOKEN.match(text, position)
    if match is None:
        return None
    bare = match.group("bare")
    if bare is not None and bare.islower() and not _LOWER_END.match(text, match.end()):
        return None
    letter = (bare or match.group("enclosed")).upper()
    if letter not in letters or (bare in ("A", "I") and _WORD_AFTER.match(text, match.end())):
        return None  # the article or the pronoun: `Answer: A mouse can be found …`
    return HEDGE if _SECOND_LETTER.match(text, match.end()) else letter


def text_at(text: str, position: int, options: Sequence[str], letters: str) -> str | None:
    """The letter of the option whose full text is written at `position` (the longest that fits)."""
    rest = normalize_text(text[position : position + 400]).lstrip("\"'“‘(")
    best: tuple[int, str] | None = None
    for letter, option in zip(letters, options, strict=True):
        target = normalize_text(option)
        if matchable(target) and rest.startswith(target) and not rest[len(target) : len(target) + 1].isalnum():
            if best is None or len(target) > best[0]:
                best = (len(target), letter)
    return best[1] if best else None


def answer_statement(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The last statement of an answer, wherever it is: `(position, letter)` from every form, sorted."""
    found: list[tuple[int, str]] = []
    for match in _ANSWER.finditer(text):
        letter = letter_at(text, match.end(), letters)
        if letter is not None:
            found.append((match.end(), letter))
    for anchor in _STATEMENT_ANCHOR.finditer(text):
        stated = _stated_after(text, anchor.end(), letters, options)
        if stated is not None:
            found.append(stated)
    for match in _ASSESSED.finditer(text):
        letter = match.group("letter") or match.group("lettered") or match.group("chosen")
        if letter in letters:
            found.append((match.end(), letter))
    return [max(found)[1]] if found else []


def _stated_after(text: str, start: int, letters: str, options: Sequence[str]) -> tuple[int, str] | None:
    """`(position, letter)` of the first `is <letter or option text>` in the sentence from `start`."""
    window = QUOTED.sub(lambda quoted: "x" * len(quoted.group(0)), text[start : start + 480])
    end = SENTENCE_END.search(window)
    window = window[: end.start()] if end else window
    named = text[start - 8 : start].casefold().rstrip().endswith(("option", "choice", "options", "choices"))
    for verb in _STATEMENT_VERB.finditer(window):
        position = start + verb.end()
        article = _ARTICLE.match(text, position)
        letter = (
            letter_at(text, position, letters)
            or text_at(text, position, options, letters)
            or (text_at(text, article.end(), options, letters) if article else None)
            or (None if named else _parenthesised(window[verb.end() :], letters))
        )
        if letter is not None:
            return position, letter
    return None


def _parenthesised(rest: str, letters: str) -> str | None:
    """The `(B)` / `(option B)` closing the first clause: `the answer is a cupboard (B)`."""
    match = _PARENTHESISED.search(re.split(r",|;|\bwhile\b|\bwhereas\b|\bbut\b", rest, maxsplit=1)[0])
    letter = match.group(1).upper() if match else None
    return letter if letter is not None and letter in letters else None


def matchable(option: str) -> bool:
    """A one-letter option text (`S`, `C`) cannot be told from an option letter or a word fragment."""
    return bool(option) and not (len(option) == 1 and option.isalpha())
