"""The shared-memory segment of the ``roll_shm`` backend, and the engine's checks on it (no vLLM
import, so the checks are testable on their own).

The path of the segment reaches the engine through ``init_weight_transfer_engine``, an RPC
that anyone who can talk to the engine can make; the engine must not become a tool that opens,
creates, grows, truncates or zeroes whatever file it is pointed at. So:

- The trainer creates the segment in a private directory of its own (``mkdtemp``: a fresh
  ``roll-refit-*`` directory, mode 0700) as ``segment-<32 random hex digits>`` with
  ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600, and sizes it (``ftruncate``) before it tells
  the engine, and again before it tells the engine of a larger size. It removes both at
  shutdown.
- The engine (``open_segment``) maps only a file that looks like exactly that, and maps it
  read-only: an absolute, normalized path (no ``..``) whose name has that form, inside a
  directory (not a link) named ``roll-refit-*``, owned by the engine's user and closed to
  everyone else (no group/other permission bits); the file a regular file (not a link, FIFO,
  device or directory; opened with ``O_NOFOLLOW``, without ``O_CREAT``/``O_TRUNC``, and checked
  again on the open descriptor, so a file swapped in between is caught), owned by the engine's
  user, no group/other permission bits, one link, and at least as large as the mapping asked
  for. The engine never changes the file's size or content. Anything else raises
  ``WeightSyncError`` saying what was wrong.

Trainer and engine therefore have to run as the same user on the same host, which is what a
shared-memory transfer needs anyway. A random name adds no secret (the init info carries it),
but with the name and directory form it keeps a user's other private files (``~/.ssh/id_*``
is also 0600 in a 0700 directory) out of reach.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import secrets
import stat
import tempfile
import warnings
import weakref

import torch

from mcore_adapter.export import file_kind
from roll_infer.weight_sync.common import WeightSyncError

DIR_PREFIX = "roll-refit-"
_FILE_NAME = re.compile(r"^segment-[0-9a-f]{32}$")


def _check_owned_private(what: str, path: str, st: os.stat_result) -> None:
    uid = os.geteuid()
    if st.st_uid != uid:
        raise WeightSyncError(
            f"roll_shm: {what} {path} is owned by uid {st.st_uid}, not by the engine's uid {uid}"
        )
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise WeightSyncError(
            f"roll_shm: {what} {path} has mode {stat.S_IMODE(st.st_mode):04o}; it must give group and "
            "others no access (the trainer creates it private)"
        )


def check_segment_path(path: object) -> str:
    """The checks that need nothing but the path's form and its parent directory."""
    if not isinstance(path, str) or not path:
        raise WeightSyncError(f"roll_shm: the segment path must be a non-empty string, got {path!r}")
    if "\0" in path:
        raise WeightSyncError(f"roll_shm: the segment path {path!r} contains a NUL byte")
    if not os.path.isabs(path) or ".." in path.split(os.sep) or os.path.normpath(path) != path:
        raise WeightSyncError(
            f"roll_shm: the segment path {path!r} must be absolute and normalized (no '..', '.' or '//')"
        )
    directory, name = os.path.split(path)
    if not _FILE_NAME.match(name) or not os.path.basename(directory).startswith(DIR_PREFIX):
        raise WeightSyncError(
            f"roll_shm: {path} is not a segment the trainer created (expected "
            f".../{DIR_PREFIX}*/segment-<32 hex digits>)"
        )
    try:
        st = os.lstat(directory)
    except OSError as e:
        raise WeightSyncError(f"roll_shm: the segment's directory {directory}: {e.strerror}") from e
    if not stat.S_ISDIR(st.st_mode):
        raise WeightSyncError(f"roll_shm: the segment's directory {directory} is {file_kind(st.st_mode)}")
    _check_owned_private("the segment's directory", directory, st)
    return path


def open_segment(path: object, nbytes: object) -> torch.Tensor:
    """Map, read-only, ``nbytes`` of the segment at ``path`` after the checks of the module
    docstring; raise ``WeightSyncError`` naming what is wrong. Never creates, grows, truncates
    or writes the file."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes <= 0:
        raise WeightSyncError(f"roll_shm: the segment size must be a positive int, got {nbytes!r}")
    path = check_segment_path(path)
    try:
        before = os.lstat(path)
    except FileNotFoundError as e:
        raise WeightSyncError(
            f"roll_shm: the segment {path} does not exist (the engine never creates one)"
        ) from e
    except OSError as e:
        raise WeightSyncError(f"roll_shm: the segment {path}: {e.strerror}") from e
    if not stat.S_ISREG(before.st_mode):
        raise WeightSyncError(
            f"roll_shm: the segment {path} is {file_kind(before.st_mode)}, not a regular file"
        )
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as e:
        raise WeightSyncError(f"roll_shm: the segment {path} cannot be opened: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != (before.st_dev, before.st_ino) or not stat.S_ISREG(st.st_mode):
            raise WeightSyncError(f"roll_shm: the segment {path} was replaced while it was being opened")
        _check_owned_private("the segment", path, st)
        if st.st_nlink != 1:
            raise WeightSyncError(
                f"roll_shm: the segment {path} has {st.st_nlink} links; the trainer's has one"
            )
        if st.st_size < nbytes:
            raise WeightSyncError(
                f"roll_shm: the segment {path} holds {st.st_size} bytes, fewer than the {nbytes} to map "
                "(the trainer sizes it before it sends the size; the engine never grows it)"
            )
        mapped = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ)
    finally:
        os.close(fd)
    with warnings.catch_warnings():  # "not writable": read-only on purpose, the engine only copies out
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(mapped, dtype=torch.uint8)  # keeps the mapping alive


# ---------------------------------------------------------------------- trainer side
class Segment:
    """The trainer's side of the shared file: created private (see the module docstring), grown
    for a tensor larger than a bucket, removed with its directory at shutdown (or when this
    object is collected)."""

    def __init__(self, directory: str, nbytes: int) -> None:
        self.directory = tempfile.mkdtemp(prefix=DIR_PREFIX, dir=directory)  # mode 0700
        self.path = os.path.join(self.directory, f"segment-{secrets.token_hex(16)}")
        self._cleanup = weakref.finalize(self, _remove, self.path, self.directory)
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        os.close(os.open(self.path, flags, 0o600))
        self.resize(nbytes)

    def resize(self, nbytes: int) -> None:
        os.truncate(self.path, nbytes)
        self.nbytes = nbytes
        self.tensor = torch.from_file(self.path, shared=True, size=nbytes, dtype=torch.uint8)

    def close(self) -> None:
        self._cleanup()


def _remove(path: str, directory: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    with contextlib.suppress(OSError):
        os.rmdir(directory)
