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
from megatron.core import parallel_state

from .. import platform
from ..parallel import is_rank_zero
from .converter.atomic import check_output_dir, staged_output_dir
from .converter.convert import HFSource, write_hf
from .converter.dist_converter import POST_PROCESS_PREFIXES, REPLICATED, DistConverter
from .converter.hf_io import HF_CONFIG_NAME, HFCheckpoint, write_json
from .converter.layout import ParallelLayout, RankFile
from .converter.mca_io import (
    McaCheckpointMeta,
    TorchRankReader,
    chunk_key,
    is_mca_dir,
    iteration_dir,
    layout_rank_file,
)
from .converter.shapes import expert_pattern
from .converter.template import ConversionError, Template, get_template
from .dist_checkpoint import load_dist_checkpoint, save_dist_checkpoint

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
        "expert_model_parallel_size": parallel_state.get_expert_model_parallel_world_size(),
        "expert_tensor_parallel_size": parallel_state.get_expert_tensor_parallel_world_size(),
    }


def build_chunks(cls, config) -> list:
    vpp = config.virtual_pipeline_model_parallel_size
    if vpp:
        return VirtualModels([cls(config, vp_stage=i) for i in range(vpp)])
    return [cls(config)]


def dist_converter(config) -> DistConverter:
    """The sharding of the built model (its modules' own splits where they differ from the
    ``torch`` format's)."""
    from .model import tp_rule_overrides

    kwargs = config.to_mca_kwargs()
    return DistConverter(kwargs, ParallelLayout.from_kwargs(kwargs), tp_rule_overrides(config))


def _ranks() -> tuple[int, int]:
    return parallel_state.get_tensor_model_parallel_rank(), parallel_state.get_pipeline_model_parallel_rank()


def _rank_file(conv: DistConverter) -> RankFile:
    """This rank's place in the layout: the rank file it would write in the ``torch`` format."""
    tp_rank, pp_rank = _ranks()
    if not conv.num_experts:
        return RankFile(tp_rank, pp_rank, 0, tp_rank)
    return RankFile(
        tp_rank,
        pp_rank,
        parallel_state.get_expert_model_parallel_rank(),
        parallel_state.get_expert_tensor_parallel_rank(),
    )


# ---------------------------------------------------------------------- loading
def load_pretrained(models: list, path: str | os.PathLike) -> None:
    conv = dist_converter(models[0].config)
    me = _rank_file(conv)
    chunks = conv.layout.chunks_of(me.pp)
    targets = {
        (chunk.vp_stage, local): tensor
        for model, chunk in zip(models, chunks, strict=True)
        for local, tensor in model.local_tensors().items()
    }
    if not is_mca_dir(path):
        loaded = _load_hf(models[0].config, conv, targets, HFCheckpoint(path, unfold_experts=True), me)
    else:
        meta = McaCheckpointMeta.load(path)
        if meta.checkpoint_format == "torch_dist":
            state = load_dist_checkpoint(_sharded_state_dict(models), iteration_dir(path))
            for model, key in zip(models, _chunk_keys(models), strict=True):
                model.load_state_dict(state[key], strict=True)
            return
        loaded = _load_torch(conv, targets, path, meta, me)
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


def _load_hf(config, conv: DistConverter, targets: dict, ckpt: HFCheckpoint, me: RankFile) -> set:
    """Read only the HF tensors whose Megatron weights live on this rank (its pipeline stage,
    and of the experts, its expert-parallel rank's)."""
    for _ in HFSource(ckpt.path).weights(meta=True):  # every header against the config, first
        pass
    template = get_template(ckpt.config.get("model_type"))
    mapper = template.mapper(config, to_mca=True)

    def mine(name: str) -> bool:
        owner = conv.expert_owner(name)
        on_stage = any(chunk.pp_rank == me.pp for chunk, _ in conv.placements(name))
        return on_stage and (owner is None or owner == me.ep)

    def wanted(hf_name: str) -> bool:
        outputs = mapper.outputs_of(hf_name)
        if outputs is None:
            return True  # unmapped: let push() name it
        return any(mine(name) for name in outputs)

    pushed = (
        mcore
        for hf_name, tensor in ckpt.tensors([n for n in ckpt.weight_map if wanted(n)])
        for mcore in mapper.push(hf_name, tensor)
    )
    loaded = _load_canonical(conv, targets, pushed, str(ckpt.path), me)
    mapper.finish()
    return loaded


def _load_canonical(conv: DistConverter, targets: dict, weights, source: str, me: RankFile) -> set:
    """Copy this rank's shards of whole (canonical) Megatron weights into the model."""
    loaded = set()
    for name, full in weights:
        for rank, chunk, local, part in conv.shards(name, full):
            if rank == me:
                _copy(targets, (chunk.vp_stage, local), part, source)
                loaded.add((chunk.vp_stage, local))
    return loaded


