"""Qwen3: a dense decoder with per-head RMSNorm on queries and keys."""

from ..common import dense_template, dense_weight_converters

TEMPLATE = dense_template(
    "qwen3",
    "Qwen3ForCausalLM",
    weight_converters=dense_weight_converters(qk_norm=True),
    constant_mca_config={"qk_layernorm": True},
    # attention_bias in Qwen3 also biases o_proj, which Megatron's add_qkv_bias does not cover.
    hf_config_expect={"attention_bias": False, "use_sliding_window": False},
    hf_config_defaults={
        "head_dim": 128,
        "max_position_embeddings": 32768,
        "num_key_value_heads": 32,
        "attention_bias": False,
        "use_sliding_window": False,
    },
)
