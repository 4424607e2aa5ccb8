"""Building blocks shared by the mixture-of-experts families: routing fields, the expert
layer's ops (router, experts, shared experts) in both HF layouts, and multi-latent attention.

Megatron names follow Transformer Engine's layer spec (what Megatron-LM on GPU builds): an
expert layer keeps its MLP norm as ``pre_mlp_layernorm`` (a dense layer fuses it into
``mlp.linear_fc1``), experts are ``mlp.experts.local_experts.{e}`` with the global index ``e``
(the per-rank files renumber them, see ``dist_converter``), the router is ``mlp.router``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from .common import DENSE_CONFIG_HF_TO_MCA, dense_template, derive
from .converter.config_map import DerivedField
from .converter.errors import ConversionError
from .converter.names import MCA_EXPERT_PREFIX
from .converter.ops import ConverOp, RenameConverOp, StackConverOp
from .converter.spec import Template

# Routing fields every MoE family states the same way.
MOE_CONFIG_HF_TO_MCA: dict[str, str] = {
    "num_experts_per_tok": "moe_router_topk",
    "moe_intermediate_size": "moe_ffn_hidden_size",
}

# Megatron options that are runtime choices in Megatron-LM but change what a conversion means.
MOE_CONSTANT_MCA_CONFIG: dict[str, object] = {
    "moe_router_dtype": "fp32",  # transformers routes in fp32 (softmax/sigmoid in float)
}


def _norm_topk_to_pre_softmax(norm_topk_prob: Any) -> bool:
    # Softmax over the top-k logits == top-k probabilities renormalized (HF norm_topk_prob=True);
    # softmax over all experts, then top-k, keeps them unnormalized (norm_topk_prob=False).
    return not bool(norm_topk_prob)


PRE_SOFTMAX_FROM_NORM_TOPK = DerivedField(
    ("norm_topk_prob",),
    _norm_topk_to_pre_softmax,
    lambda pre_softmax, _: {"norm_topk_prob": not pre_softmax},
)


def _qwen_moe_layer_freq(num_layers, sparse_step, mlp_only_layers) -> int | list[int]:
    """Qwen's sparse layers (``(i + 1) % decoder_sparse_step == 0`` and not in
    ``mlp_only_layers``) as Megatron's ``moe_layer_freq``."""
    step, dense = int(sparse_step or 1), set(mlp_only_layers or ())
    pattern = [int(i not in dense and (i + 1) % step == 0) for i in range(num_layers)]
    return 1 if all(pattern) else pattern


QWEN_MOE_LAYER_FREQ = DerivedField(
    ("num_hidden_layers", "decoder_sparse_step", "mlp_only_layers"),
    _qwen_moe_layer_freq,
    lambda freq, mca: {
        "decoder_sparse_step": 1,
        "mlp_only_layers": [] if freq == 1 else [i for i, f in enumerate(freq) if not f],
    },
)

# The derived fields of Qwen's MoE families (Qwen1.5/2-MoE, Qwen3-MoE).
QWEN_MOE_DERIVED: dict[str, DerivedField] = {
    "moe_router_pre_softmax": PRE_SOFTMAX_FROM_NORM_TOPK,
    "moe_layer_freq": QWEN_MOE_LAYER_FREQ,
}


def _first_k_dense(num_layers, first_k_dense_replace) -> int | list[int]:
    k = int(first_k_dense_replace or 0)
    return 1 if k == 0 else [0] * k + [1] * (num_layers - k)


def _first_k_dense_to_hf(freq, mca) -> dict[str, Any]:
    pattern = [1] * mca["num_layers"] if freq == 1 else list(freq)
    k = pattern.index(1) if 1 in pattern else len(pattern)
    if pattern != [0] * k + [1] * (len(pattern) - k):
        raise ConversionError(
            f"moe_layer_freq {freq} is not 'k dense layers, then expert layers', which is all "
            "first_k_dense_replace can state"
        )
    return {"first_k_dense_replace": k}


FIRST_K_DENSE_LAYER_FREQ = DerivedField(
    ("num_hidden_layers", "first_k_dense_replace"), _first_k_dense, _first_k_dense_to_hf
)


# DeepSeek-V3 style routing (also GLM-4.5): sigmoid scores, a selection-only correction bias,
# group-limited top-k, renormalized top-k weights times routed_scaling_factor.
SIGMOID_ROUTING_HF_TO_MCA: dict[str, str] = {
    "n_routed_experts": "num_moe_experts",
    "routed_scaling_factor": "moe_router_topk_scaling_factor",
}


