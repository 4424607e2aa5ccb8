"""Extensions: packages and modules that register templates (``register_template``), model
classes (``register_model``) or HF implementations with transformers.

A package declares an entry point in the ``mcore_adapter.plugins`` group, in its
pyproject.toml::

    [project.entry-points."mcore_adapter.plugins"]
    my_models = "my_models.mcore"            # imported
    my_other = "my_models.mcore:register"    # imported, then register() is called

Entry points are loaded once per process, when a lookup misses (a template, an HF
``model_type`` transformers does not know) or when every registration is wanted (``mcore-adapter
list``). One that fails to load does not stop anything that does not need it: it is named, with
its distribution and the error, in the message of a lookup that then misses.

Modules named explicitly (``mcore-adapter --import MODULE[:FUNCTION]``) are imported at once, and
again by every rank the command launches (they inherit ``MCORE_ADAPTER_IMPORTS``); a module that
cannot be imported is a ``UserError``.
"""

from __future__ import annotations

import importlib
import os
import re
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points

from .models.converter.errors import UnsupportedModelError, UserError

GROUP = "mcore_adapter.plugins"
IMPORTS_ENV = "MCORE_ADAPTER_IMPORTS"  # comma-separated MODULE[:FUNCTION] specs
_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")


@dataclass
class Extension:
    """One plugin or ``--import``ed module, as loaded in this process."""

    spec: str  # "module" or "module:function"
    provider: str  # a plugin's distribution, or "--import <spec>"
    error: str | None = None  # why it failed to load
    missing: str | None = None  # the module (spec's own, or a package of it) not on the import path
    templates: list[str] = field(default_factory=list)  # the model types it registered templates for

    @property
    def top_level(self) -> str:
        return self.spec.partition(":")[0].partition(".")[0]


_plugins: list[Extension] | None = None
_imports: dict[str, Extension] = {}


def _run(spec: str) -> None:
    module, _, function = spec.partition(":")
    loaded = importlib.import_module(module)
    if function:
        getattr(loaded, function)()


def _where(error: BaseException) -> str:
    """file:line of the innermost frame of the error that is not importlib's own."""
    frames = [f for f in traceback.extract_tb(error.__traceback__) if "importlib" not in f.filename]
    return f" (at {frames[-1].filename}:{frames[-1].lineno})" if frames else ""


# The model types whose templates were registered, in order, outside the built-in families: the
# registry reports each (so this module, which the registry calls on a miss, need not import it).
_registered: list[str] = []


def template_registered(model_type: str) -> None:
    _registered.append(model_type)


def _load(spec: str, provider: str) -> Extension:
    """Import ``spec``, recording the templates it registers; an exception is recorded, not raised."""
    start = len(_registered)
    extension = Extension(spec, provider)
    module = spec.partition(":")[0]
    try:
        _run(spec)
    except Exception as e:
        extension.error = f"{type(e).__name__}: {e}{_where(e)}"
        # the module itself (or its package) is absent, not something it imports
        if isinstance(e, ModuleNotFoundError) and f"{module}.".startswith(f"{e.name}."):
            extension.missing = e.name
    extension.templates = sorted(set(_registered[start:]))
    return extension


def load_plugins() -> list[Extension]:
    """Load every ``mcore_adapter.plugins`` entry point of the installed distributions, once."""
    global _plugins
    if _plugins is None:
        _plugins = []  # a plugin that looks something up while it loads does not start over
        for ep in sorted(entry_points(group=GROUP), key=lambda ep: ep.name):
            dist = ep.dist.name if ep.dist is not None else ep.name
            extension = _load(ep.value, dist)
            if extension.error:
                version = f" {ep.dist.version}" if ep.dist is not None else ""
                extension.error = (
                    f"plugin {ep.name!r} = {ep.value!r} of distribution {dist}{version} failed to load: "
                    f"{extension.error}"
                )
            _plugins.append(extension)
    return _plugins


def extensions() -> list[Extension]:
    """What this process loaded: the ``--import``ed modules, then the plugins (if loaded)."""
    return [*_imports.values(), *(_plugins or [])]


def failures() -> str:
    """The plugins that failed to load, for a message about a lookup that missed ("" if none)."""
    failed = [e.error for e in _plugins or [] if e.error]
    return "; ".join(["", *failed]) if failed else ""


def import_modules(specs: Sequence[str] = ()) -> None:
    """Import ``specs`` ("module" or "module:function", called after the import) and those named
    in ``MCORE_ADAPTER_IMPORTS``; export them all there, for the processes this one starts."""
    requested = [s.strip() for s in os.environ.get(IMPORTS_ENV, "").split(",") if s.strip()]
    for spec in dict.fromkeys([*requested, *specs]):
        if spec in _imports:
            continue
        if not _SPEC.fullmatch(spec):
            hint = " (a file: put its directory on PYTHONPATH and name the module)" if "/" in spec else ""
            raise UserError(
                f"--import expects MODULE or MODULE:FUNCTION (a dotted module name), got {spec!r}{hint}"
            )
        extension = _load(spec, f"--import {spec}")
        if extension.missing:
            raise UserError(
                f"--import {spec}: no module named {extension.missing!r} on the import path; install its "
                "package or add its directory to PYTHONPATH"
            )
        if extension.error:
            raise UserError(f"--import {spec} failed: {extension.error}")
        _imports[spec] = extension
    if _imports:
        os.environ[IMPORTS_ENV] = ",".join(_imports)


def require_hf_model_type(model_type: str | None, where: str) -> None:
    """Make sure transformers knows ``model_type`` (the HF side of verify and the tiny models),
    loading the plugins if it does not; an error that says what to install if none provides it."""
    from transformers import CONFIG_MAPPING

    if model_type in CONFIG_MAPPING:
        return
    load_plugins()
    if model_type in CONFIG_MAPPING:
        return
    raise UnsupportedModelError(
        f"{where}: transformers has no implementation of model_type {str(model_type)[:60]!r}; install the "
        f"package that registers one (it declares a {GROUP!r} entry point, as roll_models does for "
        f"internlm2), or name the module that registers it with --import MODULE{failures()}"
    )
