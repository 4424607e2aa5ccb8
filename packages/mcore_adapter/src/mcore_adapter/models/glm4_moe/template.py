"""GLM-4.5 / GLM-4.6 (glm4_moe): grouped-query attention with partial rotary, optional q/k
norm and q/k/v biases; DeepSeek-V3's routing (sigmoid, correction bias, shared experts,
``first_k_dense_replace`` dense layers first)."""

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
    DEEPSEEK_MOE_TEMPLATE,
    MOE_CONFIG_HF_TO_MCA,
    MOE_CONSTANT_MCA_CONFIG,
    SIGMOID_ROUTING_CONSTANTS,
    SIGMOID_ROUTING_EXPECT,
    SIGMOID_ROUTING_HF_TO_MCA,
    deepseek_mlp_ops,
)

register_template(
    "glm4_moe",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        **MOE_CONFIG_HF_TO_MCA,
        **SIGMOID_ROUTING_HF_TO_MCA,
        "partial_rotary_factor": "rotary_percent",
        "use_qk_norm": "qk_layernorm",
        "attention_bias": "add_qkv_bias",
    },
    weight_converters=[
        *global_ops(),
        *attention_ops(qkv_bias="add_qkv_bias", qk_norm="qk_layernorm"),
        *deepseek_mlp_ops(),
    ],
    hf_layer_prefix="model.layers.",
    constant_mca_config={
        **{k: v for k, v in DENSE_CONSTANT_MCA_CONFIG.items() if k != "rotary_percent"},
        **MOE_CONSTANT_MCA_CONFIG,
        **SIGMOID_ROUTING_CONSTANTS,
    },
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, **SIGMOID_ROUTING_EXPECT},
    hf_config_defaults=dense_hf_config_defaults(
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        attention_bias=False,
        use_qk_norm=False,
    ),
    hf_architecture="Glm4MoeForCausalLM",
    **DEEPSEEK_MOE_TEMPLATE,
)
