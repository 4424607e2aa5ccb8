"""roll_models' arguments are checked at the call: a malformed one is an ``ArgumentError`` that
names it and the value found (a layout larger than the job, a ``ProviderError`` that says how to
launch), raised before any checkpoint is read, any model built or megatron / DeepSpeed imported."""

from __future__ import annotations

import sys

import pytest

from roll_models.model_providers import (
    ArgumentError,
    ModelArgs,
    ProviderError,
    check_model_args,
    check_model_path,
    default_model_provider,
    register_model_provider,
    registered_strategies,
)

# mcore_adapter's parallel helpers (torch.distributed only) may answer a megatron provider's check.
HEAVY = ("megatron.core", "deepspeed", "mcore_adapter.models")


@pytest.fixture
def ckpt(tmp_path):
    """A directory that passes the path check (a config.json); nothing else reads it here."""
    (tmp_path / "config.json").write_text("{}")
    return tmp_path


def _provide(strategy, path=None, **kw):
    return lambda ckpt: default_model_provider(strategy, ModelArgs(str(path or ckpt), **kw))


def _zero(stage):
    return {"deepspeed": {"zero_optimization": {"stage": stage}}}


@pytest.mark.parametrize(
    ("call", "error", "names", "found"),
    [
        (_provide("hf_infer", "/no/such/checkpoint"), ArgumentError, "model_name_or_path", "'/no/such/checkpoint'"),
        (_provide("hf_infer", "./no_such_dir"), ArgumentError, "model_name_or_path", "'./no_such_dir'"),
        (_provide("megatron_infer", "org/name"), ArgumentError, "model_name_or_path", "'org/name'"),
        (lambda c: default_model_provider("hf_infer", ModelArgs(str(c.parent))), ArgumentError, "model_name_or_path", "without config.json"),
        (lambda c: default_model_provider("hf_infer", ModelArgs(str(c / "config.json"))), ArgumentError, "model_name_or_path", "config.json'"),
        (_provide("deepspeed_train", **_zero(True)), ArgumentError, "['stage']", "True (bool)"),
        (_provide("deepspeed_train", **_zero(4)), ArgumentError, "['stage']", "4 (int)"),
        (_provide("deepspeed_infer", **_zero("2")), ArgumentError, "['stage']", "'2' (str)"),
        (_provide("deepspeed_train", deepspeed="ds.json"), ArgumentError, "model_args.deepspeed", "'ds.json' (str)"),
        (_provide("deepspeed_train", lora={"rank": 8, "target_modules": ["q_proj"]}), ArgumentError, "model_args.lora", "['rank']"),
        (_provide("deepspeed_train", lora={"r": 0}), ArgumentError, "model_args.lora['r']", "0 (int)"),
        (_provide("deepspeed_train", lora={"r": -4}), ArgumentError, "model_args.lora['r']", "-4 (int)"),
        (lambda c: register_model_provider("x_bad", "no_colon"), ArgumentError, "provider", "'no_colon'"),
        (lambda c: register_model_provider("x_bad", "mod:"), ArgumentError, "provider", "'mod:'"),
        (lambda c: register_model_provider("x_bad", "no_such_package_zz:fn"), ArgumentError, "provider", "'no_such_package_zz'"),
        (lambda c: register_model_provider("x_bad", "roll_models.providers.hff:hf_infer"), ArgumentError, "provider", "'roll_models.providers.hff'"),
        (lambda c: register_model_provider("", lambda a, t: None), ArgumentError, "strategy", "'' (str)"),
        (lambda c: register_model_provider("x_bad", 42), ArgumentError, "provider", "42 (int)"),
        (_provide("megatron_infer", layout={"tp": "2"}), ArgumentError, "model_args.layout['tp']", "'2' (str)"),
        (_provide("megatron_train", lora={"r": 8}), ArgumentError, "model_args.lora", "does not apply it"),
        (_provide("megatron_infer", deepspeed={"zero_optimization": {"stage": 3}}), ArgumentError, "model_args.deepspeed", "does not apply it"),
        (_provide("hf_infer", layout={"tp": 2}), ArgumentError, "model_args.layout", "megatron_train, megatron_infer"),
        (_provide("deepspeed_train", layout={"tp": 2}), ArgumentError, "model_args.layout", "does not apply it"),
        (_provide("deepspeed_infer", gradient_checkpointing=True), ArgumentError, "model_args.gradient_checkpointing", "deepspeed_train"),
        (_provide("megatron_train", layout={"tp": 0}), ArgumentError, "model_args.layout['tp']", "0 (int)"),
        (_provide("megatron_infer", layout={"pp": True}), ArgumentError, "model_args.layout['pp']", "True (bool)"),
        (_provide("megatron_infer", layout={"tpp": 2}), ArgumentError, "model_args.layout keys", "['tpp']"),
        (_provide("hf_infer", head="critic"), ArgumentError, "model_args.head", "'critic'"),
        (_provide("deepspeed_train", optimizer="adamw"), ArgumentError, "model_args.optimizer", "'adamw'"),
        (_provide("megatron_train", layout={"tp": 2}), ProviderError, "needs 2 ranks", "world size 1; start one process per rank, e.g. `torchrun --nproc-per-node 2 "),
    ],
    ids=[
        "missing-absolute-path", "missing-relative-path", "hub-id-on-megatron", "dir-without-config",
        "file-not-dir", "zero-stage-bool", "zero-stage-4", "zero-stage-str", "deepspeed-not-dict",
        "lora-unknown-key", "lora-rank-0", "lora-rank-negative", "provider-no-colon",
        "provider-empty-function", "provider-unknown-package", "provider-unknown-submodule",
        "strategy-empty", "provider-not-callable", "layout-str", "lora-on-megatron",
        "deepspeed-on-megatron", "layout-on-hf-infer", "layout-on-deepspeed", "checkpointing-on-infer",
        "layout-zero", "layout-bool",
        "layout-unknown-key", "head-unknown", "optimizer-not-callable", "layout-larger-than-the-job",
    ],
)  # fmt: skip
def test_bad_arguments_are_refused_at_the_call(call, error, names, found, ckpt):
    before = set(sys.modules)
    with pytest.raises(error) as info:
        call(ckpt)
    message = str(info.value)
    assert names in message and found in message, message
    assert not [m for m in set(sys.modules) - before if m.startswith(HEAVY)]
    assert "x_bad" not in registered_strategies()


