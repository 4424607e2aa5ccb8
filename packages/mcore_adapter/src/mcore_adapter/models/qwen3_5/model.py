"""Qwen3.5: Qwen3-VL's model class (interleaved mrope, frames between timestamps) with Qwen3.5's
vision tower, which has no deepstack; Megatron builds the hybrid decoder from the config."""

from __future__ import annotations

from dataclasses import dataclass

from ..qwen3_vl_base import Qwen3VLConfig, Qwen3VLModel


@dataclass
class Qwen3_5Config(Qwen3VLConfig):
    pass


class Qwen3_5Model(Qwen3VLModel):
    config_class = Qwen3_5Config
    vision_tower_class = "transformers.models.qwen3_5.modeling_qwen3_5:Qwen3_5VisionModel"
