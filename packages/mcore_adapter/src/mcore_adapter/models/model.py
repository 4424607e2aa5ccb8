"""``McaGPTModel``: megatron-core's ``GPTModel`` that loads and saves HF and MCA checkpoints.

Differences from ``GPTModel``: it is built from an ``McaModelConfig`` (layer spec chosen from
the config: Transformer Engine when present, Megatron's local modules otherwise), applies all
Llama-3 rope-scaling parameters (Megatron hard-codes three of four), defaults position ids and
the causal mask, and has ``from_pretrained`` / ``save_pretrained`` / ``save_pretrained_as_hf``
/ ``export_hf_weights``, which work at any parallel layout (see ``loading``, ``saving`` and
``export``). With virtual pipeline stages ``from_pretrained`` returns the rank's chunks as
``VirtualModels``.

Weights are named by their Megatron names in Transformer Engine style (as in
dist_checkpointing and Megatron-LM checkpoints); the local layer spec's different parameter
names are mapped through the spec's own ``sharded_state_dict_keys_map``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import torch
from megatron.core import parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.experimental_attention_variant_module_specs import (
    get_transformer_block_with_experimental_attention_variant_spec,
)
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_decoder_block_spec, get_gpt_mtp_block_spec

from .. import platform
from ..parallel import initialize_model_parallel
from . import export, loading, local_spec, saving
from .chunks import live_layout_kwargs
from .converter.stream import DEFAULT_BUCKET_BYTES
from .model_config import McaModelConfig
from .tp_rules import te_names, use_transformer_engine
from .virtual import VirtualModels, build_chunks


def gpt_block_spec(config: McaModelConfig, vp_stage: int | None = None):
    """Megatron's layer specs for the layers this chunk builds: dense and expert layers as
    ``moe_layer_freq`` says, GQA, multi-latent attention or Gated DeltaNet; Transformer Engine's
    modules on a GPU with TE, Megatron's local modules (``local_spec``) otherwise."""
    if not use_transformer_engine():
        platform.apply_local_spec_fixes()
        return local_spec.decoder_block_spec(config, vp_stage)
    if config.experimental_attention_variant == "gated_delta_net":
        spec = get_transformer_block_with_experimental_attention_variant_spec(config, vp_stage=vp_stage)
        return local_spec.with_gated_delta_net_kernels(spec)
    return get_gpt_decoder_block_spec(
        config, use_transformer_engine=True, normalization=config.normalization, vp_stage=vp_stage
    )


def mtp_block_spec(config: McaModelConfig, block_spec, vp_stage: int | None = None):
    """Megatron's multi-token-prediction block spec over ``block_spec``, with the same modules."""
    if use_transformer_engine():
        return get_gpt_mtp_block_spec(config, block_spec, True, vp_stage=vp_stage)
    return local_spec.mtp_block_spec(config, block_spec, vp_stage)


class ScalarHead(torch.nn.Module):
    """The 1-wide output layer of a value or reward model, in place of the vocab-parallel one:
    replicated on every tensor-parallel rank (the hidden states reaching it are whole), called
    as Megatron calls its output layer."""

    def __init__(self, config: McaModelConfig):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(1, config.hidden_size, dtype=config.params_dtype))
        config.init_method(self.weight)
        bias = torch.zeros(1, dtype=config.params_dtype) if config.output_head_bias else None
        self.bias = None if bias is None else torch.nn.Parameter(bias)

    def forward(self, hidden_states: torch.Tensor, weight=None, runtime_gather_output=None):
        return torch.nn.functional.linear(hidden_states, self.weight, self.bias), None


