"""The store's exceptions. No database driver exception leaves `proxy.preferences`; these do."""

from __future__ import annotations

from ..errors import InvalidRequest, NotFound, ProxyError, ServiceUnavailable


class StoreError(ProxyError):
    """The store failed in a way that retrying will not fix (a bug or a broken schema): 500."""

    status = 500
    type = "server_error"
    code = "store_error"


class StoreUnavailable(StoreError, ServiceUnavailable):
    """The store cannot be used right now: unreachable, locked past the busy timeout, disk full,
    read-only, I/O error. 503: the caller may retry later; nothing was written."""

    status = 503
    type = "server_error"
    code = "store_unavailable"


class PreferenceNotFound(NotFound):
    """A PATCH named a preference id the user does not have; nothing was changed."""

    code = "preference_not_found"

    def __init__(self, user_id: str, preference_id: str) -> None:
        super().__init__(f"user {user_id!r} has no preference with id {preference_id!r}", param="remove")
        self.user_id = user_id
        self.preference_id = preference_id


class TooManyPreferences(InvalidRequest):
    """A PATCH would leave the user more preferences than its `limit`; nothing was changed.
    Checked inside the write transaction, so concurrent patches cannot together exceed it."""

    code = "too_many_preferences"

    def __init__(self, user_id: str, count: int, limit: int) -> None:
        super().__init__(f"user {user_id!r} would have {count} preferences; at most {limit} are allowed", param="add")
        self.count = count
        self.limit = limit


class InvalidCursor(InvalidRequest):
    """`after` names a sample that does not exist (any more: it may have been pruned)."""

    code = "invalid_cursor"

    def __init__(self, after: str) -> None:
        super().__init__(f"no sample with id {after!r} (it may have been pruned); list again without 'after'", param="after")


class UnstorableText(InvalidRequest):
    """A string no backend can store exactly: it contains U+0000 or a lone surrogate."""

    code = "unstorable_text"


class SampleNotFound(NotFound):
    """A label named a sample that does not exist (any more: it may have been pruned)."""

    code = "sample_not_found"

    def __init__(self, sample_id: str) -> None:
        super().__init__(f"no sample with id {sample_id!r} (it may have been pruned)", param="sample_id")
        self.sample_id = sample_id
