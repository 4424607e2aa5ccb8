"""Loading Megatron's ``torch_dist`` checkpoints without running code from them.

megatron-core's loader (0.16 and 0.19) reads a checkpoint through torch's
``FileSystemReader``, which unpickles ``.metadata`` with plain ``pickle`` and each stored
object (``_extra_state``) with ``torch.load(weights_only=False)``; both run whatever a crafted
file asks. ``load_dist_checkpoint`` is ``dist_checkpointing.load`` with a reader that reads
the metadata through the allowlist of ``converter.untrusted`` and stored objects with
``weights_only``, and a common-state loader that does the same for ``common.pt``.

Megatron builds its reader in one module-level function, ``_get_filesystem_reader``, with no
way to pass one in; the reader is put there only while our own strategy loads, and a
megatron-core without that function is refused rather than loaded unchecked
(``compat.megatron.torch_dist_reader``).
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing
from megatron.core.dist_checkpointing.strategies.common import COMMON_STATE_FNAME, TorchCommonLoadStrategy
from megatron.core.dist_checkpointing.strategies.torch import TorchDistLoadShardedStrategy
from torch.distributed.checkpoint import FileSystemReader
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.metadata import StorageMeta

from ..compat import megatron as megatron_compat
from .converter.atomic import check_free_space
from .converter.errors import CheckpointError, UserError
from .converter.hf_io import read_json
from .converter.untrusted import load_weights_only, open_regular, read_dcp_metadata


class _WeightsOnlyObjects:
    """A load planner whose stored objects are read with ``weights_only`` (the planner's own
    ``load_bytes`` unpickles them unrestricted); what that builds is handed on re-serialized."""

    def __init__(self, planner, where: Path):
        self._planner, self._where = planner, where

    def __getattr__(self, name: str) -> Any:
        return getattr(self._planner, name)

    def load_bytes(self, read_item, value: io.BytesIO) -> None:
        obj = load_weights_only(value, f"{self._where}: the stored object {read_item.dest_index.fqn!r}")
        safe = io.BytesIO()
        torch.save(obj, safe)
        safe.seek(0)
        self._planner.load_bytes(read_item, safe)


class SafeFileSystemReader(FileSystemReader):
    """torch's reader over metadata already read through the allowlist (torch swallows what
    ``read_metadata`` raises and falls back to per-rank files, so the metadata is read, and
    refused, before torch starts), with stored objects read with ``weights_only``."""

    def __init__(self, path, metadata) -> None:
        super().__init__(path)
        self._metadata = metadata

    def read_metadata(self, *args: Any, **kwargs: Any):
        if kwargs.get("rank") is not None:  # per-rank metadata: not what Megatron writes
            raise CheckpointError(f"{self.path} has no per-rank metadata")
        if getattr(self._metadata, "storage_meta", None) is None:
            self._metadata.storage_meta = StorageMeta()
        self._metadata.storage_meta.load_id = self.load_id
        return self._metadata

    def read_data(self, plan, planner):
        return super().read_data(plan, _WeightsOnlyObjects(planner, Path(self.path)))


@contextlib.contextmanager
def _safe_reader(checkpoint_dir) -> Iterator[None]:
    metadata = read_dcp_metadata(Path(checkpoint_dir) / ".metadata")

    def reader(path, cache_metadata: bool = False) -> SafeFileSystemReader:
        if Path(path) != Path(checkpoint_dir):
            raise RuntimeError(f"megatron-core asked to read {path} while loading {checkpoint_dir}")
        return SafeFileSystemReader(path, metadata)

    with megatron_compat.torch_dist_reader(reader):
        yield


class _SafeShardedLoad(TorchDistLoadShardedStrategy):
    def load(self, sharded_state_dict, checkpoint_dir):
        with _safe_reader(checkpoint_dir):
            return super().load(sharded_state_dict, checkpoint_dir)

    def load_tensors_metadata(self, checkpoint_dir, metadata=None):
        with _safe_reader(checkpoint_dir):
            return super().load_tensors_metadata(checkpoint_dir, metadata)

    def load_sharded_metadata(self, checkpoint_dir):
        with _safe_reader(checkpoint_dir):
            return super().load_sharded_metadata(checkpoint_dir)


class _SafeCommonLoad(TorchCommonLoadStrategy):
    def load_common(self, checkpoint_dir):
        path = Path(checkpoint_dir) / COMMON_STATE_FNAME
        with open_regular(path) as f:
            return load_weights_only(f, str(path), map_location="cpu")


def _first_failure(e: CheckpointException, kinds: tuple[type, ...]) -> BaseException | None:
    """What a rank raised inside torch's checkpoint (it wraps them all in its own exception,
    whose message is every rank's traceback)."""
    for failure in e.failures.values():
        error = failure[0] if isinstance(failure, tuple) else failure
        while error is not None:  # Megatron's writer re-raises a worker's error as its cause
            if isinstance(error, kinds):
                return error
            error = error.__cause__ or error.__context__
    return None


