"""Reading one cell of a dataset or results file: the options, the gold letter, an answer letter.

Options come as a Python list literal (`"['a', 'b']"`, read with `ast.literal_eval`, never eval)
or as the repr of a numpy array of strings (`"['0' '4' '2' '6']"`, no commas, possibly wrapped
over lines), which `literal_eval` would silently join into one option; the strings of such a repr
are read one by one with the standard tokenizer.
"""

from __future__ import annotations

import ast
import io
import re
import string
import tokenize
from collections.abc import Sequence

LETTERS = string.ascii_uppercase
_LETTER_FORM = re.compile(r"^\(?([A-Za-z])\)?[.):]?$")
_UPPER_LETTER = re.compile(r"^\(?([A-Z])\)?[.):]?$")
_CELL = re.compile(r"^\s*([A-Za-z])\s*$")
_SPACES = re.compile(r"\s+")
_LAYOUT = {tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER}


def normalize_text(text: str) -> str:
    """Casefolded, whitespace collapsed, trailing full stop removed: how option texts are compared."""
    return _SPACES.sub(" ", text).strip().rstrip(".").strip().casefold()


def parse_options(value: str) -> tuple[str, ...]:
    """The options of a cell: a Python list (or tuple) literal, or a numpy array repr."""
    text = value.strip()
    array = _numpy_array(text)
    if array is not None:
        return array
    try:
        parsed = ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError) as error:
        raise ValueError(f"options are not a Python list literal: {error.__class__.__name__}") from None
    if not isinstance(parsed, list | tuple) or not all(isinstance(o, str | int | float) for o in parsed):
        raise ValueError("options must be a list of strings")
    return tuple(str(option).strip() for option in parsed)


def _numpy_array(text: str) -> tuple[str, ...] | None:
    """The elements of `['a' 'b' …]` (strings or numbers side by side, no commas), else None."""
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        tokens = [t for t in tokenize.generate_tokens(io.StringIO(text).readline) if t.type not in _LAYOUT]
    except (tokenize.TokenError, SyntaxError, IndentationError):
        return None
    inner = tokens[1:-1]
    if len(inner) < 2 or not all(t.type in (tokenize.STRING, tokenize.NUMBER) for t in inner):
        return None
    try:
        values = [ast.literal_eval(t.string) for t in inner]
    except (ValueError, SyntaxError):
        return None
    if not all(isinstance(v, str | int | float) and not isinstance(v, bool) for v in values):
        return None
    return tuple(str(v).strip() for v in values)


def parse_gold(value: str, options: Sequence[str]) -> str:
    """The gold letter named by `value`.

    A capital letter of an existing option (`B`, `(B)`, `B.`) is that letter, whatever the options
    say (the MMLU options `['L', 'R', '1/C', 'C']` with gold `C` mean the third option). Anything
    else may be a lowercase letter, a 0-based index (`1` is B) or an option's text (compared
    casefolded, trailing full stop ignored); a value that reads two ways pointing at different
    options (the index `2` when option B's text is `2`) is rejected as ambiguous, not guessed.
    """
    text = value.strip()
    letters = LETTERS[: len(options)]
    upper = _UPPER_LETTER.match(text)
    if upper:
        if upper.group(1) in letters:
            return upper.group(1)
        raise ValueError(f"gold letter {value!r} is not one of the option letters {letters}")
    texts = [normalize_text(option) for option in options]
    match = _LETTER_FORM.match(text)
    as_letter = match.group(1).upper() if match and match.group(1).upper() in letters else None
    as_index = letters[int(text)] if text.isdigit() and int(text) < len(letters) else None
    found = [letters[i] for i, option in enumerate(texts) if option == normalize_text(text)]
    as_text = found[0] if len(found) == 1 else None
    readings = {reading for reading in (as_letter, as_index, as_text) if reading is not None}
    if len(readings) > 1 or len(found) > 1:
        pointed = sorted(readings | set(found))
        raise ValueError(f"gold {value!r} is ambiguous: it could mean option {' or '.join(pointed)}")
    if not readings:
        raise ValueError(f"gold {value!r} is not a letter A-{letters[-1]}, a 0-based index or an option's text")
    return readings.pop()


def read_letter_cell(value: str | None, n_options: int) -> str | None:
    """A letter column's cell, read strictly: a single letter of an existing option (either case,
    surrounding spaces ignored), else None (`-1`, empty, `None`, free text, an out-of-range letter).
    Such a cell never goes through the free-text extractor."""
    match = _CELL.match(value or "")
    letter = match.group(1).upper() if match else None
    return letter if letter is not None and letter in LETTERS[:n_options] else None


def repeated_options(options: Sequence[str]) -> list[str]:
    """Options written more than once, exactly (case and inner spaces count: `BB BB` and
    `Bb Bb` are two options). Such a row is kept: its gold letter still names one position."""
    seen: set[str] = set()
    repeated: list[str] = []
    for option in options:
        key = _SPACES.sub(" ", option).strip()
        if key in seen and key not in repeated:
            repeated.append(key)
        seen.add(key)
    return repeated
