"""Exporting a built model's weights, whole, from the ranks that hold its slices: canonical
Megatron weights (``gather_canonical``) and HF ones (``export_hf_buckets``,
``export_hf_weights``), a bucket at a time, and what they will yield without gathering
anything (``canonical_plan``, ``export_hf_plan``). All of them are collectives."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from megatron.core import parallel_state

from .. import platform
from .chunks import dist_converter, rank_file
from .converter.dist_converter import POST_PROCESS_PREFIXES, REPLICATED, DistConverter
from .converter.layout import RankFile
from .converter.shapes import expert_pattern
from .converter.stream import DEFAULT_BUCKET_BYTES, Bucket, bucketed
from .converter.template import Template, get_template

PlanEntry = tuple[int, str, torch.Size, torch.dtype]  # (owner pipeline rank, name, full shape, dtype)


def _canonical_tensors(models: list, conv: DistConverter, me: RankFile) -> dict[str, torch.Tensor]:
    """This rank's weights (its slices) by canonical name, in the chunks' order."""
    mine = {}
    for model, chunk in zip(models, conv.layout.chunks_of(me.pp), strict=True):
        for local, tensor in model.local_tensors().items():
            name = conv.canonical_name(chunk, local, me.ep)
            if name is not None:
                mine[name] = tensor.detach()
    return mine


def canonical_plan(models: list, conv: DistConverter) -> list[PlanEntry]:
    """Every canonical weight of the model as (owner pipeline rank, name, full shape, dtype), in
    the same order on every rank: embedding, layers in order, then the last stage's weights. An
    expert-parallel rank lists every rank's experts (they are alike: same names and shapes).
    Collective under pipeline parallelism (the stages exchange their lists)."""
    me = rank_file(conv)
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
) -> Iterator[Bucket]:
    """Buckets of whole canonical weights, on every rank: tensor-parallel slices are gathered
    over the TP group (an expert's over its expert-TP group), an expert is broadcast from its
    expert-parallel rank, and each weight from its pipeline stage. Collective; a bucket holds
    about ``bucket_bytes`` (``stream.bucketed``), so memory stays at one bucket. Without
    ``all_stages`` a weight stays on its own stage: other stages get a meta tensor in its place."""
    return bucketed(_gathered(models, all_stages), bucket_bytes)


def _gathered(models: list, all_stages: bool) -> Iterator[tuple[str, torch.Tensor]]:
    conv = dist_converter(models[0].config)
    me = rank_file(conv)
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    mine = _canonical_tensors(models, conv, me)
    for owner, name, shape, dtype in canonical_plan(models, conv):
        if owner == me.pp:
            full = _gather_on_stage(conv, me, name, shape, dtype, mine)
        elif all_stages:
            full = torch.empty(shape, dtype=dtype, device=platform.device())
        else:
            full = torch.empty(shape, dtype=dtype, device="meta")
        if conv.layout.pp > 1 and all_stages:
            dist.broadcast(full, group=pp_group, group_src=owner)
        yield name, full


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
) -> Iterator[Bucket]:
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


def export_hf_plan(models: list) -> list[PlanEntry]:
    """What ``export_hf_weights`` yields, in its order, without gathering anything: (pipeline
    stage that holds it, HF name, shape, dtype) per tensor. Collective under pipeline parallelism
    (the stages exchange their lists of weights)."""
    config = models[0].config
    mapper = get_template(config.hf_model_type).mapper(config, to_mca=False)
    plan = []
    for owner, name, shape, dtype in canonical_plan(models, dist_converter(config)):
        for hf_name, tensor in mapper.push(name, torch.empty(shape, dtype=dtype, device="meta")):
            plan.append((owner, hf_name, tensor.shape, tensor.dtype))
    mapper.finish()
    return plan
