"""Client and admin keys, compared in constant time.

Keys are compared as SHA-256 digests with `hmac.compare_digest`, and every configured key is
compared on every check (no early exit), so the time taken says nothing about how close a guess
was or which key matched. A key that matched once is then found by a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import hmac

from ..config import AuthSettings, ClientKey
from ..errors import AuthenticationFailed, PermissionDenied

ANONYMOUS = ClientKey(key="-", name="anonymous")


def _digest(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogateescape")).digest()


def bearer_token(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


class Authenticator:
    def __init__(self, settings: AuthSettings) -> None:
        self._clients = [(_digest(client.key), client) for client in settings.client_keys]
        self._admin = _digest(settings.admin_key) if settings.admin_key else None
        self._metrics = _digest(settings.metrics_key) if settings.metrics_key else None
        self.open = not self._clients
        # keys that matched before, by the key itself: a client's next request skips the digest
        # and the comparisons. Only matching keys are held, so a lookup that finds nothing tells a
        # guesser nothing the 401 does not; a hit's time does not depend on which key it is.
        self._seen: dict[str, ClientKey] = {}

    def check(self, authorization: str | None, *, admin: bool) -> ClientKey | None:
        """The client a request comes from; raises 401 / 403. Admin routes need the admin key."""
        token = bearer_token(authorization)
        if admin:
            self._check_admin(token)
            return None
        if self.open:
            return ANONYMOUS
        if token is None:
            raise AuthenticationFailed("Missing API key: send it as 'Authorization: Bearer <key>'.")
        found = self._match(token)
        if found is None:
            raise AuthenticationFailed("Incorrect API key provided.")
        return found

    def check_metrics(self, authorization: str | None) -> None:
        """`/metrics` is open unless `auth.metrics_key` is set; then it needs that key."""
        if self._metrics is None:
            return
        token = bearer_token(authorization)
        if token is None:
            raise AuthenticationFailed("Missing metrics key: send it as 'Authorization: Bearer <key>'.")
        if not hmac.compare_digest(_digest(token), self._metrics):
            raise AuthenticationFailed("Incorrect metrics key provided.")

    def _check_admin(self, token: str | None) -> None:
        if self._admin is None:
            raise PermissionDenied("Admin routes are disabled: set auth.admin_key to enable them.")
        if token is None:
            raise AuthenticationFailed("Missing admin key: send it as 'Authorization: Bearer <key>'.")
        if not hmac.compare_digest(_digest(token), self._admin):
            if self._match(token) is not None:
                raise PermissionDenied("Client keys cannot use admin routes.")
            raise AuthenticationFailed("Incorrect admin key provided.")
        return None

    def _match(self, token: str) -> ClientKey | None:
        found = self._seen.get(token)
        if found is not None:
            return found
        digest = _digest(token)
        for known, client in self._clients:
            if hmac.compare_digest(digest, known) and found is None:
                found = client
        if found is not None:
            self._seen[token] = found  # at most one entry per configured key
        return found
