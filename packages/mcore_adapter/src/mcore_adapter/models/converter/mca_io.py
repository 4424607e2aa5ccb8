"""The MCA checkpoint directory: ``mca_config.json`` plus weights in one of Megatron's formats.

Layout (as Megatron-LM writes it, so its tools read it)::

    mca_config.json                        Megatron config, parallel layout, source HF config
    latest_checkpointed_iteration.txt      "1"
    iter_0000001/mp_rank_XX[_YYY]/model_optim_rng.pt    format "torch": one file per rank
    iter_0000001/*.distcp, metadata.json ...            format "torch_dist": dist_checkpointing

``torch`` is written and read here with torch alone; ``torch_dist`` is megatron-core's
dist_checkpointing and is handled where a model is built.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hf_io import CheckpointError, read_json, write_json
from .layout import LayoutError, ParallelLayout
from .template import ConversionError

MCA_CONFIG_NAME = "mca_config.json"
TRACKER_NAME = "latest_checkpointed_iteration.txt"
ITERATION = 1
CHECKPOINT_VERSION = 3.0  # Megatron-LM's current state-dict layout version
FORMATS = ("torch", "torch_dist")
MCA_FORMAT_VERSION = 1


def is_mca_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MCA_CONFIG_NAME).is_file()


def iteration_dir(path: str | os.PathLike, iteration: int = ITERATION) -> Path:
    return Path(path) / f"iter_{iteration:07d}"


def rank_dir_name(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"


@dataclass
class McaCheckpointMeta:
    """What ``mca_config.json`` holds."""

    hf_model_type: str
    mca_config: dict[str, Any]
    hf_config: dict[str, Any] | None
    checkpoint_format: str
    hf_weight_dtype: str = "float32"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tp(self) -> int:
        return int(self.mca_config.get("tensor_model_parallel_size", 1))

    @property
    def pp(self) -> int:
        return int(self.mca_config.get("pipeline_model_parallel_size", 1))

    @property
    def layout(self) -> ParallelLayout:
        try:
            return ParallelLayout.from_kwargs(self.mca_config).validate(self.mca_config)
        except LayoutError as e:
            raise CheckpointError(f"the layout in {MCA_CONFIG_NAME} is invalid: {e}") from None

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        write_json(
            path / MCA_CONFIG_NAME,
            {
                "format_version": MCA_FORMAT_VERSION,
                "hf_model_type": self.hf_model_type,
                "checkpoint_format": self.checkpoint_format,
                "hf_weight_dtype": self.hf_weight_dtype,
                "mca_config": self.mca_config,
                "hf_config": self.hf_config,
                **self.extra,
            },
        )
        (path / TRACKER_NAME).write_text(f"{ITERATION}\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> McaCheckpointMeta:
        data = read_json(Path(path) / MCA_CONFIG_NAME)
        missing = [k for k in ("hf_model_type", "mca_config", "checkpoint_format") if k not in data]
        if missing:
            raise CheckpointError(
                f"{Path(path) / MCA_CONFIG_NAME} lacks {missing}; it was not written by mcore_adapter"
            )
        if data["checkpoint_format"] not in FORMATS:
            raise CheckpointError(
                f"{Path(path) / MCA_CONFIG_NAME}: checkpoint_format {data['checkpoint_format']!r} is not one of {FORMATS}"
            )
        known = {
            "format_version",
            "hf_model_type",
            "mca_config",
            "hf_config",
            "checkpoint_format",
            "hf_weight_dtype",
        }
        return cls(
            hf_model_type=data["hf_model_type"],
            mca_config=data["mca_config"],
            hf_config=data.get("hf_config"),
            checkpoint_format=data["checkpoint_format"],
            hf_weight_dtype=data.get("hf_weight_dtype", "float32"),
            extra={k: v for k, v in data.items() if k not in known},
        )


def torch_rank_file(path: str | os.PathLike, tp_rank: int = 0, pp_rank: int = 0, pp_size: int = 1) -> Path:
    return iteration_dir(path) / rank_dir_name(tp_rank, pp_rank, pp_size) / "model_optim_rng.pt"


def chunk_key(vp_stage: int | None) -> str:
    """Megatron-LM's key of one model chunk's state dict in a rank file."""
    return "model" if vp_stage is None else f"model{vp_stage}"


def _payload(chunks: dict[str, Any]) -> dict[str, Any]:
    return {**chunks, "checkpoint_version": CHECKPOINT_VERSION, "iteration": ITERATION}


class TorchRankWriter:
    """Writes one rank file of the ``torch`` format tensor by tensor, holding none of them.

    ``torch.save`` needs the whole state dict in memory. Instead the file is laid out first
    from the tensors' shapes (``torch.serialization.skip_data`` writes every record but leaves
    the bytes as a hole, and the placeholder tensors are never touched, so they take no
    memory); the records' offsets are read back with ``map_location="meta"``, and each tensor's
    bytes are written in place when it is ready. The result is an ordinary ``torch.save`` file.
    """

    def __init__(self, file: Path, specs: dict[str, dict[str, tuple[torch.Size, torch.dtype]]]):
        self.file = file
        file.parent.mkdir(parents=True, exist_ok=True)
        skeleton = {
            key: {name: torch.empty(shape, dtype=dtype) for name, (shape, dtype) in tensors.items()}
            for key, tensors in specs.items()
        }
        with torch.serialization.skip_data():
            torch.save(_payload(skeleton), file)
        del skeleton
        layout = torch.load(file, map_location="meta", weights_only=True)
        self._slots = {
            (key, name): (t.untyped_storage()._checkpoint_offset, t.shape, t.dtype)
            for key in specs
            for name, t in layout[key].items()
        }
        self._pending = set(self._slots)
        self._fd = os.open(file, os.O_RDWR)

    def write(self, key: str, name: str, tensor: torch.Tensor) -> None:
        try:
            offset, shape, dtype = self._slots[key, name]
        except KeyError:
            raise ConversionError(f"{self.file}: no slot for {key}/{name}") from None
        if (key, name) not in self._pending:
            raise ConversionError(f"{self.file}: {key}/{name} written twice")
        if tensor.shape != shape or tensor.dtype != dtype:
            raise ConversionError(
                f"{self.file}: {key}/{name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the planned slot is {tuple(shape)} {dtype}"
            )
        data = tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy()
        written = os.pwrite(self._fd, data, offset)
        if written != data.nbytes:
            raise OSError(f"short write to {self.file}: {written} of {data.nbytes} bytes")
        self._pending.discard((key, name))

    def close(self) -> None:
        os.close(self._fd)
        if self._pending:
            raise ConversionError(
                f"{self.file}: {len(self._pending)} planned tensor(s) were never written, e.g. "
                f"{sorted(self._pending)[:5]}"
            )


class TorchRankReader:
    """Reads one rank file of the ``torch`` format tensor by tensor (``pread`` into fresh memory,
    so memory stays bounded by the tensor being read, unlike a whole-file ``torch.load``)."""

    def __init__(self, file: Path):
        self.file = file
        if not file.is_file():
            raise CheckpointError(f"missing rank file {file}; the MCA checkpoint is incomplete")
        try:
            payload = torch.load(file, map_location="meta", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot read {file}: {e}; the file may be truncated") from e
        self.chunks: dict[str, dict[str, torch.Tensor]] = {
            k: v for k, v in payload.items() if k == "model" or re.fullmatch(r"model\d+", k)
        }
        if not self.chunks:
            raise CheckpointError(f"{file} holds no 'model' state dict")
        size = file.stat().st_size
        for key, tensors in self.chunks.items():
            for name, t in tensors.items():
                end = t.untyped_storage()._checkpoint_offset + t.untyped_storage().nbytes()
                if end > size:
                    raise CheckpointError(
                        f"{file} is truncated: {key}/{name} ends at byte {end}, the file has {size}"
                    )

    def read(self, key: str, name: str) -> torch.Tensor:
        meta = self.chunks[key][name]
        storage = meta.untyped_storage()
        buffer = torch.empty(storage.nbytes(), dtype=torch.uint8)  # not zero-filled: read over
        with open(self.file, "rb") as f:
            f.seek(storage._checkpoint_offset)
            if f.readinto(buffer.numpy()) != buffer.numel():
                raise CheckpointError(f"{self.file} is truncated at {key}/{name}")
        return buffer.view(meta.dtype).as_strided(meta.shape, meta.stride(), meta.storage_offset())

    def read_into(self, key: str, name: str, out: torch.Tensor, byte_offset: int = 0) -> None:
        """Read ``out.nbytes`` bytes of a stored contiguous tensor, from ``byte_offset`` into it,
        straight into ``out`` (a contiguous view, e.g. this rank's rows of a merged weight)."""
        meta = self.chunks[key][name]
        if not (meta.is_contiguous() and out.is_contiguous()):
            raise ValueError(f"{key}/{name}: read_into needs contiguous tensors")
        start = meta.untyped_storage()._checkpoint_offset + meta.storage_offset() * meta.element_size()
        with open(self.file, "rb") as f:
            f.seek(start + byte_offset)
            view = out.view(-1).view(torch.uint8).numpy()
            if f.readinto(view) != view.nbytes:
                raise CheckpointError(f"{self.file} is truncated at {key}/{name}")


def load_torch_rank(file: Path, vp_stage: int | None = None) -> dict[str, torch.Tensor]:
    reader = TorchRankReader(file)
    key = chunk_key(vp_stage)
    if key not in reader.chunks:
        raise CheckpointError(f"{file} holds {sorted(reader.chunks)}, not {key!r}")
    return {name: reader.read(key, name) for name in reader.chunks[key]}
