"""Qwen3-MoE: Qwen3's attention (q/k norm, no bias) over experts only, softmax routing."""

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
    expert_layer_ops,
    fused_experts_table,
)

register_template(
    "qwen3_moe",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        **MOE_CONFIG_HF_TO_MCA,
        "num_local_experts": "num_moe_experts",
    },
    weight_converters=[
        *global_ops(),
        *attention_ops(qk_norm=True),
        *dense_mlp_ops(),
        *expert_layer_ops(router=".mlp.gate.weight", experts=".mlp.experts"),
    ],
    hf_layer_prefix="model.layers.",
    hf_fused_experts=fused_experts_table(),
    constant_mca_config={**DENSE_CONSTANT_MCA_CONFIG, **MOE_CONSTANT_MCA_CONFIG, "qk_layernorm": True},
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_bias": False, "use_sliding_window": False},
    hf_config_defaults=dense_hf_config_defaults(
        num_key_value_heads=4,
        max_position_embeddings=32768,
        attention_bias=False,
        use_sliding_window=False,
        num_local_experts=lambda config: config.get("num_experts", 128),  # the hub's name
        decoder_sparse_step=1,
        mlp_only_layers=[],
        norm_topk_prob=False,
    ),
    hf_architecture="Qwen3MoeForCausalLM",
    config_derived=QWEN_MOE_DERIVED,
)
