"""Reading files that come from strangers: checkpoints are data, never code.

- A pickle is read only by ``torch.load(weights_only=True)`` (``load_weights_only``) or, for
  the one pickle that format forces on us, the ``.metadata`` of torch's distributed checkpoint
  (Megatron's ``torch_dist``), by an unpickler that admits only the classes that metadata is
  made of (``DCP_METADATA_GLOBALS``). torch's own reader unpickles that file without any
  restriction: a crafted one runs code the moment a checkpoint is loaded.
- A file named by a checkpoint (a shard in an index, a storage file in that metadata) is a
  plain file name inside the checkpoint directory (``plain_name``), and only regular files are
  opened (``open_regular``): a FIFO would block a reader forever, a device read without end.
- Errors name the file and what is wrong with it; they never echo the file's bytes.

torch is imported where it is used: the CLI checks its arguments with this module before
anything heavy is imported.
"""

from __future__ import annotations

import io
import os
import pickle
import stat
from pathlib import Path
from typing import Any

from .errors import CheckpointError

_DCP = "torch.distributed.checkpoint"
# Every class and function the `.metadata` of a torch distributed checkpoint names, as torch
# writes it for Megatron (checked against every family and layout we save, see the tests):
# plain dataclasses and enums, torch.Size, and the lookups of a dtype or a layout by name.
DCP_METADATA_GLOBALS = frozenset(
    {(f"{_DCP}.metadata", name) for name in (
        "Metadata",
        "StorageMeta",
        "MetadataIndex",
        "TensorStorageMetadata",
        "BytesStorageMetadata",
        "ChunkStorageMetadata",
        "TensorProperties",
        "_MEM_FORMAT_ENCODING",
    )}
    | {(f"{_DCP}.planner", name) for name in (
        "SavePlan",
        "WriteItem",
        "WriteItemType",
        "TensorWriteData",
        "BytesIOWriteData",
    )}
    | {
        (f"{_DCP}.filesystem", "_StorageInfo"),
        ("torch", "Size"),
        ("torch.serialization", "_get_layout"),  # torch.strided etc. by name
        ("collections", "OrderedDict"),
    }
)  # fmt: skip


def _is_torch_dtype(module: str, name: str) -> bool:
    import torch

    return module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)


class _Refused(Exception):
    pass


class _MetadataUnpickler(pickle.Unpickler):
    """The standard library's way to restrict a pickle (``find_class``, which every global and
    extension code passes through); no persistent ids (the base class refuses them)."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in DCP_METADATA_GLOBALS or _is_torch_dtype(module, name):
            return super().find_class(module, name)
        raise _Refused


def plain_name(name: object, where: str) -> str:
    """``name`` as a file of the checkpoint directory: a non-empty plain name, no directory part
    (so no absolute path, no ``..``), nothing that could reach outside."""
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or len(name) > 255
    ):
        shown = repr(name)[:80] if isinstance(name, str) else type(name).__name__
        raise CheckpointError(
            f"{where} names the file {shown}; a checkpoint's files are plain names inside its "
            "directory (no directory part, no '..', no absolute path): refused, nothing outside was read"
        )
    return name


def check_regular(path: Path) -> os.stat_result:
    """``path``'s status, following links, refused unless it is a regular file."""
    try:
        status = os.stat(path)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; the checkpoint is incomplete") from None
    if not stat.S_ISREG(status.st_mode):
        raise CheckpointError(
            f"{path} is {file_kind(status.st_mode)}, not a regular file: a checkpoint's files are regular files"
        )
    return status


def file_kind(mode: int) -> str:
    """What a file that is not a regular one is, in words, from its ``st_mode``."""
    for test, name in (
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def open_regular(path: Path) -> io.BufferedReader:
    """Open a file for reading only if it is a regular file, checked on the opened descriptor
    (opened non-blocking, so a FIFO put in its place cannot block the open itself)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist; the checkpoint is incomplete") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            check_regular(path)  # says what it is
            raise CheckpointError(f"{path} is not a regular file")  # replaced since the check
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def load_weights_only(file: Any, what: str | None = None, **kwargs: Any) -> Any:
    """``torch.load(file, weights_only=True)`` with its refusal as one line naming the file, or
    ``what`` (torch's own message runs to a dozen lines and quotes the pickle)."""
    import torch

    try:
        return torch.load(file, weights_only=True, **kwargs)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{what or file} holds objects other than tensors and plain data, which "
            "torch.load(weights_only=True) refuses to build: refused, nothing in it was run"
        ) from None


def read_dcp_metadata(path: Path):
    """The ``Metadata`` of a torch distributed checkpoint, unpickled through the allowlist, with
    every storage file it names checked to be a plain file name of its directory."""
    from torch.distributed.checkpoint.metadata import Metadata

    from ...compat.torch import dcp_storage_info

    storage_info = dcp_storage_info()

    with open_regular(path) as f:
        try:
            metadata = _MetadataUnpickler(f).load()
        except _Refused:
            raise CheckpointError(
                f"{path} asks to load a class or function that torch's distributed-checkpoint metadata "
                "is never made of: refused, nothing in it was run (the file was tampered with or is "
                "not a Megatron checkpoint)"
            ) from None
        except Exception as e:  # anything a damaged pickle raises; its text may quote the file
            raise CheckpointError(
                f"{path} is not readable distributed-checkpoint metadata ({type(e).__name__}); it may be "
                "truncated or damaged"
            ) from None
    storage = getattr(metadata, "storage_data", None)
    if not isinstance(metadata, Metadata) or not isinstance(storage, dict):
        raise CheckpointError(f"{path} does not hold distributed-checkpoint metadata")
    for info in storage.values():
        if not isinstance(info, storage_info):
            raise CheckpointError(f"{path}: a storage entry is not a file range")
        plain_name(info.relative_path, str(path))
        if not all(
            isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (info.offset, info.length)
        ):
            raise CheckpointError(
                f"{path}: a storage entry of {info.relative_path} has a negative or non-integer range"
            )
        if info.transform_descriptors:  # Megatron writes none; the transforms are plug-ins
            raise CheckpointError(
                f"{path}: {info.relative_path} is stored through transforms, which are not read"
            )
    for name in {info.relative_path for info in storage.values()}:
        check_regular(path.parent / name)
    return metadata
