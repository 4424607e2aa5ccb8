"""The Megatron-Core side: Qwen3's conversion with the nested HF names."""

from mcore_adapter.models.common import (
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    attention_ops,
)
from mcore_adapter.models.converter.template import RenameConverOp, StackConverOp, register_template

register_template(
    "wrapped_lm",
    config_hf_to_mca=DENSE_CONFIG_HF_TO_MCA,
    weight_converters=[
        RenameConverOp("model.language_model.embed_tokens.weight", "embedding.word_embeddings.weight"),
        RenameConverOp("model.language_model.norm.weight", "decoder.final_layernorm.weight"),
        RenameConverOp("lm_head.weight", "output_layer.weight"),
        *attention_ops(qk_norm=True),  # per layer: names relative to hf_layer_prefix + index
        RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
        StackConverOp([".mlp.gate_proj.weight", ".mlp.up_proj.weight"], ".mlp.linear_fc1.weight", dim=0),
        RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),
    ],
    hf_layer_prefix="model.language_model.layers.",
    constant_mca_config={**DENSE_CONSTANT_MCA_CONFIG, "qk_layernorm": True},
    hf_architecture="WrappedLMForCausalLM",
)