def _load_torch(conv: DistConverter, targets: dict, path, meta: McaCheckpointMeta, me: RankFile) -> set:
    if meta.layout != conv.layout:
        # Rank files of another layout: merged weight by weight (as the offline reshard does)
        # and split for this job's layout. Every rank reads the whole checkpoint, one weight at
        # a time; a job that loads a large one repeatedly should reshard it once, offline.
        from .converter.convert import McaTorchSource

        source = McaTorchSource(path)
        for _ in source.weights(meta=True):  # every rank file's header against the config, first
            pass
        return _load_canonical(conv, targets, source.weights(), str(path), me)
    # The file's expert names may be the other expert module's (SequentialMLP / grouped GEMM):
    # each goes through its canonical name to the name this model uses.
    written = DistConverter(meta.mca_config, meta.layout)
    reader = TorchRankReader(layout_rank_file(path, me, conv.layout))
    loaded = set()
    for chunk in conv.layout.chunks_of(me.pp):
        key = chunk_key(chunk.vp_stage)
        if key not in reader.chunks:
            raise ConversionError(f"{reader.file} holds {sorted(reader.chunks)}, not {key!r}")
        for stored in reader.chunks[key]:
            if stored.endswith("_extra_state"):
                continue
            name = written.canonical_name(chunk, stored, me.ep)
            local = stored if name is None else next(n for c, n in conv.placements(name) if c == chunk)
            tensor = reader.read(key, stored)
            if name is not None and conv.rule(name) != written.rule(name):  # kept whole, split here
                tensor = conv.split(name, tensor)[me.tp]
            _copy(targets, (chunk.vp_stage, local), tensor, str(reader.file))
            loaded.add((chunk.vp_stage, local))
    return loaded


# ---------------------------------------------------------------------- MCA (torch_dist)
def _chunk_keys(models: list) -> list[str]:
    # Megatron-LM's keys: "model", or "model0", "model1", ... with virtual pipeline stages.
    return [chunk_key(i if len(models) > 1 else None) for i in range(len(models))]


def _sharded_state_dict(models: list) -> dict[str, Any]:
    # megatron-core 0.16.1's GPTModel reads metadata["dp_cp_group"] without a default where a
    # pipeline stage holding MTP layers ties its embedding copy: pass it, as Megatron-LM's
    # checkpointing does.
    metadata = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    return {
        key: model.sharded_state_dict(metadata=metadata)
        for model, key in zip(models, _chunk_keys(models), strict=True)
    }


def save_pretrained(models: list, path: str | os.PathLike, force: bool = False) -> None:
    """``mca_config.json`` + dist_checkpointing (``torch_dist``). Collective."""

    def write(tmp: Path) -> None:
        ckpt_dir = iteration_dir(tmp)
        if is_rank_zero():
            ckpt_dir.mkdir(parents=True)
        _barrier()
        save_dist_checkpoint(_sharded_state_dict(models), ckpt_dir)
        if is_rank_zero():
            models[0].config.to_meta("torch_dist").save(tmp)

    _collective_output(path, force, write)


# ---------------------------------------------------------------------- export
def _canonical_tensors(models: list, conv: DistConverter, me: RankFile) -> dict[str, torch.Tensor]:
    """This rank's weights (its slices) by canonical name, in the chunks' order."""
    mine = {}
    for model, chunk in zip(models, conv.layout.chunks_of(me.pp), strict=True):
        for local, tensor in model.local_tensors().items():
            name = conv.canonical_name(chunk, local, me.ep)
            if name is not None:
                mine[name] = tensor.detach()
    return mine


def _plan(models: list, conv: DistConverter) -> list[tuple[int, str, torch.Size, torch.dtype]]:
    """Every canonical weight of the model as (owner pipeline rank, name, full shape, dtype), in
    the same order on every rank: embedding, layers in order, then the last stage's weights. An
    expert-parallel rank lists every rank's experts (they are alike: same names and shapes)."""
    me = _rank_file(conv)
    mine = []
    for name, tensor in _canonical_tensors(models, conv, me).items():
        shard = torch.empty(tensor.shape, dtype=tensor.dtype, device="meta")
        shape = conv.merge(name, [shard] * conv.parallel_size(name)).shape
        owner = conv.expert_owner(name)
        if owner is None:
            mine.append((name, shape, tensor.dtype))
            continue
        layer_prefix, _, rest = name.partition(".mlp.experts.local_experts.")
        index, _, suffix = rest.partition(".")
        local = int(index) - owner * conv.experts_per_rank
        for ep in range(conv.layout.ep):
            expert = ep * conv.experts_per_rank + local
            mine.append((f"{layer_prefix}.mlp.experts.local_experts.{expert}.{suffix}", shape, tensor.dtype))
    stages: list[Any] = [None] * conv.layout.pp
    if conv.layout.pp > 1:
        dist.all_gather_object(stages, mine, group=parallel_state.get_pipeline_model_parallel_group())
    else:
        stages = [mine]
    entries = [(owner, *entry) for owner, entries in enumerate(stages) for entry in entries]

    def order(item: tuple[int, str, Any, Any]) -> tuple[int, int, int]:
        layer, rest = Template.split_mca_name(item[1])
        if layer is not None:
            return 1, layer, expert_pattern(rest)[1] or 0
        if item[1].startswith(POST_PROCESS_PREFIXES):  # the final norm, output layer, MTP layers
            return 2, 0, expert_pattern(Template.layer_relative(item[1]) or "")[1] or 0
        return 0, 0, 0

    return sorted(entries, key=order)


