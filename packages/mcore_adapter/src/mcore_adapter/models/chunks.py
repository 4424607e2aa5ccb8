"""This rank's model chunks in the live Megatron parallel state, as loading, saving and
exporting see them: the layout they were built for, the converter's sharding of it
(``DistConverter``, the same rules the offline converter writes rank files with), this rank's
place in it, and the chunks' keys and sharded state dict in Megatron-LM's checkpoints.

Every function takes the model chunks of this rank (one per virtual pipeline stage, in order).
"""

from __future__ import annotations

from typing import Any

from megatron.core import parallel_state

from .converter.dist_converter import DistConverter
from .converter.layout import ParallelLayout, RankFile
from .converter.mca_io import chunk_key
from .tp_rules import tp_rule_overrides


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


def dist_converter(config) -> DistConverter:
    """The sharding of the built model (its modules' own splits where they differ from the
    ``torch`` format's)."""
    kwargs = config.to_mca_kwargs()
    return DistConverter(kwargs, ParallelLayout.from_kwargs(kwargs), tp_rule_overrides(config))


def rank_file(conv: DistConverter) -> RankFile:
    """This rank's place in the layout: the rank file it would write in the ``torch`` format."""
    tp_rank = parallel_state.get_tensor_model_parallel_rank()
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    if not conv.num_experts:
        return RankFile(tp_rank, pp_rank, 0, tp_rank)
    return RankFile(
        tp_rank,
        pp_rank,
        parallel_state.get_expert_model_parallel_rank(),
        parallel_state.get_expert_tensor_parallel_rank(),
    )


def chunk_keys(models: list) -> list[str]:
    # Megatron-LM's keys: "model", or "model0", "model1", ... with virtual pipeline stages.
    return [chunk_key(i if len(models) > 1 else None) for i in range(len(models))]


def sharded_state_dict(models: list) -> dict[str, Any]:
    """The chunks' state for megatron-core's dist_checkpointing (``torch_dist``), by chunk key."""
    # megatron-core 0.16.1's GPTModel reads metadata["dp_cp_group"] without a default where a
    # pipeline stage holding MTP layers ties its embedding copy: pass it, as Megatron-LM's
    # checkpointing does.
    metadata = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True)}
    return {
        key: model.sharded_state_dict(metadata=metadata)
        for model, key in zip(models, chunk_keys(models), strict=True)
    }
