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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .hf_io import CheckpointError, owns_storage, read_json, write_json

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


def save_torch_rank(file: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """One rank's weights in Megatron-LM's legacy layout (``{"model": ..., "iteration": ...}``)."""
    file.parent.mkdir(parents=True, exist_ok=True)
    model = {name: owns_storage(t) for name, t in state_dict.items()}
    torch.save({"model": model, "checkpoint_version": CHECKPOINT_VERSION, "iteration": ITERATION}, file)


def load_torch_rank(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CheckpointError(f"missing rank file {file}; the MCA checkpoint is incomplete")
    try:
        payload = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:
        raise CheckpointError(f"cannot read {file}: {e}; the file may be truncated") from e
    if not isinstance(payload, dict) or "model" not in payload:
        raise CheckpointError(f"{file} holds no 'model' state dict")
    return payload["model"]
