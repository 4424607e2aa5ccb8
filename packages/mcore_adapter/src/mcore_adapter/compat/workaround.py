"""What every workaround declares: the dependency and the releases it was checked against, and
the upstream names it replaces, wraps or relies on. The declaration drives the patching
(``Workaround.patch`` sets only a declared name, after the version check) and the test that
tells when upstream has moved on (tests/mcore_adapter/test_compat.py).

A name is written ``"module:attribute.path"``. A global that upstream defines only sometimes
(``te_general_gemm`` exists only where Transformer Engine imports) is written through the
function that reads it: ``"module:Class.method reads name"``.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import Version

from ..models.converter.errors import UserError

_READS = " reads "


class UnsupportedVersionError(UserError, RuntimeError):
    """A workaround is needed with a release of its dependency it was not checked against."""


@functools.cache
def installed_version(distribution: str) -> Version:
    try:
        return Version(importlib.metadata.version(distribution))
    except importlib.metadata.PackageNotFoundError:
        raise UnsupportedVersionError(
            f"mcore_adapter needs {distribution} installed as a distribution (pip/uv), to know "
            "which of its workarounds apply; none was found"
        ) from None


@dataclass(frozen=True)
class Workaround:
    name: str  # what the drift test tells to drop
    distribution: str  # the dependency, as pip names it
    versions: str  # PEP 440 specifiers: the releases it was checked against
    symbols: tuple[str, ...]  # the upstream names it replaces, wraps or relies on
    why: str

    def require(self) -> None:
        """Raise unless the installed release is one this workaround was checked against.

        Outside that range neither choice is safe silently: applied, it may replace an upstream
        function whose meaning changed (wrong numbers, no error); skipped, the model fails deep
        inside the dependency, or computes without the fix. So it is an error that names both
        and says what to do."""
        found = installed_version(self.distribution)
        if not SpecifierSet(self.versions).contains(found, prereleases=True):
            raise UnsupportedVersionError(
                f"mcore_adapter's workaround {self.name!r} ({self.why}) is checked against "
                f"{self.distribution}{self.versions}; found {self.distribution} {found}. Install a "
                f"release in that range, or run tests/mcore_adapter/test_compat.py with {found} and "
                "widen the range in mcore_adapter/compat/"
            )

    def patch(self, symbol: str, value: Any) -> None:
        """Set the declared ``symbol`` to ``value``, process-wide."""
        if symbol not in self.symbols:
            raise ValueError(f"workaround {self.name!r} declares no {symbol!r}: add it to its symbols")
        self.require()
        module, path = symbol.split(":")
        if _READS in path:  # the global the function reads
            owner, name = importlib.import_module(module), path.split(_READS)[1]
        else:
            owner_path, _, name = path.rpartition(".")
            owner = resolve(module, owner_path)
        setattr(owner, name, value)

    def missing(self) -> list[str]:
        """The declared symbols that the installed dependency lacks."""
        return [symbol for symbol in self.symbols if not _present(symbol)]


def resolve(module: str, path: str) -> Any:
    """``module`` imported, then ``path``'s attributes in turn (an empty path: the module)."""
    found: Any = importlib.import_module(module)
    for name in filter(None, path.split(".")):
        found = getattr(found, name)
    return found


def _present(symbol: str) -> bool:
    module, path = symbol.split(":")
    reader, _, name = path.partition(_READS)
    try:
        found = resolve(module, reader)
    except (ImportError, AttributeError):
        return False
    return not name or name in found.__code__.co_names
