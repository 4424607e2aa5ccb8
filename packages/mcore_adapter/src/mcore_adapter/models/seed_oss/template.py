"""Seed-OSS: a llama-style dense decoder with q/k/v biases (``attention_bias``, on by default)
and dropout on each residual branch (``residual_dropout``, Megatron's ``hidden_dropout``)."""

from ..common import DROP, dense_template, dense_weight_converters

TEMPLATE = dense_template(
    "seed_oss",
    "SeedOssForCausalLM",
    config_hf_to_mca={"attention_bias": "add_qkv_bias", "residual_dropout": "hidden_dropout"},
    weight_converters=dense_weight_converters(qkv_bias="add_qkv_bias"),
    constant_mca_config={"hidden_dropout": DROP},
    # An o_proj bias alone, or MLP biases, are not what Megatron's add_bias_linear adds (both).
    hf_config_expect={"attention_out_bias": False, "mlp_bias": False},
    hf_config_defaults={
        "head_dim": 128,
        "num_key_value_heads": 8,
        "max_position_embeddings": 524288,
        "attention_bias": True,
        "attention_out_bias": False,
        "attention_dropout": 0.1,
        "residual_dropout": 0.1,
        "mlp_bias": False,
    },
)
