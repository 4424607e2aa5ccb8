"""Qwen3-VL-MoE: Qwen3-VL's model with the MoE decoder (the layer specs follow the config) and
the vision tower class of its own transformers module (the same architecture)."""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen3_vl_base import Qwen3VLConfig, Qwen3VLModel


@dataclass
class Qwen3VLMoeConfig(Qwen3VLConfig):
    pass


class Qwen3VLMoeModel(Qwen3VLModel):
    config_class = Qwen3VLMoeConfig
    vision_tower_class = "transformers.models.qwen3_vl_moe.modeling_qwen3_vl_moe:Qwen3VLMoeVisionModel"
