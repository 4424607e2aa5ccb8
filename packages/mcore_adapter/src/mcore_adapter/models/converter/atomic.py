"""Atomic output directories: write everything into a sibling temporary directory, then rename.

A conversion that fails half-way leaves nothing behind, and an existing destination is only
replaced (with ``force``) once the new one is complete.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


class OutputExistsError(FileExistsError):
    pass


def check_output_dir(dst: str | os.PathLike, force: bool) -> Path:
    dst = Path(dst)
    if dst.exists() and not force:
        raise OutputExistsError(
            f"output directory {dst} already exists; choose a new path or pass --force (force=True) to replace it"
        )
    return dst


@contextlib.contextmanager
def staged_output_dir(dst: str | os.PathLike, force: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``dst`` when the block succeeds."""
    dst = check_output_dir(dst, force).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if dst.exists():  # force: keep the old output until the new one is in place
        old = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
        os.replace(dst, old / "replaced")
    os.replace(tmp, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