def _num_groups(n_group, topk_group, topk) -> int | None:
    if not n_group or n_group == 1:
        return None  # one group holds every expert: plain top-k
    if not topk_group or topk // topk_group != 2:
        raise ConversionError(
            f"group-limited routing with n_group={n_group}, topk_group={topk_group}, "
            f"num_experts_per_tok={topk}: transformers scores a group by its top-2 experts, "
            f"Megatron-Core by its top num_experts_per_tok // topk_group = {topk // (topk_group or 1)}; "
            "the two route differently, so this model cannot be converted as is"
        )
    return int(n_group)


# Megatron renormalizes the top-k sigmoid scores always (norm_topk_prob=False is not expressible).
SIGMOID_ROUTING_EXPECT: dict[str, object] = {"norm_topk_prob": True}
SIGMOID_ROUTING_CONSTANTS: dict[str, object] = {
    "moe_router_score_function": "sigmoid",
    "moe_router_enable_expert_bias": True,
    "moe_router_pre_softmax": True,  # scores before top-k (sigmoid is element-wise: no effect)
}
SIGMOID_ROUTING_DERIVED: dict[str, DerivedField] = {
    "moe_router_num_groups": DerivedField(
        ("n_group", "topk_group", "num_experts_per_tok"),
        _num_groups,
        lambda groups, mca: {"n_group": groups or 1},
    ),
    "moe_router_group_topk": DerivedField(
        ("n_group", "topk_group"),
        lambda n_group, topk_group: topk_group if n_group and n_group > 1 else None,
        lambda group_topk, mca: {"topk_group": group_topk or 1},
    ),
    "moe_shared_expert_intermediate_size": DerivedField(
        ("n_shared_experts", "moe_intermediate_size"),
        lambda n, size: n * size if n else None,
        lambda shared, mca: {"n_shared_experts": shared // mca["moe_ffn_hidden_size"]},
    ),
    "moe_layer_freq": FIRST_K_DENSE_LAYER_FREQ,
}


def dense_mlp_ops(mlp: str = ".mlp") -> list[ConverOp]:
    """The MLP of the dense layers of a model that mixes dense and expert layers."""
    return [
        RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight").only(
            layers="dense"
        ),
        StackConverOp([f"{mlp}.gate_proj.weight", f"{mlp}.up_proj.weight"], ".mlp.linear_fc1.weight").only(
            layers="dense"
        ),
        RenameConverOp(f"{mlp}.down_proj.weight", ".mlp.linear_fc2.weight").only(layers="dense"),
    ]


def expert_layer_ops(
    router: str,
    experts: str,
    expert_names: Sequence[str] = ("gate_proj", "up_proj", "down_proj"),
    shared: str | None = None,
    shared_gate: str | None = None,
    expert_bias: str | None = None,
) -> list[ConverOp]:
    """The MLP of an expert layer: ``router`` (HF ``[E, H]``), per-expert SwiGLU under
    ``{experts}.{e}.{gate|up|down}.weight`` (names as in ``expert_names``), optionally shared
    experts under ``shared``, their sigmoid gate ``shared_gate`` and the router's selection bias
    ``expert_bias``."""
    gate, up, down = expert_names
    ops: list[ConverOp] = [
        RenameConverOp(".post_attention_layernorm.weight", ".pre_mlp_layernorm.weight"),
        RenameConverOp(router, ".mlp.router.weight"),
        StackConverOp(
            [f"{experts}.{{}}.{gate}.weight", f"{experts}.{{}}.{up}.weight"],
            f"{MCA_EXPERT_PREFIX}linear_fc1.weight",
        ),
        RenameConverOp(f"{experts}.{{}}.{down}.weight", f"{MCA_EXPERT_PREFIX}linear_fc2.weight"),
    ]
    if shared is not None:
        ops += [
            StackConverOp(
                [f"{shared}.gate_proj.weight", f"{shared}.up_proj.weight"],
                ".mlp.shared_experts.linear_fc1.weight",
            ),
            RenameConverOp(f"{shared}.down_proj.weight", ".mlp.shared_experts.linear_fc2.weight"),
        ]
    if shared_gate is not None:
        ops.append(RenameConverOp(shared_gate, ".mlp.shared_experts.gate_weight"))
    if expert_bias is not None:
        ops.append(RenameConverOp(expert_bias, ".mlp.router.expert_bias"))
    return [op.only(layers="moe") for op in ops]


