"""`RunOptions`: everything `perg-proxy eval run` is told, validated once.

Defaults point at the embedded local model (`perg-proxy local-model` on port 8081, which takes
llama_cpp.server's `json_object_schema` structured-output style); for OpenAI and most hosted APIs
pass `--structured-output json_schema`. The judge defaults to the answering model and server.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import Retries, StructuredOutput, Timeouts, UpstreamSettings
from ..local_model import MODEL_ALIAS
from ..perg.datasets import SETTINGS, Setting
from ..perg.extract import ExtractorMode
from ..perg.hedges import DEFAULT_HEDGES, HedgePolicy
from .answering import parse_strategy
from .protocols import ProtocolName

DEFAULT_BASE_URL = "http://127.0.0.1:8081/v1"
DEFAULT_STRATEGIES = ("naive", "pref_aligner")
NOT_SHOWN = ("api_key", "judge_api_key", "backoff_seconds")


class RunOptions(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    base_url: str = DEFAULT_BASE_URL
    api_key: str = ""
    model: str = MODEL_ALIAS
    structured_output: StructuredOutput = "json_object_schema"
    judge_base_url: str | None = None
    judge_api_key: str | None = None
    judge_model: str | None = None
    judge_structured_output: StructuredOutput | None = None
    protocol: ProtocolName = "proxy"
    dataset: str = "builtin"
    strict: bool = False
    preferences: Path | None = None
    icl_examples: Path | None = None
    settings: tuple[Setting, ...] = Field(SETTINGS, min_length=1)
    strategies: tuple[str, ...] = Field(DEFAULT_STRATEGIES, min_length=1)
    limit: int | None = Field(None, ge=1)
    seed: int = 0
    n_unrelated: int = Field(3, ge=1)
    concurrency: int = Field(2, ge=1, le=64)
    max_tokens: int | None = Field(None, ge=1)
    judge_max_tokens: int = Field(200, ge=1)
    follow_threshold: int = Field(3, ge=1, le=5)
    extractor: ExtractorMode = "rules"
    hedges: HedgePolicy = DEFAULT_HEDGES
    attempts: int = Field(3, ge=1, le=10)
    backoff_seconds: float = Field(1.0, ge=0)
    timeout: float = Field(120.0, gt=0)
    resamples: int = Field(1000, ge=0)
    out: Path = Path("perg-eval")
    cache: Path | None = None
    title: str = "PERG benchmark"
    note: str | None = None

    @field_validator("base_url", "judge_base_url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/") if value else value

    @model_validator(mode="after")
    def _known_strategies(self) -> RunOptions:
        for name in self.strategies:
            parse_strategy(name, self.protocol)
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError("a strategy is listed twice")
        return self

    @field_validator("settings")
    @classmethod
    def _distinct_settings(cls, value: tuple[Setting, ...]) -> tuple[Setting, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a setting is listed twice")
        return value

    @property
    def judge_url(self) -> str:
        return self.judge_base_url or self.base_url

    @property
    def judge_key(self) -> str:
        return self.api_key if self.judge_api_key is None else self.judge_api_key

    @property
    def judge_model_name(self) -> str:
        return self.judge_model or self.model

    @property
    def judge_style(self) -> str:
        return self.judge_structured_output or self.structured_output

    @property
    def cache_path(self) -> Path:
        return self.cache or self.out / "cache.sqlite"

    def command_line(self) -> str:
        """The `perg-proxy eval run` command that gives these options (API keys left out)."""
        words = ["perg-proxy", "eval", "run"]
        for name, info in type(self).model_fields.items():
            value = getattr(self, name)
            if name in NOT_SHOWN or value == info.default:
                continue
            flag = "--" + name.replace("_", "-")
            if isinstance(value, bool):
                words.append(flag)
            else:
                words += [flag, ",".join(value) if isinstance(value, tuple) else str(value)]
        return shlex.join(words)


RETRIED_STATUS = (408, 409, 429, 500, 502, 503, 504)


def eval_upstream(
    name: str,
    base_url: str,
    api_key: str,
    *,
    timeout: float,
    attempts: int,
    backoff_seconds: float,
    connections: int = 8,
    style: StructuredOutput = "json_schema",
    network: Mapping[str, Any] | None = None,
) -> UpstreamSettings:
    """A server the benchmark calls, as an upstream of the proxy's own client: the same
    transport and the same retry policy as live traffic (`proxy/upstream/retries.py`), with the
    benchmark's attempts (a connect failure retried for POST too: nothing was sent). `network`:
    the upstream settings of a real network (`trust_env`, `ca_bundle`, `client_cert`, `client_key`)."""
    return UpstreamSettings(
        name=name,
        base_url=base_url,
        api_key=api_key,
        structured_output=style,
        timeouts=Timeouts(connect=min(timeout, 10.0), first_byte=timeout, idle=timeout, total=timeout),
        retries=Retries(max_attempts=attempts, backoff_seconds=backoff_seconds, retry_on=RETRIED_STATUS, post_on_connect_error=True),
        max_connections=connections,
        **(network or {}),
    )
