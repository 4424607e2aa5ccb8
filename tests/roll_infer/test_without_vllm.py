"""roll_infer without vLLM: the sinks that need no engine sync a Megatron model into a transformers
model and a safetensors directory in a process where ``import vllm`` fails. One subprocess (it
imports Megatron once) runs every check; vLLM is blocked there by a ``None`` in ``sys.modules``.

The sinks default each tensor to the dtype the HF model holds it in: an fp32 Megatron model
synced into a bf16 transformers model gets exactly its weights rounded to bf16."""

from __future__ import annotations

import subprocess
import sys
import textwrap

CODE = textwrap.dedent(
    """
    import sys
    sys.modules["vllm"] = None  # `import vllm` (and any vllm.*) raises ImportError

    import pytest
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from roll_infer.weight_sync import McaWeights, WeightSyncError, sync_to_directory, sync_to_hf_model

    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel
    from mcore_adapter.parity import assert_logits_close
    from mcore_adapter.testing import make_tiny_hf_checkpoint
    from mcore_adapter.verify import megatron_logits
    from roll_infer.testing import sgd_step_towards_random_targets

    tmp = sys.argv[1]
    initialize_model_parallel(tp=1, pp=1)
    hf_dir = make_tiny_hf_checkpoint("qwen3", f"{tmp}/hf")
    model = AutoModel.from_pretrained(str(hf_dir))
    sgd_step_towards_random_targets(model)  # the HF checkpoint no longer holds these weights
    tokens = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    expected = megatron_logits(model, tokens)

    # fp32: the HF model computes the Megatron model's logits.
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        assert (hf(tokens).logits - expected).abs().max() > 1e-2  # the step moved the logits
    sync_to_hf_model(McaWeights(model), hf)
    with torch.no_grad():
        assert_logits_close(hf(tokens).logits, expected)

    # bf16 model, fp32 source: each tensor is sent in the model's dtype, the same rounding.
    hf16 = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.bfloat16).eval()
    stats = sync_to_hf_model(McaWeights(model), hf16)
    assert stats.bytes == sum(p.numel() * 2 for p in hf16.parameters())
    reference = hf.state_dict()
    for name, tensor in hf16.state_dict().items():
        assert tensor.dtype == torch.bfloat16, name
        assert torch.equal(tensor, reference[name].to(torch.bfloat16)), name

    # An explicit dtype is kept, and the model refuses it before writing.
    before = {k: v.clone() for k, v in hf16.state_dict().items()}
    with pytest.raises(WeightSyncError, match="sent as torch.float16, the model's is torch.bfloat16"):
        sync_to_hf_model(McaWeights(model, dtype=torch.float16), hf16)
    assert all(torch.equal(v, hf16.state_dict()[k]) for k, v in before.items())

    # A safetensors directory (the checkpoint's dtype, fp32), loaded back by transformers.
    sync_to_directory(McaWeights(model), f"{tmp}/out", config=AutoConfig.from_pretrained(hf_dir))
    loaded = AutoModelForCausalLM.from_pretrained(f"{tmp}/out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert_logits_close(loaded(tokens).logits, expected)

    # The vLLM source says what it needs.
    with pytest.raises(ImportError, match="McaWeightSource is vLLM's WeightSource and needs vLLM"):
        from roll_infer.weight_sync import McaWeightSource  # noqa: F401
    assert sys.modules["vllm"] is None and not [m for m in sys.modules if m.startswith("vllm.")]
    print("synced without vllm")
    """
)


def test_the_sinks_sync_a_megatron_model_without_vllm(tmp_path):
    result = subprocess.run(
        [sys.executable, "-c", CODE, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.strip().endswith("synced without vllm")
