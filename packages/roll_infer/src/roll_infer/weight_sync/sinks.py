"""Weight-sync sinks that need no engine: an HF model in memory and a safetensors directory.

Both take any weight source with vLLM's two channels (``metadata()`` and iteration), e.g.
``McaWeightSource``. Both check the whole plan before moving a byte, so a wrong name, shape or
dtype leaves the model (or the output directory) untouched. They are collectives like the
source: call them on every trainer rank.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from .common import TransferStats, WeightSyncError


def _fail(problems: list[str], what: str) -> None:
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise WeightSyncError(f"{what}: nothing was written\n  {shown}{more}")


def _hf_targets(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors by the checkpoint names a source sends: state-dict names, with
    transformers 5's fused expert tensors unfolded into per-expert views (the hub's names)."""
    targets = dict(model.state_dict(keep_vars=True))
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type is None:
        return targets
    from mcore_adapter.models.converter.template import get_template, registered_model_types

    if model_type not in registered_model_types():
        return targets
    fused = get_template(model_type).fused_experts()
    if not fused:
        return targets
    for name in [n for n in targets if fused.holds(n)]:
        tensor = targets.pop(name)
        for part_name, part in fused.unfold(name, tensor.shape).items():
            view = tensor if part.expert is None else tensor[part.expert]
            targets[part_name] = view[part.rows]
    return targets


def sync_to_hf_model(source: Any, model: torch.nn.Module) -> TransferStats:
    """Copy every weight of ``source`` into ``model`` (a transformers model, any layout of
    experts) in place. Every tensor of the model must be sent, tied ones once."""
    targets = _hf_targets(model)
    problems, sent = [], set()
    for meta in source.metadata():
        target = targets.get(meta.name)
        if target is None:
            problems.append(f"{meta.name}: {type(model).__name__} has no such tensor")
        elif tuple(target.shape) != tuple(meta.shape):
            problems.append(f"{meta.name}: sent {tuple(meta.shape)}, the model's is {tuple(target.shape)}")
        elif target.dtype != meta.dtype:
            problems.append(
                f"{meta.name}: sent as {meta.dtype}, the model's is {target.dtype} (a source can cast: "
                "McaWeightSource(model, dtype=...))"
            )
        else:
            sent.add(target.data_ptr() if target.numel() else meta.name)
    missing = [n for n, t in targets.items() if (t.data_ptr() if t.numel() else n) not in sent]
    problems += [f"{name}: the model has it, the source does not send it" for name in missing]
    _fail(problems, f"cannot sync into {type(model).__name__}")
    stats, start = TransferStats(), time.perf_counter()
    with torch.no_grad():
        for name, tensor in source:
            if tensor is None:
                raise WeightSyncError(f"{name}: not held on this rank; use a source that gathers all stages")
            targets[name].copy_(tensor)
            stats.add(tensor)
    stats.seconds = time.perf_counter() - start
    return stats


def sync_to_directory(
    source: Any,
    path: str | os.PathLike,
    config: Any = None,
    force: bool = False,
    max_shard_bytes: int | None = None,
) -> TransferStats:
    """Write ``source`` as a safetensors checkpoint (shards + index) at ``path``, with
    ``config`` (an HF config) as its ``config.json``. Rank 0 writes, the other ranks join the
    source's collectives; the directory appears only when complete (``force`` replaces an
    earlier checkpoint there)."""
    import torch.distributed as dist

    from mcore_adapter.models.converter.atomic import staged_output_dir
    from mcore_adapter.models.converter.hf_io import DEFAULT_MAX_SHARD_BYTES, SafetensorsWriter

    if dist.is_initialized() and dist.get_rank() != 0:
        for _ in source:
            pass
        return TransferStats()
    stats = TransferStats()
    plan = {m.name: (m.shape, m.dtype) for m in source.metadata()}
    with staged_output_dir(path, force) as tmp:
        writer = SafetensorsWriter(tmp, plan, max_shard_bytes=max_shard_bytes or DEFAULT_MAX_SHARD_BYTES)
        start = time.perf_counter()
        for name, tensor in source:
            writer.write(name, tensor)
            stats.add(tensor)
        writer.close()
        if config is not None:
            config.save_pretrained(tmp)
        stats.seconds = time.perf_counter() - start
    return stats
