"""The rules of answer extraction that read whole lines and sections of a reply: an opening
`C. …` line, a review of the options, lettered lines, a bare last line. Their order among the
other rules, and the reasoning of each, is in `extract`."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .cells import normalize_text
from .statements import Hedge, matchable

_BRACKETED = re.compile(r"^\s*\[([A-Z])\s*(?P<several>,\s*(?:or\s+)?[A-Z]\s*(?:[,\]]|\.(?![^\W\d_])))?")  # `[B, No, …]`; `[A, B]` names two
_REVIEW_HEAD = re.compile(r"^\s*(?:option\s+)?[(\[]?([A-Z])\s*[)\].:\-–]", re.IGNORECASE)
_REVIEW_VERDICT = re.compile(
    r"\b(?:this|that|it)\s+(?:option|answer|statement|choice)?\s*(?:is|seems|appears)\s+(?:to be\s+)?(?:the\s+)?(?:most\s+)?"
    r"(?:(?:factually|historically|scientifically|generally|clearly|definitely|absolutely|entirely|completely|certainly)\s+)?"
    r"(?P<verdict>correct|true|accurate|right|valid|best|likely|plausible|not|incorrect|false|wrong|inaccurate|partially|also|less|too)\b",
    re.IGNORECASE,
)
_BARE_LINE = re.compile(r"^[(\[]?\s*([A-Za-z])\s*[)\]]?\s*[.):]?$")
_LETTERED_LINE = re.compile(r"^\s*[(\[]?([A-Z])\s*[)\].:\-–](?:\s|$)", re.MULTILINE)
_LETTERED_TEXT = re.compile(r"""^\s*(?:option\s+)?[(\[]?([A-Z])\s*[)\].:\-–]\s+["'“]?(.*)$""", re.MULTILINE | re.IGNORECASE)
_LABEL = re.compile(r"^\s*(?:response|answer|reply)\s*:\s*$", re.IGNORECASE)
_ECHOED_PREFERENCE = re.compile(r"^\s*preference\s*:", re.IGNORECASE)  # the reply repeats the prompt's `Preference:` line
_SQUEEZE = re.compile(r"[\W_]+")


def bare_last_line(text: str, letters: str, options: Sequence[str]) -> list[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = _BARE_LINE.match(lines[-1]) if lines else None
    letter = match.group(1).upper() if match else None
    return [letter] if letter and letter in letters else []


def reviewed_options(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The one option a review accepts: paragraphs that open with an option (`C. …` or `Option C:`)
    and whose first verdict is `This option is correct` (or true, accurate, the best, …)."""
    accepted: set[str] = set()
    rejected: set[str] = set()
    for paragraph in _review_paragraphs(text):
        head = _REVIEW_HEAD.match(paragraph)
        verdict = _REVIEW_VERDICT.search(paragraph[:600]) if head else None
        if head is None or verdict is None or head.group(1).upper() not in letters:
            continue
        positive = verdict.group("verdict").lower() in ("correct", "true", "accurate", "right", "valid", "best", "likely", "plausible")
        (accepted if positive else rejected).add(head.group(1).upper())
    return sorted(accepted - rejected) if accepted - rejected else []


def _review_paragraphs(text: str) -> list[str]:
    """The paragraphs of a reply; a paragraph that is one lettered line alone (`Option D: <its
    text>`) is joined to the next one, the comment it introduces (`This answer is the most accurate.`)."""
    paragraphs = re.split(r"\n\s*\n", text)
    joined: list[str] = []
    for paragraph in paragraphs:
        if joined and "\n" not in joined[-1].strip() and _REVIEW_HEAD.match(joined[-1]) and not _REVIEW_HEAD.match(paragraph):
            joined[-1] += "\n\n" + paragraph
        else:
            joined.append(paragraph)
    return joined


def opening_option(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """`C. <option C's text>` (or `[C, …]`) as the reply's first line (after a bare `Response:` label)."""
    lines = [line for line in text.splitlines() if line.strip() and not _LABEL.match(line) and not _ECHOED_PREFERENCE.match(line)]
    bracketed = _BRACKETED.match(lines[0]) if lines else None
    if bracketed is not None and bracketed.group(1) in letters:
        several = bracketed.group("several")  # `[B, No, it is not]`; `[A, B]` is a hedge
        return [Hedge((bracketed.group(1), *re.findall("[A-Z]", several))) if several else bracketed.group(1)]
    match = _LETTERED_TEXT.match(lines[0]) if lines else None
    if match is None or match.group(1).upper() not in letters or (len(lines) > 1 and _LETTERED_LINE.match(lines[1])):
        return []  # not an opening line but the first of a list of the options
    letter = match.group(1).upper()
    return [letter] if gives_option(text, match.start(2), options[letters.index(letter)]) else []


def gives_option(text: str, position: int, option: str) -> bool:
    """Whether the text at `position` is `option`'s, read over spacing and punctuation (`after 8
    pm` for `after 8pm`), or the start of it where the reply stops (`C. Just by touching them,`,
    cut off by the token limit)."""
    window = text[position : position + 400].casefold()
    rest, target = _SQUEEZE.sub("", window), _SQUEEZE.sub("", option.casefold())
    if not matchable(option) or not target:
        return False
    if rest.startswith(target):  # and the option's last word ends there: `No` is not the start of `Nothing`
        ends = [match.end() for match in re.finditer(r"[^\W_]", window)]
        return len(ends) == len(target) or not window[ends[len(target) - 1]].isalnum()
    return position + 400 >= len(text) and len(rest) >= 12 and target.startswith(rest)


def full_text_lines(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """Lettered lines that give their option's text in full; a list of every option is no answer."""
    found = []
    for match in _LETTERED_TEXT.finditer(text):
        letter = match.group(1).upper()
        if letter in letters and normalize_text(match.group(2).strip("\"'“”")) == normalize_text(options[letters.index(letter)]):
            found.append(letter)
    return found


def lettered_lines(text: str, letters: str, options: Sequence[str]) -> list[str]:
    return [letter for letter in _LETTERED_LINE.findall(text) if letter in letters]
