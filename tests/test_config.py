"""Configuration: strict validation naming the key, ${VAR} expansion, the shipped files."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from proxy.config import ConfigError, expand_env, load_settings, parse_settings
from tests.conftest import ROOT

MINIMAL = """
server: {host: 127.0.0.1, port: 18080}
upstreams:
  - {name: main, base_url: "http://127.0.0.1:18081/v1", api_key: sk-upstream-secret}
personalization: {default_strategy: "off"}
auth: {client_keys: [sk-client-1], admin_key: admin-secret}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(text)
    return path


def test_minimal_file_from_the_issue_works(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL))
    assert settings.server.port == 18080
    assert settings.upstreams[0].api_key == "sk-upstream-secret"
    assert settings.personalization.default_strategy == "off"
    assert settings.auth.client_keys[0].key == "sk-client-1"
    assert settings.auth.client_keys[0].name == "client-1"
    assert settings.upstreams[0].timeouts.total == 600
    assert settings.profiles.backend == "sqlite"


def test_example_config_is_valid_and_points_at_the_local_model():
    settings = load_settings(ROOT / "config.example.yaml")
    assert settings.upstreams[0].base_url == "http://127.0.0.1:8081/v1"
    assert settings.upstreams[0].structured_output == "json_object_schema"


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("server: {prot: 1}\nupstreams: [{name: a, base_url: 'http://x'}]", "server.prot"),
        ("server: {port: high}\nupstreams: [{name: a, base_url: 'http://x'}]", "server.port"),
        ("upstreams: [{name: a, base_url: 'ftp://x'}]", "upstreams.0.base_url"),
        ("upstreams: [{name: a, base_url: 'http://x', timeouts: {connect: -1}}]", "upstreams.0.timeouts.connect"),
        ("upstreams: []", "upstreams"),
        ("server: {}", "upstreams"),
        ("upstreams: [{name: a, base_url: 'http://x'}]\npersonalization: {default_strategy: magic}", "personalization.default_strategy"),
        ("upstreams: [{name: a, base_url: 'http://x'}]\nsurprise: 1", "surprise"),
        ("upstreams: [{name: a, base_url: 'http://x'}, {name: a, base_url: 'http://y'}]", "unique"),
        ("upstreams: [{name: a, base_url: 'http://x'}]\nprofiles: {backend: postgres}", "profiles.dsn"),
        ("upstreams: [{name: a, base_url: 'http://x'}]\npersonalization: {aligner: {upstream: b}}", "personalization.aligner.upstream"),
        ("upstreams: [{name: a, base_url: 'http://x', headers: {'X-A': \"v\\r\\nEvil: 1\"}}]", "upstreams.0.headers"),
        ("upstreams: [{name: a, base_url: 'http://x', headers: {'Bad Name': v}}]", "upstreams.0.headers"),
        ("upstreams: [{name: a, base_url: 'http://x', api_key: \"sk\\nx\"}]", "upstreams.0.api_key"),
    ],
)
def test_invalid_config_names_the_key(tmp_path, text, named):
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_path, text))
    assert named in str(caught.value)


def test_not_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: [unclosed"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_settings(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(write(tmp_path, "- a list"))


def test_env_expansion():
    env = {"KEY": "secret", "EMPTY": ""}
    assert expand_env("${KEY}", env) == "secret"
    assert expand_env("a-${KEY}-b", env) == "a-secret-b"
    assert expand_env("${NOPE:-fallback}", env) == "fallback"
    assert expand_env("${EMPTY:-fallback}", env) == "fallback"
    assert expand_env("${EMPTY}", env) == ""
    assert expand_env({"k": ["${KEY}", 3]}, env) == {"k": ["secret", 3]}
    with pytest.raises(ConfigError, match="NOPE"):
        expand_env("${NOPE}", env)


def test_env_expansion_in_a_file(tmp_path, monkeypatch):
    monkeypatch.setenv("PERG_TEST_PORT", "18099")
    monkeypatch.setenv("PERG_TEST_KEY", "sk-from-env")
    text = "server: {port: '${PERG_TEST_PORT}'}\nupstreams: [{name: a, base_url: 'http://x', api_key: '${PERG_TEST_KEY}'}]"
    settings = load_settings(write(tmp_path, text))
    assert settings.server.port == 18099
    assert settings.upstreams[0].api_key == "sk-from-env"


def test_client_keys_as_objects():
    settings = parse_settings(
        {
            "upstreams": [{"name": "a", "base_url": "http://x"}],
            "auth": {"client_keys": ["k1", {"key": "k2", "name": "app", "user_id": "alice", "strategy": "naive"}]},
        }
    )
    first, second = settings.auth.client_keys
    assert (first.name, second.name, second.user_id, second.strategy) == ("client-1", "app", "alice", "naive")


def test_settings_are_frozen(tmp_path):
    settings = load_settings(write(tmp_path, MINIMAL))
    with pytest.raises(ValidationError, match="frozen"):
        settings.server.port = 1  # type: ignore[misc]


def _missing_keys(model: type, data: object, path: str, text: str) -> list[str]:
    """Every field of `model` (recursively) that the example file does not show."""
    from pydantic import BaseModel

    missing = []
    for name, field in model.model_fields.items():
        key = f"{path}.{name}" if path else name
        if not isinstance(data, dict) or name not in data:
            missing.append(key)
            continue
        value, annotation = data[name], field.annotation
        inner = [arg for arg in getattr(annotation, "__args__", ()) if isinstance(arg, type) and issubclass(arg, BaseModel)]
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            missing += _missing_keys(annotation, value, key, text)
        elif inner and isinstance(value, list) and value and isinstance(value[0], dict):
            missing += _missing_keys(inner[0], value[0], f"{key}[0]", text)
        elif inner:  # a list written as plain strings: its object form is shown in a comment
            missing += [f"{key}[].{sub}" for sub in inner[0].model_fields if f"{sub}:" not in text]
    return missing


def test_example_config_documents_every_key():
    import yaml

    from proxy.config import Settings

    text = (ROOT / "config.example.yaml").read_text()
    assert _missing_keys(Settings, yaml.safe_load(text), "", text) == []
