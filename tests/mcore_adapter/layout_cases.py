"""Checks of one model at one parallel layout, run inside a launched job (every rank).

Used by the distributed tests: one job per world size runs many cases, because each rank
pays megatron's import once. Each case builds the model at its layout from the HF checkpoint
and checks it against transformers, reloads it from the offline converter's ``torch`` rank
files, exports it back to HF, and optionally saves ``torch_dist`` and reloads it at another
layout. Rank 0 returns the results.

A test helper, not shipped: the test imports it as ``layout_cases`` (pytest puts this folder
on ``sys.path``), and the spawned ranks find it there too, since multiprocessing's spawn hands
the parent's ``sys.path`` to each child before it unpickles the function to run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from mcore_adapter.parity import LogitsDiff, compare_logits
from mcore_adapter.testing.compare import compare_hf_dirs
from mcore_adapter.verify import (
    agree,
    hf_inputs,
    hf_logits,
    image_prompt,
    megatron_logits,
    models_config,
    random_tokens,
)


def _init(layout: dict[str, Any]) -> dict[str, Any]:
    from megatron.core import parallel_state

    from mcore_adapter.parallel import initialize_model_parallel

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    initialize_model_parallel(
        tp=layout.get("tp", 1),
        pp=layout.get("pp", 1),
        vpp=layout.get("vpp"),
        ep=layout.get("ep", 1),
        etp=layout.get("etp"),
    )
    return {k: v for k, v in layout.items() if k.startswith("num_layers_in_") and v is not None}


def _max(value: float) -> float:
    """The largest value over all ranks (ranks without a value pass 0)."""
    t = torch.tensor(value, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


def _diffs(
    models: Any, others: list[Any], hf_dir: str, vision: bool = False
) -> tuple[LogitsDiff, list[float]]:
    """``models``' logits against transformers' (text; a text and an image prompt for a vision
    model), then max |logits - logits of other| for each of ``others``."""
    from megatron.core import parallel_state

    config = models_config(models)
    prompts = [(random_tokens(128, seq_len=16), {})] + ([image_prompt(config)] if vision else [])
    first_tp = parallel_state.get_tensor_model_parallel_rank() == 0
    with_hf: LogitsDiff | None = None
    values = [0.0] * len(others)
    for tokens, inputs in prompts:
        ours = megatron_logits(models, tokens, **inputs)
        theirs = [megatron_logits(o, tokens, **inputs) for o in others]
        if ours is None or not first_tp:
            continue
        diff = compare_logits(ours, hf_logits(hf_dir, tokens, **hf_inputs(config, tokens, inputs)))
        with_hf = diff if with_hf is None else with_hf.merge(diff)
        for i, t in enumerate(theirs):
            values[i] = max(values[i], (ours - t).abs().max().item())
    return agree(with_hf), [_max(v) for v in values]


def run_case(case: dict[str, Any], workdir: Path) -> dict[str, Any]:
    import importlib

    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    for module in case.get("imports", ()):  # e.g. a package registering HF implementations
        importlib.import_module(module)

    hf_dir = case["hf_dir"]
    uneven = _init(case["layout"])
    read: list[str] = []
    original = HFCheckpoint.tensors

    def counting(self, names=None, meta=False):  # which HF tensors this rank reads (headers aside)
        for name, tensor in original(self, names, meta):
            if not meta:
                read.append(name)
            yield name, tensor

    overrides = case.get("overrides", {})  # e.g. the MoE token dispatcher
    HFCheckpoint.tensors = counting
    try:
        models = AutoModel.from_pretrained(hf_dir, dtype=torch.float32, **uneven, **overrides)
    finally:
        HFCheckpoint.tensors = original
    reads: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(reads, len(read))
    from_torch = AutoModel.from_pretrained(case["torch_dir"], dtype=torch.float32, **overrides)
    vision = "vision_config" in HFCheckpoint(hf_dir).config
    hf_diff, (torch_diff,) = _diffs(models, [from_torch], hf_dir, vision)
    result = {
        **case,
        "logits_diff": hf_diff,
        "torch_format_vs_hf_load": torch_diff,
        "hf_tensors_read_per_rank": reads,
        "hf_tensors_total": len(HFCheckpoint(hf_dir).keys()),
    }

    out = workdir / f"{case['id']}-hf"
    models.save_pretrained_as_hf(out)
    exported = [name for name, _ in models.export_hf_weights(bucket_bytes=64 * 1024)]
    if dist.get_rank() == 0:
        result["hf_round_trip_problems"] = compare_hf_dirs(hf_dir, out)
        # export_hf_weights names experts one by one, fused checkpoints (Qwen3-VL-MoE's) too
        unfolded = HFCheckpoint(hf_dir, unfold_experts=True).keys()
        result["export_names_match"] = sorted(exported) == sorted(unfolded)

    reload_layout = case.get("torch_dist_reload_layout")
    if reload_layout:
        dist_dir = workdir / f"{case['id']}-dist"
        models.save_pretrained(dist_dir)
        del models, from_torch
        uneven = _init(reload_layout)
        reloaded = AutoModel.from_pretrained(dist_dir, dtype=torch.float32, **uneven, **overrides)
        result["torch_dist_reload_rel_diff"] = _diffs(reloaded, [], hf_dir, vision)[0].relative
    return result


def run_cases(cases: list[dict[str, Any]], workdir: str) -> list[dict[str, Any]]:
    return [run_case(case, Path(workdir)) for case in cases]
