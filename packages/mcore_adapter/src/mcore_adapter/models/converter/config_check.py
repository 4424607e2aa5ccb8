"""What a config may say. A config comes with the checkpoint and is as hostile as its weights:
every Megatron field a template reads is checked for type, range and finiteness before anything
is planned or written (a NaN epsilon must not reach ``mca_config.json``), and the sizes that
decide how much the plan holds (layers, experts) are bounded by the tensors the checkpoint
actually has, not by what the config claims."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from .errors import ConversionError

# Sizes: an int >= 1 (None where the field allows it, e.g. q_lora_rank).
POSITIVE_INTS = frozenset(
    {
        "num_layers",
        "hidden_size",
        "ffn_hidden_size",
        "num_attention_heads",
        "num_query_groups",
        "kv_channels",
        "vocab_size",
        "padded_vocab_size",
        "make_vocab_size_divisible_by",
        "num_moe_experts",
        "moe_ffn_hidden_size",
        "moe_router_topk",
        "moe_shared_expert_intermediate_size",
        "moe_router_num_groups",
        "moe_router_group_topk",
        "q_lora_rank",
        "kv_lora_rank",
        "qk_head_dim",
        "qk_pos_emb_head_dim",
        "v_head_dim",
        "max_sequence_length",
        "original_max_position_embeddings",
        "rope_scaling_original_max_position_embeddings",
        "sliding_window",
        "linear_conv_kernel_dim",
        "linear_key_head_dim",
        "linear_value_head_dim",
        "linear_num_key_heads",
        "linear_num_value_heads",
        "tensor_model_parallel_size",
        "pipeline_model_parallel_size",
        "virtual_pipeline_model_parallel_size",
        "expert_model_parallel_size",
        "expert_tensor_parallel_size",
        "num_layers_in_first_pipeline_stage",
        "num_layers_in_last_pipeline_stage",
    }
)
NON_NEGATIVE_INTS = frozenset({"mtp_num_layers", "image_token_id", "video_token_id", "vision_start_token_id"})
# A real number > 0.
POSITIVE_NUMBERS = frozenset(
    {
        "layernorm_epsilon",
        "rotary_base",
        "rope_scaling_factor",
        "rotary_scaling_factor",
        "seq_len_interpolation_factor",
        "moe_router_topk_scaling_factor",
        "rope_scaling_high_freq_factor",
        "rope_scaling_low_freq_factor",
        "beta_fast",
        "beta_slow",
    }
)
NON_NEGATIVE_NUMBERS = frozenset({"mscale", "mscale_all_dim"})
BOOLEANS = frozenset(
    {
        "tie_embeddings_and_output_weights",
        "add_bias_linear",
        "add_qkv_bias",
        "qk_layernorm",
        "swiglu",
        "moe_router_pre_softmax",
        "moe_shared_expert_gate",
        "moe_router_enable_expert_bias",
        "multi_latent_attention",
        "rope_scaling",
        "attention_output_gate",
        "layernorm_zero_centered_gamma",
        "moe_grouped_gemm",
        "sequence_parallel",
    }
)
PROBABILITIES = frozenset({"attention_dropout", "hidden_dropout", "rotary_percent"})
# No model has more (the largest hub models: ~100 layers, 512 experts): a claim beyond these
# is refused before anything sized by it is built.
MAX_LAYERS, MAX_EXPERTS, MAX_SIZE = 10_000, 100_000, 2**31 - 1
MAX_LAYER_EXPERTS = 1_000_000  # layers x experts: the largest hub models have ~50,000


HF_CONFIG = "hf_config"  # the whole HF config, checked for NaN and infinities only


def _problem(field: str, value: Any, expected: str, names: Mapping[str, str]) -> str:
    hf = names.get(field)
    label = f"{hf} (Megatron's {field})" if hf and hf != field else field
    shown = repr(value) if isinstance(value, (int, float, bool)) or value is None else type(value).__name__
    return f"{label} must be {expected}, found {shown}"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _non_finite(value: Any, path: str = "") -> str | None:
    """The path of the first NaN or infinity in a nested config value."""
    if isinstance(value, float) and not math.isfinite(value):
        return path or "value"
    items = (
        value.items() if isinstance(value, Mapping) else enumerate(value) if isinstance(value, list) else ()
    )
    for key, item in items:
        found = _non_finite(item, f"{path}.{key}" if path else str(key))
        if found:
            return found
    return None


def check_config_values(
    kwargs: Mapping[str, Any], where: str, hf_names: Mapping[str, str] | None = None
) -> None:
    """Every field's type and range, every number finite (nested ones too), the counts under
    what any model has; all problems in one ``ConversionError`` naming ``where``."""
    names = hf_names or {}
    problems = []
    for field, value in kwargs.items():
        if value is None:
            continue
        if field in POSITIVE_INTS and not (_is_int(value) and 1 <= value <= MAX_SIZE):
            problems.append(_problem(field, value, "a positive integer", names))
        elif field in NON_NEGATIVE_INTS and not (_is_int(value) and 0 <= value <= MAX_SIZE):
            problems.append(_problem(field, value, "an integer >= 0", names))
        elif field in POSITIVE_NUMBERS and not (_is_number(value) and value > 0):
            problems.append(_problem(field, value, "a finite number > 0", names))
        elif field in NON_NEGATIVE_NUMBERS and not (_is_number(value) and value >= 0):
            problems.append(_problem(field, value, "a finite number >= 0", names))
        elif field in BOOLEANS and not isinstance(value, bool):
            problems.append(_problem(field, value, "true or false", names))
        elif field in PROBABILITIES and not (_is_number(value) and 0 <= value <= 1):
            problems.append(_problem(field, value, "a number in [0, 1]", names))
        elif (path := _non_finite(value)) is not None:  # e.g. inside the HF config or vision_config
            where_in = path if field == HF_CONFIG else f"{names.get(field, field)}: {path}"
            problems.append(f"{where_in} is not a finite number")
    heads, groups = kwargs.get("num_attention_heads"), kwargs.get("num_query_groups")
    if _is_int(heads) and _is_int(groups) and heads > 0 and groups > 0 and heads % groups:
        problems.append(
            f"{names.get('num_attention_heads', 'num_attention_heads')}={heads} must be a multiple of "
            f"{names.get('num_query_groups', 'num_query_groups')}={groups} (each key/value head serves a group)"
        )
    topk, experts = kwargs.get("moe_router_topk"), kwargs.get("num_moe_experts")
    if _is_int(topk) and _is_int(experts) and topk > experts:
        problems.append(
            f"{names.get('moe_router_topk', 'moe_router_topk')}={topk} exceeds the {experts} experts"
        )
    layers = kwargs.get("num_layers")
    if _is_int(layers) and layers > MAX_LAYERS:
        problems.append(_problem("num_layers", layers, f"at most {MAX_LAYERS} (no model has more)", names))
    if _is_int(experts) and experts > MAX_EXPERTS:
        problems.append(
            _problem("num_moe_experts", experts, f"at most {MAX_EXPERTS} (no model has more)", names)
        )
    elif _is_int(layers) and _is_int(experts) and layers * experts > MAX_LAYER_EXPERTS:
        problems.append(
            f"{layers} layers x {experts} experts exceeds {MAX_LAYER_EXPERTS} expert blocks (no model has "
            "more; the plan would hold every one)"
        )
    if problems:
        raise ConversionError(
            f"{where} is not a usable model config ({len(problems)} problem(s)):\n"
            + "\n".join(f"  {p}" for p in problems)
        )


def check_counts_against_tensors(kwargs: Mapping[str, Any], tensors: int, where: str) -> None:
    """Every layer, and every expert of a layer, has at least one tensor of its own: a config
    that claims more of them than the checkpoint holds tensors does not describe it (and must
    not size the plan)."""
    layers = kwargs.get("num_layers") or 0
    claimed = layers * max(1, kwargs.get("num_moe_experts") or 1)
    if claimed > tensors:
        experts = kwargs.get("num_moe_experts")
        what = f"{layers} layers" + (f" x {experts} experts" if experts else "")
        raise ConversionError(
            f"{where} claims {what}, but the checkpoint holds only {tensors} tensors, at least one per "
            "layer (and expert): the config does not describe these weights; use the config the "
            "checkpoint was saved with"
        )
