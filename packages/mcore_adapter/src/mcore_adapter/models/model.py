"""``McaGPTModel``: megatron-core's ``GPTModel`` that loads and saves HF and MCA checkpoints.

Differences from ``GPTModel``: it is built from an ``McaModelConfig`` (layer spec chosen from
the config: Transformer Engine when present, Megatron's local modules otherwise), applies all
Llama-3 rope-scaling parameters (Megatron hard-codes three of four), defaults position ids and
the causal mask, and has ``from_pretrained`` / ``save_pretrained`` / ``save_pretrained_as_hf``.

Weights are named by their canonical Megatron names (Transformer Engine style, as in
dist_checkpointing and Megatron-LM checkpoints); the local layer spec's different parameter
names are mapped through the spec's own ``sharded_state_dict_keys_map``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state
from megatron.core.models.gpt import GPTModel
from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec
from megatron.core.transformer import TransformerLayer

from .. import platform
from ..parallel import initialize_model_parallel, is_rank_zero
from .converter.atomic import check_output_dir, staged_output_dir
from .converter.hf_io import HF_CONFIG_NAME, HFCheckpoint, SafetensorsWriter, write_json
from .converter.mca_io import McaCheckpointMeta, is_mca_dir, iteration_dir, load_torch_rank, torch_rank_file
from .converter.template import ConversionError, get_template
from .model_config import McaModelConfig

try:  # Transformer Engine is optional (absent on CPU machines)
    import transformer_engine  # noqa: F401
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    HAVE_TE = True
except ImportError:
    HAVE_TE = False


def gpt_layer_spec(config: McaModelConfig):
    if HAVE_TE and platform.has_cuda():
        return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=config.qk_layernorm)
    return get_gpt_layer_local_spec(qk_layernorm=config.qk_layernorm, normalization=config.normalization)


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
        super().__init__(
            config=config,
            transformer_layer_spec=gpt_layer_spec(config),
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
            vp_stage=vp_stage,
        )
        if config.rope_scaling and config.position_embedding_type == "rope":
            self._apply_rope_scaling()

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
        return super().forward(input_ids, position_ids, attention_mask, **kwargs)

    # ------------------------------------------------------------------ canonical names
    def _layer_keys(self) -> dict[int, tuple[TransformerLayer, dict[str, str]]]:
        return {
            i: (layer, layer.submodules_config.sharded_state_dict_keys_map)
            for i, layer in enumerate(self.decoder.layers)
        }

    def canonical_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """``(canonical Megatron name, tensor)`` for every weight this rank holds, with global
        layer numbers. ``_extra_state`` entries (TE metadata) are skipped."""
        layers = self._layer_keys()
        for name, tensor in self.state_dict(keep_vars=True).items():
            if name.endswith("_extra_state"):
                continue
            yield self._canonical_name(name, layers), tensor

    @staticmethod
    def _canonical_name(name: str, layers: dict[int, tuple[TransformerLayer, dict[str, str]]]) -> str:
        prefix = "decoder.layers."
        if not name.startswith(prefix):
            return name
        index, _, rest = name[len(prefix) :].partition(".")
        layer, keys_map = layers[int(index)]
        for old, new in keys_map.items():
            if rest.startswith(old):
                rest = new + rest[len(old) :]
                break
        return f"{prefix}{layer.layer_number - 1}.{rest}"

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype | None = None, **config_overrides: Any
    ) -> McaGPTModel:
        """Build the model and load an HF directory (converted on the fly) or an MCA directory.

        Inside an initialized distributed job the current model-parallel layout is used; else a
        single-process group (world size 1) is created.
        """
        from .auto.config_auto import AutoConfig

        initialize_model_parallel()
        if dtype is not None:
            config_overrides["params_dtype"] = dtype
        config = AutoConfig.from_pretrained(path, **config_overrides)
        model = cls(config)
        model.load_pretrained(path)
        return model

    def load_pretrained(self, path: str | os.PathLike) -> None:
        if not is_mca_dir(path):
            self._load_hf(HFCheckpoint(path))
            return
        meta = McaCheckpointMeta.load(path)
        if meta.checkpoint_format == "torch_dist":
            loaded = dist_checkpointing.load({"model": self.sharded_state_dict()}, str(iteration_dir(path)))
            self.load_state_dict(loaded["model"], strict=True)
            return
        tp = parallel_state.get_tensor_model_parallel_world_size()
        pp = parallel_state.get_pipeline_model_parallel_world_size()
        if (meta.tp, meta.pp) != (tp, pp):
            raise ConversionError(
                f"{path} was written for tp={meta.tp} pp={meta.pp} in 'torch' format, which is layout-specific; "
                f"this job runs tp={tp} pp={pp}: convert it to this layout or to torch_dist first"
            )
        file = torch_rank_file(
            path,
            parallel_state.get_tensor_model_parallel_rank(),
            parallel_state.get_pipeline_model_parallel_rank(),
            pp,
        )
        self._copy_into_params(load_torch_rank(file).items(), source=str(file))

    def _load_hf(self, ckpt: HFCheckpoint) -> None:
        template = get_template(ckpt.config.get("model_type"))
        mapper = template.mapper(self.config, to_mca=True)

        def converted():
            for name, tensor in ckpt.tensors():
                yield from mapper.push(name, tensor)
            mapper.finish()  # an incomplete q/k/v or gate/up group is named before missing params

        self._copy_into_params(converted(), source=str(ckpt.path))

    def _copy_into_params(self, named: Any, source: str) -> None:
        targets = dict(self.canonical_tensors())
        loaded: set[str] = set()
        with torch.no_grad():
            for name, tensor in named:
                if name.endswith("_extra_state"):
                    continue
                target = targets.get(name)
                if target is None:
                    raise ConversionError(f"{source}: {name!r} has no parameter in this model")
                if target.shape != tensor.shape:
                    raise ConversionError(
                        f"{source}: {name!r} has shape {tuple(tensor.shape)}, the model expects "
                        f"{tuple(target.shape)}; the checkpoint does not match its config"
                    )
                target.copy_(tensor)
                loaded.add(name)
        missing = sorted(set(targets) - loaded)
        if missing:
            raise ConversionError(
                f"{source} lacks {len(missing)} parameter(s) of the model, e.g. {missing[:5]}"
            )

    # ------------------------------------------------------------------ saving
    def save_pretrained(self, path: str | os.PathLike, force: bool = False) -> None:
        """Save as an MCA directory: ``mca_config.json`` + megatron-core dist_checkpointing
        (``torch_dist``), which Megatron reloads at any parallel layout. Collective."""

        def write(tmp: Path) -> None:
            ckpt_dir = iteration_dir(tmp)
            if is_rank_zero():
                ckpt_dir.mkdir(parents=True)
            _barrier()
            dist_checkpointing.save({"model": self.sharded_state_dict()}, str(ckpt_dir))
            if is_rank_zero():
                self.config.to_meta("torch_dist").save(tmp)

        _collective_output(path, force, write)

    def save_pretrained_as_hf(
        self, path: str | os.PathLike, force: bool = False, max_shard_bytes: int | None = None
    ) -> None:
        """Save as an HF directory (config.json + safetensors shards + index) with the names,
        shapes and dtype of the checkpoint the model came from."""
        if (
            parallel_state.get_tensor_model_parallel_world_size()
            * parallel_state.get_pipeline_model_parallel_world_size()
            > 1
        ):
            raise NotImplementedError("save_pretrained_as_hf gathers tp=pp=1 models only for now")
        template = get_template(self.config.hf_model_type)
        mapper = template.mapper(self.config, to_mca=False)
        dtype = self.config.torch_hf_weight_dtype
        hf_config = template.convert_mca_to_hf_config(self.config.to_mca_kwargs(), self.config.hf_config)

        def write(tmp: Path) -> None:
            if not is_rank_zero():
                return
            writer = SafetensorsWriter(
                tmp, **({"max_shard_bytes": max_shard_bytes} if max_shard_bytes else {})
            )
            for name, tensor in self.canonical_tensors():
                for hf_name, hf_tensor in mapper.push(name, tensor.detach()):
                    writer.add(hf_name, hf_tensor.to(dtype))
            mapper.finish()
            writer.close()
            write_json(tmp / HF_CONFIG_NAME, hf_config)

        _collective_output(path, force, write)


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _collective_output(path: str | os.PathLike, force: bool, write) -> None:
    """Run ``write(tmp)`` on every rank into one staging directory that rank 0 then moves to
    ``path``; an error on rank 0 leaves ``path`` untouched."""
    check_output_dir(path, force)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        with staged_output_dir(path, force) as tmp:
            write(tmp)
        return
    box: list[Any] = [None]
    if is_rank_zero():
        context = staged_output_dir(path, force)
        box[0] = str(context.__enter__())
    dist.broadcast_object_list(box, src=0)
    try:
        write(Path(box[0]))
        _barrier()
    except BaseException as e:
        if is_rank_zero():
            context.__exit__(type(e), e, e.__traceback__)
        raise
    if is_rank_zero():
        context.__exit__(None, None, None)
