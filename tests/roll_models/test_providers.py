"""roll_models.model_providers: the strategies' registry, tokenizer and processor providers,
``hf_infer`` against ``megatron_infer``, ``megatron_train`` at TP2 back to HF, a model class
registered from outside the package, and the errors a user meets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from mcore_adapter.parity import CONTROL_RTOL, compare_logits
from roll_models.model_providers import (
    ModelArgs,
    ProviderError,
    default_model_provider,
    default_processor_provider,
    default_tokenizer_provider,
    register_model,
    register_model_provider,
    registered_strategies,
)


def _tiny_tokenizer(path: Path) -> None:
    """A word-level tokenizer over the tiny models' 128 ids, with an eos but no pad token."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "</s>": 1, **{f"w{i}": i for i in range(2, 128)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", eos_token="</s>").save_pretrained(
        path
    )


def _args(path, **kw) -> ModelArgs:
    return ModelArgs(str(path), dtype="float32", attn_implementation="eager", **kw)


def _logits(model, tokens):
    with torch.no_grad():
        out = model(tokens)
    return out.logits if hasattr(out, "logits") else out


def test_tokenizer_pads_on_the_left_with_eos_when_it_has_no_pad_token(tiny_checkpoint, tmp_path):
    _tiny_tokenizer(tmp_path)
    tokenizer = default_tokenizer_provider(str(tmp_path))
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "</s>"
    batch = tokenizer(["w5 w6 w7", "w9"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[5, 6, 7], [1, 1, 9]]


def test_hf_infer_chooses_sdpa_without_flash_attn(tiny_checkpoint):
    import importlib.util

    from roll_models.providers.hf import attn_implementation

    assert importlib.util.find_spec("flash_attn") is None  # as on these machines
    assert attn_implementation(None) == "sdpa"
    model = default_model_provider("hf_infer", ModelArgs(str(tiny_checkpoint("llama")), dtype="float32"))
    assert model.config._attn_implementation == "sdpa" and not model.training
    with pytest.raises(ProviderError, match="needs flash-attn"):
        attn_implementation("flash_attention_2")


def test_processor_is_none_for_text_and_an_error_when_a_vlm_processor_is_broken(tiny_checkpoint):
    assert default_processor_provider(str(tiny_checkpoint("llama"))) is None
    # The tiny vision-language checkpoint has no preprocessor files: an error, not a silent None.
    with pytest.raises(ProviderError, match="processor of this vision-language model does not load"):
        default_processor_provider(str(tiny_checkpoint("qwen2_vl")))


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe"])
def test_hf_infer_and_megatron_infer_agree(model_type, megatron, tiny_checkpoint, record_strategy):
    path = tiny_checkpoint(model_type)
    hf = default_model_provider("hf_infer", _args(path))
    mca = default_model_provider("megatron_infer", _args(path))
    assert not any(p.requires_grad for p in hf.parameters())
    assert not any(p.requires_grad for p in mca.parameters())
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    diff = compare_logits(_logits(hf, tokens), _logits(mca, tokens))
    record_strategy(model_type, "hf_infer", f"= megatron_infer {diff.max_abs:.1e}", diff.passed())
    record_strategy(model_type, "megatron_infer", f"= hf_infer {diff.max_abs:.1e}", diff.passed())
    assert diff.passed()


@pytest.mark.parametrize("head", ["value", "reward"])
def test_value_and_reward_heads_agree_between_hf_and_megatron(
    head, megatron, tiny_checkpoint, tmp_path, record_strategy
):
    from mcore_adapter.testing import make_tiny_head_checkpoint

    path = make_tiny_head_checkpoint(tiny_checkpoint("llama"), head, tmp_path / head)
    hf = default_model_provider("hf_infer", _args(path, head=head))
    mca = default_model_provider("megatron_infer", _args(path, head=head))
    tokens = torch.randint(1, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    tokens[0, :4] = 0  # left-padded (pad_token_id 0)
    diff = compare_logits(_logits(hf, tokens), _logits(mca, tokens))
    for strategy in ("hf_infer", "megatron_infer"):
        record_strategy("llama", strategy, f"{head} head {diff.max_abs:.1e}", diff.passed())
    assert diff.passed()
    with pytest.raises(ProviderError, match=f"holds a {head!r} model, 'lm' was asked for"):
        default_model_provider("megatron_infer", _args(path))


def _outside_classes():
    """A model implementation defined outside the package: a llama under its own model_type."""
    from transformers import LlamaConfig, LlamaForCausalLM

    class OutsideConfig(LlamaConfig):
        model_type = "roll_outside_llama"

    class OutsideForCausalLM(LlamaForCausalLM):
        config_class = OutsideConfig

    return OutsideConfig, OutsideForCausalLM


def test_a_model_registered_from_outside_is_found_by_every_strategy(megatron, tiny_checkpoint, tmp_path):
    from mcore_adapter.models.converter.template import get_template, register_template

    config_class, model_class = _outside_classes()
    register_model("roll_outside_llama", config_class, exist_ok=True, AutoModelForCausalLM=model_class)
    llama = get_template("llama")
    register_template(
        "roll_outside_llama",
        config_hf_to_mca=llama.config_hf_to_mca,
        weight_converters=llama.weight_converters,
        hf_layer_prefix=llama.hf_layer_prefix,
        constant_mca_config=llama.constant_mca_config,
        hf_invalid_keys=llama.hf_invalid_keys,
        hf_config_defaults=llama.hf_config_defaults,
        overwrite=True,
    )
    path = tmp_path / "outside"
    shutil.copytree(tiny_checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "roll_outside_llama"}))

    hf = default_model_provider("hf_infer", _args(path))
    assert type(hf).__name__ == "OutsideForCausalLM"
    tokens = torch.randint(0, 128, (1, 10), generator=torch.Generator().manual_seed(1))
    strategies = ("deepspeed_infer", "deepspeed_train", "megatron_infer", "megatron_train")
    for strategy in strategies:
        # only deepspeed_train applies an optimizer; the other strategies refuse one
        optimizer = (
            (lambda params: torch.optim.SGD(params, lr=0.1)) if strategy == "deepspeed_train" else None
        )
        args = _args(path, optimizer=optimizer)
        model = default_model_provider(strategy, args, is_trainable=strategy.endswith("train"))
        model.eval()
        assert compare_logits(_logits(hf, tokens), _logits(model, tokens)).passed()


