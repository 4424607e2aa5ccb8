"""roll_infer's vLLM plugin: discovered by vLLM's own loader through the package's entry point,
idempotent, and covering every architecture roll_models implements."""

from __future__ import annotations

import os

import pytest

pytestmark = pytest.mark.vllm


def test_vllm_discovers_the_entry_point_and_it_registers_everything():
    from vllm import ModelRegistry
    from vllm.distributed.weight_transfer.factory import (
        WeightTransferEngineFactory,
        WeightTransferTrainerFactory,
    )
    from vllm.plugins import DEFAULT_PLUGINS_GROUP, load_plugins_by_group

    from roll_infer.vllm import plugin

    plugins = load_plugins_by_group(DEFAULT_PLUGINS_GROUP)
    assert plugins.get("roll_infer") is plugin.register
    plugins["roll_infer"]()
    plugins["roll_infer"]()  # vLLM calls it in every process, possibly more than once
    supported = set(ModelRegistry.get_supported_archs())
    assert set(plugin.roll_models_architectures()) <= supported
    assert plugin.SHM_BACKEND in WeightTransferEngineFactory._registry
    assert plugin.SHM_BACKEND in WeightTransferTrainerFactory._registry


def test_every_roll_models_architecture_is_served_by_vllm():
    """Coverage: an implementation added to roll_models without a vLLM mapping fails here."""
    from roll_infer.vllm import plugin

    assert plugin.roll_models_architectures(), "roll_models registers no implementation"
    assert plugin.unmapped_architectures() == []


@pytest.mark.parametrize(
    "arch, target, message",
    [
        ("MyForCausalLM", "my_pkg.MyForCausalLM", "must be 'module:Class'"),
        ("MyForCausalLM", "my_pkg:", "must be 'module:Class'"),
        ("My=ForCausalLM", "my_pkg:My", "cannot appear"),
    ],
)
def test_register_architecture_refuses_malformed_entries(arch, target, message, monkeypatch):
    from roll_infer.vllm import RegistrationError, register_architecture

    monkeypatch.delenv("ROLL_INFER_VLLM_MODELS", raising=False)
    with pytest.raises(RegistrationError, match=message):
        register_architecture(arch, target)


@pytest.fixture
def user_models(tmp_path, monkeypatch):
    """The user packages the tests below register (registration checks that module and class
    exist, without importing them)."""
    site = tmp_path / "site"
    (site / "roll_test_pkg").mkdir(parents=True)
    (site / "roll_test_pkg" / "__init__.py").write_text("")
    (site / "roll_test_pkg" / "model.py").write_text("class RollTestForCausalLM:\n    pass\n")
    (site / "other_pkg.py").write_text("class RollTestForCausalLM:\n    pass\n")
    (site / "my_pkg.py").write_text("class Qwen3ForCausalLM:\n    pass\n")
    monkeypatch.syspath_prepend(str(site))
    return site


def test_register_architecture_passes_on_to_child_processes_and_refuses_a_second_class(
    monkeypatch, user_models
):
    from vllm import ModelRegistry

    from roll_infer.vllm import RegistrationError, register_architecture
    from roll_infer.vllm.plugin import ENV_MODELS, user_architectures

    monkeypatch.delenv(ENV_MODELS, raising=False)
    register_architecture("RollTestForCausalLM", "roll_test_pkg.model:RollTestForCausalLM")
    register_architecture("RollTestForCausalLM", "roll_test_pkg.model:RollTestForCausalLM")  # same: fine
    assert os.environ[ENV_MODELS] == "RollTestForCausalLM=roll_test_pkg.model:RollTestForCausalLM"
    assert user_architectures() == {"RollTestForCausalLM": "roll_test_pkg.model:RollTestForCausalLM"}
    assert "RollTestForCausalLM" in ModelRegistry.models
    with pytest.raises(RegistrationError, match="already registered as roll_test_pkg.model"):
        register_architecture("RollTestForCausalLM", "other_pkg:RollTestForCausalLM")
    ModelRegistry.models.pop("RollTestForCausalLM")


def test_register_architecture_replaces_vllms_own_class_only_when_asked(monkeypatch, user_models):
    from vllm import ModelRegistry

    from roll_infer.vllm import RegistrationError, register_architecture
    from roll_infer.vllm.plugin import ENV_MODELS

    monkeypatch.delenv(ENV_MODELS, raising=False)
    native = ModelRegistry.models["Qwen3ForCausalLM"]
    with pytest.raises(
        RegistrationError, match="vLLM already implements Qwen3ForCausalLM; pass overwrite=True"
    ):
        register_architecture("Qwen3ForCausalLM", "my_pkg:Qwen3ForCausalLM")
    try:
        register_architecture("Qwen3ForCausalLM", "my_pkg:Qwen3ForCausalLM", overwrite=True)
        assert os.environ[ENV_MODELS] == "Qwen3ForCausalLM=my_pkg:Qwen3ForCausalLM"
        assert ModelRegistry.models["Qwen3ForCausalLM"].module_name == "my_pkg"
    finally:
        ModelRegistry.models["Qwen3ForCausalLM"] = native


def test_a_malformed_environment_entry_is_a_clear_error(monkeypatch):
    from roll_infer.vllm import RegistrationError
    from roll_infer.vllm.plugin import ENV_MODELS, user_architectures

    monkeypatch.setenv(ENV_MODELS, "GoodForCausalLM=pkg:Good;BadForCausalLM")
    with pytest.raises(RegistrationError, match="expected 'Architecture=module:Class'.*'BadForCausalLM'"):
        user_architectures()
