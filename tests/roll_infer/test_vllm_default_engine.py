"""A user's engine on CPU: ``LLM(path, weight_transfer_config={"backend": "roll_shm"},
**cpu_engine_args())`` with vLLM's default dtype, which runs the fp32 checkpoint in bf16, refit
from the fp32 Megatron model with the source's defaults (it sends in the engine's dtype, which
``LLMWeightSyncClient`` reports).

The reference is vLLM's own checkpoint loader, which casts fp32 checkpoints to the engine's dtype
itself: after a training step, the synced engine's greedy tokens and logprobs equal, exactly,
those after vLLM reloads an export of the same weights; synced back, the checkpoint's weights
give exactly what the engine generated when it started. (transformers in bf16 is no reference
here: on this tiny random model its greedy path has top-1/top-2 ties in bf16.)"""

from __future__ import annotations

import pytest
import torch

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    from vllm import LLM

    from roll_infer.testing import close_engine
    from roll_infer.vllm import cpu_engine_args

    hf_dir = tiny_checkpoint("qwen3", head_dim=64)
    llm = LLM(
        str(hf_dir),
        weight_transfer_config={"backend": "roll_shm"},
        skip_tokenizer_init=True,  # the tiny checkpoint has none; prompts are token ids
        seed=0,
        **cpu_engine_args(max_model_len=128),
    )
    yield llm, hf_dir
    close_engine(llm)


def _trainer(llm, source):
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from roll_infer.vllm.client import LLMWeightSyncClient
    from roll_infer.vllm.shm_transfer import SharedMemoryTrainerInitInfo

    return WeightTransferTrainerFactory.trainer_init(
        SharedMemoryTrainerInitInfo(rank=0), client=LLMWeightSyncClient(llm), source=source
    )


def test_an_fp32_model_refits_vllms_default_bf16_engine(engine, megatron, tmp_path):
    from mcore_adapter import AutoModel
    from roll_infer.testing import sgd_step_towards_random_targets, vllm_greedy
    from roll_infer.weight_sync import McaWeightSource, WeightSyncError

    llm, hf_dir = engine
    model = AutoModel.from_pretrained(str(hf_dir))
    assert model.config.torch_hf_weight_dtype == torch.float32
    assert llm.llm_engine.model_config.dtype == torch.bfloat16  # vLLM's "auto" for an fp32 checkpoint
    loaded_tokens, loaded_logprobs = vllm_greedy(llm)
    initial = [p.detach().clone() for p in model.parameters()]
    trainer = _trainer(llm, McaWeightSource(model))
    try:
        # A training step, synced with the source's defaults: bf16 on the wire.
        sgd_step_towards_random_targets(model)
        stats = trainer.send_weights(weight_version="step-1")
        assert stats.bytes == sum(p.numel() * 2 for p in model.parameters())  # bf16 on the wire
        synced = vllm_greedy(llm)
        assert synced[0] != loaded_tokens, "the step did not change the engine's output"
        # vLLM's own loader on an export of the same weights (fp32, cast by vLLM) agrees exactly.
        model.save_pretrained_as_hf(tmp_path / "step-1")
        llm.collective_rpc("reload_weights", kwargs={"weights_path": str(tmp_path / "step-1")})
        assert vllm_greedy(llm) == synced

        # The checkpoint's weights synced back: exactly what vLLM's loader made of the checkpoint.
        with torch.no_grad():
            for param, value in zip(model.parameters(), initial, strict=True):
                param.copy_(value)
        trainer.send_weights(weight_version="step-0")
        assert vllm_greedy(llm) == (loaded_tokens, loaded_logprobs)

        # An explicit dtype other than the engine's is kept, and the engine refuses it.
        explicit = _trainer(llm, McaWeightSource(model, dtype=torch.float32))
        with pytest.raises(
            WeightSyncError, match="sent as torch.float32, but the engine's model is torch.bfloat16"
        ):
            explicit.send_weights(weight_version="never")
        # That trainer re-initialized the engine's transfer: the first one's segment is no longer
        # read, and its updates are refused rather than read stale.
        with pytest.raises(WeightSyncError, match="another trainer initialized the engine's weight transfer"):
            trainer.send_weights(weight_version="never")
        assert llm.get_weight_version() == "step-0"
        assert vllm_greedy(llm) == (loaded_tokens, loaded_logprobs)  # both refusals left it as it was
        explicit.shutdown()
    finally:
        trainer.shutdown()
