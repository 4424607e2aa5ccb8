"""Forward through every pipeline stage without Megatron's schedules.

Megatron's ``get_forward_backward_func`` schedules hard-code CUDA streams; for inference and
parity checks on any device the chunks are called directly in execution order, passing the
hidden states between stages with ``torch.distributed`` send/recv and ``set_input_tensor``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region

from .chunks import dist_converter


def forward_logits(models: list, input_ids: torch.Tensor, **kwargs) -> torch.Tensor | None:
    """Logits ``[b, s, vocab_size]`` (gathered over tensor parallelism, vocab padding removed; a
    value or reward model's outputs as they are) on the ranks of the last pipeline stage; ``None``
    on the others. Collective."""
    config = models[0].config
    layout = dist_converter(config).layout
    pp_rank = parallel_state.get_pipeline_model_parallel_rank()
    pp_group = parallel_state.get_pipeline_model_parallel_group()
    mine = layout.chunks_of(pp_rank)
    batch, seq = input_ids.shape
    out = None
    for index, chunk in enumerate(layout.chunks):
        if chunk.pp_rank != pp_rank:
            continue
        model = models[mine.index(chunk)]
        if not chunk.pre_process:
            hidden = torch.empty((seq, batch, config.hidden_size), dtype=config.params_dtype)
            dist.recv(hidden, group=pp_group, group_src=layout.chunks[index - 1].pp_rank)
            model.set_input_tensor(hidden)
        out = model(input_ids, **kwargs)
        if not chunk.post_process:
            dist.send(out.contiguous(), group=pp_group, group_dst=layout.chunks[index + 1].pp_rank)
    if layout.chunks[-1].pp_rank != pp_rank:
        return None
    if config.output_head:  # a value or reward head is whole on every tensor-parallel rank
        return out
    return gather_from_tensor_model_parallel_region(out)[..., : config.vocab_size]
