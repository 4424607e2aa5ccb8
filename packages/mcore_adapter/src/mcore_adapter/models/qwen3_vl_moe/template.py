"""Qwen3-VL-MoE: Qwen3-VL with Qwen3-MoE's decoder (softmax routing, top-k renormalized, no
shared expert). The hub stores each layer's experts fused and transposed
(``mlp.experts.gate_up_proj [E, H, 2I]``, ``down_proj [E, I, H]``); transformers 5 saves them
untransposed (``[E, 2I, H]``, ``[E, H, I]``). Both read, and a conversion writes back the
layout it read."""

from ..common import in_text_config
from ..moe_common import (
    MOE_CONSTANT_MCA_CONFIG,
    QWEN_MOE_LAYER_FREQ,
    dense_mlp_ops,
    expert_layer_ops,
    fused_experts_table,
)
from ..qwen3_vl_common import qwen3_vl_template

TEMPLATE = qwen3_vl_template(
    "qwen3_vl_moe",
    "Qwen3VLMoeForConditionalGeneration",
    [*dense_mlp_ops(), *expert_layer_ops(router=".mlp.gate.weight", experts=".mlp.experts")],
    config_hf_to_mca={
        "text_config.num_experts_per_tok": "moe_router_topk",
        "text_config.moe_intermediate_size": "moe_ffn_hidden_size",
        "text_config.num_local_experts": "num_moe_experts",
    },
    hf_config_defaults={
        # transformers' attribute name; hub configs say num_experts
        "text_config.num_local_experts": lambda config: config["text_config"]["num_experts"],
        "text_config.decoder_sparse_step": 1,
        "text_config.mlp_only_layers": [],
    },
    # transformers renormalizes the top-k probabilities always (no norm_topk_prob field):
    # Megatron's softmax over the top-k logits.
    constant_mca_config={**MOE_CONSTANT_MCA_CONFIG, "moe_router_pre_softmax": False},
    config_derived={"moe_layer_freq": in_text_config(QWEN_MOE_LAYER_FREQ)},
    hf_fused_experts=fused_experts_table(),
    hf_fused_experts_transposed={
        ".mlp.experts.gate_up_proj": "text_config.hidden_size",
        ".mlp.experts.down_proj": "text_config.moe_intermediate_size",
    },
)
