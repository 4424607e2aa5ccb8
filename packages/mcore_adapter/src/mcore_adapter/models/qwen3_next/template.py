"""Qwen3-Next: Gated DeltaNet layers between gated full-attention layers (``layer_types``),
zero-centered RMSNorms, partial rotary, and Qwen2-MoE's experts with a gated shared expert.
The hub's multi-token-prediction weights (``mtp.*``), which transformers does not load either,
are reported as dropped."""

from ..common import DROP, global_ops
from ..linear_attention import (
    LINEAR_ATTENTION_CONSTANTS,
    LINEAR_ATTENTION_FREQ,
    LINEAR_ATTENTION_HF_TO_MCA,
    gated_attention_ops,
    gated_delta_net_ops,
    qwen3_next_in_proj,
)
from ..moe_common import QWEN_MOE_TEMPLATE, dense_mlp_ops, gated_shared_expert_layer_ops, moe_template


def _default_layer_types(config) -> list[str]:
    # transformers: every full_attention_interval-th layer (default 4) is full attention
    interval = int(config.get("full_attention_interval", 4))
    return [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention"
        for i in range(int(config["num_hidden_layers"]))
    ]


TEMPLATE = moe_template(
    "qwen3_next",
    "Qwen3NextForCausalLM",
    QWEN_MOE_TEMPLATE,
    config_hf_to_mca={
        **LINEAR_ATTENTION_HF_TO_MCA,
        "num_experts": "num_moe_experts",
        "shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
        "rope_parameters.partial_rotary_factor": "rotary_percent",
    },
    weight_converters=[
        *global_ops(),
        *gated_attention_ops(),
        *gated_delta_net_ops(qwen3_next_in_proj()),
        *dense_mlp_ops(),
        *gated_shared_expert_layer_ops(),
    ],
    constant_mca_config={
        "rotary_percent": DROP,
        **LINEAR_ATTENTION_CONSTANTS,
        "moe_shared_expert_gate": True,
        "qk_layernorm": True,
    },
    hf_invalid_keys=["mtp.{}"],
    hf_config_expect={"attention_bias": False},
    hf_config_defaults={
        "head_dim": 256,
        "num_key_value_heads": 2,
        "max_position_embeddings": 32768,
        "attention_bias": False,
        "norm_topk_prob": True,
        "layer_types": _default_layer_types,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 128,
        "linear_value_head_dim": 128,
        "linear_num_key_heads": 16,
        "linear_num_value_heads": 32,
        "rope_parameters.partial_rotary_factor": 0.25,
    },
    config_derived={"linear_attention_freq": LINEAR_ATTENTION_FREQ},
)
