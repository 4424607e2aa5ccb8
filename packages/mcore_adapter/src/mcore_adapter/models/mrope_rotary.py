"""Rotary embedding of interleaved multimodal rope (Qwen3-VL).

Megatron's ``MultimodalRotaryEmbedding`` gives each of the temporal, height and width axes a
contiguous section of the rotary frequencies (Qwen2-VL's layout). Qwen3-VL interleaves them:
frequency ``i`` takes the height position when ``i % 3 == 1`` and ``i < 3 * sections[1]``, the
width position when ``i % 3 == 2`` and ``i < 3 * sections[2]``, and the temporal one otherwise
(transformers' ``Qwen3VLTextRotaryEmbedding``). Only the choice of axis per frequency differs,
so the subclass overrides that and keeps Megatron's frequencies and context-parallel slicing.
"""

from __future__ import annotations

import torch
from megatron.core.models.common.embeddings.rotary_pos_embedding import (
    MultimodalRotaryEmbedding,
    get_pos_emb_on_this_cp_rank,
)


def interleave_axes(freqs: torch.Tensor, mrope_section: list[int]) -> torch.Tensor:
    """``freqs [3, ..., dim/2]`` (one row per axis) -> ``[..., dim/2]`` with the axes interleaved."""
    out = freqs[0].clone()
    for axis in (1, 2):
        picked = slice(axis, 3 * mrope_section[axis], 3)
        out[..., picked] = freqs[axis, ..., picked]
    return out


class InterleavedMultimodalRotaryEmbedding(MultimodalRotaryEmbedding):
    def forward(
        self,
        position_ids: torch.Tensor,
        mrope_section: list[int],
        cp_group: torch.distributed.ProcessGroup | None = None,
    ) -> torch.Tensor:
        """``position_ids [3, batch, seq]`` -> rotary angles ``[seq, batch, 1, dim]``."""
        if self.rotary_interleaved:
            raise ValueError(
                "interleaved mrope pairs rotate halves (rotary_interleaved=False), as Qwen3-VL does"
            )
        if sum(mrope_section) != self.inv_freq.numel():
            raise ValueError(
                f"mrope_section {mrope_section} must cover the {self.inv_freq.numel()} rotary frequencies"
            )
        seq = position_ids.to(device=self.inv_freq.device, dtype=self.inv_freq.dtype)
        if self.seq_len_interpolation_factor is not None:
            seq = seq / self.seq_len_interpolation_factor
        freqs = seq[..., None].float() * self.inv_freq  # [3, batch, seq, dim/2]
        freqs = interleave_axes(freqs, mrope_section)
        emb = torch.cat((freqs, freqs), dim=-1)[..., None, :].transpose(0, 1).contiguous()
        cp_group = cp_group if cp_group is not None else self.cp_group
        if cp_group is not None and cp_group.size() > 1:
            emb = get_pos_emb_on_this_cp_rank(emb, 0, cp_group)
        return emb
