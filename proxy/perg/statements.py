"""Where a reply states its answer in running text: answer statements and the pieces every rule
reads (the letter or option text written at a position, copies of the option list). The order of
the rules is in `extract`, the rules that read whole lines in `line_rules`.

An answer statement is `Answer: B`, `the correct answer is (C).`, `The best answer to the question
"…" is E. White House` (a quoted span is read over, the window ends at the sentence's end), `the
answer is most likely B`, `the answer is Canberra` (an option's text), `the best place is a
cupboard (B)`, or said the other way round: `Option B is the correct answer`, `option B, "…", is
the most accurate answer`, `we can focus on option C as the most likely answer`. The last one in a
reply wins; one naming two letters (`is B and D`, `A or C`) is a hedge (a `Hedge`, equal to
`HEDGE`, that keeps the letters it names).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from .cells import normalize_text

HEDGE = "?"
"""What a statement naming two letters yields: an ambiguity, never an answer."""


class Hedge(str):
    """A `HEDGE` (equal to it) that keeps the letters it names, in the order written, for a hedge
    policy that resolves a hedge rather than reading it as no answer (`hedges.first_named`)."""

    letters: tuple[str, ...]

    def __new__(cls, letters: Sequence[str]) -> Hedge:
        hedge = super().__new__(cls, HEDGE)
        hedge.letters = tuple(letters)
        return hedge


_TOKEN = re.compile(r"""\s*["'“‘]?\s*(?:[(\[]\s*(?P<enclosed>[A-Za-z])\s*[)\]]|(?P<bare>[A-Za-z])(?!\w)(?!['’]\w))""")
_LOWER_END = re.compile(r"""\s*(?:$|[.,;:!?)\]”’]|["'](?!\w))""")  # not an opening quote: `is a "tall building"`
_SECOND_LETTER = re.compile(r"""\s*(?:,|/|&|\band\b|\bor\b)\s*(?:option\s+|choice\s+)?[(\[]?(?P<second>[A-Z])[)\]]?(?![\w'’])""")
VERB = r"\s*(?:is|would be|should be|must be|will be|=|:|-|–)\s*:?\s*(?:option|choice|letter)?\s*:?"
_ANSWER = re.compile(r"\b(?:answer|option|choice)" + VERB, re.IGNORECASE)
_SAME_SENTENCE = r"(?:(?![.!?](?:\s|$))[^\n]){0,160}?"
_BETWEEN = (  # what may stand between an option and its verdict: a quote, or words that are neither a verb nor a new clause
    r"""(?:"(?:(?![.!?]\s)[^"\n]){1,200}"|“(?:(?![.!?]\s)[^”\n]){1,200}”|(?![.!?](?:\s|$))"""
    r"(?!(?i:\b(?:is|are|was|were|that|while|although|though|if|because|whether|but|when|which|since|not|"
    r"may|might|can|could|will|would|should|must|do|does|did|has|have|had)\b))"
    r"(?!\b(?i:option|choice)\s+[(\[]?[A-Z]\b)[^\n]){0,160}?"  # nor another option
)
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
    r"(?:either\s+)?(?:(?:the\s+)?(?:option|choice|letter)\s*:?\s*)?",
    re.IGNORECASE,
)
_ASSESSED = re.compile(
    r"(?:\b(?i:option|choice)\s+[(\[]?(?P<letter>[A-Z])[)\]]?|(?:^|(?<=\n)|(?<=[,:;] ))(?P<lettered>[A-Z])[.)](?=\s))(?![\w'’])"
    r"""(?:\s*[,:(]?\s*["'“]?""" + _BETWEEN + r"""["'”)]?\s*,?)?"""
    r"\s+(?i:is|would be|seems to be|appears to be)\s+(?i:the\s+|a\s+)?(?i:most\s+|best\s+|only\s+)?"
    r"(?i:(?:factually|historically|scientifically)\s+)?(?i:(?!(?:not|least|less|in)\b)[a-z]+(?:,\s*|\s+and\s+))?"  # `the most literal and accurate`
    r"(?i:correct|right|best|accurate|appropriate|suitable|reasonable|fitting|plausible|true|valid|likely)\b"
    r"|\b(?i:option|choice)\s+[(\[]?(?P<closest>[A-Z])[)\]]?(?![\w'’])\s+(?i:comes|is)\s+(?i:the\s+)?(?i:closest)\b"
    r"|\b(?i:option|choice)\s+[(\[]?(?P<chosen>[A-Z])[)\]]?(?![\w'’])\s+(?i:as)\s+(?i:the|our)\s+"
    r"(?i:most likely|best|correct|right|most accurate|most appropriate|final)\b"
)
_RANKED = re.compile(r"\b(?:the|most|best|only)\b")
_CONCESSION = re.compile(
    r"(?:\s+(?:in (?:a|some) (?:sense|way)|to (?:a|some) (?:degree|extent)))?\s*[,;]?\s*(?:but|although|though|yet|however)\b",
    re.IGNORECASE,
)
_CONCESSIVE = re.compile(r"\b(?:although|though|while|whereas|even if)\s+(?:[^,;]{0,40}\s)?$", re.IGNORECASE)
_INTRODUCES_ANSWER = re.compile(
    r"\b(?:answers?|options?|choices?|correct|best|true|false|accurate)\b[^\n]{0,200}?(?:is|are|be|include)\s*:\s*$", re.IGNORECASE
)
_NEXT_LETTERED = re.compile(r"\n(?P<blank>[ \t]*\n)?(?P<line>[ \t]*[(\[]?[A-Z]\s*[)\].:\-–]\s[^\n]*)")
_INTRODUCED = re.compile(
    r"\b(?:correct|incorrect|true|false|best|most|right|answer|statement|example|likely|appropriate|accurate)\b"
    r"[^\n.!?]{0,120}?\b(?:is|would be|should be|will be)\s*:[ \t]*(?=\n)",
    re.IGNORECASE,
)
_LINE_LETTER = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\-–]\s", re.MULTILINE)
_LETTERED_AT = re.compile(r"\s*\n\s*[(\[]?[A-Z]\s*[)\].:\-–]\s")
_CITED = re.compile(
    r"\b(?:is|are|would be|should be|will be)\s+(?:(?:most\s+)?(?:likely|probably|often|clearly|definitely|usually)\s+)?"
    r"(?:option\s+)?[(\[]?(?P<letter>[A-Z])[)\].:]\s+",
    re.IGNORECASE,
)
_CITED_TEXT = re.compile(
    r"\b(?:is|are|would be|should be|will be)\s+(?:(?:most\s+)?(?:likely|probably|clearly|definitely)\s+)?", re.IGNORECASE
)
_OWN_TAG = re.compile(r"[ .,]*\((?:option\s+|choice\s+)?([A-Z])\)", re.IGNORECASE)
_ECHO_LINE = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\-–]\s+(?:(?![.!?]\s)[^\n]){1,200}$")


