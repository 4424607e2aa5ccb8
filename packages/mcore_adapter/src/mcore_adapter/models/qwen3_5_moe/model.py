"""Qwen3.5-MoE: Qwen3.5's model class with the tower class of its own transformers module."""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen3_5.model import Qwen3_5Config, Qwen3_5Model


@dataclass
class Qwen3_5MoeConfig(Qwen3_5Config):
    pass


class Qwen3_5MoeModel(Qwen3_5Model):
    config_class = Qwen3_5MoeConfig
    vision_tower_class = "transformers.models.qwen3_5_moe.modeling_qwen3_5_moe:Qwen3_5MoeVisionModel"
