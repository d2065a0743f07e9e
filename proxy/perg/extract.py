"""Answer extraction: the option letter a free-text reply commits to, or None.

Deterministic rules that describe how replies state a choice, strongest first. The first rule
that finds anything decides: one letter is the answer; different letters at the same strength make
the reply ambiguous (None, weaker rules are not consulted, so a hedge is never turned into an
answer by accident). Copies of the option list are removed first (`statements.strip_option_lists`).
A hedge stays unreadable unless the caller asks for the hedge policy `first` (`hedges.py`, an
explicit guess that mirrors the paper's reader): then it reads as the first of its options that
the reply mentions; a reply that names no option stays unreadable either way.

1. the reply opens with one lettered option, its text in full: `C. It rains all the time in …`,
   whatever follows it: the opening choice has answered and the rest explains it, even where it
   ends on another option (how answers written under a preference begin, and how almost half of
   the paper's answers without one do); a repeat of the prompt's `Preference:` line is read over,
   and so are spacing and punctuation in the text (`after 8 pm` for `after 8pm`); a text cut off
   where the reply stops (the token limit) counts when it is the start of that option's, 12
   letters or more. An opening that names several (`[B, D]. …`) is left to the rules below, and
   read in its own place (7);
2. a final answer: `\\boxed{B}`, `<answer>B</answer>`, `Final answer: B` (the last one wins);
3. an answer statement, the last one in the reply wins (so a self-correction counts): `Answer: B`,
   `the correct answer is (C).`, `The best answer to the question is E. White House`, `the answer
   is Canberra` (an option's text), and said the other way round: `Option B is the correct answer`,
   `option E is the most literal and accurate answer`. Two letters (`is B and D`) are a hedge. Not
   statements: a verdict in a concessive clause (`Even though option A is accurate, …`), a plain
   verdict its sentence restricts (`Option A is correct, but it does not answer …`), a verdict
   reached across another option or a new clause; after `Option X` only its own verb counts;
4. an option cited after a verb: `The false statement is:` then `A. …`; `is often D. Penetration
   pricing` (letter and full text); `would be pants (option A)` (full text and its own letter);
5. the last non-empty line is a bare letter: `B`, `B.`, `(B)`, `B)`, `**B**`;
6. an affirmation: `I think it's B`, `I'd go with B`, `B is correct`;
7. an opening that names several options: `[B, D]. …`, `[A, B] …` (a hedge);
8. the first sentence after the reply's only `Answer:` / `Response:` label names one option (by
   letter and full text as in 1, `(option C)` or its text): the label announces the answer and the answer
   opens with its choice; with several labels the reply answers several questions and this decides
   nothing;
9. the last concluding sentence (`Therefore, …`, `In summary, …`) names options;
10. a review that accepts one option: sections opening with an option (`C. …`, `Option C:`, the
    verdict in the same paragraph or, after an option alone on its line, the next one) whose first
    verdict is `This option is correct` (true, accurate, the best, `factually correct` …);
11. lines that start with a lettered option: first those giving one option's full text, then any;
12. `Option B` / `Choice B`, or a parenthesised `(B)` anywhere, unless rejected (`(B) is not …`,
    `(B) is a shop, but it's not …`) or set aside (`Other options like … (option B) …`);
13. the text of an option, casefolded, whole words only; not after `not`, `rather than`, `instead
    of`, not inside a sentence that sets the other options aside, nor an option contained in a
    longer option also mentioned, nor a one-letter option text;
14. an option cited in running text by its letter and then its own first words, read over
    inflection: `plenty of B. enjoying stories` (`enjoy stories`), `The reason is A) because the
    homeowner …` (`No, because the homeowner …`); not after `not`, `rather than`, …;
15. several options accepted at once: `options D and G are the correct answers`, `the correct
    answers are B and D` (a hedge; not after `none of`, `neither`, `not`);
16. the one rule that reads meaning rather than form, and the last: a reply that declines to
    choose (`none of the options is correct`, `I cannot confirm or deny any of them`) reads as
    the option that is itself a refusal (TruthfulQA's `I have no comment.`), when there is one.

Only letters of existing options count: with four options `E`, or the pronoun `I`, never do. A bare
lowercase letter counts only where it cannot be an English word (`answer: b`, not `answer is a bit`).
How often each rule agrees with the paper's own reader on its published answers: docs/eval.md.

A column that already holds letters (a results file) is never read with these rules: see
`cells.read_letter_cell`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .cells import LETTERS, normalize_text
from .hedges import HedgePolicy, first_named
from .line_rules import bare_last_line, full_text_lines, gives_option, lettered_lines, opening_option, reviewed_options
from .statements import (
    HEDGE,
    QUOTED,
    SENTENCE_END,
    VERB,
    Hedge,
    answer_statement,
    cited_option,
    declined,
    letter_at,
    matchable,
    strip_option_lists,
)

Fallback = Callable[[str, Sequence[str]], Awaitable[str | None]]
"""An optional second opinion (an LLM asked for the letter): gets the reply and the options, returns
text that is itself run through `extract_letter`. Its errors propagate to the caller."""

ExtractorMode = Literal["rules", "llm", "rules+llm"]
EXTRACTOR_MODES: tuple[ExtractorMode, ...] = ("rules", "llm", "rules+llm")

_FINAL = re.compile(r"\\boxed\{|<answer>|\bfinal answer" + VERB, re.IGNORECASE)
_CONCLUSION = re.compile(
    r"(?:^|(?<=[.!?]\s)|(?<=\n))\s*(?:therefore|thus|hence|so|in summary|in conclusion|to summarize|to sum up|overall|"
    r"in short|ultimately|based on (?:this|the|these|our|my)[^,\n]{0,60})\b,?",
    re.IGNORECASE,
)
_AFFIRM = re.compile(
    r"\b(?:i(?:'d| would| will|'ll)? (?:choose|pick|select|go with|say)|go with|i (?:think|believe)"
    r"(?: it(?:'s| is))?|it(?:'s| is)|my (?:choice|pick|guess) is)\s*(?:option|choice|letter)?",
    re.IGNORECASE,
)
_CORRECT = re.compile(
    r"(?:\b(?i:option|choice)\s+|(?<![A-Za-z]\s)(?<![\w(\[]))[(\[]?([A-Z])[)\]]?"
    r"\s+is\s+(?:the\s+)?(?i:correct|right|true|best)\b"
)
_LABELLED = re.compile(r"^[ \t]*(?:response|answer|reply)[ \t]*:[ \t]*(?=\S)", re.IGNORECASE | re.MULTILINE)
_INLINE_LETTER = re.compile(r"(?<![\w'’])[(\[]?([A-Z])[)\].]\s+")
_NAMED = re.compile(r"\b(?i:option|choice)\s+[(\[]?([A-Z])[)\]]?(?!\w)|\(([A-Z])\)")
_NEGATION = re.compile(
    r"(?:\bnot|n't|\bnever|\bnor|\brather than|\binstead of)\s+(?:the\s+|an?\s+)?"
    r"(?:[^.;:!?]{0,40}?(?:,|\bor|\bnor)\s+)?$"  # also the later items of `not X, Y or Z`
)
_MARKUP = re.compile(r"[*`]|__")
_REJECTED = re.compile(
    r"""\s*(?:[,(]\s*["'“]?""" + r"(?:(?![.!?]\s)[^\n]){0,120}?" + r"""["'”)]?\s*,?\s*)?"""
    r"(?:is|was|seems|would be)\s+(?:not\b|incorrect|wrong|false|unlikely|less\b|also\s+(?:not|incorrect|wrong))|\s*isn't"
    r"|\s*(?:is|was)\b[^.!?\n;]{0,120}?,\s*but\s+(?:it|this|that)(?:'s|\s+is)\s+not\b"  # `(option B) is a shop, but it's not …`
)
_SET_ASIDE = re.compile(  # `Other options like home (option A) … are not …`: the options not chosen
    r"(?:^|(?<=[.!?]\s)|(?<=\n))[ \t]*(?:the\s+|all\s+)?(?:other|remaining)\s+(?:options|choices|answers)\b[^.!?\n]*", re.IGNORECASE
)

_CITED_INLINE = re.compile(r"(?<![\w'’])([A-Z])[.)]\s+(?=[a-z\"“])")  # `of B. enjoying stories`: a lowercase word follows
_WORD = re.compile(r"[^\W_]+")
_VERDICT = r"(?:correct|right|true|accurate|valid|best|most accurate|most likely|most appropriate|plausible)"
_LISTED = r"(?P<listed>[(\[]?[A-Z][)\]]?(?:\s*,\s*[(\[]?[A-Z][)\]]?)*,?\s+(?:and|or|&)\s+[(\[]?[A-Z][)\]]?)(?![\w'’])"
_PLURAL_VERDICTS = (
    re.compile(
        rf"\b(?i:{_VERDICT})\s+(?i:answers|options|choices)\s+(?i:are|would be|could be)\s*:?\s*(?i:options?\s+|choices?\s+)?{_LISTED}"
    ),
    re.compile(
        rf"\b(?i:options|choices)\s+{_LISTED}\s+(?i:are|would be|could be|seem to be|appear to be)\s+(?i:both\s+|all\s+|equally\s+)?"
        rf"(?i:the\s+)?(?i:{_VERDICT})\b"
    ),
)
_DENIED = re.compile(r"\b(?:none|neither|not|no)\b[^.!?\n]{0,20}$", re.IGNORECASE)


class Extraction(BaseModel):
    """The letter a reply commits to and which path found it (`hedge`: a hedge resolved by the
    `first` policy, a guess; `none`: counted as unextractable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    letter: str | None
    method: Literal["rule", "fallback", "hedge", "none"]


_NO_LETTER = Extraction(letter=None, method="none")


def extract_letter(text: str | None, options: Sequence[str], hedges: HedgePolicy = "none") -> str | None:
    """The option letter `text` commits to, or None (no answer, or an ambiguous one). With `hedges`
    `first`, an ambiguous one is read as the first of its options it mentions (`hedges.py`)."""
    return read_by_rules(text, options, hedges).letter


def read_by_rules(text: str | None, options: Sequence[str], hedges: HedgePolicy = "none") -> Extraction:
    """The rules' letter (`rule`), else, under `hedges` `first`, the hedge's first option (`hedge`):
    one pass of the rules either way."""
    letters = LETTERS[: len(options)]
    if not text or not letters:
        return _NO_LETTER
    clean = strip_option_lists(_MARKUP.sub("", text).replace("’", "'").strip(), letters)
    for rule in _RULES:
        found = rule(clean, letters, options)
        if found:
            if len(set(found)) == 1 and found[0] != HEDGE:
                return Extraction(letter=found[0], method="rule")
            guessed = first_named(clean, found, letters, options) if hedges == "first" else None
            return Extraction(letter=guessed, method="hedge") if guessed else _NO_LETTER
    return _NO_LETTER


async def extract_answer(
    text: str | None,
    options: Sequence[str],
    fallback: Fallback | None = None,
    mode: ExtractorMode = "rules+llm",
    hedges: HedgePolicy = "none",
) -> Extraction:
    """The letter of a reply: by the rules (`rules`), by the fallback alone (`llm`, the paper's way),
    or by the rules and then the fallback where they find no single letter (`rules+llm`). Where the
    rules are used, the hedge policy comes last: after the fallback, for what it did not read."""
    if mode == "llm" and fallback is not None:
        letter = extract_letter(await fallback(text, tuple(options)), options) if text else None
        return Extraction(letter=letter, method="fallback" if letter else "none")
    read = read_by_rules(text, options, hedges)
    if read.method == "rule" or not text:
        return read
    if fallback is not None and mode == "rules+llm":
        letter = extract_letter(await fallback(text, tuple(options)), options)
        if letter is not None:
            return Extraction(letter=letter, method="fallback")
    return read  # the hedge policy's guess, or no letter


def _anchored(pattern: re.Pattern[str], text: str, letters: str, options: Sequence[str]) -> list[str]:
    found = [letter_at(text, match.end(), letters, options) for match in pattern.finditer(text)]
    return [letter for letter in found if letter is not None]


def _opening_answer(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The one option of an opening `C. <option C's text>` line; an opening that names several
    (`[B, D]. …`) is left to the other rules, in its own place among them (`opening_option`)."""
    found = opening_option(text, letters, options)
    return found if len(found) == 1 and found[0] != HEDGE else []


def _final_answer(text: str, letters: str, options: Sequence[str]) -> list[str]:
    return _anchored(_FINAL, text, letters, options)[-1:]


def _affirmation(text: str, letters: str, options: Sequence[str]) -> list[str]:
    stated = [m.group(1) for m in _CORRECT.finditer(text) if m.group(1) in letters]
    return [letter for letter in _anchored(_AFFIRM, text, letters, options) + stated if letter != HEDGE]


def _conclusion(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The options the last concluding sentence (`Therefore, …`, `In summary, …`) names, by letter
    (`(option D)`) or else by text."""
    markers = list(_CONCLUSION.finditer(text))
    if not markers:
        return []
    start = markers[-1].end()
    window = QUOTED.sub(lambda quoted: "x" * len(quoted.group(0)), text[start : start + 600])
    end = SENTENCE_END.search(window)
    sentence = text[start : start + (end.start() if end else len(window))]
    return _named_option(sentence, letters, options) or _option_text(sentence, letters, options)


def _labelled_answer(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """The one option named in the first sentence after the reply's only `Answer:` / `Response:`
    label with text on its line: by its letter and full text (`… responsible for D. life on
    earth`), by `(option C)`, or by its text. The label announces the answer, and a reply opens
    its answer with its choice; several labels (a reply answering several questions) or several
    options in that sentence decide nothing."""
    labels = list(_LABELLED.finditer(text))
    if len(labels) != 1:
        return []
    start = labels[0].end()
    window = QUOTED.sub(lambda quoted: "x" * len(quoted.group(0)), text[start : start + 600])
    end = SENTENCE_END.search(_INLINE_LETTER.sub(lambda cited: "x" * len(cited.group(0)), window))  # `D. life` ends nothing
    sentence = text[start : start + (end.start() if end else len(window))]
    cited = {
        match.group(1)
        for match in _INLINE_LETTER.finditer(sentence)
        if match.group(1) in letters and gives_option(text, start + match.end(), options[letters.index(match.group(1))])
    }
    named = cited | set(_named_option(sentence, letters, options)) | set(_option_text(sentence, letters, options))
    return list(named) if len(named) == 1 else []


def _named_option(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """Options named by letter, except those named to be rejected (`Option A is incorrect`, `not (B)`)."""
    found = []
    text = _SET_ASIDE.sub(lambda aside: " " * len(aside.group(0)), text)
    for match in _NAMED.finditer(text):
        letter = match.group(1) or match.group(2)
        before = text[max(0, match.start() - 60) : match.start()].casefold()
        if letter in letters and not _REJECTED.match(text, match.end()) and not _NEGATION.search(before):
            found.append(letter)
    return found


def _option_text(text: str, letters: str, options: Sequence[str]) -> list[str]:
    folded = _SET_ASIDE.sub(lambda aside: " " * len(aside.group(0)), text).casefold()
    texts = {letter: normalize_text(option) for letter, option in zip(letters, options, strict=True)}
    mentioned = {letter for letter, option in texts.items() if matchable(option) and _affirmed_mention(folded, option)}
    longest = [letter for letter in mentioned if not any(other != letter and texts[letter] in texts[other] for other in mentioned)]
    return sorted(longest)


def _inline_citation(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """Options cited in running text by their letter and then their own words, the first four read
    over inflection: `you might do plenty of B. enjoying stories` (`enjoy stories`), `The reason
    is A) because the homeowner honestly disputed …` (`No, because the homeowner honestly
    disputed …`: a leading `Yes` / `No` may be left out). Not after `not`, `rather than`, …"""
    found = []
    for match in _CITED_INLINE.finditer(text):
        letter = match.group(1)
        if letter in letters and not _NEGATION.search(text[max(0, match.start() - 60) : match.start()].casefold()):
            if _words_follow(options[letters.index(letter)], text[match.end() : match.end() + 300]):
                found.append(letter)
    return found


def _words_follow(option: str, rest: str) -> bool:
    wanted, written = _WORD.findall(option.casefold()), _WORD.findall(rest.casefold())
    if wanted[:1] in (["yes"], ["no"]) and written[:1] != wanted[:1]:
        wanted = wanted[1:]
    count = min(len(wanted), 4)
    if count < 2 or len(written) < count:
        return False
    return all(
        word == seen or (len(word) >= 4 and len(seen) >= 4 and word[:4] == seen[:4])
        for word, seen in zip(wanted[:count], written[:count], strict=True)
    )


def _plural_verdict(text: str, letters: str, options: Sequence[str]) -> list[str]:
    """`options D and G are the correct answers`, `the correct answers are B and D`: several options
    accepted at once, a hedge (not after `none of`, `neither`, `not`)."""
    for pattern in _PLURAL_VERDICTS:
        for match in pattern.finditer(text):
            named = [letter for letter in re.findall("[A-Z]", match.group("listed")) if letter in letters]
            if len(named) >= 2 and not _DENIED.search(text[max(0, match.start() - 30) : match.start()]):
                return [Hedge(named)]
    return []


def _affirmed_mention(folded: str, option: str) -> bool:
    for match in re.finditer(rf"(?<![\w']){re.escape(option)}(?!\w)", folded):
        if not _NEGATION.search(folded[max(0, match.start() - 60) : match.start()]):
            return True
    return False


_RULES = (
    _opening_answer,
    _final_answer,
    answer_statement,
    cited_option,
    bare_last_line,
    _affirmation,
    opening_option,
    _labelled_answer,
    _conclusion,
    reviewed_options,
    full_text_lines,
    lettered_lines,
    _named_option,
    _option_text,
    _inline_citation,
    _plural_verdict,
    declined,
)