def strip_option_lists(text: str, letters: str = "") -> str:
    """The reply without its copies of the option list: runs of two or more consecutive lines that
    each give another option (`A. Sydney` / `B. Canberra` …, in any order). A copy of
    the options is no answer, and must not hide the answer written after it. A run that a line
    ending in `:` introduces as the answer (`The correct answers are:`) is a choice of several
    options, not a copy, unless it gives every one of `letters`: it stays, and reads as a hedge."""
    lines = text.splitlines()
    keep = [True] * len(lines)
    start = 0
    while start < len(lines):
        end = start
        while (
            end < len(lines)
            and (match := _ECHO_LINE.match(lines[end]))
            and (
                end == start or match.group(1) not in {_ECHO_LINE.match(line).group(1) for line in lines[start:end]}  # type: ignore[union-attr]
            )
        ):
            end += 1
        if end - start >= 2 and not _chosen_run(lines, start, end, letters):
            keep[start:end] = [False] * (end - start)
        start = max(end, start + 1)
    return "\n".join(line for line, kept in zip(lines, keep, strict=True) if kept)


def _chosen_run(lines: list[str], start: int, end: int, letters: str) -> bool:
    before = next((line for line in reversed(lines[:start]) if line.strip()), "")
    listed = "".join(_ECHO_LINE.match(line).group(1) for line in lines[start:end])  # type: ignore[union-attr]
    return bool(_INTRODUCES_ANSWER.search(before)) and listed != letters


