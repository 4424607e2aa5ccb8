"""Our workarounds for gaps in our dependencies, in quarantine: one module per dependency
(``megatron``, ``torch``), each workaround declared (``workaround.Workaround``) with the releases
it was checked against and the upstream names it replaces, wraps or relies on.

A workaround is applied only through its declaration, which refuses a release outside its range;
``tests/mcore_adapter/test_compat.py`` fails, naming the workaround to drop, when upstream no
longer has a declared name. Nothing else in mcore_adapter changes a dependency's attributes.
"""

from __future__ import annotations

from . import megatron, torch
from .workaround import UnsupportedVersionError, Workaround

WORKAROUNDS: tuple[Workaround, ...] = (*torch.WORKAROUNDS, *megatron.WORKAROUNDS)

__all__ = ["WORKAROUNDS", "UnsupportedVersionError", "Workaround", "megatron", "torch"]
