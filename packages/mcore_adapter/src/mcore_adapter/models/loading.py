"""Loading a checkpoint into this rank's model chunks, at any parallel layout: an HF directory
(converted on the fly, reading only the tensors this rank holds), or an MCA directory in the
per-rank ``torch`` format (of this layout or another) or in ``torch_dist``."""

from __future__ import annotations

import os

import torch

from .chunks import chunk_keys, dist_converter, rank_file, sharded_state_dict
from .converter.convert import HFSource, McaTorchSource
from .converter.dist_converter import DistConverter
from .converter.hf_io import HFCheckpoint
from .converter.layout import RankFile
from .converter.mca_io import (
    McaCheckpointMeta,
    TorchRankReader,
    chunk_key,
    is_mca_dir,
    iteration_dir,
    layout_rank_file,
)
from .converter.template import ConversionError, get_template
from .dist_checkpoint import load_dist_checkpoint


def load_pretrained(models: list, path: str | os.PathLike) -> None:
    conv = dist_converter(models[0].config)
    me = rank_file(conv)
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
            state = load_dist_checkpoint(sharded_state_dict(models), iteration_dir(path))
            for model, key in zip(models, chunk_keys(models), strict=True):
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
