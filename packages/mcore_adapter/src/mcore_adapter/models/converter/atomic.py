"""Atomic output directories: write everything into a sibling temporary directory, then rename.

A conversion that fails or is interrupted (SIGINT, SIGTERM) leaves nothing behind, and an
existing destination is only replaced (with ``force``) once the new one is complete. A
destination that is, contains or lies inside the source is refused before anything is read.

The temporary directory is named ``.NAME.tmp-HOST-PID-TOKEN`` after its writer, so that a
later run into the same destination can remove what a killed run (``kill -9``, a node failure)
left behind, and only that: directories of writers that still run, or that ran on another
host, are left alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import OutputExistsError

logger = logging.getLogger("mcore_adapter")

# What marks a directory as an earlier output that ``force`` may replace.
CHECKPOINT_MARKERS = ("config.json", "mca_config.json", "latest_checkpointed_iteration.txt")


class Interrupted(BaseException):
    """SIGTERM (or SIGHUP) arrived while an output was being written; the partial output has
    been removed. A ``BaseException``, like ``KeyboardInterrupt``, so that no ``except
    Exception`` swallows it."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")


def _resolved(path: str | os.PathLike) -> Path:
    return Path(path).expanduser().resolve()


def check_not_overlapping(dst: str | os.PathLike, sources: Iterable[str | os.PathLike]) -> None:
    """Refuse a destination that is, contains or lies inside a source (symlinks resolved):
    writing it would replace or mix with the data being read."""
    target = _resolved(dst)
    for src in sources:
        source = _resolved(src)
        same = target == source or (target.exists() and source.exists() and os.path.samefile(target, source))
        if same:
            raise OutputExistsError(
                f"the destination {dst} is the source {src}; a conversion never writes over its "
                "source (not even with --force): choose another destination"
            )
        if source.is_relative_to(target):
            raise OutputExistsError(
                f"the destination {dst} contains the source {src}; replacing it would delete the "
                "source: choose a destination outside it"
            )
        if target.is_relative_to(source):
            raise OutputExistsError(
                f"the destination {dst} lies inside the source {src}; write the output outside "
                "the source directory"
            )


def check_output_dir(dst: str | os.PathLike, force: bool, sources: Iterable[str | os.PathLike] = ()) -> Path:
    """Check, before any work, that ``dst`` may be written: not overlapping a source, not
    existing unless ``force``, and with ``force`` only an earlier checkpoint (or an empty
    directory) is replaced, never a directory of other files."""
    check_not_overlapping(dst, sources)
    dst = Path(dst)
    if not (dst.exists() or dst.is_symlink()):
        return dst
    if not force:
        raise OutputExistsError(
            f"output directory {dst} already exists; choose a new path or pass --force (force=True) to replace it"
        )
    if not dst.is_dir():
        raise OutputExistsError(
            f"{dst} is a file; --force replaces an earlier checkpoint directory, never a file: "
            "choose another destination or remove it yourself"
        )
    if not dst.is_symlink():  # a link to a directory is replaced, its target left alone
        entries = sorted(p.name for p in dst.iterdir())
        if entries and not any(name in entries for name in CHECKPOINT_MARKERS):
            raise OutputExistsError(
                f"--force replaces an earlier checkpoint, but {dst} holds other files "
                f"({', '.join(entries[:5])}{', ...' if len(entries) > 5 else ''}) and no "
                f"{' / '.join(CHECKPOINT_MARKERS)}; choose another destination or remove it yourself"
            )
    return dst


# ---------------------------------------------------------------------- temporary directories
_HOST = re.sub(r"[^A-Za-z0-9_.]", "_", socket.gethostname()) or "host"


def _staging_name(dst: Path, kind: str) -> Path:
    return dst.parent / f".{dst.name}.{kind}-{_HOST}-{os.getpid()}-{secrets.token_hex(4)}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_staging(dst: str | os.PathLike) -> list[Path]:
    """Remove what earlier runs into ``dst`` left behind when they were killed: their
    temporary directories, and the previous output a killed ``force`` run had moved aside
    (put back at ``dst`` when nothing replaced it). Returns the directories removed."""
    dst = Path(dst).absolute()
    pattern = re.compile(rf"^\.{re.escape(dst.name)}\.(tmp|old)-(.+)-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    if not dst.parent.is_dir():
        return removed
    for entry in sorted(dst.parent.iterdir()):
        match = pattern.match(entry.name)
        if not match:
            continue
        kind, host, pid = match.group(1), match.group(2), int(match.group(3))
        if host != _HOST:
            logger.info(f"left {entry}: written by a process on {host}, which this run cannot check")
            continue
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if kind == "old" and not (dst.exists() or dst.is_symlink()):
            os.replace(entry, dst)
            logger.warning(
                f"restored {dst} from {entry.name}: process {pid} had moved it aside to replace it "
                "and was killed before it could"
            )
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed.append(entry)
        logger.warning(f"removed {entry}, left by process {pid} (no longer running) when it was interrupted")
    return removed


@contextlib.contextmanager
def _signals_raise_interrupted() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into ``Interrupted`` while the block runs (their default action
    kills the process without running any cleanup). Only the main thread can handle signals;
    elsewhere the caller's handlers stay as they are."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def handler(signum, frame):
        if not received:  # a second signal during the cleanup must not cut it short
            received.append(signum)
            raise Interrupted(signum)

    wanted = (signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, handler) for sig in wanted}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def staged_output_dir(
    dst: str | os.PathLike, force: bool = False, sources: Iterable[str | os.PathLike] = ()
) -> Iterator[Path]:
    """Yield a temporary directory that becomes ``dst`` when the block succeeds.

    The directory is made as a plain ``mkdir`` would (the umask decides its mode), so the
    output is as readable as any other directory the user creates.
    """
    dst = check_output_dir(dst, force, sources).absolute()
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst)
    with _signals_raise_interrupted():
        tmp = _staging_name(dst, "tmp")
        os.mkdir(tmp)
        try:
            yield tmp
            old = None
            if dst.exists() or dst.is_symlink():  # force: keep the old output until the new one is in place
                old = _staging_name(dst, "old")
                os.replace(dst, old)
            try:
                os.replace(tmp, dst)
            except BaseException:
                if old is not None:
                    os.replace(old, dst)
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
