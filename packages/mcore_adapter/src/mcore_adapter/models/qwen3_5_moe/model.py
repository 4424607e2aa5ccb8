"""Qwen3.5-MoE: Qwen3.5's model class (Qwen3-VL's, no deepstack) with the tower class of its own
transformers module."""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen3_vl_base import Qwen3VLConfig, Qwen3VLModel


@dataclass
class Qwen3_5MoeConfig(Qwen3VLConfig):
    pass


class Qwen3_5MoeModel(Qwen3VLModel):
    config_class = Qwen3_5MoeConfig
    vision_tower_class = "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe:Qwen3_5MoeVisionModel"
