"""Settings: the only reader of YAML and of the environment.

Strict: unknown keys are rejected, values validated at start, and every error names the key
(``upstreams.0.timeouts.connect``). ``${VAR}`` and ``${VAR:-default}`` are expanded from the
environment in every string of the file before validation.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PATTERN = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token
Strategy = Literal["off", "naive", "pref_aligner"]
StructuredOutput = Literal["json_schema", "json_object_schema", "json_object", "none"]
MaxTokensParameter = Literal["max_completion_tokens", "max_tokens"]
PositiveFloat = Annotated[float, Field(gt=0)]


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ServerSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    backlog: int = Field(2048, ge=1)
    max_body_bytes: int = Field(16 * 1024 * 1024, gt=0)
    heartbeat_seconds: PositiveFloat = 5.0
    workers: int = Field(1, ge=1, le=64)
    pre_stop_seconds: float = Field(0.0, ge=0)
    grace_seconds: float = Field(30.0, ge=0)
    # what a client without a key can hold (docs/configuration.md, "server")
    header_timeout_seconds: PositiveFloat = 10.0
    body_timeout_seconds: PositiveFloat = 60.0
    keepalive_timeout_seconds: PositiveFloat = 60.0
    write_timeout_seconds: PositiveFloat = 15.0
    max_connections: int | None = Field(None, ge=1)  # None: below the file-descriptor limit
    # request bodies (400 naming the field past them)
    max_json_values: int = Field(200_000, ge=1)  # in a chat body: objects, arrays, strings, numbers...
    max_messages: int = Field(4096, ge=1)
    max_tools: int = Field(128, ge=1)
    max_logit_bias: int = Field(1024, ge=1)
    max_json_depth: int = Field(64, ge=2, le=200)  # orjson cannot write JSON nested deeper than 254


class Timeouts(Section):
    connect: PositiveFloat = 5.0
    first_byte: PositiveFloat = 120.0
    idle: PositiveFloat = 120.0
    total: PositiveFloat = 600.0


class Retries(Section):
    max_attempts: int = Field(1, ge=1, le=10)
    backoff_seconds: float = Field(0.5, ge=0)
    max_backoff_seconds: float = Field(20.0, ge=0)
    retry_on: tuple[int, ...] = (429, 500, 502, 503, 504)
    # A POST whose connection could not even be made is safe to send again; opt in per upstream.
    post_on_connect_error: bool = False


class UpstreamSettings(Section):
    name: str = Field(min_length=1)
    base_url: str
    api_key: str = ""
    models: tuple[str, ...] = ()
    headers: dict[str, str] = Field(default_factory=dict)
    timeouts: Timeouts = Timeouts()
    retries: Retries = Retries()
    structured_output: StructuredOutput = "json_object_schema"
    # the output-token bound the upstream honours: a client's max_completion_tokens is sent as
    # max_tokens where only that is (llama_cpp.server); docs/configuration.md
    max_tokens_parameter: MaxTokensParameter = "max_completion_tokens"
    # How /v1/responses reaches this upstream: its own Responses API, or translated to chat
    # completions; None = probed at start (docs/configuration.md)
    responses_api: Literal["native", "via_chat"] | None = None
    max_connections: int = Field(256, ge=1)
    # HTTP(S)_PROXY / NO_PROXY (and ~/.netrc) from the environment
    trust_env: bool = True
    ca_bundle: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        authority = value.split("://", 1)[1].split("/", 1)[0].split("?", 1)[0]
        if "@" in authority:
            raise ValueError("must not hold a user or password (user:pass@host); put the key in api_key or headers")
        if "#" in value:
            raise ValueError("must not hold a fragment (#...)")
        path, _, query = value.partition("?")
        return path.rstrip("/") + ("?" + query if query else "")

    @model_validator(mode="after")
    def _client_key_needs_cert(self) -> UpstreamSettings:
        if self.client_key is not None and self.client_cert is None:
            raise ValueError("client_key is set without client_cert")
        return self

    @field_validator("api_key")
    @classmethod
    def _one_line_key(cls, value: str) -> str:
        if any(char in value for char in "\r\n\0"):
            raise ValueError("must not contain a line break or NUL (it is sent as a header)")
        return value

    @field_validator("headers")
    @classmethod
    def _header_lines(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not HEADER_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not an HTTP header name")
            if any(char in text for char in "\r\n\0"):
                raise ValueError(f"the value of {name!r} must not contain a line break or NUL")
        return value

    def serves(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)


class StageSettings(Section):
    upstream: str | None = None
    model: str | None = None
    timeout_seconds: PositiveFloat = 60.0
    max_tokens: int | None = Field(None, gt=0)


def _yaml_off(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false: take it for the mode it names."""
    return "off" if value is False else value


