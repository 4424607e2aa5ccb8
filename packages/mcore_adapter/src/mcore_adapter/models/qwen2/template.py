"""Qwen2: a dense decoder with biases on q/k/v (not on o_proj or the MLP)."""

from ..common import dense_template, dense_weight_converters

TEMPLATE = dense_template(
    "qwen2",
    "Qwen2ForCausalLM",
    weight_converters=dense_weight_converters(qkv_bias=True),
    constant_mca_config={"add_qkv_bias": True},
    hf_config_expect={"use_sliding_window": False},
    # Qwen2Config has no head_dim field: None leaves Megatron's default, hidden / heads, Qwen2's too.
    hf_config_defaults={
        "head_dim": None,
        "max_position_embeddings": 32768,
        "num_key_value_heads": 32,
        "use_sliding_window": False,
    },
)
