"""mcore_adapter's workarounds (``mcore_adapter.compat``) against the installed dependencies.

Each workaround declares the upstream names it replaces, wraps or relies on: one that is gone
means the workaround has nothing left to fix there, and the failure names the workaround to
drop or rework. A release outside a workaround's declared range is refused until it is checked.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mcore_adapter
from mcore_adapter.compat import WORKAROUNDS, UnsupportedVersionError, Workaround
from mcore_adapter.compat.workaround import installed_version

PACKAGE = Path(mcore_adapter.__file__).parent


@pytest.mark.parametrize("workaround", WORKAROUNDS, ids=lambda w: w.name)
def test_upstream_still_has_what_the_workaround_replaces(workaround):
    missing = workaround.missing()
    assert not missing, (
        f"{workaround.distribution} {installed_version(workaround.distribution)} no longer has "
        f"{missing}: drop or rework the workaround {workaround.name!r} in mcore_adapter/compat/ "
        f"({workaround.why})"
    )


@pytest.mark.parametrize("workaround", WORKAROUNDS, ids=lambda w: w.name)
def test_installed_release_is_one_it_was_checked_against(workaround):
    workaround.require()


def test_a_missing_name_is_found():
    gone = Workaround(
        "gone",
        "torch",
        ">=2",
        ("torch:cuda.no_such_name", "torch.nn.functional:relu reads no_such_name"),
        "a test",
    )
    assert gone.missing() == list(gone.symbols)


def test_names_are_unique():
    names = [w.name for w in WORKAROUNDS]
    assert len(names) == len(set(names))


def test_a_release_outside_the_range_is_refused():
    old = Workaround("an old one", "torch", "<1", ("torch:cuda.synchronize",), "a test")
    with pytest.raises(
        UnsupportedVersionError, match=r"'an old one' .* checked against torch<1; found torch"
    ):
        old.patch("torch:cuda.synchronize", None)


def test_only_declared_names_are_patched():
    with pytest.raises(ValueError, match="declares no 'torch:cuda.is_available'"):
        WORKAROUNDS[0].patch("torch:cuda.is_available", lambda: True)


def _dependency_attribute_writes(path: Path) -> list[str]:
    """``module.x = ...`` and ``setattr(module, ...)`` where ``module`` is an imported third-party
    module (or a name imported from one)."""
    tree = ast.parse(path.read_text(), str(path))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {
                (a.asname or a.name).split(".")[0]
                for a in node.names
                if not a.name.startswith("mcore_adapter")
            }
        elif (
            isinstance(node, ast.ImportFrom)
            and node.level == 0
            and not node.module.startswith(("mcore_adapter", "__future__"))
        ):
            imported |= {a.asname or a.name for a in node.names}

    def root(node: ast.expr) -> str | None:
        while isinstance(node, ast.Attribute):
            node = node.value
        return node.id if isinstance(node, ast.Name) else None

    found = []
    for node in ast.walk(tree):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "setattr":
            targets = node.args[:1]
        for target in targets:
            if root(target) in imported and (isinstance(target, ast.Attribute) or isinstance(node, ast.Call)):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    return found


def test_only_compat_changes_a_dependency():
    writes = [
        where
        for path in sorted(PACKAGE.rglob("*.py"))
        if "compat" not in path.relative_to(PACKAGE).parts
        for where in _dependency_attribute_writes(path)
    ]
    assert not writes, f"dependency attributes set outside mcore_adapter/compat/: {writes}"
