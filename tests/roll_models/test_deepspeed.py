"""``deepspeed_train`` / ``deepspeed_infer`` on CPU (gloo, one rank; DeepSpeed's own optimizers
JIT-compile C++ for minutes, so training takes a torch optimizer): ZeRO stages 1-3 train,
ZeRO-3 builds under zero.Init and gathers back to the trained model, LoRA trains adapters only,
and a reference served by DeepSpeed equals ``hf_infer``."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.parity import compare_logits
from roll_models.model_providers import ModelArgs, ProviderError, default_model_provider


@pytest.fixture(scope="module")
def process_group():
    from mcore_adapter.parallel import init_process_group

    init_process_group()  # one rank, gloo


def _args(path, stage=0, **kw) -> ModelArgs:
    return ModelArgs(
        str(path),
        dtype="float32",
        attn_implementation="eager",
        deepspeed={"zero_optimization": {"stage": stage}},
        optimizer=kw.pop("optimizer", lambda params: torch.optim.SGD(params, lr=0.05)),
        **kw,
    )


def _tokens(seed=0):
    return torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_deepspeed_train_lowers_the_loss_at_every_zero_stage(
    stage, process_group, tiny_checkpoint, record_strategy
):
    import deepspeed

    engine = default_model_provider(
        "deepspeed_train", _args(tiny_checkpoint("llama"), stage), is_trainable=True
    )
    tokens = _tokens()
    losses = []
    for _ in range(3):
        loss = engine(tokens, labels=tokens).loss
        engine.backward(loss)
        engine.step()
        losses.append(loss.item())
    record_strategy("llama", "deepspeed_train", f"ZeRO {stage}", losses[2] < losses[1] < losses[0])
    assert losses[2] < losses[1] < losses[0], losses
    if stage == 3:  # the partitioned model, gathered back, is the trained model
        from transformers import AutoModelForCausalLM

        assert all(hasattr(p, "ds_id") for p in engine.module.parameters())  # built under zero.Init
        with deepspeed.zero.GatheredParameters(list(engine.module.parameters())):
            state = {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
            with torch.no_grad():
                trained = engine.module(tokens).logits
        fresh = AutoModelForCausalLM.from_pretrained(
            tiny_checkpoint("llama"), dtype=torch.float32, attn_implementation="eager"
        )
        fresh.load_state_dict(state, strict=True)
        with torch.no_grad():
            assert compare_logits(fresh.eval()(tokens).logits, trained).passed()


@pytest.mark.parametrize("stage", [0, 3])
def test_deepspeed_infer_equals_hf_infer(stage, process_group, tiny_checkpoint, record_strategy):
    path = tiny_checkpoint("qwen3")
    engine = default_model_provider("deepspeed_infer", _args(path, stage, optimizer=None))
    hf = default_model_provider(
        "hf_infer", ModelArgs(str(path), dtype="float32", attn_implementation="eager")
    )
    with torch.no_grad():
        diff = compare_logits(engine(_tokens()).logits, hf(_tokens()).logits)
    record_strategy("qwen3", "deepspeed_infer", f"ZeRO {stage} = hf_infer {diff.max_abs:.1e}", diff.passed())
    assert diff.passed()


def test_lora_with_gradient_checkpointing_trains_only_the_adapters(
    process_group, tiny_checkpoint, record_strategy
):
    lora = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    args = _args(tiny_checkpoint("llama"), 0, lora=lora, gradient_checkpointing=True)
    engine = default_model_provider("deepspeed_train", args, is_trainable=True)
    assert engine.module.base_model.model.is_gradient_checkpointing
    trainable = [n for n, p in engine.module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    before = {n: p.detach().clone() for n, p in engine.module.named_parameters()}
    tokens = _tokens()
    for _ in range(2):
        loss = engine(tokens, labels=tokens).loss
        engine.backward(loss)
        engine.step()
    changed = {n for n, p in engine.module.named_parameters() if not torch.equal(p, before[n])}
    adapters_only = bool(changed) and all("lora_B" in n or "lora_A" in n for n in changed)
    record_strategy("llama", "deepspeed_train", "LoRA with gradient checkpointing", adapters_only)
    assert changed and all("lora_B" in n or "lora_A" in n for n in changed), sorted(changed)[:5]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"deepspeed": {"zero_optimization": {"stage": 4}}}, r"\[.stage.\] must be a ZeRO stage.*not 4"),
        ({"lora": {"r": 4, "target_modules": ["no_such_proj"]}}, r"LoRA .*no_such_proj"),
        ({"optimizer": None}, "deepspeed_train needs an optimizer"),
    ],
    ids=["zero-stage-4", "lora-matches-nothing", "no-optimizer"],
)
def test_bad_deepspeed_requests_are_clear_errors(overrides, message, process_group, tiny_checkpoint):
    args = _args(tiny_checkpoint("llama"), 0)
    for key, value in overrides.items():
        setattr(args, key, value)
    with pytest.raises(ProviderError, match=message):
        default_model_provider("deepspeed_train", args, is_trainable=True)


def test_a_plain_script_gets_a_deepspeed_reference_quietly(tiny_checkpoint, tmp_path):
    """A user's script, not launched (no RANK/WORLD_SIZE, no mpi4py): deepspeed_infer at the
    default bf16 forms its own one-process group and prints only what the script prints (DeepSpeed's
    set-up prints, its accelerator line and transformers' bars would otherwise reach the pipes)."""
    import os
    import subprocess
    import sys

    script = tmp_path / "reference.py"
    script.write_text(
        "from roll_models.model_providers import ModelArgs, default_model_provider\n"
        "if __name__ == '__main__':\n"
        f"    engine = default_model_provider('deepspeed_infer', ModelArgs({str(tiny_checkpoint('qwen3'))!r}))\n"
        "    print(type(engine).__name__)\n"
    )
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "DS_ACCELERATOR")
    }
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "DeepSpeedEngine\n", done.stdout
    assert done.stderr.strip() == "", done.stderr[-2000:]
