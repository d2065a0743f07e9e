"""Deterministic checks a rewrite must pass before it is served instead of its draft.

They cost no call and run on every rewrite, streamed or not (`check_rewrite`); the first failed
check names the fallback reason:

* `truncated_reply`: stage 2 stopped at its token limit (`finish_reason: length`);
* `lead_in_only`: nothing but a lead-in ("Here's a rewritten answer:"), labels or headings;
* `echo`: only the prompt's sections, the question or the preferences repeated back;
* `too_short`: much shorter than the draft (`aligner.min_length_ratio`), unless a preference
  asks for brevity;
* `answer_changed` / `answer_dropped`: the draft commits to a final answer in a recognisable form
  (an option letter, a number with its unit, yes/no, a single short answer line) and the rewrite
  states another one, or not that one.

`structured_draft` says whether a draft is served unchanged without any stage-2 call: it parses as a
JSON object or array, or it is one fenced code block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

GUARDS_VERSION = "g1"  # bump when a check changes what it lets through (the benchmark caches answers by it)
FENCED = re.compile(r"```[^\n`]*\n(?:(?!```).)*\n?```", re.DOTALL)
OPTION_LINE = re.compile(r"^\s*\(?([A-Z])[.)]\s+\S", re.MULTILINE)
OPTION_LINE_TEXT = re.compile(r"^\s*\(?([A-Z])[.)]\s+(.+)$", re.MULTILINE)
MARKUP = re.compile(r"^[\s>*_#`~\-+•]*(?:\d+[.)]\s+)?")
LEAD_IN = re.compile(
    r"^(?:here(?:'s| is| are)|sure|certainly|of course|okay|ok|absolutely|below|the (?:rewritten|revised|updated)"
    r"|rewritten|revised|this is|i(?:'ve| have) rewritten|let me)\b",
    re.IGNORECASE,
)
KEYWORD_ANSWER = re.compile(
    r"\b(?:final answer|correct answer|correct option|right answer|the answer|answer)\b\s*(?:is|would be|:|=|-)\s*:?\s*"
    r"[*_\"'`]*(.+?)(?:\n|$|(?<=[^\d\s])\.(?:\s|$))",
    re.IGNORECASE,
)
LETTER_PHRASE = re.compile(r"^(?:option\s+|choice\s+)?\(?([A-Z])\b(?![''-]\w)", re.IGNORECASE)
KEYWORD_LETTER = re.compile(r"\b(?:answer|option|choice)\b(?:\s+is)?\s*[:=-]?\s*\(?\*{0,2}([A-Z])\b(?![''-]\w)", re.IGNORECASE)
NUMBER = re.compile(r"(?<![\w.])(-?\d[\d,]*(?:\.\d+)?)\s*(%|°\s*[CF]?|[A-Za-z]{1,12})?")
YES_NO = {"yes": "yes", "no": "no"}
WORD = re.compile(r"[a-z0-9]+")
BREVITY = re.compile(
    r"\b(?:brief|briefly|concise|concisely|short|shorter|succinct|terse|one (?:sentence|line|word|paragraph)|few words"
    r"|summar\w*|tl;?dr|minimal|to the point|no more than|at most|under \d+|limit|fewer|less (?:text|detail)|keep it)\b",
    re.IGNORECASE,
)
SHORT_LINE = 80
MIN_WORDS = 12
STOPWORDS = frozenset(
    "a an the is are was were be been of to in on at for and or but with by as it its this that these those so "
    "answer correct option choice final which what who whom".split()
)


@dataclass(frozen=True, slots=True)
class FinalAnswer:
    """What the draft commits to: `kind` is letter, number, yesno or line."""

    kind: str
    value: str
    unit: str = ""
    keys: tuple[str, ...] = ()


def structured_draft(text: str) -> bool:
    """A draft that is a JSON object or array, or exactly one fenced code block."""
    stripped = text.strip()
    if not stripped:
        return False
    if stripped[0] in "[{":
        try:
            return isinstance(orjson.loads(stripped), dict | list)
        except orjson.JSONDecodeError:
            pass
    return bool(FENCED.fullmatch(stripped))


def wants_brevity(preferences: tuple[str, ...]) -> bool:
    return any(BREVITY.search(preference) for preference in preferences)


def check_rewrite(
    draft: str,
    rewrite: str,
    finish: str | None,
    query: str,
    preferences: tuple[str, ...],
    headings: tuple[str, ...] = (),
    min_length_ratio: float = 0.3,
) -> str | None:
    """The reason the rewrite must not be served, or None when it passes every check."""
    if finish == "length":
        return "truncated_reply"
    if not rewrite.strip():
        return "unusable_reply"
    lines = substantive_lines(rewrite)
    if not lines:
        return "lead_in_only"
    if is_echo(lines, draft, query, preferences, headings):
        return "echo"
    if not wants_brevity(preferences) and too_short(lines, draft, min_length_ratio):
        return "too_short"
    answer = final_answer(draft, query)
    return None if answer is None else answer_kept(answer, rewrite, query)


def too_short(lines: list[str], draft: str, ratio: float) -> bool:
    """Fewer than `ratio` of the draft's words (drafts under MIN_WORDS are left to the answer check)."""
    draft_words = len(WORD.findall(" ".join(substantive_lines(draft)).lower()))
    return draft_words >= MIN_WORDS and len(WORD.findall(" ".join(lines).lower())) < ratio * draft_words


