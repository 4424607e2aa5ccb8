"""DeepSeek-V3: multi-latent attention (with or without the q low-rank projection, rope or
yarn), sigmoid routing with a selection-only correction bias, group-limited top-k,
``routed_scaling_factor``, shared experts, ``first_k_dense_replace`` dense layers first, and
multi-token-prediction layers."""

from ..common import DENSE_CONSTANT_MCA_CONFIG, DENSE_HF_CONFIG_EXPECT, ROTARY_INV_FREQ_KEYS, global_ops
from ..converter.template import register_template
from ..moe_common import (
    DEEPSEEK_MOE_TEMPLATE,
    MLA_CONFIG_HF_TO_MCA,
    MLA_CONSTANT_MCA_CONFIG,
    MOE_CONFIG_HF_TO_MCA,
    MOE_CONSTANT_MCA_CONFIG,
    SIGMOID_ROUTING_CONSTANTS,
    SIGMOID_ROUTING_EXPECT,
    SIGMOID_ROUTING_HF_TO_MCA,
    MLATemplate,
    deepseek_mlp_ops,
    mla_attention_ops,
)

register_template(
    "deepseek_v3",
    config_hf_to_mca={**MLA_CONFIG_HF_TO_MCA, **MOE_CONFIG_HF_TO_MCA, **SIGMOID_ROUTING_HF_TO_MCA},
    weight_converters=[
        *global_ops(),
        *mla_attention_ops(),
        *deepseek_mlp_ops(),
    ],
    hf_layer_prefix="model.layers.",
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
    # Hub configs predate the rope_interleave field (transformers' default: the hub's layout).
    hf_config_defaults={
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
    },
    hf_architecture="DeepseekV3ForCausalLM",
    **DEEPSEEK_MOE_TEMPLATE,
    template_class=MLATemplate,
)