def test_messages_list_what_is_accepted(ckpt):
    with pytest.raises(ArgumentError, match=r"use tp, pp, vpp, ep, etp \(did you mean 'tp'\?\)"):
        check_model_args(ModelArgs(str(ckpt), layout={"tpp": 2}))
    with pytest.raises(ArgumentError, match=r"lora_alpha.*target_modules.*did you mean 'lora_alpha'"):
        check_model_args(ModelArgs(str(ckpt), lora={"lora_alfa": 16}))


def test_good_arguments_pass(ckpt, tmp_path_factory):
    args = ModelArgs(
        str(ckpt),
        head="value",
        layout={"tp": 2, "pp": 1, "vpp": None},
        deepspeed={"zero_optimization": {"stage": 3}},
        lora={"r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]},
    )
    check_model_args(args, "hf")
    check_model_args(args, "megatron")
    mca = tmp_path_factory.mktemp("mca")
    (mca / "mca_config.json").write_text("{}")
    check_model_path(str(mca), "megatron")
    with pytest.raises(ArgumentError, match="without config.json"):
        check_model_path(str(mca), "hf")
    for hub_id in ("org/name", "gpt2", "Qwen/Qwen3-0.6B"):  # transformers may fetch these
        check_model_path(hub_id, "hf")
    before = set(sys.modules)
    register_model_provider(
        "x_lazy_megatron", "roll_models.providers.megatron:megatron_infer", overwrite=True
    )
    assert "roll_models.providers.megatron" not in set(sys.modules) - before


def test_a_misspelled_function_is_a_clear_error_on_first_use():
    register_model_provider("x_no_function", "roll_models.providers.hf:hf_infr", overwrite=True)
    with pytest.raises(Exception, match=r"module 'roll_models.providers.hf' has no 'hf_infr'"):
        default_model_provider("x_no_function", ModelArgs("x"))