def substantive_lines(text: str) -> list[str]:
    """The lines that carry content: not empty, not a heading, a rule, a label or a lead-in."""
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        bare = MARKUP.sub("", line).strip(" *_`")
        if not bare or set(bare) <= set("-=*_~|:"):
            continue
        if line.startswith("#") or (bare.endswith(":") and len(bare) <= SHORT_LINE):
            continue
        if LEAD_IN.match(bare) and (bare.endswith((":", "!")) or len(bare.split()) <= 3):
            continue
        out.append(bare)
    return out


def is_echo(lines: list[str], draft: str, query: str, preferences: tuple[str, ...], headings: tuple[str, ...]) -> bool:
    """Every content line repeats the question, a preference or a prompt heading. A line the draft
    has too, or an option line (`B. Jupiter`: the answer to a multiple-choice question), is content."""
    known = {_norm(text) for text in (*query.splitlines(), *preferences, *(h.lstrip("# ") for h in headings))}
    known -= {_norm(line) for line in (*draft.splitlines(), *substantive_lines(draft))} | {""}
    whole = _norm(query)
    for line in lines:
        norm = _norm(line)
        if OPTION_LINE.match(line) or not (norm in known or (norm and norm in whole and norm not in _norm(draft))):
            return False
    return True


def final_answer(draft: str, query: str) -> FinalAnswer | None:
    """The final answer the draft commits to, when it has one in a recognisable form."""
    options = set(OPTION_LINE.findall(query))
    letters = option_letters(draft, options)
    if len(letters) == 1:
        return FinalAnswer("letter", next(iter(letters)))
    if letters:
        return None  # several options named: no single commitment to hold the rewrite to
    stated = [match.group(1).strip(" *_\"'`.") for match in KEYWORD_ANSWER.finditer(draft)]
    if len({_norm(s) for s in stated}) == 1 and len(stated[0]) <= SHORT_LINE:
        return phrase_answer(stated[0], query)
    first = WORD.findall(draft.lower())[:1]
    if first and first[0] in YES_NO:
        return FinalAnswer("yesno", first[0])
    lines = substantive_lines(draft)
    if len(lines) == 1 and len(lines[0]) <= SHORT_LINE:
        return phrase_answer(lines[0], query)
    return None


def phrase_answer(phrase: str, query: str) -> FinalAnswer | None:
    words = WORD.findall(phrase.lower())
    if words and words[0] in YES_NO:
        return FinalAnswer("yesno", words[0])
    numbers = NUMBER.findall(phrase)
    if len(numbers) == 1:
        value, unit = numbers[0]
        return FinalAnswer("number", _number(value), _unit(unit))
    asked = set(WORD.findall(query.lower()))
    keys = tuple(dict.fromkeys(w for w in words if w not in STOPWORDS and w not in asked))
    return FinalAnswer("line", phrase, keys=keys) if keys else None


def option_letters(text: str, options: set[str]) -> set[str]:
    """The option letters `text` commits to: `B.`/`(B)` opening a line, or `answer is B`."""
    if not options:
        return set()
    found = {match.group(1).upper() for match in KEYWORD_LETTER.finditer(text)}
    for line in text.splitlines():
        match = LETTER_PHRASE.match(MARKUP.sub("", line).strip(" *_"))
        if match and re.match(r"^\W*\(?[A-Z](?:[.):]|\)|\s*$)", MARKUP.sub("", line).strip(" *_")):
            found.add(match.group(1).upper())
    return found & options


def named_options(text: str, query: str) -> set[str]:
    """The options whose text (`B. Jupiter` in the question) `text` names, for a rewrite that
    gives the option's words instead of its letter."""
    said = f" {_norm(text)} "
    found = set()
    for match in OPTION_LINE_TEXT.finditer(query):
        words = _norm(match.group(2))
        if words and f" {words} " in said:
            found.add(match.group(1))
    return found


def answer_kept(answer: FinalAnswer, rewrite: str, query: str) -> str | None:
    """None when the rewrite states the draft's final answer and no other; else the reason."""
    if answer.kind == "letter":
        letters = option_letters(rewrite, set(OPTION_LINE.findall(query))) or named_options(rewrite, query)
        if not letters:
            return "answer_dropped"
        return None if letters == {answer.value} else "answer_changed"
    if answer.kind == "yesno":
        words = WORD.findall(rewrite.lower())
        said = {w for w in words[:3] if w in YES_NO} | {_norm(m.group(1))[:3] for m in KEYWORD_ANSWER.finditer(rewrite)} & set(YES_NO)
        if said - {answer.value}:
            return "answer_changed"
        return None if answer.value in said or answer.value in words else "answer_dropped"
    if answer.kind == "number":
        return number_kept(answer, rewrite)
    text = rewrite.lower()
    return None if all(key in text for key in answer.keys) else "answer_dropped"


def number_kept(answer: FinalAnswer, rewrite: str) -> str | None:
    stated = [phrase_answer(m.group(1), "") for m in KEYWORD_ANSWER.finditer(rewrite)]
    for other in stated:
        if other is not None and other.kind == "number" and other.value != answer.value:
            return "answer_changed"
    seen = [(_number(value), _unit(unit)) for value, unit in NUMBER.findall(rewrite)]
    if not any(value == answer.value for value, _ in seen):
        return "answer_dropped"
    if answer.unit and not any(value == answer.value and _same_unit(unit, answer.unit) for value, unit in seen):
        return "answer_changed"
    return None


def _same_unit(unit: str, wanted: str) -> bool:
    return not unit or unit[:3] == wanted[:3]


def _number(text: str) -> str:
    value = text.replace(",", "")
    return value.rstrip("0").rstrip(".") if "." in value else value


def _unit(text: str) -> str:
    unit = text.replace(" ", "").lower()
    return "" if unit in STOPWORDS else unit


def _norm(text: str) -> str:
    return " ".join(WORD.findall(text.lower()))
