"""The name grammar shared by templates, the mapper and the sharding: Megatron's layer, MTP and
expert prefixes, and which decoder layers are dense or expert, full or linear attention."""

from __future__ import annotations

import re
from typing import Any

from .errors import ConversionError

MCA_LAYER_PREFIX = "decoder.layers."
# Multi-token prediction: Megatron's MTP layers, each a transformer layer plus its own norms and
# projection (ops limited to layers="mtp"); HF numbers them after the decoder layers.
MTP_LAYER_PREFIX = "mtp.layers."
MTP_INNER = ".transformer_layer"
# Megatron has no output layer weight when it is tied to the word embeddings.
MCA_OUTPUT_LAYER = "output_layer.weight"
# Transformer Engine keeps fp8/metadata state under this suffix: not a weight, never converted.
MCA_EXTRA_STATE_SUFFIX = "._extra_state"
# Megatron's experts of one layer (SequentialMLP names, global expert index): what templates
# produce; the per-rank files hold local indices (see dist_converter).
MCA_EXPERT_PREFIX = ".mlp.experts.local_experts.{}."


def layer_kinds(config: Any) -> list[str]:
    """ "dense" or "moe" for each decoder layer, as Megatron reads ``moe_layer_freq``: an int N
    puts experts in every N-th layer from the first, a list gives 1 (experts) or 0 per layer."""
    num_layers = int(getattr(config, "num_layers", 0) or 0)
    if not getattr(config, "num_moe_experts", None):
        return ["dense"] * num_layers
    freq = getattr(config, "moe_layer_freq", 1)
    if isinstance(freq, int):
        return ["moe" if i % freq == 0 else "dense" for i in range(num_layers)]
    return ["moe" if f else "dense" for f in _layer_pattern(freq, num_layers, "moe_layer_freq")]


def attention_kinds(config: Any) -> list[str]:
    """ "full" or "linear" (Gated DeltaNet) for each decoder layer, as Megatron reads
    ``linear_attention_freq``: an int N makes every N-th layer (counting from 1) full attention,
    a list gives 1 (linear) or 0 per layer, unset is full attention everywhere."""
    num_layers = int(getattr(config, "num_layers", 0) or 0)
    freq = getattr(config, "linear_attention_freq", None)
    if freq is None or getattr(config, "experimental_attention_variant", None) != "gated_delta_net":
        return ["full"] * num_layers
    if isinstance(freq, int):
        return ["full" if (i + 1) % freq == 0 else "linear" for i in range(num_layers)]
    return ["linear" if f else "full" for f in _layer_pattern(freq, num_layers, "linear_attention_freq")]


def _layer_pattern(freq: str | list[int], num_layers: int, field: str) -> list[int]:
    """A per-layer 0/1 list given as a list, or in Megatron-LM's command-line form (e.g.
    ``"([0]+[1]*3)"``), checked to have one entry per layer."""
    if isinstance(freq, str):
        if not re.fullmatch(r"[\s\[\]\(\)\d,*+]+", freq):
            raise ConversionError(f"{field} {freq!r} is not a list pattern such as '([0]*1+[1]*3)'")
        freq = list(eval(freq, {"__builtins__": {}}))  # digits, brackets, + and * only (checked above)
    if len(freq) != num_layers:
        raise ConversionError(f"{field} has {len(freq)} entries for {num_layers} layers: {freq}")
    return list(freq)


def split_mca_name(name: str) -> tuple[int | None, str]:
    """(decoder layer, name without the layer prefix) of a Megatron name; (None, name) for a global one."""
    if name.startswith(MCA_LAYER_PREFIX):
        index, _, rest = name[len(MCA_LAYER_PREFIX) :].partition(".")
        if index.isdigit():
            return int(index), "." + rest
    return None, name


def layer_relative(name: str) -> str | None:
    """A decoder or MTP layer's Megatron name without its layer prefix (``.mlp.router.weight``;
    an MTP layer's own tensors: ``.enorm.weight``); ``None`` for a global name."""
    layer, rest = split_mca_name(name)
    if layer is not None:
        return rest
    if name.startswith(MTP_LAYER_PREFIX):
        rest = "." + name[len(MTP_LAYER_PREFIX) :].partition(".")[2]
        return rest[len(MTP_INNER) :] if rest.startswith(MTP_INNER + ".") else rest
    return None


def join_mca_name(layer: int | None, local: str) -> str:
    return local if layer is None else f"{MCA_LAYER_PREFIX}{layer}{local}"
