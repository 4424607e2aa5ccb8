"""DeepSeek-V3: multi-latent attention (with or without the q low-rank projection, rope or
yarn), sigmoid routing with a selection-only correction bias, group-limited top-k,
``routed_scaling_factor``, shared experts, and ``first_k_dense_replace`` dense layers first."""

from ..common import DENSE_CONSTANT_MCA_CONFIG, DENSE_HF_CONFIG_EXPECT, ROTARY_INV_FREQ_KEYS, global_ops
from ..converter.template import register_template
from ..moe_common import (
    MLA_CONFIG_HF_TO_MCA,
    MLA_CONSTANT_MCA_CONFIG,
    MOE_CONFIG_HF_TO_MCA,
    MOE_CONSTANT_MCA_CONFIG,
    MTP_SHARED_COPIES,
    SIGMOID_ROUTING_CONSTANTS,
    SIGMOID_ROUTING_DERIVED,
    SIGMOID_ROUTING_EXPECT,
    SIGMOID_ROUTING_HF_TO_MCA,
    MLATemplate,
    dense_mlp_ops,
    expert_layer_ops,
    fused_experts_table,
    mla_attention_ops,
    mtp_ops,
)

register_template(
    "deepseek_v3",
    config_hf_to_mca={**MLA_CONFIG_HF_TO_MCA, **MOE_CONFIG_HF_TO_MCA, **SIGMOID_ROUTING_HF_TO_MCA},
    weight_converters=[
        *global_ops(),
        *mla_attention_ops(),
        *dense_mlp_ops(),
        *expert_layer_ops(
            router=".mlp.gate.weight",
            experts=".mlp.experts",
            shared=".mlp.shared_experts",
            expert_bias=".mlp.gate.e_score_correction_bias",
        ),
        *mtp_ops(),
    ],
    mtp_shared_copies=MTP_SHARED_COPIES,
    hf_layer_prefix="model.layers.",
    hf_fused_experts=fused_experts_table(),
    constant_mca_config={
        **DENSE_CONSTANT_MCA_CONFIG,
        **MOE_CONSTANT_MCA_CONFIG,
        **MLA_CONSTANT_MCA_CONFIG,
        **SIGMOID_ROUTING_CONSTANTS,
    },
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    # Megatron's MLA always de-interleaves the rope channels (rope_interleave=True in HF).
    hf_config_expect={
        **DENSE_HF_CONFIG_EXPECT,
        **SIGMOID_ROUTING_EXPECT,
        "attention_bias": False,
        "rope_interleave": True,
    },
    hf_architecture="DeepseekV3ForCausalLM",
    config_derived=SIGMOID_ROUTING_DERIVED,
    template_class=MLATemplate,
)
