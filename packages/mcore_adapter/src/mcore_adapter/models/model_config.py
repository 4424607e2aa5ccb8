"""``McaModelConfig``: Megatron-Core's ``TransformerConfig`` plus what building a GPTModel needs
(vocab, rope, tying) and where the model came from (HF model type and config).

It derives from ``MLATransformerConfig``, the ``TransformerConfig`` that also carries
multi-latent attention's fields, so one config class serves every family; MLA stays off unless
a template turns it on (``multi_latent_attention=True``)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from megatron.core.transformer.transformer_config import MLATransformerConfig

from .converter.errors import ConversionError
from .converter.layout import DEFAULT_VOCAB_DIVISOR, LAYOUT_FIELDS, padded_vocab_size
from .converter.mca_io import McaCheckpointMeta
from .converter.template import ARCH_FIELDS, get_template

_UNEVEN_FIELDS = ("num_layers_in_first_pipeline_stage", "num_layers_in_last_pipeline_stage")
# How a model runs, not what it is: a checkpoint records them, a model takes the job's. (Grouped
# GEMM only renames the experts' weights; it needs its kernel, which a CPU machine lacks.)
_PARALLEL_FIELDS = (*LAYOUT_FIELDS, "sequence_parallel", "moe_grouped_gemm")


@dataclass
class McaModelConfig(MLATransformerConfig):
    hf_model_type: str | None = None
    # MLATransformerConfig turns these on for every model; here a template chooses them.
    multi_latent_attention: bool = False
    normalization: str = "LayerNorm"
    q_lora_rank: int | None = None  # unset in a config: q has no low-rank projection
    vocab_size: int | None = None
    # Megatron-LM pads the vocab to a multiple of this x tp (see layout.padded_vocab_size).
    make_vocab_size_divisible_by: int = DEFAULT_VOCAB_DIVISOR
    padded_vocab_size: int | None = None
    max_sequence_length: int = 4096
    position_embedding_type: str = "rope"
    rotary_base: float = 10000.0
    rotary_percent: float = 1.0
    # Llama-3 style rope scaling; Megatron hard-codes all but the factor, we carry them all.
    rope_scaling: bool = False
    rope_scaling_factor: float = 8.0
    rope_scaling_low_freq_factor: float = 1.0
    rope_scaling_high_freq_factor: float = 4.0
    rope_scaling_original_max_position_embeddings: int = 8192
    # Linear rope scaling (positions divided by the factor), as GPTModel takes it.
    seq_len_interpolation_factor: float | None = None
    tie_embeddings_and_output_weights: bool = False
    swiglu: bool = False
    # HF semantics: attend to the last `sliding_window` tokens (Megatron: window_size=(w-1, 0)).
    sliding_window: int | None = None
    hf_config: dict[str, Any] | None = field(default=None, repr=False)
    hf_weight_dtype: str = "float32"
    # How the HF checkpoint stored its experts ("per_expert", "fused" or "fused_transposed", see
    # converter.fused_experts): an export writes the same.
    hf_expert_layout: str = "per_expert"
    # A value ("value": per token) or reward ("reward": per sequence) model: a 1-wide output head.
    output_head: str | None = None
    output_head_bias: bool = False

    def __post_init__(self):
        if self.output_head and self.sequence_parallel:
            raise ConversionError(
                f"a {self.output_head} model cannot use sequence_parallel=True yet: its 1-wide output "
                "layer is replicated over tensor-parallel ranks and needs whole hidden states, which "
                "sequence parallelism splits over them; turn sequence_parallel off for this model"
            )
        if self.swiglu:
            self.gated_linear_unit = True
            self.activation_func = F.silu
        if self.multi_latent_attention:
            # Megatron's local core attention sizes its output by kv_channels; MLA's output per
            # head is v_head_dim wide (its q/k width is passed separately).
            self.kv_channels = self.v_head_dim
        if self.sliding_window is not None:
            self.window_size = (self.sliding_window - 1, 0)
        if self.vocab_size is None:
            self.vocab_size = self.padded_vocab_size
        tp = self.tensor_model_parallel_size
        if self.padded_vocab_size is None or self.padded_vocab_size % tp:
            self.padded_vocab_size = padded_vocab_size(self.vocab_size, tp, self.make_vocab_size_divisible_by)
        if self.pipeline_model_parallel_size > 1 and self.pipeline_dtype is None:
            self.pipeline_dtype = self.params_dtype
        # MLATransformerConfig refuses an attention output gate even when MLA is off (the
        # config class of every model here); a gated GQA model (Qwen3-Next) needs it.
        gated = self.attention_output_gate and not self.multi_latent_attention
        if gated:
            self.attention_output_gate = False
        try:
            super().__post_init__()
        finally:
            if gated:
                self.attention_output_gate = True

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_hf_config(cls, hf_config: dict[str, Any], **overrides: Any) -> McaModelConfig:
        template = get_template(hf_config.get("model_type"))
        kwargs = template.convert_hf_to_mca_config(hf_config)
        return cls(**{**kwargs, **overrides}, hf_config=dict(hf_config))

    @classmethod
    def from_mca_meta(cls, meta: McaCheckpointMeta, **overrides: Any) -> McaModelConfig:
        kwargs = {k: v for k, v in meta.mca_config.items() if k not in _PARALLEL_FIELDS}
        if overrides.get("pipeline_model_parallel_size", 1) == meta.pp:  # keep the saved uneven split
            for name in _UNEVEN_FIELDS:
                kwargs[name] = meta.mca_config.get(name)
        kwargs.update(
            hf_config=meta.hf_config,
            hf_weight_dtype=meta.hf_weight_dtype,
            hf_expert_layout=meta.hf_expert_layout,
        )
        return cls(**{**kwargs, **overrides})

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, **overrides: Any) -> McaModelConfig:
        from .auto.config_auto import AutoConfig

        config = AutoConfig.from_pretrained(path, **overrides)
        if not isinstance(config, cls):
            raise TypeError(f"{path} holds a {type(config).__name__}, not a {cls.__name__}")
        return config

    # -- serialization --------------------------------------------------------------------
    def to_mca_kwargs(self) -> dict[str, Any]:
        """What mca_config.json keeps: the architecture fields the template defines (runtime
        choices such as dtype, initialization or recompute are not part of a checkpoint) and
        the parallel layout the weights were saved in."""
        names = dict.fromkeys([*ARCH_FIELDS, *get_template(self.hf_model_type).mca_fields()])
        out = {name: getattr(self, name) for name in names}
        out.update({name: getattr(self, name) for name in _PARALLEL_FIELDS})
        return out

    def to_meta(self, checkpoint_format: str) -> McaCheckpointMeta:
        return McaCheckpointMeta(
            hf_model_type=self.hf_model_type,
            mca_config=self.to_mca_kwargs(),
            hf_config=self.hf_config,
            checkpoint_format=checkpoint_format,
            hf_weight_dtype=self.hf_weight_dtype,
            hf_expert_layout=self.hf_expert_layout,
        )

    @property
    def torch_hf_weight_dtype(self) -> torch.dtype:
        return getattr(torch, self.hf_weight_dtype)
