"""Architecture registration that vLLM's plugin and the SGLang package share, engine-neutral:
the ``Architecture=module:Class`` entries that travel to an engine's processes in an
environment variable, and the checks on an entry at the call (the module must be findable and
bind the class), rather than when an engine first builds the model."""

from __future__ import annotations

import os

from mcore_adapter.registry import find_module_spec


class RegistrationError(ValueError):
    """An architecture registration (vLLM's or SGLang's) that cannot work, with what to do instead."""


def env_entries(variable: str) -> dict[str, str]:
    """``Architecture=module:Class`` entries, separated by ``;``, of an environment variable."""
    entries = {}
    for item in filter(None, (part.strip() for part in os.environ.get(variable, "").split(";"))):
        arch, sep, target = item.partition("=")
        if not sep or target.count(":") != 1:
            raise RegistrationError(
                f"{variable}: expected 'Architecture=module:Class' entries separated by ';', got {item!r}"
            )
        entries[arch.strip()] = target.strip()
    return entries


def check_entry(architecture: object, model_class: object) -> None:
    """Check a registration at the call rather than when an engine first builds the model: a
    non-empty ``architecture``; a ``model_class`` of the form "module:Class" whose module can be
    found and (where its source can be read) binds ``Class`` at module level. The module is
    located without being imported (its parent packages are not imported either), so a model
    module that imports vLLM's model code costs nothing here."""
    check_entry_form(architecture, model_class)
    assert isinstance(model_class, str)
    module, _, name = model_class.partition(":")
    _check_class_exists(model_class, module, name)


def check_entry_form(architecture: object, model_class: object) -> None:
    """The part of ``check_entry`` that looks at the two strings only."""
    if not isinstance(architecture, str) or not architecture.strip():
        raise RegistrationError(f"architecture must be a non-empty string, got {architecture!r}")
    if architecture != architecture.strip() or any(c.isspace() for c in architecture):
        raise RegistrationError(f"architecture must not contain whitespace, got {architecture!r}")
    if not isinstance(model_class, str):
        raise RegistrationError(f"model_class must be a 'module:Class' string, got {model_class!r}")
    if any(c in text for c in "=;" for text in (architecture, model_class)):
        raise RegistrationError(f"'=' and ';' cannot appear in {architecture!r} or {model_class!r}")
    module, _, name = model_class.partition(":")
    if not module or not name or ":" in name:
        raise RegistrationError(f"model_class must be 'module:Class', got {model_class!r}")
    if not all(part.isidentifier() for part in module.split(".")) or not name.isidentifier():
        raise RegistrationError(
            f"model_class must be 'module:Class' with a dotted module path and a class name, got {model_class!r}"
        )


def _module_level_names(source: str) -> set[str] | None:
    """The names a module's source binds at module level, None when it cannot be told statically
    (a star import, a module ``__getattr__``, or source that does not parse)."""
    import ast

    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    names: set[str] = set()
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            if node.name == "__getattr__":
                return None
            names.add(node.name)
            continue  # what their bodies bind is not module level
        if isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    return None
                names.add(alias.asname or alias.name.partition(".")[0])
        targets: list = []
        if isinstance(node, ast.Assign):
            targets = node.targets
        elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
            targets = [node.target]
        elif isinstance(node, ast.With | ast.AsyncWith):
            targets = [item.optional_vars for item in node.items]
        for target in filter(None, targets):
            names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        # compound statements at module level (if, try, with, for, while): their bodies bind
        # module-level names too
        for field in ("body", "orelse", "finalbody", "handlers"):
            stack.extend(child for child in getattr(node, field, None) or [] if isinstance(child, ast.AST))
        if isinstance(node, ast.ExceptHandler):
            stack.extend(node.body)
        if isinstance(node, ast.Match):
            stack.extend(stmt for case in node.cases for stmt in case.body)
    return names


def _check_class_exists(model_class: str, module: str, name: str) -> None:
    import sys

    loaded = sys.modules.get(module)
    if loaded is not None:
        if not hasattr(loaded, name):
            raise RegistrationError(f"model_class {model_class!r}: module {module} has no attribute {name!r}")
        return
    try:
        spec = find_module_spec(module)
    except (ImportError, ValueError) as e:
        raise RegistrationError(f"model_class {model_class!r}: module {module} cannot be found: {e}") from e
    if spec is None:
        raise RegistrationError(
            f"model_class {model_class!r}: no module named {module!r} on this Python path (vLLM's "
            "processes import it by name: it must be importable there too)"
        )
    origin = spec.origin if spec.has_location else None
    if not origin or not origin.endswith(".py"):
        return  # a namespace package, a compiled or otherwise loaded module: checked when imported
    try:
        with open(origin, encoding="utf-8") as f:
            names = _module_level_names(f.read())
    except (OSError, UnicodeDecodeError):
        return
    if names is not None and name not in names:
        raise RegistrationError(f"model_class {model_class!r}: {origin} defines no {name!r} at module level")


def add_env_entry(variable: str, architecture: str, model_class: str) -> dict[str, str]:
    """Check an entry (``check_entry``) and add it to ``variable``; returns the entries it held
    before."""
    check_entry(architecture, model_class)
    entries = env_entries(variable)
    if entries.get(architecture, model_class) != model_class:
        raise RegistrationError(
            f"{architecture} is already registered as {entries[architecture]}; not replacing it with {model_class}"
        )
    os.environ[variable] = ";".join(f"{a}={t}" for a, t in {**entries, architecture: model_class}.items())
    return entries
