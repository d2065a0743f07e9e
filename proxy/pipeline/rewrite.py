"""Reading the aligner's reply, whole or as it streams, into the rewritten answer.

Models wrap what they were asked for: a leading "Rewritten answer:" label, a code fence, a JSON
object with an `answer` field, or an echo of the prompt's own sections after the answer (the
135M local model does this often). `RewriteFilter` strips all of that with the same code for a
whole reply and for a stream, so both give the same text; streamed text is held back only while
it could still turn out to be a wrapper (a line starting with `#` or a backtick, the start of the
reply, trailing white space).
"""

from __future__ import annotations

import functools
import re

from ..upstream.structured import extract_json_object

UNCHANGED = "UNCHANGED"
LABEL = re.compile(
    r"^\s*(?:#+[ \t]*(?:rewritten answer|rewritten version|answer)[ \t]*:?[ \t]*(?:\n|$)"
    r"|(?:\*\*)?(?:rewritten answer|rewritten version|answer)(?:\*\*)?[ \t]*:(?:\*\*)?[ \t]*\n?)",
    re.IGNORECASE,
)
START_HOLD = 24
WRAPPER_WORDS = frozenset({"UNCHANGED", "REWRITTEN", "ANSWER", "HERE", "HERES", "SURE", "CERTAINLY", "OKAY", "OK"})
JSON_KEYS = ("answer", "rewritten_answer", "rewritten", "text", "content")


class RewriteFilter:
    def __init__(self, headings: tuple[str, ...] = ()) -> None:
        self._echo = _echo_prefixes(headings)
        self._state = "start"  # start -> text | json | done
        self._buffer = ""
        self._held = ""
        self._in_fence = False
        self.unchanged = False
        self.text = ""

    def feed(self, piece: str) -> str:
        """Add reply text; return the part of the answer that is now certain."""
        if self._state == "done":
            return ""
        if self._state in ("start", "json"):
            self._buffer += piece
            return self._decide() if self._state == "start" else ""
        return self._emit_text(piece)

    def finish(self) -> str:
        """End of the reply: return what was held back. Then `text` is the whole answer."""
        if self._state == "start":
            return self._finish_start()
        if self._state == "json":
            self._state = "done"
            return self._from_json(self._buffer)
        if self._state == "text":
            self._state = "done"
            tail = self._held
            self._held = ""
            tail = "" if self._is_fence(tail) or self._is_echo(tail) else tail.rstrip()
            return self._out(tail)
        return ""

    def _decide(self) -> str:
        stripped = self._buffer.lstrip()
        if not stripped:
            return ""
        if _opens_json(stripped):
            self._state = "json"
            return ""
        if len(stripped) <= len(UNCHANGED) + 2 and UNCHANGED.startswith(_letters(stripped)[: len(UNCHANGED)]):
            return ""  # still possibly the UNCHANGED marker
        if _plain_start(stripped):
            return self._start_text()
        if len(stripped) < START_HOLD and "\n" not in stripped:
            return ""
        if stripped.startswith("```") and not stripped.partition("\n")[2].strip():
            return ""  # a fence line: what it fences decides
        return self._start_text()

    def _finish_start(self) -> str:
        stripped = self._buffer.strip()
        if _opens_json(stripped):
            self._state = "done"
            return self._from_json(stripped)
        if _letters(stripped) == UNCHANGED:
            self._state = "done"
            self.unchanged = True
            return ""
        return self._start_text() + self.finish()

    def _start_text(self) -> str:
        body = self._buffer.lstrip()
        self._buffer = ""
        if body.startswith("```"):
            self._in_fence = True
            newline = body.find("\n")
            body = body[newline + 1 :] if newline >= 0 else ""
        body = LABEL.sub("", body, count=1).lstrip()
        self._state = "text"
        return self._emit_text(body)

    def _emit_text(self, piece: str) -> str:
        data = self._held + piece
        self._held = ""
        out: list[str] = []
        while "\n" in data:
            line, data = data.split("\n", 1)
            if self._is_echo(line) or (self._in_fence and self._is_fence(line)):
                self._state = "done"
                return self._out("".join(out).rstrip())
            out.append(line + "\n")
        if data.lstrip().startswith(("#", "`")) or not data.strip():
            self._held = data
        else:
            stripped = data.rstrip()
            self._held = data[len(stripped) :]
            out.append(stripped)
        text = "".join(out)
        keep = len(text.rstrip())
        self._held = text[keep:] + self._held
        return self._out(text[:keep])

    def _out(self, text: str) -> str:
        self.text += text
        return text

    def _start_plain(self, raw: str) -> str:
        """A reply that looked like JSON but was not: read it as text after all."""
        self._state, self._buffer = "start", raw
        text = self._start_text()
        return text + self.finish()

    def _is_echo(self, line: str) -> bool:
        lowered = " ".join(line.lower().split()[:2])
        return bool(lowered) and lowered.startswith("###") and any(lowered.startswith(h) for h in self._echo)

    @staticmethod
    def _is_fence(line: str) -> bool:
        return line.strip().startswith("```")

    def _from_json(self, raw: str) -> str:
        data = extract_json_object(raw)
        if data is None:
            return self._start_plain(raw)
        if data.get("unchanged") is True or data.get("applies") is False:
            self.unchanged = True
            return ""
        for key in JSON_KEYS:
            value = data.get(key)
            if isinstance(value, str):
                return self._out(value.strip())
        return self._start_plain(raw)


def _plain_start(text: str) -> bool:
    """The reply starts with a whole first word that no wrapper starts with: stream it now."""
    word, space, _ = text.partition(" ")
    return bool(space) and word[:1].isalnum() and "{" not in word and _letters(word) not in WRAPPER_WORDS


def _opens_json(text: str) -> bool:
    """JSON (bare, fenced, or after a short lead-in) starts in the first line of the reply."""
    first = text.split("\n", 2)
    head = first[1] if first[0].strip().startswith("```") and len(first) > 1 else first[0]
    return "{" in head


def _letters(text: str) -> str:
    return "".join(char for char in text.upper() if char.isalpha())


@functools.lru_cache(maxsize=64)
def _echo_prefixes(headings: tuple[str, ...]) -> tuple[str, ...]:
    """The first two words of each `### ` heading, lowered: how an echo of the prompt starts
    (a few prompts per process, so the cache stays small)."""
    return tuple({" ".join(h.lower().split()[:2]) for h in headings if h.startswith("### ")})


def parse_rewrite(reply: str, headings: tuple[str, ...] = ()) -> RewriteFilter:
    """Parse a whole reply; the filter's `text` and `unchanged` say what it held."""
    parsed = RewriteFilter(headings)
    parsed.feed(reply)
    parsed.finish()
    return parsed