def gated_shared_expert_layer_ops() -> list[ConverOp]:
    """The expert layer of Qwen2-MoE, Qwen3-Next and Qwen3.5-MoE: router ``mlp.gate``, experts
    ``mlp.experts``, one shared expert scaled by its sigmoid gate ``mlp.shared_expert_gate``."""
    return expert_layer_ops(
        router=".mlp.gate.weight",
        experts=".mlp.experts",
        shared=".mlp.shared_expert",
        shared_gate=".mlp.shared_expert_gate.weight",
    )


def fused_experts_table(
    experts: str = ".mlp.experts", expert_names: Sequence[str] = ("gate_proj", "up_proj", "down_proj")
) -> dict[str, tuple[str, ...]]:
    """transformers 5's in-memory expert tensors (``gate_up_proj [E, 2I, H]``, gate rows first;
    ``down_proj [E, H, I]``) in terms of the per-expert names ``expert_layer_ops`` reads."""
    gate, up, down = expert_names
    return {
        ".mlp.experts.gate_up_proj": (f"{experts}.{{}}.{gate}.weight", f"{experts}.{{}}.{up}.weight"),
        ".mlp.experts.down_proj": (f"{experts}.{{}}.{down}.weight",),
    }


# ------------------------------------------------------------------ multi-token prediction
def mtp_ops() -> list[ConverOp]:
    """DeepSeek-V3's multi-token-prediction layers (the hub's ``model.layers.{L}`` after the L
    decoder layers; GLM-4.5 names them alike): their own norms and projection. Their
    transformer layer converts with the decoder layers' ops, as Megatron builds it like the
    last decoder layer."""
    return [
        op.only(layers="mtp")
        for op in (
            RenameConverOp(".enorm.weight", ".enorm.weight"),
            RenameConverOp(".hnorm.weight", ".hnorm.weight"),
            RenameConverOp(".eh_proj.weight", ".eh_proj.weight"),
            RenameConverOp(".shared_head.norm.weight", ".final_layernorm.weight"),
        )
    ]


# The hub repeats the embedding and the output head in each MTP layer; Megatron shares them.
MTP_SHARED_COPIES = {
    ".embed_tokens.weight": "model.embed_tokens.weight",
    ".shared_head.head.weight": "lm_head.weight",
}


def deepseek_mlp_ops() -> list[ConverOp]:
    """The MLP side of DeepSeek-V3 and GLM-4.5: dense first layers, then expert layers with
    shared experts and the router's correction bias, and the MTP layers' own tensors."""
    return [
        *dense_mlp_ops(),
        *expert_layer_ops(
            router=".mlp.gate.weight",
            experts=".mlp.experts",
            shared=".mlp.shared_experts",
            expert_bias=".mlp.gate.e_score_correction_bias",
        ),
        *mtp_ops(),
    ]


# register_template arguments DeepSeek-V3 and GLM-4.5 share besides their ops.
# What a family with experts adds to its decoder's template (``derive``'s layer).
MOE_TEMPLATE: dict[str, Any] = {
    "config_hf_to_mca": MOE_CONFIG_HF_TO_MCA,
    "constant_mca_config": MOE_CONSTANT_MCA_CONFIG,
    "hf_fused_experts": fused_experts_table(),
}


def moe_template(
    model_type: str, architecture: str, *layers: Mapping[str, Any], **changes: Any
) -> dict[str, Any]:
    """``register_template`` arguments of a llama-style decoder with experts: ``dense_template``
    with ``MOE_TEMPLATE``, ``layers`` (e.g. ``QWEN_MOE_TEMPLATE``) and the family's own
    differences (see ``derive``)."""
    return derive(dense_template(model_type, architecture), MOE_TEMPLATE, *layers, **changes)


# Qwen's sparse layers (Qwen1.5/2-MoE, Qwen3-MoE, Qwen3-Next): every decoder_sparse_step-th
# layer not in mlp_only_layers has experts (by default all), the top-k softmax renormalized or
# not (norm_topk_prob).
QWEN_MOE_TEMPLATE: dict[str, Any] = {
    "hf_config_defaults": {"decoder_sparse_step": 1, "mlp_only_layers": []},
    "config_derived": QWEN_MOE_DERIVED,
}

