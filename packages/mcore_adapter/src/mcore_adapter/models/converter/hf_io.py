"""Hugging Face checkpoint I/O: lazy safetensors reading and streaming sharded writing."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

HF_CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size


class CheckpointError(ValueError):
    """A checkpoint directory is missing files or holds inconsistent ones."""


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file may be truncated") from None


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


def owns_storage(tensor: torch.Tensor) -> torch.Tensor:
    """The tensor itself if it is contiguous and owns all of its storage, else a compact copy.

    Views produced by ``split``/``chunk`` keep their parent's whole storage alive; saving them
    as is would write (torch.save) or refuse (safetensors) the shared bytes.
    """
    tensor = tensor.contiguous()
    if tensor.untyped_storage().nbytes() != tensor.numel() * tensor.element_size():
        tensor = tensor.clone()
    return tensor


class HFCheckpoint:
    """An HF model directory, read lazily: tensors are loaded one at a time, file by file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a directory")
        self.config = read_json(self.path / HF_CONFIG_NAME)
        self.weight_map = self._weight_map()

    def _weight_map(self) -> dict[str, str]:
        index = self.path / SAFE_WEIGHTS_INDEX_NAME
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map")
            missing = sorted({f for f in weight_map.values() if not (self.path / f).exists()})
            if missing:
                raise CheckpointError(f"{index} names shard(s) that do not exist: {missing}")
            return weight_map
        single = self.path / SAFE_WEIGHTS_NAME
        if single.exists():
            with self._open(SAFE_WEIGHTS_NAME) as f:
                return dict.fromkeys(f.keys(), SAFE_WEIGHTS_NAME)
        found = sorted(p.name for p in self.path.iterdir())
        raise CheckpointError(
            f"{self.path} holds no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} (found: {found}); "
            "only safetensors checkpoints are supported: re-save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )

    def _open(self, filename: str):
        try:
            return safe_open(self.path / filename, framework="pt")
        except Exception as e:  # safetensors raises its own error types for a bad header
            raise CheckpointError(
                f"cannot read {self.path / filename}: {e}; the shard may be truncated"
            ) from e

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def tensors(self, names: Iterable[str] | None = None) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for ``names`` (default all), opening each shard once."""
        wanted = self.keys() if names is None else list(names)
        by_file: dict[str, list[str]] = {}
        for name in wanted:
            if name not in self.weight_map:
                raise CheckpointError(f"tensor {name!r} is not in the checkpoint at {self.path}")
            by_file.setdefault(self.weight_map[name], []).append(name)
        for filename, file_names in by_file.items():
            with self._open(filename) as f:
                present = set(f.keys())
                for name in file_names:
                    if name not in present:
                        raise CheckpointError(
                            f"the index maps {name!r} to {filename}, which does not hold it; "
                            "the checkpoint is incomplete"
                        )
                    try:
                        yield name, f.get_tensor(name)
                    except Exception as e:
                        raise CheckpointError(f"cannot read {name!r} from {self.path / filename}: {e}") from e

    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's weights (read from the first tensor's header)."""
        name = next(iter(self.weight_map))
        with self._open(self.weight_map[name]) as f:
            code = f.get_slice(name).get_dtype()
        return _SAFETENSORS_DTYPES[code]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
}


class SafetensorsWriter:
    """Writes tensors as they come into safetensors shards of at most ``max_shard_bytes``,
    then names them and writes the index as transformers does (``model.safetensors`` when one
    shard suffices)."""

    def __init__(self, path: str | os.PathLike, max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES):
        self.path = Path(path)
        self.max_shard_bytes = max_shard_bytes
        self._buffer: dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: list[list[str]] = []
        self.total_bytes = 0

    def add(self, name: str, tensor: torch.Tensor) -> None:
        if name in self._buffer or any(name in shard for shard in self._shards):
            raise ValueError(f"tensor {name!r} written twice")
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[name] = owns_storage(tensor)
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes

    def _shard_tmp_name(self, index: int) -> str:
        return f"model-shard-{index:05d}.safetensors.tmp"

    def _flush(self) -> None:
        save_file(
            self._buffer, self.path / self._shard_tmp_name(len(self._shards)), metadata={"format": "pt"}
        )
        self._shards.append(list(self._buffer))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> None:
        if self._buffer or not self._shards:
            self._flush()
        n = len(self._shards)
        if n == 1:
            os.replace(self.path / self._shard_tmp_name(0), self.path / SAFE_WEIGHTS_NAME)
            return
        weight_map = {}
        for i, names in enumerate(self._shards):
            final = f"model-{i + 1:05d}-of-{n:05d}.safetensors"
            os.replace(self.path / self._shard_tmp_name(i), self.path / final)
            weight_map.update(dict.fromkeys(names, final))
        write_json(
            self.path / SAFE_WEIGHTS_INDEX_NAME,
            {"metadata": {"total_size": self.total_bytes}, "weight_map": weight_map},
        )
