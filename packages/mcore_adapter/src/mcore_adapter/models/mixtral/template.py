"""Mixtral: Mistral's attention (optional sliding window) over 8 experts, softmax top-2 with
the top-k weights renormalized (Megatron: top-k on logits, then softmax). The hub names the
experts ``block_sparse_moe.experts.{e}.w1`` (gate), ``w3`` (up) and ``w2`` (down)."""

from ..common import DROP, attention_ops, global_ops
from ..converter.config_map import DerivedField
from ..moe_common import expert_layer_ops, fused_experts_table, moe_template

TEMPLATE = moe_template(
    "mixtral",
    "MixtralForCausalLM",
    config_hf_to_mca={
        "num_local_experts": "num_moe_experts",
        "sliding_window": "sliding_window",
        "moe_intermediate_size": DROP,  # Mixtral's experts are intermediate_size wide (below)
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
    # In memory transformers names the block `mlp` (router `mlp.gate`), the hub `block_sparse_moe`.
    hf_fused_experts={
        **fused_experts_table(".block_sparse_moe.experts", ("w1", "w3", "w2")),
        ".mlp.gate.weight": (".block_sparse_moe.gate.weight",),
    },
    constant_mca_config={"moe_router_pre_softmax": False},  # renormalized top-k
    # Router jitter is training-time noise transformers adds; Megatron's moe_input_jitter_eps differs.
    hf_config_expect={"router_jitter_noise": 0.0},
    hf_config_defaults={
        "num_key_value_heads": 8,
        "max_position_embeddings": 131072,
        "rms_norm_eps": 1e-5,
        "head_dim": None,  # Megatron's hidden_size / heads, as transformers'
        "sliding_window": None,
        "router_jitter_noise": 0.0,
        "rope_parameters.rope_theta": 1000000.0,
    },
    # Mixtral's experts are as wide as a dense MLP would be: intermediate_size.
    config_derived={"moe_ffn_hidden_size": DerivedField(("intermediate_size",), int, lambda size, mca: {})},
)
