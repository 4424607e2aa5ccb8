"""The vision-language base: a ``GPTModel`` subclass (through ``McaGPTModel``) in which a
transformers vision tower feeds the token embeddings, then Megatron's decoder runs with
multimodal rope (``MultimodalRotaryEmbedding``, ``mrope_section``).

What it adds to ``McaGPTModel``, and what a model overrides (see docs/multimodal.md): the
config fields of the vision side (``VisionLanguageConfig``), the tower
(``vision_tower_class``, built on the first pipeline stage only and replicated over tensor
parallelism), how its outputs replace the placeholder tokens (``embed``) and the positions
(``rope_index``, ``video_time_intervals``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .. import platform
from ..registry import load_object
from .converter.errors import ConversionError
from .model import McaGPTModel
from .model_config import McaModelConfig
from .mrope import get_rope_index, mm_token_types


@dataclass
class VisionLanguageConfig(McaModelConfig):
    vision_config: dict[str, Any] | None = field(default=None, repr=False)
    image_token_id: int | None = None
    video_token_id: int | None = None
    vision_start_token_id: int | None = None
    # transformers' attention kernel for the tower; None: eager on CPU (what the parity tests
    # compare with), sdpa on GPU.
    vision_attn_implementation: str | None = None

    def __post_init__(self):
        super().__post_init__()
        if self.sequence_parallel:
            raise ConversionError(
                "a vision-language model cannot use sequence_parallel=True yet: its vision features "
                "replace placeholder tokens across the whole sequence, which sequence parallelism "
                "splits over tensor-parallel ranks; turn sequence_parallel off for this model"
            )


class VisionLanguageModel(McaGPTModel):
    config_class = VisionLanguageConfig
    # "module:Class" of the transformers vision module, used as is (its weights keep their HF
    # names under vision_model.).
    vision_tower_class: str = ""
    # Forward inputs that only the positions use (e.g. Qwen2.5-VL's second_per_grid_ts).
    position_inputs: tuple[str, ...] = ()
    # Qwen3-VL: each video frame is its own placeholder group between timestamp text.
    video_frames_apart: bool = False

    def __init__(self, config: VisionLanguageConfig, pre_process=None, post_process=None, vp_stage=None):
        super().__init__(config, pre_process=pre_process, post_process=post_process, vp_stage=vp_stage)
        self.vision_model = self.build_vision_tower(config) if self.pre_process else None

    @classmethod
    def build_vision_tower(cls, config: VisionLanguageConfig) -> torch.nn.Module:
        from transformers import AutoConfig

        vision = dict(config.vision_config or {})
        vision_config = AutoConfig.for_model(vision.pop("model_type"), **vision)
        tower = load_object(cls.vision_tower_class)
        attention = config.vision_attn_implementation or ("sdpa" if platform.has_cuda() else "eager")
        return tower._from_config(vision_config, attn_implementation=attention, dtype=config.params_dtype)

    @property
    def spatial_merge_size(self) -> int:
        return int(self.config.vision_config["spatial_merge_size"])

    def rope_index(
        self,
        input_ids: torch.Tensor,
        image_grid_thw: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """mrope position ids ``[3, b, s]`` and per-sequence deltas, for the caller to compute
        before forward (forward computes them when not given)."""
        types = mm_token_types(input_ids, self.config.image_token_id, self.config.video_token_id)
        return get_rope_index(
            input_ids,
            types,
            self.spatial_merge_size,
            image_grid_thw,
            video_grid_thw,
            attention_mask,
            video_time_intervals=self.video_time_intervals(video_grid_thw, **kwargs),
            frames_apart=self.video_frames_apart,
        )

    def video_time_intervals(self, video_grid_thw: torch.Tensor | None, **kwargs: Any) -> list[float] | None:
        """Each video's spacing of temporal rope positions; ``None``: one per temporal patch."""
        return None

    def vision_outputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
    ) -> list[tuple[torch.Tensor, Any]]:
        """For images, then videos, if given: the placeholder mask ``[b, s]`` and the tower's output
        (``pooler_output``: one feature per placeholder, in ``[b, s]`` order)."""
        out = []
        for pixels, grid, token in (
            (pixel_values, image_grid_thw, self.config.image_token_id),
            (pixel_values_videos, video_grid_thw, self.config.video_token_id),
        ):
            if pixels is None:
                continue
            output = self.vision_model(pixels.to(self.vision_model.dtype), grid_thw=grid)
            mask = input_ids == token
            if int(mask.sum()) != output.pooler_output.shape[0]:
                raise ValueError(
                    f"{int(mask.sum())} placeholder tokens (id {token}) but the vision tower gave "
                    f"{output.pooler_output.shape[0]} features; the prompt and the grid do not match"
                )
            out.append((mask, output))
        return out

    def embed(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        vision: list[tuple[torch.Tensor, Any]] | None = None,
    ) -> torch.Tensor:
        """Token embeddings ``[s, b, h]`` with the vision tower's outputs at the placeholders
        (``vision``: ``vision_outputs`` already computed)."""
        if vision is None:
            vision = self.vision_outputs(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
            )
        embeddings = self.embedding(input_ids=input_ids, position_ids=None).transpose(0, 1)  # [b, s, h]
        for mask, output in vision:
            features = output.pooler_output.to(embeddings.dtype)
            embeddings = embeddings.masked_scatter(mask[..., None], features)
        return embeddings.transpose(0, 1).contiguous()

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_grid_thw: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        video_grid_thw: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        position_kwargs = {k: kwargs.pop(k) for k in self.position_inputs if k in kwargs}
        if position_ids is None:
            position_ids, _ = self.rope_index(input_ids, image_grid_thw, video_grid_thw, **position_kwargs)
        if self.pre_process and kwargs.get("decoder_input") is None:
            vision = self.vision_outputs(
                input_ids, pixel_values, image_grid_thw, pixel_values_videos, video_grid_thw
            )
            kwargs["decoder_input"] = self.embed(input_ids, vision=vision)
            block_inputs = self.decoder_block_inputs(vision)
            if block_inputs:
                kwargs["extra_block_kwargs"] = {**(kwargs.get("extra_block_kwargs") or {}), **block_inputs}
        return super().forward(input_ids, position_ids, attention_mask, **kwargs)

    def decoder_block_inputs(self, vision: list[tuple[torch.Tensor, Any]]) -> dict[str, Any]:
        """Inputs the decoder block takes besides the embeddings, from ``vision_outputs``
        (Qwen3-VL: its deepstack features); none by default."""
        return {}
