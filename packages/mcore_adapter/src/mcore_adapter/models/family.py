"""A model family: what mcore_adapter knows about one HF ``model_type``, declared in one call.

Each folder ``models/<family>/`` registers its family in its ``__init__``: the conversion
template, the Megatron config and model classes (lazy ``"module:Class"`` references, McaModelConfig
and McaGPTModel when the family needs nothing more) and the HF architectures it converts.
The converter's registry finds the folders (see ``converter/registry.py``); a family never
imports another, what two share lives in a common module (``common.py``, ``moe_common.py``...).

A template registered alone (``register_template``, as ROLL's guide shows) is a family with the
default classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .auto.config_auto import DEFAULT_CONFIG_CLASS, config_class_ref, register_config
from .auto.modeling_auto import DEFAULT_MODEL_CLASS, model_class_ref, register_model
from .converter.registry import get_template, register_template
from .converter.spec import Template

__all__ = ["Family", "get_family", "register_family"]

# model_type -> the HF architectures its family declared (others default to the template's).
_ARCHITECTURES: dict[str, tuple[str, ...]] = {}


@dataclass(frozen=True)
class Family:
    model_type: str
    template: Template
    config_class: str = DEFAULT_CONFIG_CLASS  # "module:Class"
    model_class: str = DEFAULT_MODEL_CLASS
    hf_architectures: tuple[str, ...] = ()


def register_family(
    template: Mapping[str, Any],
    *,
    config_class: str | None = None,
    model_class: str | None = None,
    hf_architectures: Sequence[str] = (),
    overwrite: bool = False,
) -> Family:
    """Register a family: ``template`` is ``register_template``'s arguments (``hf_model_type``
    among them); the classes are ``"module:Class"`` references, imported when first built;
    ``hf_architectures`` defaults to the template's ``hf_architecture``."""
    registered = register_template(**template, overwrite=overwrite)
    model_type = registered.hf_model_type
    if config_class is not None:
        register_config(model_type, config_class, overwrite=overwrite)
    if model_class is not None:
        register_model(model_type, model_class, overwrite=overwrite)
    if hf_architectures:
        _ARCHITECTURES[model_type] = tuple(hf_architectures)
    else:
        _ARCHITECTURES.pop(model_type, None)
    return get_family(model_type)


def get_family(model_type: str) -> Family:
    """The family of ``model_type`` (an unknown type raises, listing the supported ones)."""
    template = get_template(model_type)
    architectures = _ARCHITECTURES.get(model_type) or (
        (template.hf_architecture,) if template.hf_architecture else ()
    )
    return Family(
        model_type,
        template,
        config_class_ref(model_type),
        model_class_ref(model_type),
        architectures,
    )
