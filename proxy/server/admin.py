"""Admin routes (admin key): `/perg/profiles` and `/perg/profiles/{user_id}`.

`PUT` takes `{"preferences": [text, …]}` and replaces the list; `PATCH` takes
`{"add": [text, …], "remove": [preference id, …]}`; both return the stored profile. The list
uses OpenAI's shape: `{"object": "list", "data": […], "has_more", "last_id"}`, paged with `?limit=`
and `?after=<last_id>`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from ..errors import InvalidRequest, NotFound
from ..monitor.figures import rate_intervals
from ..preferences.models import Profile
from ..preferences.resolve import check_preferences, check_user
from .middleware import read_body
from .protocol import parse_json_object
from .services import SERVICES, Services

MAX_LIMIT = 100


def json_response(payload: Any, status: int = 200) -> web.Response:
    """An admin answer: profiles and samples are private, so no cache may keep them."""
    response = web.Response(status=status, body=orjson.dumps(payload), content_type="application/json")
    response.headers["Cache-Control"] = "no-store"
    return response


def profile_json(profile: Profile) -> dict[str, Any]:
    return {"object": "profile", **profile.model_dump(mode="json")}


def only_query(request: web.Request, allowed: set[str]) -> None:
    for name in request.query:
        if name not in allowed:
            raise InvalidRequest(f"Unknown query parameter: '{name}'.", param=name, code="unknown_parameter")


def query_integer(raw: str, low: int, high: int) -> int | None:
    """`raw` as an integer from `low` to `high`, or None. ASCII digits only: str.isdigit() also
    takes '²' and other digits int() refuses, and int() refuses over 4300 digits."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 9:
        return None
    value = int(raw)
    return value if low <= value <= high else None


def page_limit(request: web.Request, default: int = 20) -> int:
    limit = query_integer(request.query.get("limit", str(default)), 1, MAX_LIMIT)
    if limit is None:
        raise InvalidRequest(f"'limit' must be an integer from 1 to {MAX_LIMIT}.", param="limit", code="invalid_value")
    return limit


def user_of(request: web.Request) -> str:
    """The path's user id, checked as everywhere else a user is named."""
    return check_user(request.match_info["user_id"], "user_id")


def store_of(request: web.Request) -> Any:
    services: Services = request.app[SERVICES]
    return services.store.get()


async def list_profiles(request: web.Request) -> web.Response:
    only_query(request, {"limit", "after"})
    limit = page_limit(request)
    profiles, has_more = await (await store_of(request)).list_profiles(limit, request.query.get("after"))
    data = [profile_json(profile) for profile in profiles]
    return json_response({"object": "list", "data": data, "has_more": has_more, "last_id": profiles[-1].user_id if profiles else None})


async def get_profile(request: web.Request) -> web.Response:
    user_id = user_of(request)
    profile = await (await store_of(request)).get(user_id)
    if profile is None:
        raise NotFound(f"No profile for user {user_id!r}.", param="user_id", code="profile_not_found")
    return json_response(profile_json(profile))


async def put_profile(request: web.Request) -> web.Response:
    user_id = user_of(request)
    body = parse_json_object(await read_body(request))
    _only(body, {"preferences"})
    if "preferences" not in body:
        raise InvalidRequest("Missing required parameter: 'preferences'.", param="preferences", code="missing_required_parameter")
    texts = check_preferences(body["preferences"], "preferences", request.app[SERVICES].settings.personalization)
    profile = await (await store_of(request)).put(user_id, texts)
    return json_response(profile_json(profile))


async def patch_profile(request: web.Request) -> web.Response:
    user_id = user_of(request)
    body = parse_json_object(await read_body(request))
    _only(body, {"add", "remove"})
    settings = request.app[SERVICES].settings.personalization
    add = check_preferences(body.get("add", []), "add", settings)
    remove = body.get("remove", [])
    if not isinstance(remove, list) or not all(isinstance(item, str) and item for item in remove):
        raise InvalidRequest("'remove' must be a list of preference ids.", param="remove", code="invalid_type")
    profile = await (await store_of(request)).patch(user_id, add, remove, limit=settings.max_preferences)
    return json_response(profile_json(profile))


