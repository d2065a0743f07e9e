"""Where a request's preferences, user and strategy come from (DESIGN.md, in this order):

1. the body extension `personalization: {user_id, preferences, strategy, return_draft}`
   (taken out of the body: it never goes upstream);
2. the headers `X-Perg-User`, `X-Perg-Preferences` (a JSON array of strings) or
   `X-Perg-Preferences-B64` (the same as base64url UTF-8, for any Unicode), `X-Perg-Strategy`;
3. the standard `user` field, or the user bound to the client key, looked up in the profile store.

Who may name a user: a key bound to a user (`auth.client_keys[].user_id`) acts as that user only,
so naming any other user in any of the three places is a 403; an unbound key may name users (the
application asserts who its users are) unless the key sets `may_name_users: false`.

The first source that has preferences wins. The strategy is the request's, else the header's,
else the client key's, else the configured default. A store that fails does not fail the
request: it is answered without stored preferences, and the failure is counted.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, get_args

import orjson
import structlog

from .. import telemetry
from ..config import ClientKey, PersonalizationSettings, Strategy
from ..errors import InvalidRequest, PermissionDenied
from ..metrics import Metrics
from .handle import StoreHandle
from .store_errors import StoreError, StoreUnavailable

STRATEGIES = frozenset(get_args(Strategy))
PLAIN_HEADER = "X-Perg-Preferences"
B64_HEADER = "X-Perg-Preferences-B64"
EXTENSION_KEYS = frozenset({"user_id", "preferences", "strategy", "return_draft"})
log = structlog.get_logger("perg.preferences")


@dataclass(frozen=True, slots=True)
class Personalization:
    strategy: str
    preferences: tuple[str, ...]
    source: str | None  # request | header | profile | None
    user_id: str | None
    return_draft: bool


def take_extension(body: dict[str, Any]) -> dict[str, Any]:
    """Remove and check the `personalization` body extension; {} when absent."""
    extension = body.pop("personalization", None)
    if extension is None:
        return {}
    if not isinstance(extension, dict):
        raise InvalidRequest("'personalization' must be an object.", param="personalization", code="invalid_type")
    for key in extension:
        if key not in EXTENSION_KEYS:
            raise InvalidRequest(f"Unknown parameter: 'personalization.{key}'.", param=f"personalization.{key}", code="unknown_parameter")
    extension = {key: value for key, value in extension.items() if value is not None}  # null: not given
    if "return_draft" in extension and not isinstance(extension["return_draft"], bool):
        raise InvalidRequest("'personalization.return_draft' must be a boolean.", param="personalization.return_draft", code="invalid_type")
    return extension


def check_preferences(value: Any, param: str, settings: PersonalizationSettings) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be a list of strings.", param=param, code="invalid_type")
    if len(value) > settings.max_preferences:
        raise InvalidRequest(
            f"'{param}' has {len(value)} items; at most {settings.max_preferences} are allowed.", param=param, code="too_many_preferences"
        )
    for index, text in enumerate(value):
        if not isinstance(text, str) or not text.strip():
            raise InvalidRequest(f"'{param}[{index}]' must be a non-empty string.", param=f"{param}[{index}]", code="invalid_preference")
        if "\x00" in text:
            raise InvalidRequest(f"'{param}[{index}]' contains the character U+0000.", param=f"{param}[{index}]", code="invalid_preference")
        if len(text) > settings.max_preference_chars:
            raise InvalidRequest(
                f"'{param}[{index}]' is {len(text)} characters long; at most {settings.max_preference_chars} are allowed.",
                param=f"{param}[{index}]",
                code="preference_too_long",
            )
    return tuple(value)


def check_strategy(value: Any, param: str) -> str:
    if not isinstance(value, str) or value not in STRATEGIES:
        raise InvalidRequest(
            f"'{param}' must be one of {', '.join(sorted(STRATEGIES))}; got {value!r}.", param=param, code="invalid_strategy"
        )
    return value


MAX_USER_CHARS = 256


def check_user(value: Any, param: str) -> str:
    """A user id, wherever it is given (`personalization.user_id`, `X-Perg-User`, the profile
    routes' path): 1 to 256 characters, not only whitespace, without U+0000 (no store can keep
    it). proxy/openapi.yaml's `UserId` schema says the same."""
    if not isinstance(value, str) or not value.strip() or len(value) > MAX_USER_CHARS or "\x00" in value:
        raise InvalidRequest(
            f"'{param}' must be a string of 1 to {MAX_USER_CHARS} characters, not only whitespace and without U+0000.",
            param=param,
            code="invalid_user",
        )
    return value


