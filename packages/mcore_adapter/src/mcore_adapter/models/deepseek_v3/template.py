"""DeepSeek-V3: multi-latent attention (with or without the q low-rank projection, rope or
yarn), sigmoid routing with a selection-only correction bias, group-limited top-k,
``routed_scaling_factor``, shared experts, ``first_k_dense_replace`` dense layers first, and
multi-token-prediction layers."""

from ..common import DECODER_TEMPLATE, DENSE_CONSTANT_MCA_CONFIG, DENSE_HF_CONFIG_EXPECT, derive, global_ops
from ..moe_common import (
    DEEPSEEK_MOE_TEMPLATE,
    MLA_CONFIG_HF_TO_MCA,
    MLA_CONSTANT_MCA_CONFIG,
    MLATemplate,
    deepseek_mlp_ops,
    mla_attention_ops,
)

TEMPLATE = derive(
    DECODER_TEMPLATE,
    {
        "config_hf_to_mca": MLA_CONFIG_HF_TO_MCA,
        "constant_mca_config": {**DENSE_CONSTANT_MCA_CONFIG, **MLA_CONSTANT_MCA_CONFIG},
        "hf_config_expect": DENSE_HF_CONFIG_EXPECT,
    },
    DEEPSEEK_MOE_TEMPLATE,
    hf_model_type="deepseek_v3",
    hf_architecture="DeepseekV3ForCausalLM",
    weight_converters=[*global_ops(), *mla_attention_ops(), *deepseek_mlp_ops()],
    # Megatron's MLA always de-interleaves the rope channels (rope_interleave=True in HF).
    hf_config_expect={"attention_bias": False, "rope_interleave": True},
    # Hub configs predate the rope_interleave field (transformers' default: the hub's layout).
    hf_config_defaults={
        "rope_interleave": True,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "tie_word_embeddings": False,
    },
    template_class=MLATemplate,
)
