"""One engine per model family, each on a checkpoint as a user has it: vLLM's greedy tokens and
logprobs equal transformers' (for InternLM2: our implementation against vLLM's native one, on a
hub-layout checkpoint with ``auto_map``, ``trust_remote_code`` off everywhere); then a Megatron
model of the same checkpoint takes an optimizer step and the sync reaches the engine."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.vllm]

INTERNLM2_AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}
CASES = {
    # tied embeddings: the engine's lm_head is its embedding; the source sends it once
    "qwen3-tied": ("qwen3", {"tie": True, "head_dim": 64}),
    # experts streamed one at a time under the hub's per-expert names
    "qwen3_moe": ("qwen3_moe", {"head_dim": 64}),
    # vLLM's native InternLM2 (wqkv packed per key/value group) against roll_models' implementation
    "internlm2-hub": ("internlm2", {"hidden_size": 256, "head_dim": 64}),
}


def _hf(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, trust_remote_code=False).eval()


@pytest.mark.parametrize("case", list(CASES))
def test_engine_matches_transformers_and_takes_a_refit(
    case, megatron, tiny_checkpoint, tmp_path, record_strategy
):
    from mcore_adapter import AutoModel
    from roll_infer.testing import (
        close_engine,
        hf_greedy,
        max_logprob_diff,
        sgd_step_towards_random_targets,
        shm_trainer,
        tiny_engine,
        vllm_greedy,
    )
    from roll_infer.weight_sync import McaWeightSource

    model_type, overrides = CASES[case]
    hf_dir = tiny_checkpoint(model_type, **overrides)
    if model_type == "internlm2":  # as the hub has it: the remote-code map in config.json
        config = json.loads((hf_dir / "config.json").read_text())
        (hf_dir / "config.json").write_text(json.dumps({**config, "auto_map": INTERNLM2_AUTO_MAP}))
    hf_tokens, hf_logprobs, tol = hf_greedy(_hf(hf_dir))
    model = AutoModel.from_pretrained(str(hf_dir))
    source = McaWeightSource(model)
    names = [m.name for m in source.metadata()]
    llm = tiny_engine(hf_dir, trust_remote_code=False)
    try:
        tokens, logprobs = vllm_greedy(llm)
        before = max_logprob_diff(logprobs, hf_logprobs)
        label = "tied: " if overrides.get("tie") else ""
        record_strategy(
            model_type, "vllm_infer", f"{label}greedy = HF, logprobs {before:.1e}", tokens == hf_tokens
        )
        assert tokens == hf_tokens
        assert before <= tol

        sgd_step_towards_random_targets(model)
        trainer = shm_trainer(llm, source)
        trainer.send_weights(weight_version="1")
        trainer.shutdown()
        model.save_pretrained_as_hf(tmp_path / "ref")
        ref_tokens, ref_logprobs, ref_tol = hf_greedy(_hf(tmp_path / "ref"))
        tokens, logprobs = vllm_greedy(llm)
    finally:
        close_engine(llm)
    after = max_logprob_diff(logprobs, ref_logprobs)
    ok = tokens == ref_tokens and tokens != hf_tokens and after <= ref_tol
    record_strategy(model_type, "vllm_refit", f"{label}TP1 step + sync = HF, logprobs {after:.1e}", ok)
    assert tokens != hf_tokens, "the step did not change the engine's output"
    assert tokens == ref_tokens
    assert after <= ref_tol
    if overrides.get("tie"):
        assert "lm_head.weight" not in names and "model.embed_tokens.weight" in names
    if model_type == "qwen3_moe":
        assert "model.layers.0.mlp.experts.3.down_proj.weight" in names
