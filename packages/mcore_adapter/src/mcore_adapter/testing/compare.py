"""Exact comparison of two HF checkpoint directories (the round-trip check)."""

from __future__ import annotations

import os

import torch

from ..models.converter.hf_io import HFCheckpoint


def compare_hf_dirs(expected: str | os.PathLike, actual: str | os.PathLike) -> list[str]:
    """Differences between two HF checkpoints: config, tensor names, dtypes, shapes, values."""
    a, b = HFCheckpoint(expected), HFCheckpoint(actual)
    problems = []
    if a.config != b.config:
        keys = sorted(k for k in a.config.keys() | b.config.keys() if a.config.get(k) != b.config.get(k))
        problems.append(f"config differs in {keys}")
    missing, extra = set(a.keys()) - set(b.keys()), set(b.keys()) - set(a.keys())
    if missing or extra:
        problems.append(f"tensor names differ: missing {sorted(missing)}, extra {sorted(extra)}")
    common = sorted(set(a.keys()) & set(b.keys()))
    others = dict(b.tensors(common))  # by name: the two may be sharded differently
    for name, x in a.tensors(common):
        y = others[name]
        if x.dtype != y.dtype or x.shape != y.shape:
            problems.append(f"{name}: {x.dtype}{tuple(x.shape)} != {y.dtype}{tuple(y.shape)}")
        elif not torch.equal(x, y):
            problems.append(f"{name}: values differ (max {(x.float() - y.float()).abs().max().item():.3g})")
    return problems
