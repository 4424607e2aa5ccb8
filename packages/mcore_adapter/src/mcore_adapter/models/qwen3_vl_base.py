"""The model of Qwen3-VL, which Qwen3-VL-MoE, Qwen3.5 and Qwen3.5-MoE build on: the
vision-language base with Qwen3-VL's vision tower, interleaved multimodal rope, video frames
positioned one by one between timestamps, and deepstack (a decoder block that adds intermediate
vision features after its first layers)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from .chunks import dist_converter
from .deepstack import Deepstack, DeepstackTransformerBlock
from .mrope_rotary import InterleavedMultimodalRotaryEmbedding
from .qwen3_vl_common import deepstack_layers
from .vision_language import VisionLanguageConfig, VisionLanguageModel


@dataclass
class Qwen3VLConfig(VisionLanguageConfig):
    @property
    def num_deepstack_layers(self) -> int:
        return deepstack_layers(self.vision_config)


class Qwen3VLModel(VisionLanguageModel):
    config_class = Qwen3VLConfig
    vision_tower_class = "transformers.models.qwen3_vl.modeling_qwen3_vl:Qwen3VLVisionModel"
    video_frames_apart = True

    def __init__(self, config: Qwen3VLConfig, pre_process=None, post_process=None, vp_stage=None):
        dist_converter(config)  # validates the layout: deepstack on the first stage (template's layout_rules)
        super().__init__(config, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
        # Megatron's MultimodalRotaryEmbedding gives each axis a contiguous section of the
        # frequencies; Qwen3-VL interleaves them (same frequencies, other axis per frequency).
        contiguous = self.rotary_pos_emb
        self.rotary_pos_emb = InterleavedMultimodalRotaryEmbedding(
            kv_channels=config.kv_channels,
            rotary_percent=config.rotary_percent,
            rotary_interleaved=config.rotary_interleaved,
            seq_len_interpolation_factor=config.seq_len_interpolation_factor,
            rotary_base=config.rotary_base,
        )
        self.rotary_pos_emb.inv_freq = contiguous.inv_freq
        if self.pre_process and config.num_deepstack_layers:
            DeepstackTransformerBlock.adopt(self.decoder, config.num_deepstack_layers)

    def decoder_block_inputs(self, vision: list[tuple[torch.Tensor, Any]]) -> dict[str, Any]:
        deepstack = Deepstack.from_vision(vision)
        return {} if deepstack is None else {"deepstack": deepstack}
