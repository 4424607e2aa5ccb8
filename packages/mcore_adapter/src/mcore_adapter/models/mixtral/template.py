"""Mixtral: Mistral's attention (optional sliding window) over 8 experts, softmax top-2 with
the top-k weights renormalized (Megatron: top-k on logits, then softmax). The hub names the
experts ``block_sparse_moe.experts.{e}.w1`` (gate), ``w3`` (up) and ``w2`` (down)."""

from ..common import (
    DENSE_CONFIG_HF_TO_MCA,
    DENSE_CONSTANT_MCA_CONFIG,
    DENSE_HF_CONFIG_EXPECT,
    ROTARY_INV_FREQ_KEYS,
    attention_ops,
    dense_hf_config_defaults,
    global_ops,
)
from ..converter.template import DerivedField, register_template
from ..moe_common import MOE_CONSTANT_MCA_CONFIG, expert_layer_ops, fused_experts_table

register_template(
    "mixtral",
    config_hf_to_mca={
        **DENSE_CONFIG_HF_TO_MCA,
        "num_local_experts": "num_moe_experts",
        "num_experts_per_tok": "moe_router_topk",
        "sliding_window": "sliding_window",
    },
    weight_converters=[
        *global_ops(),
        *attention_ops(),
        *expert_layer_ops(
            router=".block_sparse_moe.gate.weight",
            experts=".block_sparse_moe.experts",
            expert_names=("w1", "w3", "w2"),
        ),
    ],
    hf_layer_prefix="model.layers.",
    # In memory transformers names the block `mlp` (router `mlp.gate`), the hub `block_sparse_moe`.
    hf_fused_experts={
        **fused_experts_table(".block_sparse_moe.experts", ("w1", "w3", "w2")),
        ".mlp.gate.weight": (".block_sparse_moe.gate.weight",),
    },
    constant_mca_config={
        **DENSE_CONSTANT_MCA_CONFIG,
        **MOE_CONSTANT_MCA_CONFIG,
        "moe_router_pre_softmax": False,  # renormalized top-k
    },
    hf_invalid_keys=ROTARY_INV_FREQ_KEYS,
    # Router jitter is training-time noise transformers adds; Megatron's moe_input_jitter_eps differs.
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "router_jitter_noise": 0.0},
    hf_config_defaults=dense_hf_config_defaults(
        num_key_value_heads=8,
        max_position_embeddings=131072,
        rms_norm_eps=1e-5,
        head_dim=None,  # Megatron's hidden_size / heads, as transformers'
        sliding_window=None,
        router_jitter_noise=0.0,
        **{"rope_parameters.rope_theta": 1000000.0},
    ),
    hf_architecture="MixtralForCausalLM",
    # Mixtral's experts are as wide as a dense MLP would be: intermediate_size.
    config_derived={"moe_ffn_hidden_size": DerivedField(("intermediate_size",), int, lambda size, mca: {})},
)
