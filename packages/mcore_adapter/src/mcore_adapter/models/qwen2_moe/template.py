"""Qwen2-MoE (Qwen1.5-MoE): q/k/v biases, softmax routing, and a shared expert whose output
is scaled by a sigmoid gate (Megatron's ``moe_shared_expert_gate``)."""

from ..common import (
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    DENSE_HF_CONFIG_EXPECT,
    ROTARY_INV_FREQ_KEYS,
    attention_ops,
    dense_hf_config_defaults,
    global_ops,
)
from ..converter.template import register_template
from ..moe_common import (
    MOE_CONFIG_HF_TO_MCA,
    MOE_CONSTANT_MCA_CONFIG,
    QWEN_MOE_DERIVED,
    dense_mlp_ops,
    fused_experts_table,
    gated_shared_expert_layer_ops,
)

register_template(
    "qwen2_moe",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        **MOE_CONFIG_HF_TO_MCA,
        "num_experts": "num_moe_experts",
        "shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
        "qkv_bias": "add_qkv_bias",
    },
    weight_converters=[
        *global_ops(),
        *attention_ops(qkv_bias="add_qkv_bias"),
        *dense_mlp_ops(),
        *gated_shared_expert_layer_ops(),
    ],
    hf_layer_prefix="model.layers.",
    hf_fused_experts=fused_experts_table(),
    constant_mca_config={
        **DENSE_CONSTANT_MCA_CONFIG,
        **MOE_CONSTANT_MCA_CONFIG,
        "moe_shared_expert_gate": True,
    },
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "use_sliding_window": False},
    hf_config_defaults=dense_hf_config_defaults(
        num_key_value_heads=16,
        max_position_embeddings=32768,
        use_sliding_window=False,
        qkv_bias=True,
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    ),
    hf_architecture="Qwen2MoeForCausalLM",
    config_derived=QWEN_MOE_DERIVED,
)