def _parameters_in(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Every parameter in ``dtype``, as transformers' ``dtype=`` has them. Megatron's local-spec
    norms (torch's ``RMSNorm`` / ``LayerNorm`` through ``WrappedTorchNorm``) are built in torch's
    default dtype, not ``params_dtype`` as Transformer Engine's norms and every other module are
    (Megatron-LM casts the whole model, ``Float16Module``). Buffers keep theirs: rotary tables and
    the router's expert bias are float32 by design, in transformers too."""
    for param in module.parameters():
        if param.is_floating_point() and param.dtype != dtype:
            param.data = param.data.to(dtype)


class McaGPTModel(GPTModel):
    config_class = McaModelConfig

    def __init__(
        self,
        config: McaModelConfig,
        pre_process: bool | None = None,
        post_process: bool | None = None,
        vp_stage: int | None = None,
    ):
        platform.apply_cpu_shims()
        if pre_process is None:
            pre_process = parallel_state.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
        if post_process is None:
            post_process = parallel_state.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
        block_spec = gpt_block_spec(config, vp_stage)
        mtp_spec = None
        if config.mtp_num_layers:
            mtp_spec = mtp_block_spec(config, block_spec, vp_stage)
        super().__init__(
            config=config,
            transformer_layer_spec=block_spec,
            mtp_block_spec=mtp_spec,
            vocab_size=config.padded_vocab_size,
            max_sequence_length=config.max_sequence_length,
            pre_process=pre_process,
            post_process=post_process,
            share_embeddings_and_output_weights=config.tie_embeddings_and_output_weights,
            position_embedding_type=config.position_embedding_type,
            rotary_percent=config.rotary_percent,
            rotary_base=config.rotary_base,
            rope_scaling=config.rope_scaling,
            rope_scaling_factor=config.rope_scaling_factor,
            seq_len_interpolation_factor=config.seq_len_interpolation_factor,
            vp_stage=vp_stage,
        )
        if config.rope_scaling and config.position_embedding_type == "rope":
            self._apply_rope_scaling()
        if config.output_head and self.post_process:
            self.output_layer = ScalarHead(config)
        _parameters_in(self, config.params_dtype)

    def _apply_rope_scaling(self) -> None:
        # Megatron's RotaryEmbedding takes only the factor and fixes low/high freq factors and
        # the original context length at 1, 4 and 8192; recompute inv_freq with the config's.
        rotary = self.rotary_pos_emb
        dim = rotary.inv_freq.numel() * 2
        device = rotary.inv_freq.device
        base = 1.0 / (
            self.config.rotary_base ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim)
        )
        rotary.inv_freq = rotary._apply_scaling(
            base,
            factor=self.config.rope_scaling_factor,
            low_freq_factor=self.config.rope_scaling_low_freq_factor,
            high_freq_factor=self.config.rope_scaling_high_freq_factor,
            original_max_position_embeddings=self.config.rope_scaling_original_max_position_embeddings,
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        """``GPTModel.forward`` with defaults: positions ``0..s-1`` and, on CPU, an explicit causal
        mask (megatron builds its default mask on CUDA)."""
        seq_len = input_ids.shape[1]
        if position_ids is None:
            position_ids = torch.arange(seq_len, device=input_ids.device).unsqueeze(0).expand_as(input_ids)
        if attention_mask is None and not platform.has_cuda():
            attention_mask = platform.causal_attention_mask(seq_len, input_ids.device)
        out = super().forward(input_ids, position_ids, attention_mask, **kwargs)
        if self.config.output_head == "reward" and self.post_process and kwargs.get("labels") is None:
            return self.sequence_scores(out, input_ids)
        return out

    def sequence_scores(self, scores: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
        """A reward model's score of each sequence, ``[batch, 1]``: its last non-pad token's, as
        transformers' sequence classification reads it (left or right padding alike)."""
        pad = (self.config.hf_config or {}).get("pad_token_id")
        if pad is None:
            last = torch.full((input_ids.shape[0],), input_ids.shape[1] - 1, device=input_ids.device)
        else:
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)
            last = (positions * (input_ids != pad)).argmax(-1)
        return scores[torch.arange(scores.shape[0], device=scores.device), last]

    def _postprocess(self, hidden_states, input_ids, position_ids, labels, *args, **kwargs):
        # megatron-core 0.16.1 runs the multi-token-prediction layers whenever they exist and
        # then clones `labels`, so a forward without labels (logits: inference, verification)
        # fails. They predict further tokens only for the training loss and never change the
        # main logits: without labels, skip them.
        if labels is not None or not kwargs.get("mtp_in_postprocess"):
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        mtp_num_layers, self.config.mtp_num_layers = self.config.mtp_num_layers, None
        try:
            kwargs["mtp_in_postprocess"] = False
            return super()._postprocess(hidden_states, input_ids, position_ids, labels, *args, **kwargs)
        finally:
            self.config.mtp_num_layers = mtp_num_layers

    # ------------------------------------------------------------------ weights by name
    def local_tensors(self) -> dict[str, torch.Tensor]:
        """This chunk's weights under their Megatron names with chunk-local layer numbers (the
        names of Megatron-LM's per-rank checkpoints); TE ``_extra_state`` entries are skipped."""
        out = {}
        layers = {f"decoder.layers.{i}.": layer for i, layer in enumerate(self.decoder.layers)}
        if getattr(self, "mtp", None) is not None:
            layers |= {
                f"mtp.layers.{i}.transformer_layer.": m.transformer_layer
                for i, m in enumerate(self.mtp.layers)
            }
        for name, tensor in self.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state"):
                continue
            prefix = next((p for p in layers if name.startswith(p)), None)
            if prefix is not None and not use_transformer_engine():
                rest = name[len(prefix) :]
                for old, new in te_names(layers[prefix]).items():
                    if rest.startswith(old):
                        name = prefix + new + rest[len(old) :]
                        break
            out[name] = tensor
        return out

    # ------------------------------------------------------------------ checkpoints
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = None, **config_overrides: Any
    ) -> McaGPTModel | VirtualModels:
        """Build this rank's part of the model and load an HF directory (converted on the fly,
        reading only the tensors this rank holds) or an MCA directory.

        Inside an initialized distributed job the current model-parallel layout is used; else a
        single-process group (world size 1) is created. With virtual pipeline stages the rank's
        chunks come back as ``VirtualModels``.
        """
        from .auto.config_auto import AutoConfig

        initialize_model_parallel()
        if dtype is not None:
            config_overrides["params_dtype"] = dtype
            # Megatron's half-precision flags, set with params_dtype as Megatron-LM sets them: its
            # modules read them (attention's softmax upcast to float32, as transformers does it)
            config_overrides.setdefault("bf16", dtype == torch.bfloat16)
            config_overrides.setdefault("fp16", dtype == torch.float16)
        config = AutoConfig.from_pretrained(path, **{**live_layout_kwargs(), **config_overrides})
        models = build_chunks(cls, config)
        loading.load_pretrained(models, path)
        config.name_or_path = os.fspath(path)  # as transformers records it: sinks refuse to write over it
        return models[0] if len(models) == 1 else models

    def save_pretrained(self, path: str | os.PathLike, force: bool = False) -> None:
        """Save as an MCA directory: ``mca_config.json`` + megatron-core dist_checkpointing
        (``torch_dist``), which Megatron reloads at any parallel layout. Collective."""
        saving.save_pretrained([self], path, force)

    def save_pretrained_as_hf(
        self, path: str | os.PathLike, force: bool = False, max_shard_bytes: int | None = None
    ) -> None:
        """Save as an HF directory with the names, shapes and dtype of the checkpoint the model
        came from, gathering the weights of every rank. Collective; rank 0 writes."""
        saving.save_pretrained_as_hf([self], path, force, max_shard_bytes)

    def export_hf_weights(
        self, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """``(hf_name, tensor)`` of the whole model on every rank, gathered bucket by bucket."""
        return export.export_hf_weights([self], bucket_bytes)
