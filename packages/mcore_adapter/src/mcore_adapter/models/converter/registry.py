"""The template registry: one ``Template`` per HF ``model_type``.

Built-in families are found, not listed: every package under ``mcore_adapter.models`` with a
``template`` module is a family and registers itself when imported (``models/family.py``). They
are imported on the first lookup, so importing the converter stays cheap and never imports a
family by name. A type still missing then is looked up in installed plugins
(``mcore_adapter.plugins``).
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from ... import plugins
from .config_map import DerivedField
from .errors import UnsupportedModelError
from .ops import ConverOp
from .spec import Template

_TEMPLATES: dict[str, Template] = {}
_builtins_loaded = False
_loading_builtins = False
FAMILY_PACKAGE = "mcore_adapter.models"


# Packages of mcore_adapter.models that are machinery, not families.
_NOT_FAMILIES = frozenset({"converter", "auto"})


def builtin_families() -> list[str]:
    """The family folders shipped in ``mcore_adapter.models``: its packages that hold a ``template``
    module, the converter and the Auto registries aside."""
    spec = importlib.util.find_spec(FAMILY_PACKAGE)
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    return sorted(
        entry.name
        for root in roots
        for entry in os.scandir(root)
        if entry.is_dir()
        and entry.name not in _NOT_FAMILIES
        and os.path.isfile(os.path.join(entry.path, "__init__.py"))
        and os.path.isfile(os.path.join(entry.path, "template.py"))
    )


def _load_builtin_templates() -> None:
    global _builtins_loaded, _loading_builtins
    if _builtins_loaded:
        return
    _builtins_loaded = _loading_builtins = True
    try:
        for family in builtin_families():
            importlib.import_module(f"{FAMILY_PACKAGE}.{family}")
    finally:
        _loading_builtins = False


def register_template(
    hf_model_type: str,
    config_hf_to_mca: dict[str, str],
    weight_converters: Sequence[ConverOp],
    hf_layer_prefix: str,
    constant_mca_config: dict[str, Any] | None = None,
    hf_invalid_keys: Iterable[str] | None = None,
    *,
    hf_config_expect: dict[str, Any] | None = None,
    hf_config_defaults: dict[str, Any] | None = None,
    hf_architecture: str | None = None,
    config_derived: dict[str, DerivedField] | None = None,
    hf_fused_experts: dict[str, Sequence[str]] | None = None,
    hf_fused_experts_transposed: dict[str, str] | None = None,
    mtp_shared_copies: dict[str, str] | None = None,
    layout_rules: Iterable[Callable[[Mapping[str, Any], Any], None]] = (),
    template_class: type[Template] = Template,
    overwrite: bool = False,
) -> Template:
    """Register the conversion template of one HF ``model_type`` (the ``config.json`` field).

    Registering a type that already has a template raises unless ``overwrite=True``.
    ``hf_fused_experts_transposed`` (fused name, a key of ``hf_fused_experts`` -> the dotted HF
    config field the in-memory layout's last dim has) names the fused expert tensors hub
    checkpoints may store transposed; such checkpoints convert back in that layout.
    """
    _load_builtin_templates()  # so that a user's overwrite=True really replaces a built-in
    if hf_model_type in _TEMPLATES and not overwrite:
        raise ValueError(
            f"a template for model_type {hf_model_type!r} is already registered; "
            "pass overwrite=True to replace it"
        )
    template = template_class(
        hf_model_type=hf_model_type,
        config_hf_to_mca=dict(config_hf_to_mca),
        weight_converters=list(weight_converters),
        hf_layer_prefix=hf_layer_prefix,
        constant_mca_config=dict(constant_mca_config or {}),
        hf_invalid_keys=list(hf_invalid_keys or []),
        hf_config_expect=dict(hf_config_expect or {}),
        hf_config_defaults=dict(hf_config_defaults or {}),
        hf_architecture=hf_architecture,
        config_derived=dict(config_derived or {}),
        hf_fused_experts={k: tuple(v) for k, v in (hf_fused_experts or {}).items()},
        hf_fused_experts_transposed=dict(hf_fused_experts_transposed or {}),
        mtp_shared_copies=dict(mtp_shared_copies or {}),
        layout_rules=tuple(layout_rules),
    )
    _TEMPLATES[hf_model_type] = template
    if not _loading_builtins:
        plugins.template_registered(hf_model_type)  # which extension registered what
    return template


def get_template(hf_model_type: str) -> Template:
    """The template registered for ``hf_model_type``; an unknown type lists the supported ones."""
    _load_builtin_templates()
    template = _TEMPLATES.get(hf_model_type) if isinstance(hf_model_type, str) else None
    if template is None and isinstance(hf_model_type, str):
        plugins.load_plugins()  # an installed package may provide it
        template = _TEMPLATES.get(hf_model_type)
    if template is None:
        shown = (
            repr(hf_model_type)[:60]
            if isinstance(hf_model_type, str) or hf_model_type is None
            else "a " + type(hf_model_type).__name__
        )
        raise UnsupportedModelError(
            f"no conversion template for model_type {shown}; supported: "
            f"{', '.join(sorted(_TEMPLATES))}. Register one with "
            "mcore_adapter.models.converter.template.register_template(...) in a module named by "
            f"--import or by an 'mcore_adapter.plugins' entry point{plugins.failures()}"
        )
    return template


def registered_model_types() -> list[str]:
    _load_builtin_templates()
    return sorted(_TEMPLATES)
