"""Building blocks shared by the GPT-style families: the config table and op list of a dense
decoder (RMSNorm, rope, SwiGLU, grouped-query attention), and ``derive``, which builds a
family's ``register_template`` arguments from a base's. A family template takes these and
states only its own differences."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .converter.config_map import DerivedField
from .converter.ops import ConverOp, QKVBiasConverOp, QKVConverOp, RenameConverOp, StackConverOp

# In ``derive``'s changes: remove this key from the base's table.
DROP: Any = type("Drop", (), {"__repr__": lambda self: "DROP"})()


def derive(base: Mapping[str, Any], *layers: Mapping[str, Any], **changes: Any) -> dict[str, Any]:
    """``register_template`` arguments: ``base``'s, with each of ``layers`` and then ``changes``
    applied in turn. A table (a dict argument such as ``config_hf_to_mca`` or
    ``hf_config_defaults``) is merged into the one before, a key given ``DROP`` removed; any
    other argument (ops, prefixes, key lists) replaces the one before."""
    out = dict(base)
    for layer in (*layers, changes):
        for key, value in layer.items():
            if isinstance(value, Mapping):
                merged = {**out[key], **value} if isinstance(out.get(key), Mapping) else value
                value = {k: v for k, v in merged.items() if v is not DROP}
            out[key] = value
    return out


DENSE_CONFIG_HF_TO_MCA: dict[str, str] = {
    "hidden_size": "hidden_size",
    "num_hidden_layers": "num_layers",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "head_dim": "kv_channels",
    "intermediate_size": "ffn_hidden_size",
    "rms_norm_eps": "layernorm_epsilon",
    "max_position_embeddings": "max_sequence_length",
    "vocab_size": "vocab_size",
    "tie_word_embeddings": "tie_embeddings_and_output_weights",
    "attention_dropout": "attention_dropout",
    "rope_parameters.rope_theta": "rotary_base",
}

DENSE_CONSTANT_MCA_CONFIG: dict[str, object] = {
    "swiglu": True,
    "normalization": "RMSNorm",
    "position_embedding_type": "rope",
    "add_bias_linear": False,
    "hidden_dropout": 0.0,
    "rotary_percent": 1.0,
}

# What a dense template assumes of the HF config; anything else is a different model.
DENSE_HF_CONFIG_EXPECT: dict[str, object] = {"hidden_act": "silu"}


def derived_head_dim(config) -> int:
    return config["hidden_size"] // config["num_attention_heads"]


def dense_hf_config_defaults(**family: object) -> dict[str, object]:
    """transformers' defaults of the fields a dense template reads, for hub configs that leave
    some out (most lack ``head_dim``, many ``attention_bias`` or ``attention_dropout``); a
    family gives its own where its config class differs. Checked against transformers for
    every template (tests/mcore_adapter/test_template.py)."""
    return {
        "head_dim": derived_head_dim,
        "num_key_value_heads": lambda config: config["num_attention_heads"],
        "attention_dropout": 0.0,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "rope_parameters.rope_type": "default",
        "rope_parameters.rope_theta": 10000.0,
        **family,
    }


# Non-persistent rotary caches that some older exports still contain.
ROTARY_INV_FREQ_KEYS = [".self_attn.rotary_emb.inv_freq", "model.rotary_emb.inv_freq"]


def global_ops() -> list[ConverOp]:
    """Embedding, final norm and output layer of a llama-style decoder."""
    return [
        RenameConverOp("model.embed_tokens.weight", "embedding.word_embeddings.weight"),
        RenameConverOp("model.norm.weight", "decoder.final_layernorm.weight"),
        RenameConverOp("lm_head.weight", "output_layer.weight").only(unless_config="output_head"),
        # Value (token classification) and reward (sequence classification) models: a 1-wide head.
        RenameConverOp("score.weight", "output_layer.weight").only(if_config="output_head"),
        RenameConverOp("score.bias", "output_layer.bias").only(if_config="output_head_bias"),
    ]


def attention_ops(qkv_bias: bool = False, qk_norm: bool | str = False) -> list[ConverOp]:
    """Grouped-query attention with its input norm fused into ``linear_qkv`` (TE names).
    ``qk_norm`` may name the Megatron field that turns the q/k norms on."""
    ops: list[ConverOp] = [
        RenameConverOp(".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
        QKVConverOp(
            [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight"],
            ".self_attention.linear_qkv.weight",
        ),
        RenameConverOp(".self_attn.o_proj.weight", ".self_attention.linear_proj.weight"),
    ]
    if qkv_bias:
        ops.append(
            QKVBiasConverOp(
                [".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias"],
                ".self_attention.linear_qkv.bias",
            )
        )
        if isinstance(qkv_bias, str):
            ops[-1].only(if_config=qkv_bias)
    if qk_norm:
        norms = [
            RenameConverOp(".self_attn.q_norm.weight", ".self_attention.q_layernorm.weight"),
            RenameConverOp(".self_attn.k_norm.weight", ".self_attention.k_layernorm.weight"),
        ]
        ops += [op.only(if_config=qk_norm) for op in norms] if isinstance(qk_norm, str) else norms
    return ops


def dense_mlp_layer_ops() -> list[ConverOp]:
    """A llama-style SwiGLU MLP with its input norm fused into ``linear_fc1`` (TE names)."""
    return [
        RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
        StackConverOp([".mlp.gate_proj.weight", ".mlp.up_proj.weight"], ".mlp.linear_fc1.weight", dim=0),
        RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),
    ]


def dense_weight_converters(qkv_bias: bool | str = False, qk_norm: bool = False) -> list[ConverOp]:
    """Ops of a llama-style decoder (``model.layers.N`` prefix, Megatron TE-style names);
    ``qkv_bias`` may name the Megatron field that turns the q/k/v biases on."""
    return [*global_ops(), *attention_ops(qkv_bias, qk_norm), *dense_mlp_layer_ops()]


# What every decoder family of the hub's llama layout shares: its layers under model.layers.N,
# and the rotary caches old exports carry.
DECODER_TEMPLATE: dict[str, Any] = {
    "hf_layer_prefix": "model.layers.",
    "hf_invalid_keys": ROTARY_INV_FREQ_KEYS,
}

# A llama-style dense decoder (its ops, which a template owns, come from dense_template); a
# dense family derives its template from this one.
DENSE_TEMPLATE: dict[str, Any] = {
    **DECODER_TEMPLATE,
    "config_hf_to_mca": DENSE_CONFIG_HF_TO_MCA,
    "constant_mca_config": DENSE_CONSTANT_MCA_CONFIG,
    "hf_config_expect": DENSE_HF_CONFIG_EXPECT,
    "hf_config_defaults": dense_hf_config_defaults(),
}


def dense_template(model_type: str, architecture: str, **changes: Any) -> dict[str, Any]:
    """``register_template`` arguments of a llama-style dense family: ``DENSE_TEMPLATE`` with its
    own differences (see ``derive``); the ops are ``dense_weight_converters()`` unless given."""
    changes.setdefault("weight_converters", dense_weight_converters())
    return derive(DENSE_TEMPLATE, hf_model_type=model_type, hf_architecture=architecture, **changes)


# Vision-language models of the Qwen2-VL family: the Qwen2 decoder's fields under text_config,
# multimodal rope, and the vision side carried whole (its config, the placeholder token ids).
_VL_TEXT_FIELDS = {
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
VISION_CONFIG_HF_TO_MCA: dict[str, str] = {
    **{f"text_config.{hf}": mca for hf, mca in _VL_TEXT_FIELDS.items()},
    "tie_word_embeddings": "tie_embeddings_and_output_weights",
    "image_token_id": "image_token_id",
    "video_token_id": "video_token_id",
    "vision_start_token_id": "vision_start_token_id",
    "vision_config": "vision_config",
}


def qwen_vl_template(model_type: str, architecture: str) -> dict[str, Any]:
    """``register_template`` arguments of the Qwen2-VL family: the Qwen2 decoder's ops (hub
    names: model.layers.N, lm_head) with multimodal rope, and the vision tower's weights moved
    whole from ``visual.`` to the model's ``vision_model.``. The towers of Qwen2-VL and
    Qwen2.5-VL differ only inside, which conversion does not see."""
    return derive(
        DECODER_TEMPLATE,
        hf_model_type=model_type,
        config_hf_to_mca=VISION_CONFIG_HF_TO_MCA,
        weight_converters=[
            *dense_weight_converters(qkv_bias=True),
            RenameConverOp("visual.{}", "vision_model.{}"),
        ],
        constant_mca_config={
            **DENSE_CONSTANT_MCA_CONFIG,
            "add_qkv_bias": True,
            "position_embedding_type": "mrope",
        },
        hf_config_expect={"text_config.hidden_act": "silu", "text_config.use_sliding_window": False},
        hf_architecture=architecture,
    )


def in_text_config(derived: DerivedField) -> DerivedField:
    """A derived field of a decoder-only config, read from and written to ``text_config`` (a
    vision-language config)."""
    to_hf = derived.to_hf
    return DerivedField(
        tuple(f"text_config.{path}" for path in derived.hf_paths),
        derived.to_mca,
        None
        if to_hf is None
        else lambda value, mca: {f"text_config.{k}": v for k, v in to_hf(value, mca).items()},
    )