def header_preferences(headers: Mapping[str, str], settings: PersonalizationSettings) -> tuple[str, ...] | None:
    """The preferences of `X-Perg-Preferences` (a JSON array of strings) or of
    `X-Perg-Preferences-B64` (the same, base64url-encoded UTF-8: any Unicode); None without
    either. Both at once, or one that does not decode, is a 400 naming the header."""
    raw = headers.get(PLAIN_HEADER)
    encoded = headers.get(B64_HEADER)
    if encoded is not None:
        if raw is not None:
            raise InvalidRequest(
                f"Send the preferences in one header: '{PLAIN_HEADER}' or '{B64_HEADER}', not both.",
                param=B64_HEADER,
                code="conflicting_headers",
            )
        return check_preferences(decode_preferences_b64(encoded), B64_HEADER, settings)
    if raw is None:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest(f"Header '{PLAIN_HEADER}' must be a JSON array of strings.", param=PLAIN_HEADER, code="invalid_json") from None
    return check_preferences(value, PLAIN_HEADER, settings)


def decode_preferences_b64(value: str) -> Any:
    """The JSON value in an `X-Perg-Preferences-B64` header: base64url (RFC 4648 section 5; the
    standard alphabet is taken too, `=` padding optional) of UTF-8 JSON. Anything else is a 400
    naming the header and what is wrong with it."""
    text = value.strip().rstrip("=")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidRequest(
            f"Header '{B64_HEADER}' is not base64url: encode the UTF-8 bytes of a JSON array of strings.",
            param=B64_HEADER,
            code="invalid_base64",
        ) from None
    try:
        decoded = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidRequest(f"Header '{B64_HEADER}' does not decode to UTF-8 text.", param=B64_HEADER, code="invalid_utf8") from None
    try:
        return orjson.loads(decoded)
    except orjson.JSONDecodeError:
        raise InvalidRequest(
            f"Header '{B64_HEADER}' does not decode to JSON: it must be a JSON array of strings.", param=B64_HEADER, code="invalid_json"
        ) from None


def choose_strategy(extension: dict[str, Any], headers: Mapping[str, str], client: ClientKey | None, default: str) -> str:
    if "strategy" in extension:
        return check_strategy(extension["strategy"], "personalization.strategy")
    if "X-Perg-Strategy" in headers:
        return check_strategy(headers["X-Perg-Strategy"], "X-Perg-Strategy")
    return client.strategy if client is not None and client.strategy else default


def choose_user(extension: dict[str, Any], headers: Mapping[str, str], body: dict[str, Any], client: ClientKey | None) -> str | None:
    named = named_users(extension, headers, body)
    for param, user in named:
        allowed_to_name(client, user, param)
    if named:
        return named[0][1]
    return client.user_id if client is not None else None


def named_users(extension: dict[str, Any], headers: Mapping[str, str], body: dict[str, Any]) -> list[tuple[str, str]]:
    """Every user the request names, highest priority first, as (where, user id)."""
    named = []
    if "user_id" in extension:
        named.append(("personalization.user_id", check_user(extension["user_id"], "personalization.user_id")))
    if "X-Perg-User" in headers:
        named.append(("X-Perg-User", check_user(headers["X-Perg-User"], "X-Perg-User")))
    if isinstance(body.get("user"), str) and body["user"].strip():
        named.append(("user", body["user"]))
    return named


