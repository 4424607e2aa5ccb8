"""What this installation supports, from the registries (``mcore-adapter list``), and the
versions it runs with (``mcore-adapter --version``).

A model type is supported where a template is registered. Its row names the HF architecture the
template converts, who provides the template and the HF implementation (mcore-adapter,
transformers, a plugin's distribution or an ``--import``ed module), and the parallel layouts
the parity tests ran it at: tools/support_matrix.py writes those, with the README's matrices,
to ``data/support_matrix.json``.
"""

from __future__ import annotations

import json
from importlib import metadata, resources
from typing import Any

SELF = "mcore-adapter"
# distribution -> what --version calls it
VERSIONED = ("mcore-adapter", "megatron-core", "transformers", "torch")


def versions() -> str:
    """``mcore-adapter X (megatron-core Y, transformers Z, torch W)``, from the installed
    distributions' metadata: nothing is imported."""

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "not installed"

    first, *rest = VERSIONED
    return f"{first} {version(first)} ({', '.join(f'{d} {version(d)}' for d in rest)})"


def tested_layouts() -> dict[str, dict[str, bool]]:
    """model_type -> {layout: passed}, as the parity tests recorded them (generated data)."""
    text = resources.files("mcore_adapter").joinpath("data", "support_matrix.json").read_text()
    return json.loads(text)["tested_layouts"]


def _hf_provider(model_type: str, by_module: dict[str, str]) -> str | None:
    """Who registered ``model_type`` with transformers: transformers itself, a plugin's
    distribution, or the top-level module of the class; None if nobody has."""
    from transformers import CONFIG_MAPPING
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if model_type in CONFIG_MAPPING_NAMES:
        return "transformers"
    if model_type not in CONFIG_MAPPING:
        return None
    # a registered class, or a stand-in that names its module without importing it
    top_level = CONFIG_MAPPING[model_type].__module__.partition(".")[0]
    return by_module.get(top_level, top_level)


def supported_models() -> list[dict[str, Any]]:
    """One row per registered template, every plugin loaded first."""
    from . import plugins
    from .models.converter.template import get_template, registered_model_types

    plugins.load_plugins()
    template_providers: dict[str, str] = {}
    by_module: dict[str, str] = {}
    for extension in plugins.extensions():
        if extension.error is None:
            by_module.setdefault(extension.top_level, extension.provider)
            for model_type in extension.templates:
                template_providers.setdefault(model_type, extension.provider)
    tested = tested_layouts()
    rows = []
    for model_type in registered_model_types():
        architecture = get_template(model_type).hf_architecture
        layouts = tested.get(model_type, {})
        rows.append(
            {
                "model_type": model_type,
                "architectures": [architecture] if architecture else [],
                "template": template_providers.get(model_type, SELF),
                "hf_implementation": _hf_provider(model_type, by_module),
                "tested_layouts": [layout for layout, passed in layouts.items() if passed],
                "failed_layouts": [layout for layout, passed in layouts.items() if not passed],
            }
        )
    return rows


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ("model_type", "HF architecture", "template", "HF model", "tested layouts (parity vs HF)")
    lines = [
        (
            row["model_type"],
            ", ".join(row["architectures"]) or "-",
            row["template"],
            row["hf_implementation"] or "none registered",
            ", ".join([*row["tested_layouts"], *(f"{f} FAILS" for f in row["failed_layouts"])]) or "-",
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(line, widths, strict=False)), line[-1]])
        for line in [header, *lines]
    )
