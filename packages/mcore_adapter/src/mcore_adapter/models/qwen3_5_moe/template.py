"""Qwen3.5-MoE: Qwen3.5 with experts in every layer (softmax routing, the top-k renormalized)
and a shared expert with its sigmoid gate."""

from ..moe_common import MOE_CONSTANT_MCA_CONFIG, fused_experts_table, gated_shared_expert_layer_ops
from ..qwen3_vl_common import qwen3_5_template

TEMPLATE = qwen3_5_template(
    "qwen3_5_moe",
    "Qwen3_5MoeForConditionalGeneration",
    gated_shared_expert_layer_ops(),
    config_hf_to_mca={
        "text_config.num_experts": "num_moe_experts",
        "text_config.num_experts_per_tok": "moe_router_topk",
        "text_config.moe_intermediate_size": "moe_ffn_hidden_size",
        "text_config.shared_expert_intermediate_size": "moe_shared_expert_intermediate_size",
    },
    # transformers renormalizes the top-k probabilities always: Megatron's softmax over the
    # top-k logits
    constant_mca_config={
        **MOE_CONSTANT_MCA_CONFIG,
        "moe_router_pre_softmax": False,
        "moe_shared_expert_gate": True,
    },
    hf_fused_experts=fused_experts_table(),
)
