"""The vLLM side, imported by name in vLLM's processes: vLLM's Qwen3 with a name mapper for the
nesting. ``load_weights`` applies it, so the same HF names work when vLLM loads the checkpoint
and when a weight sync streams them into the running engine (vLLM's Qwen3 declares a mapper but
its ``load_weights`` does not apply one; vision-language models apply theirs the same way)."""

from collections.abc import Iterable

import torch
from vllm.model_executor.models.qwen3 import Qwen3ForCausalLM
from vllm.model_executor.models.utils import WeightsMapper


class WrappedLMForCausalLM(Qwen3ForCausalLM):
    hf_to_vllm_mapper = WeightsMapper(orig_to_new_prefix={"model.language_model.": "model."})

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        return super().load_weights(self.hf_to_vllm_mapper.apply(weights))
