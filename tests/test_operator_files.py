"""The operator page's static files: served without a key with strict headers, nothing else under
/perg/ui open, no inline code, only its own files loaded; admin answers never cached."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx2
import pytest

from proxy.server.operator_page import CONTENT_SECURITY_POLICY, FILES, UI_DIR
from tests.conftest import ADMIN_KEY

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


def test_every_page_file_is_served_without_a_key_with_strict_headers(proxy):
    for path, (name, content_type) in FILES.items():
        response = httpx2.get(proxy.url + path, timeout=10)
        assert response.status_code == 200, path
        assert response.headers["content-type"] == content_type, path
        assert response.content == (UI_DIR / name).read_bytes()
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["cache-control"] == "no-cache" and response.headers["etag"]
        again = httpx2.get(proxy.url + path, headers={"If-None-Match": response.headers["etag"]}, timeout=10)
        assert again.status_code == 304
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "unsafe" not in CONTENT_SECURITY_POLICY
    assert proxy.metric("perg_requests_total", {"route": "ui", "method": "GET", "status": "200", "strategy": "none"}) == len(FILES)


@pytest.mark.parametrize("path", ["/perg/ui/", "/perg/ui/secret.js", "/perg/ui/..%2Fprofiles", "/perg/uix", "/perg/ui/app.js/x"])
def test_nothing_else_under_the_page_is_open(proxy, path):
    response = httpx2.get(proxy.url + path, timeout=10)
    assert response.status_code == 401 and set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert httpx2.get(proxy.url + path, headers=ADMIN, timeout=10).status_code == 404


def test_admin_answers_are_never_cached(proxy):
    for path in ("/perg/monitor/summary", "/perg/monitor/series", "/perg/monitor/process", "/perg/monitor/samples", "/perg/profiles"):
        assert httpx2.get(proxy.url + path, headers=ADMIN, timeout=10).headers["cache-control"] == "no-store", path


class PageParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.references: list[str] = []
        self.problems: list[str] = []
        self.in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        for name in found:
            if name.startswith("on") or name == "style":
                self.problems.append(f"<{tag} {name}>: inline code or style")
        if tag == "script" and not found.get("src"):
            self.problems.append("an inline <script>")
        if tag == "style":
            self.problems.append("a <style> element")
        for name in ("src", "href"):
            if found.get(name):
                self.references.append(found[name] or "")
        self.in_script = tag == "script"

    def handle_data(self, data: str) -> None:
        if self.in_script and data.strip():
            self.problems.append("script text inside <script>")

    def handle_endtag(self, tag: str) -> None:
        self.in_script = False


def test_the_page_has_no_inline_code_and_loads_only_its_own_files():
    parser = PageParser()
    parser.feed((UI_DIR / "index.html").read_text(encoding="utf-8"))
    assert parser.problems == []
    # The page is /perg/ui, so "ui/x" is /perg/ui/x: every reference is one of the served files.
    assert parser.references and all(f"/perg/{ref}" in FILES for ref in parser.references), parser.references
    served = {name for name, _ in FILES.values()}
    assert {path.name for path in UI_DIR.iterdir()} == served, "every file in proxy/server/ui is served, and only those"
    for script in UI_DIR.glob("*.js"):
        text = script.read_text(encoding="utf-8")
        for module in re.findall(r'from "\./([^"]+)"', text):
            assert module in served, f"{script.name} imports {module}, which is not served"
        code = re.sub(r"//[^\n]*", "", text)  # comments may name what the code must not do
        for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "eval(", "new Function", "localStorage", "document.cookie"):
            assert unsafe not in code, f"{script.name} uses {unsafe}"
