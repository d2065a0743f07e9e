"""What the strategies need from the running proxy, in one object."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import PersonalizationSettings, StageSettings
from ..metrics import Metrics
from ..prompts.loader import Prompts
from ..upstream.client import UpstreamClient, Upstreams


@dataclass(frozen=True, slots=True)
class PipelineContext:
    settings: PersonalizationSettings
    upstreams: Upstreams
    metrics: Metrics
    prompts: Prompts
    heartbeat_seconds: float = 5.0
    log_content: bool = False

    def stage_target(self, stage: StageSettings, requested_model: str) -> tuple[UpstreamClient, str]:
        """The upstream and model a stage calls: its own settings, else the requested model's."""
        model = stage.model or requested_model
        upstream = self.upstreams.named(stage.upstream) if stage.upstream else self.upstreams.for_model(model)
        return upstream, model
