"""Qwen3-MoE: Qwen3's attention (q/k norm, no bias) over experts only, softmax routing."""

from ..common import attention_ops, global_ops
from ..moe_common import QWEN_MOE_TEMPLATE, dense_mlp_ops, expert_layer_ops, moe_template

TEMPLATE = moe_template(
    "qwen3_moe",
    "Qwen3MoeForCausalLM",
    QWEN_MOE_TEMPLATE,
    config_hf_to_mca={"num_local_experts": "num_moe_experts"},
    weight_converters=[
        *global_ops(),
        *attention_ops(qk_norm=True),
        *dense_mlp_ops(),
        *expert_layer_ops(router=".mlp.gate.weight", experts=".mlp.experts"),
    ],
    constant_mca_config={"qk_layernorm": True},
    hf_config_expect={"attention_bias": False, "use_sliding_window": False},
    hf_config_defaults={
        "num_key_value_heads": 4,
        "max_position_embeddings": 32768,
        "attention_bias": False,
        "use_sliding_window": False,
        "num_local_experts": lambda config: config.get("num_experts", 128),  # the hub's name
        "norm_topk_prob": False,
    },
)