def allowed_to_name(client: ClientKey | None, user: str, param: str) -> None:
    """A bound key acts as its own user only; an unbound key names users unless told not to."""
    if client is None:
        return
    if client.user_id is not None and user != client.user_id:
        raise PermissionDenied(f"This API key is bound to one user; '{param}' names another.", param=param, code="user_not_allowed")
    if client.user_id is None and not client.may_name_users:
        raise PermissionDenied(f"This API key may not name users ('{param}').", param=param, code="user_not_allowed")


async def resolve(
    body: dict[str, Any],
    headers: Mapping[str, str],
    client: ClientKey | None,
    settings: PersonalizationSettings,
    store: StoreHandle | None,
    metrics: Metrics,
) -> Personalization:
    """Take the extension out of `body` and work out the request's personalization. Every input
    given is checked, also one that a higher-priority source overrides."""
    extension = take_extension(body)
    from_header = header_preferences(headers, settings)
    if "X-Perg-Strategy" in headers:
        check_strategy(headers["X-Perg-Strategy"], "X-Perg-Strategy")
    strategy = choose_strategy(extension, headers, client, settings.default_strategy)
    user_id = choose_user(extension, headers, body, client)
    draft = bool(extension.get("return_draft", False))
    if "preferences" in extension:
        preferences = check_preferences(extension["preferences"], "personalization.preferences", settings)
        return Personalization(strategy, preferences, "request", user_id, draft)
    if from_header is not None:
        return Personalization(strategy, from_header, "header", user_id, draft)
    if strategy == "off" or user_id is None or store is None:
        return Personalization(strategy, (), None, user_id, draft)
    stored = await stored_preferences(store, user_id, metrics)
    return Personalization(strategy, stored[: settings.max_preferences], "profile" if stored else None, user_id, draft)


async def stored_preferences(store: StoreHandle, user_id: str, metrics: Metrics) -> tuple[str, ...]:
    try:
        with telemetry.memory_search():
            return await (await store.get()).preference_texts(user_id)
    except StoreError as error:
        metrics.profile_errors.labels("unavailable" if isinstance(error, StoreUnavailable) else "error").inc()
        log.warning("profile_lookup_failed", error=error.message)
        return ()


def personalization_headers(headers: Mapping[str, str]) -> bool:
    """Whether the request has a header that may ask for personalization (an `or` chain: the
    pass-through's hot path, where a generator over a tuple costs several times more)."""
    return PLAIN_HEADER in headers or B64_HEADER in headers or "X-Perg-User" in headers


async def unhonoured_source(
    extension: dict[str, Any],
    headers: Mapping[str, str],
    client: ClientKey | None,
    settings: PersonalizationSettings,
    store: StoreHandle | None,
    metrics: Metrics,
) -> str | None:
    """On a route that cannot personalize: where the request asks for personalization (`request`,
    `header` or `profile`), else None. Counted: preferences in the body extension or a header, and
    a user named in `personalization.user_id` or `X-Perg-User` who has a stored profile; not the
    standard `user` field or a key's bound user (those name who is asking, not a wish to
    personalize), and nothing when the strategy is `off`. Malformed inputs are a 400 as on chat."""
    named = extension.get("user_id") is not None or "X-Perg-User" in headers
    if not (extension or named or PLAIN_HEADER in headers or B64_HEADER in headers):
        return None
    from_header = header_preferences(headers, settings)
    strategy = choose_strategy(extension, headers, client, settings.default_strategy)
    if "preferences" in extension:
        preferences = check_preferences(extension["preferences"], "personalization.preferences", settings)
        if strategy != "off" and preferences:
            return "request"
    if strategy == "off":
        return None
    if from_header:
        return "header"
    if not named or store is None:
        return None
    users = named_users(extension, headers, {})
    user = users[0][1]
    try:
        allowed_to_name(client, user, users[0][0])
    except PermissionDenied:
        return None  # a pass-through route never made this a 403: nothing of that user is looked at
    return "profile" if await stored_preferences(store, user, metrics) else None
