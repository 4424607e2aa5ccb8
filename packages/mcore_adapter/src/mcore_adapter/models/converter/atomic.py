"""Atomic output directories: write everything into a sibling temporary directory, then rename.

A conversion that fails or is interrupted (SIGINT, SIGTERM) leaves nothing behind, and an
existing destination is only replaced (with ``force``) once the new one is complete. A
destination that is, contains or lies inside the source is refused before anything is read.

The temporary directory is named ``.NAME.tmp-HOST-PID-TOKEN`` after its writer, so that a
later run into the same destination can remove what a killed run (``kill -9``, a node failure)
left behind, and only that: directories of writers that still run, or that ran on another
host, are left alone.

Placing the output never replaces what this run did not mean to replace: a new destination is
taken with ``rename(RENAME_NOREPLACE)``, so a directory that appeared there while the run
worked (another conversion's, the user's) stays and this run fails with ``OutputExistsError``;
``force`` swaps the new output with the earlier checkpoint in one ``rename(RENAME_EXCHANGE)``
after checking again that it is one, so the destination is never missing. Where the kernel or
file system lacks ``renameat2`` the check and the rename are made under a lock on the parent
directory, which every run of this module takes.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
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

from .errors import OutputExistsError, OutputSpaceError

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
    _check_replaceable(dst)
    return dst


def _check_replaceable(dst: Path) -> None:
    """``force`` replaces an earlier checkpoint directory (or a link to one), nothing else."""
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


# ---------------------------------------------------------------------- placing the output
_RENAME_NOREPLACE, _RENAME_EXCHANGE = 1, 2
_AT_FDCWD = -100
_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = getattr(_libc, "renameat2", None)  # glibc >= 2.28; absent elsewhere


def _rename(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False where the system cannot do it (no such call, or a
    file system that does not support the flag), an ``OSError`` for any other failure."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(dst))


@contextlib.contextmanager
def _parent_locked(dst: Path) -> Iterator[None]:
    """The fallback's mutual exclusion: an exclusive lock on the destination's parent directory."""
    fd = os.open(dst.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _appeared(dst: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{dst} was created by someone else while this conversion ran; it is left as it is and this "
        "run's output was discarded: choose another destination, or pass --force to replace an earlier checkpoint"
    )


def _move_noreplace(src: Path, dst: Path) -> None:
    """Rename ``src`` to ``dst`` unless something stands at ``dst`` (``FileExistsError``)."""
    try:
        if _rename(src, dst, _RENAME_NOREPLACE):
            return
    except OSError as e:
        if e.errno in (errno.EEXIST, errno.ENOTEMPTY):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst)) from None
        raise
    with _parent_locked(dst):
        if dst.exists() or dst.is_symlink():
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(dst))
        os.rename(src, dst)


def _place(tmp: Path, dst: Path, force: bool) -> Path | None:
    """Move the finished ``tmp`` to ``dst``; returns what ``force`` swapped out (to remove)."""
    if not force or not (dst.exists() or dst.is_symlink()):
        try:
            _move_noreplace(tmp, dst)
        except FileExistsError:
            raise _appeared(dst) from None
        return None
    _check_replaceable(dst)  # again: it may have changed since the run started
    if _rename(tmp, dst, _RENAME_EXCHANGE):
        return tmp  # the earlier checkpoint now has the staging name
    with _parent_locked(dst):
        _check_replaceable(dst)
        old = _staging_name(dst, "old")
        os.rename(dst, old)
        os.rename(tmp, dst)
    return old


def _remove(path: Path) -> None:
    if path.is_symlink():  # a link to an earlier checkpoint: the link goes, its target stays
        path.unlink()
    else:
        shutil.rmtree(path, ignore_errors=True)


def check_free_space(directory: str | os.PathLike, needed: int) -> None:
    """Refuse to start writing ``needed`` bytes into ``directory`` where its file system has
    fewer free (for an unprivileged user), rather than fail half-way."""
    status = os.statvfs(directory)
    free = status.f_bavail * status.f_frsize
    if needed > free:
        raise OutputSpaceError(
            f"no space left on device for {directory} (needed {_size(needed)}, free {_size(free)}); free "
            "some space or choose a destination on another file system"
        )


def _size(nbytes: float) -> str:
    if nbytes < 1024:
        return f"{nbytes:.0f} bytes"
    for unit in ("KiB", "MiB", "GiB"):
        nbytes /= 1024
        if nbytes < 1024 or unit == "GiB":
            break
    return f"{nbytes:.1f} {unit}"


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
        if kind == "old":  # an earlier output a killed --force run moved aside: never removed here
            try:
                _move_noreplace(entry, dst)
            except FileExistsError:
                logger.warning(
                    f"left {entry}: process {pid} moved the earlier {dst.name} there to replace it and was "
                    f"killed, and {dst} exists again; remove whichever you do not need"
                )
                continue
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
    dst = Path(dst).absolute()
    check_output_dir(dst, force, sources)
    dst.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(dst)
    check_output_dir(dst, force, sources)  # again: the cleanup may have put an earlier output back
    with _signals_raise_interrupted():
        tmp = _staging_name(dst, "tmp")
        os.mkdir(tmp)
        try:
            yield tmp
            replaced = _place(tmp, dst, force)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if replaced is not None:
            _remove(replaced)
