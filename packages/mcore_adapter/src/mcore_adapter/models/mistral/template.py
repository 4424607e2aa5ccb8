"""Mistral: a llama-shaped decoder with sliding-window attention."""

from ..common import dense_template

TEMPLATE = dense_template(
    "mistral",
    "MistralForCausalLM",
    config_hf_to_mca={"sliding_window": "sliding_window"},
    hf_config_defaults={"max_position_embeddings": 131072, "num_key_value_heads": 8, "sliding_window": 4096},
)
