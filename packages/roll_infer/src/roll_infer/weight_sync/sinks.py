"""Weight-sync sinks that need no engine: an HF model in memory and a safetensors directory.

Both take any weight source with vLLM's two channels (``metadata()`` and iteration), e.g.
``McaWeights`` or ``McaWeightSource``; neither imports vLLM. Both are all or nothing: they check
the whole plan before moving a byte, check each tensor again as it arrives (exact name, shape and
dtype), and a sync that fails at any point leaves the model (or the output directory) as it was.
They are collectives like the source: call them on every trainer rank.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from .common import TransferStats, WeightSyncError, consumer_dtypes


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
    from mcore_adapter.export import fused_experts

    fused = fused_experts(model_type)
    if fused is None:
        return targets
    for name in [n for n in targets if fused.holds(n)]:
        tensor = targets.pop(name)
        for part_name, part in fused.unfold(name, tensor.shape).items():
            view = tensor if part.expert is None else tensor[part.expert]
            targets[part_name] = view[part.rows]
    return targets


def sync_to_hf_model(source: Any, model: torch.nn.Module) -> TransferStats:
    """Copy every weight of ``source`` into ``model`` (a transformers model, any layout of
    experts) in place. Every tensor of the model must be sent, tied ones once. A source that
    casts (``McaWeights``) sends each tensor in the dtype the model holds it in, unless it was
    given an explicit ``dtype``.

    All or nothing, as an engine update is: the plan (``source.metadata()``) is checked against
    the model before anything is written, and then each tensor the source yields is checked
    again before it is copied: a name the plan did not announce or sent twice, an exact shape
    (a broadcastable one is not enough) or a dtype other than the model's raises
    ``WeightSyncError`` naming the tensor. If anything fails after the first copy (such a check,
    a source that raises or ends early, a ``KeyboardInterrupt``), every tensor already written
    gets its previous value back before the error propagates, so the model is exactly as it
    was. For that the sink keeps, on the CPU, a copy of the old value of each tensor it has
    overwritten until the sync completes: at most one copy of the model's weights, in host
    memory rather than the model's device."""
    targets = _hf_targets(model)
    with consumer_dtypes(source, {name: target.dtype for name, target in targets.items()}):
        return _sync_to_targets(source, model, targets)


def _sync_to_targets(source: Any, model: torch.nn.Module, targets: dict[str, torch.Tensor]) -> TransferStats:
    problems, sent = [], set()
    plan = {}
    for meta in source.metadata():
        target = targets.get(meta.name)
        if target is None:
            problems.append(f"{meta.name}: {type(model).__name__} has no such tensor")
        elif tuple(target.shape) != tuple(meta.shape):
            problems.append(f"{meta.name}: sent {tuple(meta.shape)}, the model's is {tuple(target.shape)}")
        elif target.dtype != meta.dtype:
            problems.append(
                f"{meta.name}: sent as {meta.dtype}, the model's is {target.dtype} (McaWeights sends the "
                "model's dtypes unless given another dtype=)"
            )
        else:
            sent.add(target.data_ptr() if target.numel() else meta.name)
            plan[meta.name] = target
    missing = [n for n, t in targets.items() if (t.data_ptr() if t.numel() else n) not in sent]
    problems += [f"{name}: the model has it, the source does not send it" for name in missing]
    _fail(problems, f"cannot sync into {type(model).__name__}")
    stats, start = TransferStats(), time.perf_counter()
    written: list[tuple[torch.Tensor, torch.Tensor]] = []  # (target, its old value), to undo
    received: set[str] = set()
    try:
        with torch.no_grad():
            for name, tensor in source:
                target = _checked_target(plan, received, name, tensor)
                written.append((target, target.detach().to("cpu", copy=True)))
                received.add(name)
                target.copy_(tensor)
                stats.add(tensor)
        if len(received) != len(plan):
            raise WeightSyncError(
                f"the source ended after {len(received)} of the {len(plan)} tensors it announced "
                f"({', '.join(sorted(set(plan) - received)[:3])}, ... never came)"
            )
    except BaseException as e:
        with torch.no_grad():
            for target, old in reversed(written):  # reversed: a tensor written twice ends as it began
                target.copy_(old)
        if written:
            e.add_note(
                f"sync_to_hf_model: the {len(written)} tensor(s) written were restored; the model is as it was"
            )
        raise
    stats.seconds = time.perf_counter() - start
    return stats


def _checked_target(
    plan: dict[str, torch.Tensor], received: set[str], name: str, tensor: torch.Tensor | None
) -> torch.Tensor:
    """The model's tensor that ``name`` goes into, after checking what the source sent against
    the plan: ``copy_`` alone would broadcast a (1,) tensor into a (64,) one."""
    if tensor is None:
        raise WeightSyncError(f"{name}: not held on this rank; use a source that gathers all stages")
    target = plan.get(name)
    if target is None:
        raise WeightSyncError(f"{name}: sent, but not announced by the source's metadata()")
    if name in received:
        raise WeightSyncError(f"{name}: sent twice")
    if not isinstance(tensor, torch.Tensor):
        raise WeightSyncError(f"{name}: sent a {type(tensor).__name__}, not a tensor")
    if tuple(tensor.shape) != tuple(target.shape):
        raise WeightSyncError(f"{name}: sent {tuple(tensor.shape)}, the model's is {tuple(target.shape)}")
    if tensor.dtype != target.dtype:
        raise WeightSyncError(f"{name}: sent as {tensor.dtype}, the model's is {target.dtype}")
    return target


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
    earlier checkpoint there).

    ``max_shard_bytes``: a positive int, or None for the default. ``path`` must not be, contain
    or lie inside the directory the model was loaded from (``config.name_or_path``, or the
    source's ``name_or_path``/``source_paths`` where it has them), not even with ``force``:
    replacing it would delete the checkpoint being synced from."""
    import torch.distributed as dist

    from mcore_adapter.export import (
        DEFAULT_MAX_SHARD_BYTES,
        SafetensorsWriter,
        check_not_overlapping,
        staged_output_dir,
    )

    if max_shard_bytes is not None and (
        not isinstance(max_shard_bytes, int) or isinstance(max_shard_bytes, bool) or max_shard_bytes <= 0
    ):
        raise ValueError(f"max_shard_bytes must be a positive int (or None), got {max_shard_bytes!r}")
    sources = _source_dirs(source, config)
    check_not_overlapping(path, sources)  # on every rank, before any collective
    if dist.is_initialized() and dist.get_rank() != 0:
        for _ in source:
            pass
        return TransferStats()
    stats = TransferStats()
    plan = {m.name: (m.shape, m.dtype) for m in source.metadata()}
    with staged_output_dir(path, force, sources) as tmp:
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


def _source_dirs(source: Any, config: Any) -> list[str]:
    """The local directories the synced model was loaded from, as far as they can be known: an
    HF config's ``name_or_path`` (set by ``from_pretrained``) and a source's (or its models'
    configs') ``name_or_path`` / ``source_paths``. Hub ids that are no local directory are
    dropped."""
    candidates = [getattr(config, "name_or_path", None), getattr(config, "_name_or_path", None)]
    for holder in [source, *(getattr(m, "config", None) for m in getattr(source, "models", None) or ())]:
        candidates.append(getattr(holder, "name_or_path", None))
        candidates += list(getattr(holder, "source_paths", None) or ())
    dirs = {str(c) for c in candidates if isinstance(c, str | os.PathLike) and os.path.isdir(c)}
    return sorted(dirs)