def test_strategies_can_be_added_and_replaced(tiny_checkpoint):
    calls = []
    register_model_provider("my_infer", lambda args, trainable: calls.append(args) or "model", overwrite=True)
    assert "my_infer" in registered_strategies()
    assert default_model_provider("my_infer", _args("x")) == "model" and len(calls) == 1
    with pytest.raises(ProviderError, match="already has a provider"):
        register_model_provider("hf_infer", lambda *a: None)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            lambda p: default_model_provider("deepspeed_magic", _args(p)),
            r"no model provider for strategy 'deepspeed_magic'; registered: .*hf_infer",
        ),
        (
            lambda p: default_model_provider("hf_infer", _args(p), is_trainable=True),
            "train with a \\*_train strategy",
        ),
        (
            lambda p: default_model_provider("megatron_infer", _args(p, layout={"dp": 2})),
            r"layout keys \['dp'\]",
        ),
        (lambda p: default_model_provider("hf_infer", ModelArgs(str(p), dtype="float33")), "dtype 'float33'"),
    ],
    ids=["unknown-strategy", "hf-infer-trainable", "unknown-layout-key", "bad-dtype"],
)
def test_bad_requests_are_clear_errors(make, message, tiny_checkpoint):
    with pytest.raises(ProviderError, match=message):
        make(tiny_checkpoint("llama"))


def test_a_model_type_nobody_registered_is_a_clear_error(tiny_checkpoint, tmp_path):
    path = tmp_path / "unknown"
    shutil.copytree(tiny_checkpoint("llama"), path)
    config = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**config, "model_type": "mamba_lite"}))
    with pytest.raises(
        ProviderError, match="model_type 'mamba_lite' is registered neither with transformers nor"
    ):
        default_model_provider("hf_infer", _args(path))


# ---------------------------------------------------------------------- megatron_train at TP2
def _train_and_export(hf_dir: str, out: str) -> tuple[float, float]:
    """One rank: megatron_train at TP2, an SGD step, export to HF; the max |logits diff|
    between the trained Megatron model and transformers on the export (rank 0), and how much
    the step moved the logits."""
    import torch.distributed as dist

    from mcore_adapter.verify import hf_logits, megatron_logits

    model = default_model_provider("megatron_train", _args(hf_dir, layout={"tp": 2}), is_trainable=True)
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    before = megatron_logits(model, tokens)
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    loss = model(tokens).float().pow(2).mean()
    loss.backward()  # replicated weights get equal gradients on both ranks (no sequence parallel)
    optimizer.step()
    after = megatron_logits(model, tokens)
    model.save_pretrained_as_hf(out)
    if dist.get_rank() != 0:
        return None, None
    return compare_logits(after, hf_logits(out, tokens)), compare_logits(after, before)


@pytest.mark.distributed
def test_megatron_train_steps_at_tp2_and_exports_what_it_trained(tiny_checkpoint, tmp_path, record_strategy):
    from mcore_adapter.launch import launch

    diff, moved = launch(_train_and_export, 2, str(tiny_checkpoint("llama")), str(tmp_path / "hf"))[0]
    record_strategy(
        "llama",
        "megatron_train",
        f"TP2 step, export = model {diff.max_abs:.1e}",
        moved.relative > CONTROL_RTOL and diff.passed(),
    )
    assert moved.relative > CONTROL_RTOL, f"the optimizer step did not change the model: {moved.describe()}"
    assert diff.passed()
