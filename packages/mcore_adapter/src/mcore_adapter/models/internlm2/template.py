"""InternLM2: a llama-like decoder under its own names. Its ``wqkv`` already holds, per
key/value head, the query heads, then the key, then the value: Megatron's ``linear_qkv`` layout,
so it converts as it is. The HF implementation is roll_models' (transformers ships none)."""

from ..common import (
    DECODER_TEMPLATE,
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    DENSE_HF_CONFIG_EXPECT,
    derive,
    derived_head_dim,
)
from ..converter.errors import ConversionError
from ..converter.ops import RenameConverOp, StackConverOp
from ..converter.spec import Template


class InternLM2Template(Template):
    """Linear rope scaling is Megatron's ``seq_len_interpolation_factor``; dynamic NTK scaling,
    which changes the frequencies with the sequence length at run time, Megatron-Core lacks."""

    def rope_kwargs(self, hf):
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type == "default":
            return {}
        if rope_type == "linear":
            return {"seq_len_interpolation_factor": float(rope["factor"])}
        raise ConversionError(
            f"template 'internlm2': rope_type {rope_type!r} is not supported (supported: 'default', "
            "'linear'); dynamic NTK scaling rescales the rope with the sequence length at run time, "
            "which Megatron-Core does not do"
        )

    def rope_mca_fields(self):
        return ("seq_len_interpolation_factor",)

    def rope_hf_parameters(self, mca_kwargs):
        factor = mca_kwargs.get("seq_len_interpolation_factor")
        return {"rope_type": "default"} if not factor else {"rope_type": "linear", "factor": factor}


TEMPLATE = derive(
    DECODER_TEMPLATE,
    hf_model_type="internlm2",
    # The dense table but attention_dropout, which hub configs of InternLM2 do not state.
    config_hf_to_mca={k: v for k, v in DENSE_CONFIG_HF_TO_MCA.items() if k != "attention_dropout"},
    weight_converters=[
        RenameConverOp("model.tok_embeddings.weight", "embedding.word_embeddings.weight"),
        RenameConverOp("model.norm.weight", "decoder.final_layernorm.weight"),
        RenameConverOp("output.weight", "output_layer.weight"),
        RenameConverOp(".attention_norm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
        RenameConverOp(".attention.wqkv.weight", ".self_attention.linear_qkv.weight"),
        RenameConverOp(".attention.wo.weight", ".self_attention.linear_proj.weight"),
        RenameConverOp(".ffn_norm.weight", ".mlp.linear_fc1.layer_norm_weight"),
        StackConverOp([".feed_forward.w1.weight", ".feed_forward.w3.weight"], ".mlp.linear_fc1.weight"),
        RenameConverOp(".feed_forward.w2.weight", ".mlp.linear_fc2.weight"),
    ],
    constant_mca_config=DENSE_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=[".attention.rotary_emb.inv_freq"],
    # `bias` adds biases to wqkv and wo alike; Megatron's add_qkv_bias covers wqkv only.
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "bias": False},
    # InternLM2 has no head_dim field: its head is hidden_size / num_attention_heads wide.
    hf_config_defaults={
        "head_dim": derived_head_dim,
        "num_key_value_heads": lambda config: config["num_attention_heads"],
    },
    hf_architecture="InternLM2ForCausalLM",
    template_class=InternLM2Template,
)
