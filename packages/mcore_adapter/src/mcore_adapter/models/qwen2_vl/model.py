"""Qwen2-VL: the vision-language base with Qwen2-VL's vision tower."""

from __future__ import annotations

from dataclasses import dataclass

from ..vision_language import VisionLanguageConfig, VisionLanguageModel


@dataclass
class Qwen2VLConfig(VisionLanguageConfig):
    pass


class Qwen2VLModel(VisionLanguageModel):
    config_class = Qwen2VLConfig
    vision_tower_class = (
        "transformers.models.qwen2_vl.modeling_qwen2_vl:Qwen2VisionTransformerPretrainedModel"
    )
