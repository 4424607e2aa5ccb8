"""Qwen2-VL: the Qwen2 decoder (fields under ``text_config``) with multimodal rope, plus the
transformers vision tower, kept whole under ``vision_model.`` (replicated over tensor
parallelism, on the first pipeline stage)."""

from ..common import DENSE_CONSTANT_MCA_CONFIG, ROTARY_INV_FREQ_KEYS, dense_weight_converters
from ..converter.template import RenameConverOp, register_template

TEXT_FIELDS = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "intermediate_size": "ffn_hidden_size",
    "rms_norm_eps": "layernorm_epsilon",
    "max_position_embeddings": "max_sequence_length",
    "vocab_size": "vocab_size",
    "attention_dropout": "attention_dropout",
    "rope_parameters.rope_theta": "rotary_base",
    "rope_parameters.mrope_section": "mrope_section",
}

VISION_CONFIG_HF_TO_MCA = {
    **{f"text_config.{hf}": mca for hf, mca in TEXT_FIELDS.items()},
    "tie_word_embeddings": "tie_embeddings_and_output_weights",
    "image_token_id": "image_token_id",
    "video_token_id": "video_token_id",
    "vision_start_token_id": "vision_start_token_id",
    "vision_config": "vision_config",
}


def vision_weight_converters():
    return [
        *dense_weight_converters(qkv_bias=True),
        RenameConverOp("visual.{}", "vision_model.{}"),
    ]


register_template(
    "qwen2_vl",
    config_hf_to_mca=VISION_CONFIG_HF_TO_MCA,
    weight_converters=vision_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config={
        **DENSE_CONSTANT_MCA_CONFIG,
        "add_qkv_bias": True,
        "position_embedding_type": "mrope",
    },
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    hf_config_expect={"text_config.hidden_act": "silu", "text_config.use_sliding_window": False},
)