# What megatron-core 0.16's torch_dist strategy gets told by torch 2.13 on every load: torch
# deprecates the calls megatron makes (nothing a user of a checkpoint can act on).
_INTERNAL_DEPRECATIONS = (
    r"`load_state_dict` is deprecated and will be removed in future versions",
    r"Please use DTensor instead and we are deprecating ShardedTensor",
)


@contextlib.contextmanager
def _without_internal_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in _INTERNAL_DEPRECATIONS:
            warnings.filterwarnings("ignore", message=message, category=FutureWarning)
        yield


def save_dist_checkpoint(sharded_state_dict: dict, checkpoint_dir: Path) -> None:
    """``dist_checkpointing.save`` after checking the space this rank's tensors need (every
    rank sums the job's), with a failed write (a full disk) raised as the rank's own error."""
    import torch.distributed as dist

    needed = torch.tensor(
        [sum(t.numel() * t.element_size() for t in _tensors(sharded_state_dict))], dtype=torch.int64
    )
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(needed)
    check_free_space(checkpoint_dir, int(needed))
    try:
        dist_checkpointing.save(sharded_state_dict, str(checkpoint_dir))
    except CheckpointException as e:
        error = _first_failure(e, (OSError, UserError))
        if error is not None:
            raise error from None
        # The ranks' errors crossed a process boundary and lost their type: say the first one.
        first = next(iter(e.failures.values()))
        first = first[0] if isinstance(first, tuple) else first
        raise OSError(f"writing {checkpoint_dir} failed: {str(first).strip().splitlines()[0]}") from None


def _tensors(state: Any) -> Iterator[torch.Tensor]:
    """The tensors of a (nested) sharded state dict: each sharded tensor's local data."""
    if isinstance(state, dict):
        for value in state.values():
            yield from _tensors(value)
    elif isinstance(state, (list, tuple)):
        for value in state:
            yield from _tensors(value)
    else:
        data = getattr(state, "data", state)
        if isinstance(data, torch.Tensor):
            yield data


def load_dist_checkpoint(sharded_state_dict: dict, checkpoint_dir: Path) -> dict:
    """``dist_checkpointing.load`` of a ``torch_dist`` checkpoint, reading no pickle unrestricted."""
    config = read_json(checkpoint_dir / "metadata.json")
    if config.get("sharded_backend") != "torch_dist":
        raise CheckpointError(
            f"{checkpoint_dir / 'metadata.json'} names the sharded backend "
            f"{str(config.get('sharded_backend'))[:40]!r}; only 'torch_dist' checkpoints are read"
        )
    try:
        with _without_internal_deprecations():
            return dist_checkpointing.load(
                sharded_state_dict,
                str(checkpoint_dir),
                sharded_strategy=_SafeShardedLoad(),
                common_strategy=_SafeCommonLoad(),
            )
    except CheckpointException as e:  # torch wraps what a rank raised in its own exception
        error = _first_failure(e, (UserError,))
        if error is None:
            raise
        raise error from None