def letter_at(text: str, position: int, letters: str, options: Sequence[str] = ()) -> str | None:
    """The option letter written at `position` (after an anchor such as `answer:`), if any;
    a `Hedge` when a second letter follows it (`B and D`, `A or C`)."""
    match = _TOKEN.match(text, position)
    if match is None:
        return None
    bare = match.group("bare")
    if bare is not None and bare.islower() and not _LOWER_END.match(text, match.end()):
        return None
    letter = (bare or match.group("enclosed")).upper()
    if letter not in letters or (bare in ("A", "I") and _WORD_AFTER.match(text, match.end())):
        return None  # the article or the pronoun: `Answer: A mouse can be found …`
    written = match.start("bare") if bare is not None else match.start("enclosed")
    line_start = text.rfind("\n", 0, written)
    on_own_line = line_start >= 0 and not text[line_start + 1 : written].strip(" \t([\"'“‘")
    second = _SECOND_LETTER.match(text, match.end())
    if second is not None:
        return Hedge((letter, second.group("second")))
    if on_own_line and _listed_with_others(text, match.end(), options):
        return Hedge((letter,))
    return letter


def _listed_with_others(text: str, end: int, options: Sequence[str]) -> bool:
    """Whether the lettered line ending after `end` is one of several (`C. keg` / `D. can` after
    `The best answer would be:`): the next line gives another option, or, after a blank line, both
    lines give nothing but their option's text (a review of the others after the chosen one is
    not a list of choices)."""
    line_end = text.find("\n", end)
    following = _NEXT_LETTERED.match(text, line_end) if line_end >= 0 else None
    if following is None:
        return False
    if following.group("blank") is None:
        return True
    line_start = text.rfind("\n", 0, end) + 1
    return _bare_option_line(text[line_start:line_end], options) and _bare_option_line(following.group("line"), options)


def _bare_option_line(line: str, options: Sequence[str]) -> bool:
    marker = _LINE_LETTER.match(line)
    if marker is None or ord(marker.group(1)) - ord("A") >= len(options):
        return False
    return normalize_text(line[marker.end() :]).rstrip(".") == normalize_text(options[ord(marker.group(1)) - ord("A")]).rstrip(".")


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
        letter = letter_at(text, match.end(), letters, options)
        if letter is not None and not _label_in_passing(text, match):
            found.append((match.end(), letter))
    for anchor in _STATEMENT_ANCHOR.finditer(text):
        stated = _stated_after(text, anchor.end(), letters, options)
        if stated is not None:
            found.append(stated)
    for match in _ASSESSED.finditer(text):
        letter = match.group("letter") or match.group("lettered") or match.group("chosen") or match.group("closest")
        if letter in letters and not _conceded(text, match):
            found.append((match.end(), letter))
    return [max(found)[1]] if found else []


