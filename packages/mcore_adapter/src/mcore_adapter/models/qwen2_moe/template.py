"""Qwen2-MoE (Qwen1.5-MoE): q/k/v biases, softmax routing, and a shared expert whose output
is scaled by a sigmoid gate (Megatron's ``moe_shared_expert_gate``)."""

from ..common import attention_ops, global_ops
from ..moe_common import QWEN_MOE_TEMPLATE, dense_mlp_ops, gated_shared_expert_layer_ops, moe_template

TEMPLATE = moe_template(
    "qwen2_moe",
    "Qwen2MoeForCausalLM",
    QWEN_MOE_TEMPLATE,
    config_hf_to_mca={
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
    constant_mca_config={"moe_shared_expert_gate": True},
    hf_config_expect={"use_sliding_window": False},
    hf_config_defaults={
        "num_key_value_heads": 16,
        "max_position_embeddings": 32768,
        "use_sliding_window": False,
        "qkv_bias": True,
        "norm_topk_prob": False,
    },
)
