"""Qwen3-Next: Gated DeltaNet layers between gated full-attention layers (``layer_types``),
zero-centered RMSNorms, partial rotary, and Qwen2-MoE's experts with a gated shared expert.
The hub's multi-token-prediction weights (``mtp.*``), which transformers does not load either,
are reported as dropped."""

from ..common import (
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    DENSE_HF_CONFIG_EXPECT,
    dense_hf_config_defaults,
    global_ops,
)
from ..converter.template import register_template
from ..linear_attention import (
    LINEAR_ATTENTION_CONSTANTS,
    LINEAR_ATTENTION_FREQ,
    LINEAR_ATTENTION_HF_TO_MCA,
    gated_attention_ops,
    gated_delta_net_ops,
    qwen3_next_in_proj,
)
from ..moe_common import (
    MOE_CONFIG_HF_TO_MCA,
    MOE_CONSTANT_MCA_CONFIG,
    QWEN_MOE_DERIVED,
    dense_mlp_ops,
    fused_experts_table,
    gated_shared_expert_layer_ops,
)


def _default_layer_types(config) -> list[str]:
    # transformers: every full_attention_interval-th layer (default 4) is full attention
    interval = int(config.get("full_attention_interval", 4))
    return [
        "full_attention" if (i + 1) % interval == 0 else "linear_attention"
        for i in range(int(config["num_hidden_layers"]))
    ]


register_template(
    "qwen3_next",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        **MOE_CONFIG_HF_TO_MCA,
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
    hf_layer_prefix="model.layers.",
    hf_fused_experts=fused_experts_table(),
    constant_mca_config={
        **{k: v for k, v in DENSE_CONSTANT_MCA_CONFIG.items() if k != "rotary_percent"},
        **MOE_CONSTANT_MCA_CONFIG,
        **LINEAR_ATTENTION_CONSTANTS,
        "moe_shared_expert_gate": True,
        "qk_layernorm": True,
    },
    hf_invalid_keys=["mtp.{}"],
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_bias": False},
    hf_config_defaults=dense_hf_config_defaults(
        head_dim=256,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        attention_bias=False,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=True,
        layer_types=_default_layer_types,
        linear_conv_kernel_dim=4,
        linear_key_head_dim=128,
        linear_value_head_dim=128,
        linear_num_key_heads=16,
        linear_num_value_heads=32,
        **{"rope_parameters.partial_rotary_factor": 0.25},
    ),
    hf_architecture="Qwen3NextForCausalLM",
    config_derived={**QWEN_MOE_DERIVED, "linear_attention_freq": LINEAR_ATTENTION_FREQ},
)