def gather_canonical(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES, all_stages: bool = True
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of whole canonical weights, on every rank: tensor-parallel slices are gathered
    over the TP group (an expert's over its expert-TP group), an expert is broadcast from its
    expert-parallel rank, and each weight from its pipeline stage. Collective; a bucket holds
    about ``bucket_bytes`` (at least one weight), so memory stays at one bucket. Without
    ``all_stages`` a weight stays on its own stage: other stages get a meta tensor in its place."""
    conv = dist_converter(models[0].config)
    me = _rank_file(conv)
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    mine = _canonical_tensors(models, conv, me)
    bucket, size = [], 0
    for owner, name, shape, dtype in _plan(models, conv):
        if owner == me.pp:
            full = _gather_on_stage(conv, me, name, shape, dtype, mine)
        elif all_stages:
            full = torch.empty(shape, dtype=dtype, device=platform.device())
        else:
            full = torch.empty(shape, dtype=dtype, device="meta")
        if conv.layout.pp > 1 and all_stages:
            dist.broadcast(full, group=pp_group, group_src=owner)
        bucket.append((name, full))
        size += full.numel() * full.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def _gather_on_stage(conv: DistConverter, me: RankFile, name: str, shape, dtype, mine: dict) -> torch.Tensor:
    """The whole weight on every rank of its pipeline stage."""
    expert_owner = conv.expert_owner(name)
    if expert_owner is None:
        group, size = parallel_state.get_tensor_model_parallel_group(), conv.layout.tp
    else:
        group, size = parallel_state.get_expert_tensor_parallel_group(), conv.layout.expert_tp
    if expert_owner is None or expert_owner == me.ep:
        shard = mine[name].contiguous()
        if size > 1 and conv.rule(name) != REPLICATED:
            parts = [torch.empty_like(shard) for _ in range(size)]
            dist.all_gather(parts, shard, group=group)
        else:
            parts = [shard] * size
        full = conv.merge(name, parts).contiguous()
    else:
        full = torch.empty(shape, dtype=dtype, device=platform.device())
    if expert_owner is not None and conv.layout.ep > 1:
        dist.broadcast(full, group=parallel_state.get_expert_model_parallel_group(), group_src=expert_owner)
    return full


def export_hf_buckets(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES, all_stages: bool = True
) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Buckets of ``(hf_name, tensor)``: the whole model in HF names on every rank, at most
    about ``bucket_bytes`` gathered at a time (the unit of a weight sync). Collective. Without
    ``all_stages``, another pipeline stage's weights come as meta tensors (see ``export_hf_plan``)."""
    config = models[0].config
    mapper = get_template(config.hf_model_type).mapper(config, to_mca=False)
    for bucket in gather_canonical(models, bucket_bytes, all_stages):
        out = [pair for name, full in bucket for pair in mapper.push(name, full)]
        if out:
            yield out
    mapper.finish()


def export_hf_weights(
    models: list, bucket_bytes: int = DEFAULT_BUCKET_BYTES
) -> Iterator[tuple[str, torch.Tensor]]:
    for bucket in export_hf_buckets(models, bucket_bytes):
        yield from bucket


def export_hf_plan(models: list) -> list[tuple[int, str, torch.Size, torch.dtype]]:
    """What ``export_hf_weights`` yields, in its order, without gathering anything: (pipeline
    stage that holds it, HF name, shape, dtype) per tensor. Collective under pipeline parallelism
    (the stages exchange their lists of weights)."""
    config = models[0].config
    mapper = get_template(config.hf_model_type).mapper(config, to_mca=False)
    plan = []
    for owner, name, shape, dtype in _plan(models, dist_converter(config)):
        for hf_name, tensor in mapper.push(name, torch.empty(shape, dtype=dtype, device="meta")):
            plan.append((owner, hf_name, tensor.shape, tensor.dtype))
    mapper.finish()
    return plan


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
                expert_layout=config.hf_expert_layout,
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
        self.hf_expert_layout = config.hf_expert_layout
        self.plan = _plan(models, dist_converter(config))

    def weights(self, meta: bool = False):
        if meta:
            for _, name, shape, dtype in self.plan:
                yield name, torch.empty(shape, dtype=dtype, device="meta")
            return
        for bucket in gather_canonical(self.models):
            yield from bucket
