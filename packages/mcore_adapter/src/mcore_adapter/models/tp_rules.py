"""How a built model's weights differ from the ``torch`` format's, which has Transformer Engine's
layout: with Megatron's local layer spec (no TE, or no GPU) some weights are named and split
otherwise. Loading, saving and exporting go through these rules, and so does the model's own
``local_tensors``; this module imports neither, so both can import it.
"""

from __future__ import annotations

from megatron.core.ssm.gated_delta_net import GatedDeltaNet
from megatron.core.transformer.moe.moe_layer import MoELayer
from megatron.core.transformer.multi_latent_attention import MLASelfAttention

from .. import platform
from .converter.dist_converter import COLUMN
from .model_config import McaModelConfig

try:  # Transformer Engine is optional (absent on CPU machines)
    import transformer_engine  # noqa: F401

    HAVE_TE = True
except ImportError:
    HAVE_TE = False


def use_transformer_engine() -> bool:
    return HAVE_TE and platform.has_cuda()


# Megatron's local spec builds MLA's down projections as column-parallel linears (TE's are
# duplicated): a built local-spec model holds slices of what the torch format keeps whole.
LOCAL_SPEC_TP_RULES = {
    ".self_attention.linear_q_down_proj.weight": COLUMN,
    ".self_attention.linear_kv_down_proj.weight": COLUMN,
}


def tp_rule_overrides(config: McaModelConfig) -> dict[str, str]:
    """How the built model splits weights otherwise than the ``torch`` format (TE's spec)."""
    return {} if use_transformer_engine() or not config.multi_latent_attention else LOCAL_SPEC_TP_RULES


def te_names(layer) -> dict[str, str]:
    """Local-spec parameter prefixes of one layer -> the names Transformer Engine's spec gives
    them (TE fuses some norms into the next linear). Megatron's own ``sharded_state_dict_keys_map``
    covers only the dense GQA layer, and wrongly renames an expert layer's separate norm."""
    attention = layer.self_attention
    if isinstance(attention, MLASelfAttention):
        names = {
            "self_attention.q_layernorm.": "self_attention.linear_q_up_proj.layer_norm_",
            "self_attention.kv_layernorm.": "self_attention.linear_kv_up_proj.layer_norm_",
        }
    elif isinstance(attention, GatedDeltaNet):
        names = {"input_layernorm.": "self_attention.in_proj.layer_norm_"}
    else:
        names = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_"}
    if not isinstance(layer.mlp, MoELayer):
        names["pre_mlp_layernorm."] = "mlp.linear_fc1.layer_norm_"
    return names
