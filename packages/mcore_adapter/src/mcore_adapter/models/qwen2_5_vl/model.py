"""Qwen2.5-VL: the vision-language base with Qwen2.5-VL's vision tower (window attention), and
video frames spaced in rope time by ``tokens_per_second`` x seconds per temporal patch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..vision_language import VisionLanguageConfig, VisionLanguageModel


@dataclass
class Qwen2_5_VLConfig(VisionLanguageConfig):
    pass


class Qwen2_5_VLModel(VisionLanguageModel):
    config_class = Qwen2_5_VLConfig
    vision_tower_class = (
        "transformers.models.qwen2_5_vl.modeling_qwen2_5_vl:Qwen2_5_VisionTransformerPretrainedModel"
    )
    position_inputs = ("second_per_grid_ts",)

    def video_time_intervals(
        self,
        video_grid_thw: torch.Tensor | None,
        second_per_grid_ts: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> list[float] | None:
        if video_grid_thw is None:
            return None
        seconds = (
            second_per_grid_ts.tolist() if second_per_grid_ts is not None else [1.0] * len(video_grid_thw)
        )
        return [self.config.vision_config["tokens_per_second"] * s for s in seconds]