def cited_option(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The last option cited after a verb with no answer word: `The false statement is:` with
    `A. …` on the next line, or `the best strategy is often D. Penetration pricing` (the option's
    letter and its full text)."""
    found: list[tuple[int, str]] = []
    for match in _INTRODUCED.finditer(text):  # `The false statement is:` with `A. …` on the next line
        letter = letter_at(text, match.end(), letters, options)
        if letter is not None and _LETTERED_AT.match(text, match.end()):
            found.append((match.end(), letter))
    for match in _CITED.finditer(text):  # `the best strategy is often D. Penetration pricing`
        letter = match.group("letter")
        if letter in letters and text_at(text, match.end(), [options[letters.index(letter)]], letter):
            found.append((match.end(), letter))
    for match in _CITED_TEXT.finditer(text):  # `the oddest thing to replace would be pants (option A)`
        cited = _text_with_its_letter(text, match.end(), letters, options)
        if cited is not None:
            found.append(cited)
    return [max(found)[1]] if found else []


def _conceded(text: str, match: re.Match[str]) -> bool:
    """A concession, not the answer: a verdict inside a concessive clause (`Even though option A is
    accurate, it is not …`), or a plain verdict (no `the`, `most`, `best`, `only`) that the same
    sentence at once restricts (`Option A is correct, but it does not answer the question`)."""
    verdict = text[match.start() : match.end()].casefold()
    sentence_start = max(text.rfind(". ", 0, match.start()), text.rfind("\n", 0, match.start())) + 1
    if _CONCESSIVE.search(text[sentence_start : match.start()]):
        return True
    return not _RANKED.search(verdict) and bool(_CONCESSION.match(text, match.end()))


def _text_with_its_letter(text: str, position: int, letters: str, options: Sequence[str]) -> tuple[int, str] | None:
    """`(end, letter)` when an option's full text at `position` is followed by its own letter in
    brackets (`pants (option A)`): the text and the letter say the same thing."""
    article = _ARTICLE.match(text, position)
    for start in (position, article.end()) if article else (position,):
        letter = text_at(text, start, options, letters)
        if letter is None:
            continue
        tag = _OWN_TAG.match(text, start + len(options[letters.index(letter)].rstrip(".")))
        if tag is not None and tag.group(1).upper() == letter:
            return tag.end(), letter
    return None


def _label_in_passing(text: str, match: re.Match[str]) -> bool:
    """`to help you understand the correct answer:` or `Let's examine each option:` before a walk
    through the options (`A. …`, `B. …`, `C. …` in order): an `answer:` or `option:` with no verb
    whose letter opens such a walk on a later line is no answer."""
    if "\n" not in match.group(0) or _STATEMENT_VERB.search(match.group(0)):
        return False
    walk = [line.group(1) for line in _LINE_LETTER.finditer(text, match.end())][:3]
    return len(walk) == 3 and ord(walk[0]) + 1 == ord(walk[1]) and ord(walk[1]) + 1 == ord(walk[2])


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
            letter_at(text, position, letters, options)
            or text_at(text, position, options, letters)
            or (text_at(text, article.end(), options, letters) if article else None)
            or (None if named else _parenthesised(window[verb.end() :], letters))
        )
        if letter is not None:
            return position, letter
        if named:
            return None  # `Option D is incorrect as there is no …`: the option's own verb said no letter
    return None


def _parenthesised(rest: str, letters: str) -> str | None:
    """The `(B)` / `(option B)` closing the first clause: `the answer is a cupboard (B)`."""
    match = _PARENTHESISED.search(re.split(r",|;|\bwhile\b|\bwhereas\b|\bbut\b", rest, maxsplit=1)[0])
    letter = match.group(1).upper() if match else None
    return letter if letter is not None and letter in letters else None


def matchable(option: str) -> bool:
    """A one-letter option text (`S`, `C`) cannot be told from an option letter or a word fragment."""
    return bool(option) and not (len(option) == 1 and option.isalpha())


_NO_COMMENT = re.compile(r"^\s*(?:i have\s+)?no comment\.?\s*$", re.IGNORECASE)
_DECLINES = re.compile(
    r"\bnone of the (?:provided |given |listed )?(?:options|choices|answers)\b"
    r"|\bi (?:can't|cannot|can not|am unable to|am not able to|won't|will not) (?:confirm|answer|choose|select|pick|provide|determine|"
    r"make|speak|affirm|say|verify)\b|\bi (?:don't|do not) have (?:real-time|personal|the ability|access)\b",
    re.IGNORECASE,
)


def declined(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The option that is itself a refusal (`I have no comment`, TruthfulQA's way to decline), when
    the reply declines to choose (`none of the options is correct`, `I cannot confirm or deny any of
    them`, `I don't have real-time information`) and no other rule found an option in it."""
    refusals = [letter for letter, option in zip(letters, options, strict=True) if _NO_COMMENT.match(option)]
    return refusals if len(refusals) == 1 and _DECLINES.search(text) else []
