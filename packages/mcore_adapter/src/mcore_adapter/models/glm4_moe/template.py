"""GLM-4.5 / GLM-4.6 (glm4_moe): grouped-query attention with partial rotary, optional q/k
norm and q/k/v biases; DeepSeek-V3's routing (sigmoid, correction bias, shared experts,
``first_k_dense_replace`` dense layers first)."""

from ..common import DROP, attention_ops, dense_template, derive, global_ops
from ..moe_common import DEEPSEEK_MOE_TEMPLATE, deepseek_mlp_ops

TEMPLATE = derive(
    dense_template("glm4_moe", "Glm4MoeForCausalLM"),
    DEEPSEEK_MOE_TEMPLATE,
    config_hf_to_mca={
        "partial_rotary_factor": "rotary_percent",
        "use_qk_norm": "qk_layernorm",
        "attention_bias": "add_qkv_bias",
    },
    weight_converters=[
        *global_ops(),
        *attention_ops(qkv_bias="add_qkv_bias", qk_norm="qk_layernorm"),
        *deepseek_mlp_ops(),
    ],
    constant_mca_config={"rotary_percent": DROP},
    hf_config_defaults={
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "attention_bias": False,
        "use_qk_norm": False,
    },
)