# DeepSeek-V3's MoE (also GLM-4.5's): sigmoid routing, shared experts, first_k_dense_replace
# dense layers first, MTP layers repeating the embedding and head.
DEEPSEEK_MOE_TEMPLATE: dict[str, Any] = {
    **MOE_TEMPLATE,
    "config_hf_to_mca": {**MOE_CONFIG_HF_TO_MCA, **SIGMOID_ROUTING_HF_TO_MCA},
    "constant_mca_config": {**MOE_CONSTANT_MCA_CONFIG, **SIGMOID_ROUTING_CONSTANTS},
    "hf_config_expect": SIGMOID_ROUTING_EXPECT,
    "mtp_shared_copies": MTP_SHARED_COPIES,
    "config_derived": SIGMOID_ROUTING_DERIVED,
}


# ------------------------------------------------------------------ multi-latent attention
MLA_CONFIG_HF_TO_MCA: dict[str, str] = {
    **{k: v for k, v in DENSE_CONFIG_HF_TO_MCA.items() if k not in ("num_key_value_heads", "head_dim")},
    "q_lora_rank": "q_lora_rank",
    "kv_lora_rank": "kv_lora_rank",
    "qk_nope_head_dim": "qk_head_dim",
    "qk_rope_head_dim": "qk_pos_emb_head_dim",
    "v_head_dim": "v_head_dim",
}

MLA_CONSTANT_MCA_CONFIG: dict[str, object] = {
    "multi_latent_attention": True,
    "qk_layernorm": True,  # the q_a / kv_a RMSNorms of the low-rank projections
}


def mla_attention_ops() -> list[ConverOp]:
    """DeepSeek's attention: low-rank q (or a plain q projection when ``q_lora_rank`` is
    unset), compressed kv with a shared rope key. The row orders of HF and Megatron agree
    (rope needs no permutation: both de-interleave the rope channels at run time)."""
    return [
        RenameConverOp(".input_layernorm.weight", ".input_layernorm.weight"),
        RenameConverOp(".self_attn.q_proj.weight", ".self_attention.linear_q_proj.weight").only(
            unless_config="q_lora_rank"
        ),
        *(
            op.only(if_config="q_lora_rank")
            for op in (
                RenameConverOp(".self_attn.q_a_proj.weight", ".self_attention.linear_q_down_proj.weight"),
                RenameConverOp(
                    ".self_attn.q_a_layernorm.weight", ".self_attention.linear_q_up_proj.layer_norm_weight"
                ),
                RenameConverOp(".self_attn.q_b_proj.weight", ".self_attention.linear_q_up_proj.weight"),
            )
        ),
        RenameConverOp(".self_attn.kv_a_proj_with_mqa.weight", ".self_attention.linear_kv_down_proj.weight"),
        RenameConverOp(
            ".self_attn.kv_a_layernorm.weight", ".self_attention.linear_kv_up_proj.layer_norm_weight"
        ),
        RenameConverOp(".self_attn.kv_b_proj.weight", ".self_attention.linear_kv_up_proj.weight"),
        RenameConverOp(".self_attn.o_proj.weight", ".self_attention.linear_proj.weight"),
    ]


# HF yarn rope_parameters key -> MLA's Megatron field.
YARN_HF_TO_MCA = {
    "factor": "rotary_scaling_factor",
    "original_max_position_embeddings": "original_max_position_embeddings",
    "beta_fast": "beta_fast",
    "beta_slow": "beta_slow",
    "mscale": "mscale",
    "mscale_all_dim": "mscale_all_dim",
}
# transformers' defaults of the yarn keys a config may leave out (DeepSeek-V3's rope code).
_YARN_DEFAULTS = {"beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.0}


class MLATemplate(Template):
    """A template with multi-latent attention: rope is MLA's own (``rope_type`` "rope" or
    "yarn" with its fields), not the GPT model's."""

    def rope_kwargs(self, hf):
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type == "default":
            return {"rope_type": "rope"}
        if rope_type == "yarn":
            values = {**_YARN_DEFAULTS, **rope}
            if "original_max_position_embeddings" not in rope:
                values["original_max_position_embeddings"] = hf.get("max_position_embeddings")
            return {"rope_type": "yarn", **{mca: values[k] for k, mca in YARN_HF_TO_MCA.items()}}
        raise ConversionError(
            f"template {self.hf_model_type!r}: rope_type {rope_type!r} is not supported with "
            "multi-latent attention (supported: 'default', 'yarn')"
        )

    def rope_mca_fields(self):
        return ("rope_type", *YARN_HF_TO_MCA.values())

    def rope_hf_parameters(self, mca_kwargs):
        if mca_kwargs.get("rope_type", "rope") == "rope":
            return {"rope_type": "default"}
        return {"rope_type": "yarn", **{hf: mca_kwargs.get(mca) for hf, mca in YARN_HF_TO_MCA.items()}}
