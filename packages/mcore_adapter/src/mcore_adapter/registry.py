"""Lazy ``"module:attribute"`` references: how every registry in the workspace names a class or
function without importing it (configs and models here, transformers' Auto classes and model
providers in roll_models, engine classes in roll_infer).

Importing a model class costs seconds (torch, transformers' modeling code, megatron.core); a
reference costs nothing until the object is used. This module imports the standard library only,
so roll_models and roll_infer can use it without pulling in the rest of mcore_adapter.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import sys
from typing import Any

__all__ = ["find_module_spec", "load_object", "object_ref", "split_ref"]


def split_ref(ref: str) -> tuple[str, str]:
    """(module, attribute) of ``"module:attribute"``; a malformed reference is a ``ValueError``
    that shows the expected form."""
    module, sep, name = ref.partition(":") if isinstance(ref, str) else ("", "", "")
    if not (
        sep
        and all(part.isidentifier() for part in module.split("."))
        and all(part.isidentifier() for part in name.split("."))
    ):
        raise ValueError(
            f"expected a 'module:attribute' reference such as 'my_pkg.models:MyModel', got {ref!r}"
        )
    return module, name


def load_object(ref: str) -> Any:
    """The object ``ref`` (``"module:attribute"``, the attribute possibly dotted) names, its module
    imported. A module that lacks the attribute is an ``AttributeError`` naming both (a missing
    module the usual ``ModuleNotFoundError``)."""
    module, name = split_ref(ref)
    obj: Any = importlib.import_module(module)
    for part in name.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise AttributeError(f"{ref!r}: module {module!r} has no attribute {name!r}") from None
    return obj


def object_ref(obj: Any) -> str:
    """The ``"module:attribute"`` reference of a class or function (the inverse of ``load_object``)."""
    return f"{obj.__module__}:{obj.__qualname__}"


def find_module_spec(module: str) -> importlib.machinery.ModuleSpec | None:
    """The import spec of ``module`` without importing it or its parent packages
    (``importlib.util.find_spec`` of a submodule imports the package); a module already imported
    is taken as it is. ``None`` when it cannot be found."""
    parts = module.split(".")
    spec = None
    locations = None
    for i in range(len(parts)):
        name = ".".join(parts[: i + 1])
        loaded = sys.modules.get(name)
        if loaded is not None:
            spec = getattr(loaded, "__spec__", None) or importlib.machinery.ModuleSpec(name, None)
            locations = getattr(loaded, "__path__", None)
        elif i == 0:
            spec = importlib.util.find_spec(name)
            locations = spec.submodule_search_locations if spec else None
        else:
            spec = importlib.machinery.PathFinder.find_spec(name, list(locations or ()))
            locations = spec.submodule_search_locations if spec else None
        if spec is None or (i < len(parts) - 1 and locations is None):
            return None
    return spec
