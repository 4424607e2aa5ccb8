"""Conversion templates: how one HF ``model_type`` maps onto Megatron-Core, config and weights.

This is the public API of templates, the import path ROLL's guide uses
(``from mcore_adapter.models.converter.template import register_template, RenameConverOp, ...``).
A template is declarative: a table of config fields, a list of ``ConverOp``s, the constants
Megatron needs that HF does not state, and the HF keys that are deliberately ignored. The
work is done in four modules: ``names`` (the name grammar), ``config_map`` (config
translation), ``mapper`` (the streaming engine) and ``registry`` (one template per type);
``spec`` holds ``Template`` itself.

Pure tensor work: none of it imports megatron.core or transformers' modeling code.
"""

from .config_map import ARCH_FIELDS, TOKEN_ID_FIELDS, DerivedField, as_json, output_head
from .errors import ConversionError, UnsupportedModelError
from .mapper import ConversionReport, WeightMapper
from .names import (
    MCA_EXPERT_PREFIX,
    MCA_EXTRA_STATE_SUFFIX,
    MCA_LAYER_PREFIX,
    MCA_OUTPUT_LAYER,
    MTP_INNER,
    MTP_LAYER_PREFIX,
    attention_kinds,
    layer_kinds,
)
from .ops import (
    ConcatConverOp,
    ConverOp,
    CopyConverOp,
    DropConverOp,
    QKVBiasConverOp,
    QKVConverOp,
    RenameConverOp,
    StackConverOp,
)
from .registry import get_template, register_template, registered_model_types
from .spec import Template

__all__ = [
    "ARCH_FIELDS",
    "MCA_EXPERT_PREFIX",
    "MCA_EXTRA_STATE_SUFFIX",
    "MCA_LAYER_PREFIX",
    "MCA_OUTPUT_LAYER",
    "MTP_INNER",
    "MTP_LAYER_PREFIX",
    "TOKEN_ID_FIELDS",
    "ConcatConverOp",
    "ConverOp",
    "ConversionError",
    "ConversionReport",
    "CopyConverOp",
    "DerivedField",
    "DropConverOp",
    "QKVBiasConverOp",
    "QKVConverOp",
    "RenameConverOp",
    "StackConverOp",
    "Template",
    "UnsupportedModelError",
    "WeightMapper",
    "as_json",
    "attention_kinds",
    "get_template",
    "layer_kinds",
    "output_head",
    "register_template",
    "registered_model_types",
]
