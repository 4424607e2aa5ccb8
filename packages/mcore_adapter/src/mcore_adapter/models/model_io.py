"""Loading, saving and exporting a model's chunks at any parallel layout.

Every function takes the model chunks of this rank (one per virtual pipeline stage, in order)
and the live Megatron parallel state. Which weights a rank holds, and which slice of each, is
the converter's ``DistConverter`` for the model's layout, the same rules the offline converter
writes rank files with.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import dist_checkpointing, parallel_state

from .. import platform
from ..parallel import is_rank_zero
from .converter.atomic import check_output_dir, staged_output_dir
from .converter.convert import HFSource, write_hf
from .converter.dist_converter import REPLICATED, DistConverter
from .converter.hf_io import HF_CONFIG_NAME, HFCheckpoint, write_json
from .converter.layout import ParallelLayout
from .converter.mca_io import (
    McaCheckpointMeta,
    TorchRankReader,
    chunk_key,
    is_mca_dir,
    iteration_dir,
    torch_rank_file,
)
from .converter.template import ConversionError, Template, get_template

DEFAULT_BUCKET_BYTES = 256 * 1024**2


class VirtualModels(torch.nn.ModuleList):
    """The model chunks of one pipeline rank with virtual pipeline stages, in stage order (the
    list Megatron's interleaved schedule takes), with the checkpoint methods of one model."""

    @property
    def config(self):
        return self[0].config

    def save_pretrained(self, path: str | os.PathLike, force: bool = False) -> None:
        save_pretrained(list(self), path, force)

    def save_pretrained_as_hf(
        self, path: str | os.PathLike, force: bool = False, max_shard_bytes=None
    ) -> None:
        save_pretrained_as_hf(list(self), path, force, max_shard_bytes)

    def export_hf_weights(
        self, bucket_bytes: int = DEFAULT_BUCKET_BYTES
    ) -> Iterator[tuple[str, torch.Tensor]]:
        return export_hf_weights(list(self), bucket_bytes)


def live_layout_kwargs() -> dict[str, Any]:
    """The config fields of the initialized Megatron parallel state."""
    vpp = parallel_state.get_virtual_pipeline_model_parallel_world_size()
    return {
        "tensor_model_parallel_size": parallel_state.get_tensor_model_parallel_world_size(),
        "pipeline_model_parallel_size": parallel_state.get_pipeline_model_parallel_world_size(),
        "virtual_pipeline_model_parallel_size": vpp if vpp and vpp > 1 else None,
    }


def build_chunks(cls, config) -> list:
    vpp = config.virtual_pipeline_model_parallel_size
    if vpp:
        return VirtualModels([cls(config, vp_stage=i) for i in range(vpp)])
    return [cls(config)]


def dist_converter(config) -> DistConverter:
    kwargs = config.to_mca_kwargs()
    return DistConverter(kwargs, ParallelLayout.from_kwargs(kwargs))


def _ranks() -> tuple[int, int]:
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()


# ---------------------------------------------------------------------- loading
def load_pretrained(models: list, path: str | os.PathLike) -> None:
    conv = dist_converter(models[0].config)
    tp_rank, pp_rank = _ranks()
    chunks = conv.layout.chunks_of(pp_rank)
    targets = {
        (chunk.vp_stage, local): tensor
        for model, chunk in zip(models, chunks, strict=True)
        for local, tensor in model.local_tensors().items()
    }
    if not is_mca_dir(path):
        loaded = _load_hf(models[0].config, conv, targets, HFCheckpoint(path), tp_rank, pp_rank)
    else:
        meta = McaCheckpointMeta.load(path)
        if meta.checkpoint_format == "torch_dist":
            state = dist_checkpointing.load(_sharded_state_dict(models), str(iteration_dir(path)))
            for model, key in zip(models, _chunk_keys(models), strict=True):
                model.load_state_dict(state[key], strict=True)
            return
        loaded = _load_torch(conv, targets, path, meta, tp_rank, pp_rank)
    missing = sorted(f"{chunk_key(vp)}/{name}" for vp, name in set(targets) - loaded)
    if missing:
        raise ConversionError(f"{path} lacks {len(missing)} parameter(s) of this rank, e.g. {missing[:5]}")


def _copy(targets: dict, key: tuple, tensor: torch.Tensor, source: str) -> None:
    target = targets.get(key)
    if target is None:
        raise ConversionError(f"{source}: {key[1]!r} has no parameter in this model chunk")
    if target.shape != tensor.shape:
        raise ConversionError(
            f"{source}: {key[1]!r} has shape {tuple(tensor.shape)}, the model expects "
            f"{tuple(target.shape)}; the checkpoint does not match its config"
        )
    with torch.no_grad():
        target.copy_(tensor)


def _load_hf(
    config, conv: DistConverter, targets: dict, ckpt: HFCheckpoint, tp_rank: int, pp_rank: int
) -> set:
    """Read only the HF tensors whose Megatron weights live on this pipeline rank."""
    for _ in HFSource(ckpt.path).weights(meta=True):  # every header against the config, first
        pass
    template = get_template(ckpt.config.get("model_type"))
    mapper = template.mapper(config, to_mca=True)

    def wanted(hf_name: str) -> bool:
        outputs = mapper.outputs_of(hf_name)
        if outputs is None:
            return True  # unmapped: let push() name it
        return any(chunk.pp_rank == pp_rank for name in outputs for chunk, _ in conv.placements(name))

    loaded = set()
    for hf_name, tensor in ckpt.tensors([n for n in ckpt.weight_map if wanted(n)]):
        for name, full in mapper.push(hf_name, tensor):
            for chunk, local in conv.placements(name):
                if chunk.pp_rank == pp_rank:
                    _copy(targets, (chunk.vp_stage, local), conv.split(name, full)[tp_rank], str(ckpt.path))
                    loaded.add((chunk.vp_stage, local))
    mapper.finish()
    return loaded


def _load_torch(
    conv: DistConverter, targets: dict, path, meta: McaCheckpointMeta, tp_rank: int, pp_rank: int
) -> set:
    if meta.layout != conv.layout:
        raise ConversionError(
            f"{path} was written for {meta.layout.describe()} in 'torch' format, which is layout-specific; "
            f"this job runs {conv.layout.describe()}: reshard it first (mcore-adapter convert SRC DST "
            f"--tp {conv.layout.tp} --pp {conv.layout.pp}{f' --vpp {conv.layout.vpp}' if conv.layout.vpp else ''})"
        )
    reader = TorchRankReader(torch_rank_file(path, tp_rank, pp_rank, conv.layout.pp))
    loaded = set()
    for chunk in conv.layout.chunks_of(pp_rank):
        key = chunk_key(chunk.vp_stage)
        if key not in reader.chunks:
            raise ConversionError(f"{reader.file} holds {sorted(reader.chunks)}, not {key!r}")
        for local in reader.chunks[key]:
            if local.endswith("_extra_state"):
                continue
            _copy(targets, (chunk.vp_stage, local), reader.read(key, local), str(reader.file))
            loaded.add((chunk.vp_stage, local))
    return loaded


# ---------------------------------------------------------------------- MCA (torch_dist)
def _chunk_keys(models: list) -> list[str]:
    # Megatron-LM's keys: "model", or "model0", "model1", ... with virtual pipeline stages.
    return [chunk_key(i if len(models) > 1 else None) for i in range(len(models))]


def _sharded_state_dict(models: list) -> dict[str, Any]:
    return {key: model.sharded_state_dict() for model, key in zip(models, _chunk_keys(models), strict=True)}


def save_pretrained(models: list, path: str | os.PathLike, force: bool = False) -> None:
    """``mca_config.json`` + dist_checkpointing (``torch_dist``). Collective."""

    def write(tmp: Path) -> None:
        ckpt_dir = iteration_dir(tmp)
        if is_rank_zero():
            ckpt_dir.mkdir(parents=True)
        _barrier()
        dist_checkpointing.save(_sharded_state_dict(models), str(ckpt_dir))
        if is_rank_zero():
            models[0].config.to_meta("torch_dist").save(tmp)

    _collective_output(path, force, write)


# ---------------------------------------------------------------------- export
def _plan(models: list, conv: DistConverter) -> list[tuple[int, str, torch.Size, torch.dtype]]:
    """Every canonical weight of the model as (owner pipeline rank, name, full shape, dtype), in
    the same order on every rank: embedding, layers in order, then the last stage's weights."""
    _, pp_rank = _ranks()
    mine = []
    for model, chunk in zip(models, conv.layout.chunks_of(pp_rank), strict=True):
        for local, tensor in model.local_tensors().items():
            name = conv.canonical_name(chunk, local)
            if name is not None:
                shard = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
                mine.append((name, conv.merge(name, [shard] * conv.layout.tp).shape, tensor.dtype))
    stages: list[Any] = [None] * conv.layout.pp
    if conv.layout.pp > 1:
        dist.all_gather_object(stages, mine, group=parallel_state.get_pipeline_model_parallel_group())
    else:
        stages = [mine]
    entries = [(owner, *entry) for owner, entries in enumerate(stages) for entry in entries]

    def order(item: tuple[int, str, Any, Any]) -> tuple[int, int]:
        layer, _ = Template.split_mca_name(item[1])
        if layer is not None:
            return 1, layer
        return (2, 0) if item[0] == conv.layout.pp - 1 and item[0] > 0 else (0, 0)

    return sorted(entries, key=order)


def gather_canonical(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of whole canonical weights, on every rank: tensor-parallel slices are gathered
    over the TP group and each weight is broadcast from its pipeline stage. Collective; a
    bucket holds about ``bucket_bytes`` (at least one weight)."""
    conv = dist_converter(models[0].config)
    _tp_rank, pp_rank = _ranks()
    tp_group = parallel_state.get_tensor_model_parallel_group()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    mine = {}
    for model, chunk in zip(models, conv.layout.chunks_of(pp_rank), strict=True):
        for local, tensor in model.local_tensors().items():
            name = conv.canonical_name(chunk, local)
            if name is not None:
                mine[name] = tensor.detach()
    bucket, size = [], 0
    for owner, name, shape, dtype in _plan(models, conv):
        if owner == pp_rank:
            shard = mine[name].contiguous()
            if conv.layout.tp > 1 and conv.rule(name) != REPLICATED:
                parts = [torch.empty_like(shard) for _ in range(conv.layout.tp)]
                dist.all_gather(parts, shard, group=tp_group)
            else:
                parts = [shard] * conv.layout.tp
            full = conv.merge(name, parts).contiguous()
        else:
            full = torch.empty(shape, dtype=dtype, device=platform.device())
        if conv.layout.pp > 1:
            dist.broadcast(full, group=pp_group, group_src=owner)
        bucket.append((name, full))
        size += full.numel() * full.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def export_hf_buckets(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of ``(hf_name, tensor)``: the whole model in HF names on every rank, at most
    about ``bucket_bytes`` gathered at a time (the unit of a weight sync). Collective."""
    config = models[0].config
    mapper = get_template(config.hf_model_type).mapper(config, to_mca=False)
    for bucket in gather_canonical(models, bucket_bytes):
        out = [pair for name, full in bucket for pair in mapper.push(name, full)]
        if out:
            yield out
    mapper.finish()


def export_hf_weights(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    for bucket in export_hf_buckets(models, bucket_bytes):
        yield from bucket


def save_pretrained_as_hf(
    models: list, path: str | os.PathLike, force: bool = False, max_shard_bytes: int | None = None
) -> None:
    """HF config + safetensors of the whole model, written by rank 0 as the weights are
    gathered (a bucket at a time). Collective."""
    config = models[0].config
    template = get_template(config.hf_model_type)
    mca_kwargs = config.to_mca_kwargs()
    if config.hf_config is None:
        raise ConversionError(
            "this model has no HF config: its MCA checkpoint kept none and one cannot be rebuilt from "
            "its Megatron config alone; load it with AutoModel.from_pretrained(path, hf_config=...)"
        )
    hf_config = template.convert_mca_to_hf_config(mca_kwargs, config.hf_config)
    source = ModelSource(models)

    def write(tmp: Path) -> None:
        if is_rank_zero():
            write_hf(
                tmp,
                template,
                mca_kwargs,
                source.weights,
                config.torch_hf_weight_dtype,
                max_shard_bytes=max_shard_bytes,
            )
            write_json(tmp / HF_CONFIG_NAME, hf_config)
        else:
            for _ in source.weights():
                pass

    _collective_output(path, force, write)


# ---------------------------------------------------------------------- output directories
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


class ModelSource:
    """A built model as a conversion source (see ``converter.convert``): its canonical weights,
    gathered from every rank. Collective when more than one rank holds the model."""

    def __init__(self, models: list):
        self.models = models
        config = models[0].config
        self.template = get_template(config.hf_model_type)
        self.mca_kwargs = config.to_mca_kwargs()
        self.hf_config = config.hf_config
        self.hf_weight_dtype = config.hf_weight_dtype
        self.plan = _plan(models, dist_converter(config))

    def weights(self, meta: bool = False):
        if meta:
            for _, name, shape, dtype in self.plan:
                yield name, torch.empty(shape, dtype=dtype, device="meta")
            return
        for bucket in gather_canonical(self.models):
            yield from bucket
