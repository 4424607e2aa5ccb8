"""A new architecture brought to RL end to end (docs/new_architecture.md): an HF model whose
decoder sits under ``model.language_model`` (as vision-language checkpoints nest it), its
Megatron-Core template, and its vLLM class. ``register()`` is the one call a training job makes;
vLLM's own processes import ``vllm_model`` by name when they build the engine."""

MODEL_TYPE = "wrapped_lm"
ARCHITECTURE = "WrappedLMForCausalLM"


def register() -> None:
    from roll_infer.vllm import register_architecture
    from roll_models.model_providers import register_model

    from . import template  # noqa: F401  (registers the mcore_adapter template)
    from .modeling import WrappedLMConfig, WrappedLMForCausalLM

    register_model(MODEL_TYPE, WrappedLMConfig, exist_ok=True, AutoModelForCausalLM=WrappedLMForCausalLM)
    register_architecture(ARCHITECTURE, f"{__name__}.vllm_model:WrappedLMForCausalLM")