class AlignerSettings(StageSettings):
    """Stage 2, its deterministic guards and the optional verifier (docs/configuration.md)."""

    guards: bool = True
    min_length_ratio: float = Field(0.3, ge=0, le=1)
    verify: Literal["off", "llm"] = "off"
    verify_streams: Literal["off", "buffer"] = "off"
    verify_max_tokens: int = Field(96, gt=0)

    @field_validator("verify", "verify_streams", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return _yaml_off(value)


class GateSettings(StageSettings):
    mode: Literal["llm", "aligner", "off"] = "llm"
    timeout_seconds: PositiveFloat = 20.0

    @field_validator("mode", mode="before")
    @classmethod
    def _off(cls, value: Any) -> Any:
        return _yaml_off(value)


class PromptFiles(Section):
    aligner: Path | None = None
    naive: Path | None = None
    gate: Path | None = None


class PersonalizationSettings(Section):
    default_strategy: Strategy = "pref_aligner"
    aligner: AlignerSettings = AlignerSettings()
    relevance_gate: GateSettings = GateSettings()
    max_preferences: int = Field(32, ge=1)
    max_preference_chars: int = Field(1000, ge=1)
    prompts: PromptFiles = PromptFiles()


class ProfileSettings(Section):
    backend: Literal["sqlite", "postgres", "memory"] = "sqlite"
    path: Path = Path(".perg/profiles.db")
    busy_timeout_seconds: PositiveFloat = 5.0
    dsn: str | None = None
    schema_name: str | None = Field(None, pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
    connect_timeout_seconds: PositiveFloat = 3.0
    max_connections: int = Field(10, ge=1)

    @model_validator(mode="after")
    def _dsn_for_postgres(self) -> ProfileSettings:
        if self.backend == "postgres" and not self.dsn:
            raise ValueError("profiles.dsn is required when backend is postgres")
        return self


class ClientKey(Section):
    key: str = Field(min_length=1)
    name: str | None = None
    user_id: str | None = None
    may_name_users: bool = True  # an unbound key may name users (a bound key never names others)
    strategy: Strategy | None = None
    requests_per_minute: int | None = Field(None, ge=0)
    tokens_per_minute: int | None = Field(None, ge=0)


class RateLimitSettings(Section):
    """Per client key, over a sliding minute; 0 = unlimited. Shared through Redis when
    `redis_url` is set (every replica counts together), else counted in each process."""

    requests_per_minute: int = Field(0, ge=0)
    tokens_per_minute: int = Field(0, ge=0)
    redis_url: str | None = None
    key_prefix: str = "perg:rl"


class AuthSettings(Section):
    client_keys: tuple[ClientKey, ...] = ()
    admin_key: str = ""
    metrics_key: str = ""  # when set, /metrics needs it as a bearer token
    rate_limits: RateLimitSettings = RateLimitSettings()

    @field_validator("client_keys", mode="before")
    @classmethod
    def _plain_strings(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            return [{"key": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("client_keys")
    @classmethod
    def _named(cls, value: tuple[ClientKey, ...]) -> tuple[ClientKey, ...]:
        """Every key gets a name for logs and metrics: its own, else `client-<position>`."""
        return tuple(key if key.name else key.model_copy(update={"name": f"client-{i + 1}"}) for i, key in enumerate(value))


class JudgePromptFiles(Section):
    """Files that replace the judges' built-in prompts (proxy/prompts/judge_*.txt); a changed
    prompt is a new judge fingerprint (docs/monitor.md, "Judge fingerprints")."""

    relevance: Path | None = None
    consistency: Path | None = None
    follow: Path | None = None


class WorkerSettings(Section):
    """`perg-proxy monitor-worker`: its own small HTTP server for /healthz, /readyz, /metrics."""

    host: str = "127.0.0.1"
    port: int = Field(9464, ge=0, le=65535)
    reclaim_interval_seconds: PositiveFloat = 5.0
    block_seconds: PositiveFloat = 1.0  # how long one XREADGROUP waits for a job


class JudgeSettings(Section):
    upstream: str | None = None
    model: str | None = None
    timeout_seconds: PositiveFloat = 60.0
    max_retries: int = Field(2, ge=0, le=10)
    max_tokens: int = Field(200, gt=0)
    prompts: JudgePromptFiles = JudgePromptFiles()


class MonitorFilters(Section):
    models: tuple[str, ...] = ()
    strategies: tuple[Strategy, ...] = ()
    require_preferences: bool = True


class CanarySettings(Section):
    enabled: bool = False
    interval_seconds: PositiveFloat = 300.0
    items_per_run: int = Field(4, ge=1)
    dataset: str = "builtin"
    settings: tuple[Literal["relevant", "irrelevant", "mixed"], ...] = ("relevant", "irrelevant", "mixed")
    model: str | None = None
    seed: int = 0


class MonitorSettings(Section):
    """The online PERG monitor (DESIGN.md, "Online adaptation")."""

    enabled: bool = False
    sample_rate: float = Field(0.05, ge=0, le=1)
    shadow_rate: float = Field(0.0, ge=0, le=1)
    sampling_secret: str = ""  # HMAC key of the sampling decision; share it across replicas (empty: random per process)
    shadow_strategy: Strategy | None = None
    filters: MonitorFilters = MonitorFilters()
    judge: JudgeSettings = JudgeSettings()
    follow_threshold: int = Field(3, ge=1, le=5)
    queue_size: int = Field(1000, ge=1)
    queue_bytes: int = Field(64 * 1024 * 1024, ge=1)  # what the queued jobs hold, in bytes
    workers: int = Field(2, ge=1, le=64)
    drain_seconds: float = Field(10.0, ge=0)
    store_samples: bool = False
    retention: int = Field(10000, ge=0)
    summary_window_seconds: PositiveFloat = 3600.0
    canary: CanarySettings = CanarySettings()
    # The queue between the serving processes and the judges (docs/monitor.md, "A shared queue").
    queue: Literal["memory", "redis"] = "memory"
    redis_url: str | None = None
    stream: str = Field("perg:monitor:jobs", min_length=1)
    consumer_group: str = Field("perg-judges", min_length=1)
    claim_after_seconds: PositiveFloat = 60.0
    max_deliveries: int = Field(5, ge=1)
    judge_in_process: bool | None = None  # default: true with the memory queue, false with redis
    worker: WorkerSettings = WorkerSettings()

    @model_validator(mode="after")
    def _canary_model(self) -> MonitorSettings:
        if self.canary.enabled and not self.canary.model:
            raise ValueError("monitor.canary.model is required when the canary is enabled")
        if self.queue == "redis" and not self.redis_url:
            raise ValueError("monitor.redis_url is required when monitor.queue is redis")
        if self.queue == "memory" and self.judge_in_process is False:
            raise ValueError("monitor.judge_in_process: false needs monitor.queue: redis (nobody else reads a memory queue)")
        return self

    @property
    def judges_here(self) -> bool:
        """Whether the serving process runs judges: always with memory; with redis only when asked."""
        return self.queue == "memory" or bool(self.judge_in_process)

    @property
    def dead_letter_stream(self) -> str:
        return f"{self.stream}:dead"


class LoggingSettings(Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"
    log_content: bool = False


class TraceSettings(Section):
    """OpenTelemetry traces over OTLP/HTTP (docs/tracing.md); off unless `enabled`."""

    enabled: bool = False
    endpoint: str = "http://127.0.0.1:4318/v1/traces"
    headers: dict[str, str] = Field(default_factory=dict)
    sample_ratio: float = Field(1.0, ge=0, le=1)
    capture_content: bool = False
    service_name: str = Field("perg-proxy", min_length=1)
    resource_attributes: dict[str, str] = Field(default_factory=dict)
    max_queue_size: int = Field(2048, ge=1)
    export_timeout_seconds: PositiveFloat = 10.0

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https:// (OTLP over HTTP, e.g. http://127.0.0.1:4318/v1/traces)")
        return value


class TelemetrySettings(Section):
    traces: TraceSettings = TraceSettings()


class Settings(Section):
    server: ServerSettings = ServerSettings()
    upstreams: tuple[UpstreamSettings, ...] = Field(min_length=1)
    personalization: PersonalizationSettings = PersonalizationSettings()
    profiles: ProfileSettings = ProfileSettings()
    monitor: MonitorSettings = MonitorSettings()
    auth: AuthSettings = AuthSettings()
    logging: LoggingSettings = LoggingSettings()
    telemetry: TelemetrySettings = TelemetrySettings()

    @model_validator(mode="after")
    def _unique_upstreams(self) -> Settings:
        names = [upstream.name for upstream in self.upstreams]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"upstream names must be unique: {', '.join(duplicates)}")
        known = set(names)
        for section, stage in (
            ("personalization.aligner", self.personalization.aligner),
            ("personalization.relevance_gate", self.personalization.relevance_gate),
            ("monitor.judge", self.monitor.judge),
        ):
            if stage.upstream is not None and stage.upstream not in known:
                raise ValueError(f"{section}.upstream: no upstream named {stage.upstream!r}")
        return self


def expand_env(value: Any, environ: Mapping[str, str] | None = None) -> Any:
    """Expand ``${VAR}`` / ``${VAR:-default}`` in every string of a parsed YAML tree."""
    env = os.environ if environ is None else environ
    if isinstance(value, str):
        return ENV_PATTERN.sub(lambda match: _lookup(match, env), value)
    if isinstance(value, list):
        return [expand_env(item, env) for item in value]
    if isinstance(value, dict):
        return {key: expand_env(item, env) for key, item in value.items()}
    return value


def _lookup(match: re.Match[str], env: Any) -> str:
    name, default = match.group(1), match.group(2)
    if name in env and (env[name] != "" or default is None):
        return env[name]
    if default is not None:
        return default
    raise ConfigError(f"environment variable {name} is not set (referenced as ${{{name}}})")


def describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(top level)"
        lines.append(f"{key}: {item['msg']}")
    return "; ".join(lines)


def parse_settings(data: Any) -> Settings:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a YAML mapping at the top level")
    try:
        return Settings.model_validate(expand_env(data))
    except ValidationError as error:
        raise ConfigError(f"invalid configuration: {describe(error)}") from None


def load_settings(path: str | Path) -> Settings:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read configuration file {path}: {error.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    return parse_settings(data)
