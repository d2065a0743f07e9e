"""The proxy's upstream key taken out of anything an upstream sends back before it is relayed: an
error body, an error event, a header, a byte of a stream (an upstream that echoes the request it
got must not hand the proxy's key to a client)."""

from __future__ import annotations

from collections.abc import Mapping

from multidict import CIMultiDict

REDACTED = b"[redacted]"


class Redactor:
    """Replaces `secret` in a byte stream fed chunk by chunk: a tail that could be the start of
    the secret is held back until the next chunk (or `flush`) says whether it is."""

    __slots__ = ("_held", "_secret", "_text")

    def __init__(self, secret: str) -> None:
        self._secret = secret.encode("latin-1", "replace")
        self._text = secret
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        secret = self._secret
        if not secret:
            return chunk
        data = self._held + chunk if self._held else chunk
        if secret in data:
            data = data.replace(secret, REDACTED)
        keep = self._partial(data)
        if keep:
            self._held = data[-keep:]
            return data[:-keep]
        self._held = b""
        return data

    def flush(self) -> bytes:
        held, self._held = self._held, b""
        return held

    def whole(self, data: bytes) -> bytes:
        """One whole body, redacted."""
        return data.replace(self._secret, REDACTED) if self._secret and self._secret in data else data

    def headers(self, headers: Mapping[str, str]) -> Mapping[str, str]:
        """The headers, with the secret replaced in any value (the same object when none holds it)."""
        text = self._text
        if not text or not any(text in value for value in headers.values()):
            return headers
        return CIMultiDict((name, value.replace(text, REDACTED.decode())) for name, value in headers.items())

    def _partial(self, data: bytes) -> int:
        """The length of the longest tail of `data` that is a proper prefix of the secret."""
        secret = self._secret
        if data[-1:] and data[-1:] not in secret:
            return 0
        for size in range(min(len(secret) - 1, len(data)), 0, -1):
            if data.endswith(secret[:size]):
                return size
        return 0
