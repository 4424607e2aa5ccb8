"""Llama (incl. Llama 3.x rope scaling): the reference dense decoder."""

from ..common import dense_template

TEMPLATE = dense_template(
    "llama",
    "LlamaForCausalLM",
    # Llama's attention_bias also adds an o_proj bias, and mlp_bias biases on the MLP, which
    # Megatron's add_qkv_bias does not cover.
    hf_config_expect={"attention_bias": False, "mlp_bias": False},
    hf_config_defaults={"max_position_embeddings": 2048, "attention_bias": False, "mlp_bias": False},
)
