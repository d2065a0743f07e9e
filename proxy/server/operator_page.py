"""`/perg/ui`: the operator page, static files shipped in `proxy/server/ui/`.

The files hold no data and need no key to load (a browser cannot send a bearer header when it
navigates); every figure on the page comes from the admin JSON routes, which the page calls with
`Authorization: Bearer <admin key>`, the key kept in the tab's sessionStorage only. The files are
a fixed list (nothing else under /perg/ui is served), sent with their content type, a strict
Content-Security-Policy (scripts, styles and requests to this origin only, no inline script, no
framing), `nosniff`, and `no-cache` with a content-hash ETag (a browser revalidates, and gets a
304 while the file is unchanged). Each file is read once, on its first request.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

from aiohttp import web

UI_DIR = Path(__file__).resolve().parent / "ui"
JS = "text/javascript; charset=utf-8"
FILES: dict[str, tuple[str, str]] = {
    "/perg/ui": ("index.html", "text/html; charset=utf-8"),
    "/perg/ui/style.css": ("style.css", "text/css; charset=utf-8"),
    "/perg/ui/icon.svg": ("icon.svg", "image/svg+xml"),
    "/perg/ui/app.js": ("app.js", JS),
    "/perg/ui/api.js": ("api.js", JS),
    "/perg/ui/dom.js": ("dom.js", JS),
    "/perg/ui/chart.js": ("chart.js", JS),
    "/perg/ui/diff.js": ("diff.js", JS),
    "/perg/ui/robustness.js": ("robustness.js", JS),
    "/perg/ui/samples.js": ("samples.js", JS),
    "/perg/ui/profiles.js": ("profiles.js", JS),
}
UI_PATHS = frozenset(FILES)
"""The paths served without the admin key (the middleware checks the key on every other /perg/ path)."""

CONTENT_SECURITY_POLICY = "; ".join(
    (
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self'",
        "connect-src 'self'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
    )
)
HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cache-Control": "no-cache",
}


@functools.cache
def ui_body(name: str) -> tuple[bytes, str]:
    """The file's bytes and its ETag (quoted, from a hash of the bytes)."""
    body = (UI_DIR / name).read_bytes()
    return body, f'"{hashlib.sha256(body).hexdigest()[:32]}"'


async def ui_file(request: web.Request) -> web.Response:
    name, content_type = FILES[request.path]
    body, etag = ui_body(name)
    headers = {**HEADERS, "ETag": etag}
    wanted = request.if_none_match
    if wanted and any(f'"{tag.value}"' == etag or tag.value == "*" for tag in wanted):
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers={"Content-Type": content_type, **headers})


def add_routes(app: web.Application) -> None:
    for index, path in enumerate(FILES):
        app.router.add_get(path, ui_file, name=f"ui:file{index}")
