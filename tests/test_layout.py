"""The layout holds: imports point down between the rooms, only server/ imports aiohttp.web, and
no two modules or top-level classes share a name (STYLE.md, "A layout that shows the architecture")."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "proxy"

# room -> the rooms it must never import (each would point up, or sideways into a sibling)
FORBIDDEN = {
    "upstream": {"server", "pipeline", "monitor", "perg", "eval", "preferences", "turn"},
    "pipeline": {"server", "monitor", "eval"},
    "preferences": {"server", "pipeline", "monitor", "eval", "upstream"},
    "perg": {"server", "monitor", "eval"},
    "monitor": {"server", "eval"},
    "eval": {"server", "monitor"},
    "prompts": {"server", "pipeline", "monitor", "eval", "upstream", "perg"},
    "turn": {"server", "pipeline", "monitor", "eval", "upstream", "perg", "preferences"},
    # OpenTelemetry's one module: the hooks below it call in, it sees only config, errors, metrics
    "telemetry": {"server", "pipeline", "monitor", "eval", "upstream", "perg", "preferences", "prompts", "turn"},
}
BOTTOM = {"config", "errors", "metrics"}  # import nothing of the project above them


def modules() -> dict[str, ast.Module]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = (path, ast.parse(path.read_text(encoding="utf-8")))
    return found


def imported(name: str, path: Path, tree: ast.Module) -> list[str]:
    """Every module of the project `name` imports (relative imports resolved)."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    targets = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            targets.append(target)
            targets.extend(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            targets.extend(alias.name for alias in node.names)
    return [t for t in targets if t.startswith("proxy.")]


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_no_import_points_up_between_rooms():
    found = modules()
    wrong = []
    for name, (path, tree) in found.items():
        here = room(name)
        for target in imported(name, path, tree):
            there = room(target)
            if there in FORBIDDEN.get(here, set()) or (here in BOTTOM and there not in BOTTOM | {here}):
                if target in found or target.rsplit(".", 1)[0] in found:
                    wrong.append(f"{name} imports {target}")
    assert not wrong, "imports that point up:\n" + "\n".join(sorted(set(wrong)))


def test_only_the_server_imports_aiohttp_web():
    wrong = []
    for name, (_, tree) in modules().items():
        if room(name) == "server":
            continue
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            if any(n == "aiohttp.web" or n.startswith("aiohttp.web_") for n in names):
                wrong.append(name)
    assert not wrong, f"aiohttp.web imported outside proxy/server/: {sorted(set(wrong))}"


@pytest.mark.parametrize("kind", ["module", "class"])
def test_no_two_modules_or_classes_share_a_name(kind):
    seen: dict[str, list[str]] = defaultdict(list)
    for name, (_, tree) in modules().items():
        if kind == "module":
            last = name.rsplit(".", 1)[-1]
            if last not in ("__init__", "proxy") and name.count(".") >= 1 and not _is_package(name):
                seen[last].append(name)
        else:
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    seen[node.name].append(name)
                elif isinstance(node, ast.Assign | ast.AnnAssign):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    for target in targets:
                        if isinstance(target, ast.Name) and target.id[:1].isupper() and not target.id.isupper():
                            seen[target.id].append(name)  # a type alias such as `Strategy = Literal[...]`
    shared = {key: where for key, where in seen.items() if len(where) > 1}
    assert not shared, f"{kind} names used twice: {shared}"


def _is_package(name: str) -> bool:
    return (PACKAGE.parent / name.replace(".", "/") / "__init__.py").exists()


def test_route_labels_come_from_the_router():
    """One route table: every route the app registers is named "<label>[:<detail>]", and the
    metrics label is read from the matched route, not from a second hand-kept list of paths."""
    from proxy.server.app import create_app
    from tests.conftest import proxy_settings

    app = create_app(proxy_settings("http://127.0.0.1:9/v1"))
    names = {route.name for route in app.router.routes()}
    assert None not in names
    labels = {name.partition(":")[0] for name in names}
    assert labels == {
        "chat_completions", "responses", "models", "passthrough", "healthz", "readyz", "metrics", "openapi.json", "profiles", "monitor", "ui",
    }  # fmt: skip
    source = (PACKAGE / "server" / "middleware.py").read_text()
    assert '"/v1/chat/completions"' not in source and 'startswith("/perg/profiles")' not in source


def test_no_aiohttp_private_internals_in_the_server():
    """proxy/server/ reaches aiohttp through `aiohttp.web` only: no private module, no `._server`,
    no class swapped at run time."""
    for path in sorted((PACKAGE / "server").glob("*.py")):
        source = path.read_text()
        assert "from aiohttp." not in source and "import aiohttp." not in source, path.name
        assert "._server" not in source and "__class__ =" not in source, path.name


def test_the_request_handler_hooks_the_proxy_overrides_still_exist():
    """server/connections.py subclasses web.RequestHandler (aiohttp is pinned below 3.15, for it among others): if
    aiohttp renames a hook or a keyword it passes, this fails here, by name, not in production."""
    import inspect

    from aiohttp import web

    from proxy.server.connections import ProxyRequestHandler

    keywords = inspect.signature(web.RequestHandler.__init__).parameters
    for name in ("loop", "keepalive_timeout", "auto_decompress", "access_log", "max_field_size", "max_line_size"):
        assert name in keywords, f"web.RequestHandler() no longer takes {name}="
    for hook in ("connection_made", "connection_lost", "data_received", "handle_error", "force_close"):
        assert callable(getattr(web.RequestHandler, hook, None)), f"web.RequestHandler.{hook} is gone"
        assert hook == "force_close" or hook in ProxyRequestHandler.__dict__
    assert list(inspect.signature(web.RequestHandler.handle_error).parameters) == ["self", "request", "status", "exc", "message"]
    assert web.Server.pre_shutdown and web.AppRunner.server and web.BaseRequest.protocol