async def delete_profile(request: web.Request) -> web.Response:
    user_id = user_of(request)
    existed = await (await store_of(request)).delete(user_id)
    if not existed:
        raise NotFound(f"No profile for user {user_id!r}.", param="user_id", code="profile_not_found")
    return json_response({"object": "profile.deleted", "user_id": user_id, "deleted": True})


SAMPLE_FILTERS = {
    "verdict": ("consistent", "contradicts", "cannot_compare"),
    "role": ("served", "shadow"),
    "strategy": ("off", "naive", "pref_aligner"),
}


async def list_samples(request: web.Request) -> web.Response:
    """Judged samples, newest first, filtered by verdict, strategy and role; paginated."""
    only_query(request, {"limit", "after", *SAMPLE_FILTERS})
    limit = page_limit(request)
    filters = {}
    for name, allowed in SAMPLE_FILTERS.items():
        value = request.query.get(name)
        if value is not None and value not in allowed:
            raise InvalidRequest(f"'{name}' must be one of {', '.join(allowed)}.", param=name, code="invalid_value")
        filters[name] = value
    samples, has_more = await (await store_of(request)).list_samples(limit=limit, after=request.query.get("after"), **filters)
    data = [{"object": "monitor.sample", **sample.model_dump(mode="json")} for sample in samples]
    return json_response({"object": "list", "data": data, "has_more": has_more, "last_id": samples[-1].id if samples else None})


async def monitor_summary(request: web.Request) -> web.Response:
    """Counts and ratios over a recent window (`?window_seconds=`, default monitor.summary_window_seconds)."""
    only_query(request, {"window_seconds"})
    services: Services = request.app[SERVICES]
    raw = request.query.get("window_seconds", str(services.settings.monitor.summary_window_seconds))
    try:
        window = float(raw)
    except ValueError:
        window = -1.0
    if not 0 < window <= 366 * 86400:
        raise InvalidRequest(
            "'window_seconds' must be a positive number of seconds (at most a year).", param="window_seconds", code="invalid_value"
        )
    summary = await (await store_of(request)).sample_summary(window)
    groups = [
        {
            **group.model_dump(mode="json"),
            **ratios(group.judged, group.uncomparable, group.broken, group.not_followed, group.not_robust),
            **rate_intervals(group),
        }
        for group in summary.groups
    ]
    monitor = services.monitor
    return json_response(
        {
            "object": "monitor.summary",
            "enabled": services.settings.monitor.enabled,
            "since": summary.since.isoformat(),
            "window_seconds": window,
            "queue_depth": monitor.depth,
            "groups": groups,
        }
    )


def ratios(judged: int, uncomparable: int, broken: int, not_followed: int, not_robust: int) -> dict[str, float | None]:
    """BR, AFR, RER over the comparable judged samples (cannot_compare left out), None when none."""
    comparable = judged - uncomparable
    if comparable <= 0:
        return {"breakage_rate": None, "alignment_failure_rate": None, "robustness_error_rate": None}
    return {
        "breakage_rate": broken / comparable,
        "alignment_failure_rate": not_followed / comparable,
        "robustness_error_rate": not_robust / comparable,
    }


def _only(body: dict[str, Any], allowed: set[str]) -> None:
    for key in body:
        if key not in allowed:
            raise InvalidRequest(f"Unknown parameter: '{key}'.", param=key, code="unknown_parameter")


def add_routes(app: web.Application) -> None:
    app.router.add_get("/perg/profiles", list_profiles, name="profiles:list")
    app.router.add_get("/perg/profiles/{user_id}", get_profile, name="profiles:item")
    app.router.add_put("/perg/profiles/{user_id}", put_profile, name="profiles:item")
    app.router.add_patch("/perg/profiles/{user_id}", patch_profile, name="profiles:item")
    app.router.add_delete("/perg/profiles/{user_id}", delete_profile, name="profiles:item")
    app.router.add_get("/perg/monitor/samples", list_samples, name="monitor:samples")
    app.router.add_get("/perg/monitor/summary", monitor_summary, name="monitor:summary")
