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

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .buffers import Scratch
from .config_check import check_config_values
from .config_map import ARCH_FIELDS, as_json
from .errors import ConversionError
from .fused_experts import EXPERT_LAYOUTS, PER_EXPERT
from .hf_io import CheckpointError, read_json, write_json
from .layout import LAYOUT_FIELDS, LayoutError, ParallelLayout, RankFile
from .registry import get_template
from .untrusted import load_weights_only, open_regular

_IOV_MAX = os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024  # buffers per preadv

MCA_CONFIG_NAME = "mca_config.json"
TRACKER_NAME = "latest_checkpointed_iteration.txt"
GENERATION_CONFIG_NAME = "generation_config.json"
ITERATION = 1
CHECKPOINT_VERSION = 3.0  # Megatron-LM's current state-dict layout version
FORMATS = ("torch", "torch_dist")
MCA_FORMAT_VERSION = 1
_OWN_KEYS = (
    "format_version",
    "hf_model_type",
    "mca_config",
    "hf_config",
    "checkpoint_format",
    "hf_weight_dtype",
    "hf_expert_layout",
)


def is_mca_dir(path: str | os.PathLike) -> bool:
    return (Path(path) / MCA_CONFIG_NAME).is_file()


def iteration_dir(path: str | os.PathLike, iteration: int | str | None = None) -> Path:
    """The weights' directory: ``iter_0000001`` (what we write), or the one Megatron's tracker
    file names (``iter_0000500`` after 500 training steps, ``release``)."""
    if iteration is None:
        tracker = Path(path) / TRACKER_NAME
        iteration = ITERATION
        if tracker.exists():
            with open_regular(tracker) as f:
                iteration = f.read(32).decode(errors="replace").strip()
    if iteration == "release":
        return Path(path) / "release"
    if not re.fullmatch(r"\d{1,9}", str(iteration)):  # no sign, no spaces: a plain step number
        raise CheckpointError(
            f"{Path(path) / TRACKER_NAME} does not hold an iteration number or 'release' (Megatron writes "
            "the step number alone); fix or remove it"
        )
    return Path(path) / f"iter_{int(iteration):07d}"


def rank_dir_name(tp_rank: int, pp_rank: int, pp_size: int, ep_rank: int = 0, ep_size: int = 1) -> str:
    """Megatron-LM's name of a rank's directory: ``mp_rank_TT``, with ``_PPP`` under pipeline
    parallelism and ``_EEE`` under expert parallelism."""
    name = f"mp_rank_{tp_rank:02d}" if pp_size == 1 else f"mp_rank_{tp_rank:02d}_{pp_rank:03d}"
    return name if ep_size == 1 else f"{name}_{ep_rank:03d}"


def detect_format(path: str | os.PathLike) -> str:
    """``torch`` (per-rank files) or ``torch_dist`` (dist_checkpointing), from the files."""
    weights = iteration_dir(path)
    if any(weights.glob("mp_rank_*")):
        return "torch"
    if (weights / "metadata.json").is_file() or (weights / ".metadata").is_file():
        return "torch_dist"
    raise CheckpointError(
        f"{weights} holds neither per-rank files (mp_rank_*) nor a dist_checkpointing checkpoint "
        "(metadata.json); the MCA checkpoint has no weights"
    )


@dataclass
class McaCheckpointMeta:
    """What ``mca_config.json`` holds.

    ``hf_config`` is the HF config the model came from; a checkpoint that did not keep it (as
    Megatron-LM writes them) gets one rebuilt from the Megatron config when loaded, or, where
    that is impossible, ``hf_config_error`` says what is missing (``require_hf_config``).
    """

    hf_model_type: str
    mca_config: dict[str, Any]
    hf_config: dict[str, Any] | None
    checkpoint_format: str
    hf_weight_dtype: str = "float32"
    # the HF checkpoint's expert tensors: per_expert, fused or fused_transposed (see fused_experts)
    hf_expert_layout: str = PER_EXPERT
    extra: dict[str, Any] = field(default_factory=dict)
    hf_config_error: str | None = field(default=None, compare=False)

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

    def require_hf_config(self) -> dict[str, Any]:
        if self.hf_config is None:
            raise CheckpointError(
                f"{self.hf_config_error}; pass the model's HF config.json with --hf-config PATH "
                "(hf_config=... in Python)"
            )
        return self.hf_config

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        write_json(
            path / MCA_CONFIG_NAME,
            {
                "format_version": MCA_FORMAT_VERSION,
                "hf_model_type": self.hf_model_type,
                "checkpoint_format": self.checkpoint_format,
                "hf_weight_dtype": self.hf_weight_dtype,
                "hf_expert_layout": self.hf_expert_layout,
                "mca_config": self.mca_config,
                "hf_config": self.hf_config,
                **self.extra,
            },
        )
        (path / TRACKER_NAME).write_text(f"{ITERATION}\n")

    @classmethod
    def load(cls, path: str | os.PathLike, hf_config: dict[str, Any] | None = None) -> McaCheckpointMeta:
        """Read ``mca_config.json``: ours, or the flat Megatron config ROLL's mcore_adapter
        writes. ``hf_config`` supplies the HF config of a checkpoint that lacks one (checked
        against the Megatron config)."""
        file = Path(path) / MCA_CONFIG_NAME
        data = read_json(file)
        if "mca_config" in data:
            meta = cls._ours(file, data)
        elif "hf_model_type" in data and "num_layers" in data:
            meta = cls._roll(path, data, hf_config)
        else:
            raise CheckpointError(
                f"{file} holds neither mcore_adapter's fields (mca_config, checkpoint_format) nor a "
                "Megatron config with hf_model_type (ROLL's); it is not an MCA checkpoint config"
            )
        if not isinstance(meta.mca_config, dict):
            raise CheckpointError(f"{file}: mca_config is not a JSON object")
        check_config_values(meta.mca_config, str(file))
        template = get_template(meta.hf_model_type)
        if hf_config is not None and "mca_config" in data:  # given: it must describe these weights
            _check_hf_config(file, template, meta.mca_config, hf_config)
            meta.hf_config = dict(hf_config)
        if meta.hf_config is None:
            generation = Path(path) / GENERATION_CONFIG_NAME
            token_ids = read_json(generation) if generation.is_file() else None
            try:
                meta.hf_config = template.rebuild_hf_config(meta.mca_config, meta.hf_weight_dtype, token_ids)
            except ConversionError as e:
                meta.hf_config_error = f"{file} keeps no HF config and {e}"
        return meta

    @classmethod
    def _ours(cls, file: Path, data: dict[str, Any]) -> McaCheckpointMeta:
        missing = [k for k in ("hf_model_type", "checkpoint_format") if k not in data]
        if missing:
            raise CheckpointError(f"{file} lacks {missing}; it was not written by mcore_adapter")
        if data["checkpoint_format"] not in FORMATS:
            raise CheckpointError(
                f"{file}: checkpoint_format {data['checkpoint_format']!r} is not one of {FORMATS}"
            )
        if data.get("hf_expert_layout", PER_EXPERT) not in EXPERT_LAYOUTS:
            raise CheckpointError(
                f"{file}: hf_expert_layout {data['hf_expert_layout']!r} is not one of {EXPERT_LAYOUTS}"
            )
        return cls(
            hf_model_type=data["hf_model_type"],
            mca_config=data["mca_config"],
            hf_config=data.get("hf_config"),
            checkpoint_format=data["checkpoint_format"],
            hf_weight_dtype=data.get("hf_weight_dtype", "float32"),
            hf_expert_layout=data.get("hf_expert_layout", PER_EXPERT),
            extra={k: v for k, v in data.items() if k not in _OWN_KEYS},
        )

    @classmethod
    def _roll(
        cls, path: str | os.PathLike, data: dict[str, Any], hf_config: dict[str, Any] | None
    ) -> McaCheckpointMeta:
        """ROLL's ``mca_config.json``: its whole Megatron config, flat, with ``hf_model_type``
        and (in recent versions) the HF config as a string under ``hf_config_json``. The HF
        config (kept, or given) decides the architecture: ROLL's dump can disagree with its own
        weights (a ``kv_channels`` of hidden / heads beside a model whose head_dim differs). The
        layout and the vocab split come from the dump, as the rank files follow them; ROLL does
        not pad the vocab (its ``padded_vocab_size`` is HF's ``vocab_size``)."""
        template = get_template(data["hf_model_type"])
        if hf_config is None and data.get("hf_config_json"):
            hf_config = json.loads(data["hf_config_json"])
        if hf_config is not None:
            mca_config = template.convert_hf_to_mca_config(hf_config)
        else:
            known = {*template.mca_fields(), *ARCH_FIELDS} - set(template.rope_mca_fields())
            mca_config = {k: data[k] for k in known if k in data}
            rope = data.get("rope_parameters") or data.get("rope_scaling")
            if isinstance(rope, dict):  # ROLL keeps HF's rope description
                mca_config.update(template.rope_kwargs({"rope_parameters": rope}))
            mca_config.update(template.constant_mca_config, hf_model_type=template.hf_model_type)
            mca_config.setdefault("vocab_size", data.get("padded_vocab_size"))
        for name in (*LAYOUT_FIELDS, "padded_vocab_size", "make_vocab_size_divisible_by"):
            if data.get(name) is not None:
                mca_config[name] = data[name]
        dtype = (hf_config or {}).get("dtype") or (hf_config or {}).get("torch_dtype")
        dtype = dtype or ("bfloat16" if data.get("bf16") else "float16" if data.get("fp16") else "float32")
        return cls(
            hf_model_type=template.hf_model_type,
            mca_config=mca_config,
            hf_config=hf_config,
            checkpoint_format=detect_format(path),
            hf_weight_dtype=dtype,
            extra={"written_by": "ROLL"},
        )


def _check_hf_config(file: Path, template, mca_config: dict[str, Any], hf_config: dict[str, Any]) -> None:
    """A supplied HF config must describe the model the Megatron config describes."""
    if hf_config.get("model_type") != template.hf_model_type:
        raise CheckpointError(
            f"the HF config given is for model_type {hf_config.get('model_type')!r}, {file} for "
            f"{template.hf_model_type!r}"
        )
    implied = template.convert_hf_to_mca_config(hf_config)
    differ = [
        f"{k}: {mca_config[k]!r} here, {implied[k]!r} in the HF config"
        for k in implied
        if k in mca_config and k not in LAYOUT_FIELDS and as_json(mca_config[k]) != as_json(implied[k])
    ]
    if differ:
        raise CheckpointError(
            f"the HF config given does not describe the model of {file}: {'; '.join(differ)}"
        )


def torch_rank_file(
    path: str | os.PathLike,
    tp_rank: int = 0,
    pp_rank: int = 0,
    pp_size: int = 1,
    ep_rank: int = 0,
    ep_size: int = 1,
) -> Path:
    return (
        iteration_dir(path)
        / rank_dir_name(tp_rank, pp_rank, pp_size, ep_rank, ep_size)
        / "model_optim_rng.pt"
    )


def layout_rank_file(path: str | os.PathLike, rank: RankFile, layout: ParallelLayout) -> Path:
    return torch_rank_file(path, rank.tp, rank.pp, layout.pp, rank.ep, layout.ep)


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

    def __init__(
        self,
        file: Path,
        specs: dict[str, dict[str, tuple[torch.Size, torch.dtype]]],
        scratch: Scratch | None = None,
    ):
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
        self._scratch = scratch or Scratch()  # the writers of one conversion share one

    def write(self, key: str, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor, cast to its planned dtype (a view of any strides will do)."""
        try:
            offset, shape, dtype = self._slots[key, name]
        except KeyError:
            raise ConversionError(f"{self.file}: no slot for {key}/{name}") from None
        if (key, name) not in self._pending:
            raise ConversionError(f"{self.file}: {key}/{name} written twice")
        if tensor.shape != shape or tensor.dtype.is_floating_point != dtype.is_floating_point:
            raise ConversionError(
                f"{self.file}: {key}/{name} is {tuple(tensor.shape)} {tensor.dtype}, "
                f"the planned slot is {tuple(shape)} {dtype}"
            )
        data = self._scratch.contiguous(tensor.detach(), dtype).reshape(-1).view(torch.uint8).numpy()
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
            payload = load_weights_only(file, map_location="meta")
        except CheckpointError:
            raise
        except Exception as e:  # a damaged zip, a short file: torch's first line says which
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"cannot read {file}: {reason}; the file may be truncated") from None
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
        """The stored tensor, reading only the bytes it spans: a tensor saved as a view of a
        larger storage (ROLL's rank files hold such slices of whole weights) does not read, or
        hold, the rest of that storage."""
        meta = self.chunks[key][name]
        span = 1 + sum((size - 1) * stride for size, stride in zip(meta.shape, meta.stride(), strict=True))
        span = span if meta.numel() else 0
        buffer = torch.empty(span * meta.element_size(), dtype=torch.uint8)  # not zero-filled: read over
        start = meta.untyped_storage()._checkpoint_offset + meta.storage_offset() * meta.element_size()
        with open(self.file, "rb") as f:
            f.seek(start)
            if f.readinto(buffer.numpy()) != buffer.numel():
                raise CheckpointError(f"{self.file} is truncated at {key}/{name}")
        return buffer.view(meta.dtype).as_strided(meta.shape, meta.stride())

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

    def read_rows_into(self, key: str, name: str, rows: np.ndarray) -> None:
        """Read a stored contiguous tensor row by row into ``rows`` (bytes: one row per stored
        row, each contiguous, e.g. this rank's column block of a merged row-parallel weight),
        scattered into place by the kernel (``preadv``) rather than read and then copied."""
        meta = self.chunks[key][name]
        if not meta.is_contiguous() or rows.shape[0] * rows.shape[1] != meta.numel() * meta.element_size():
            raise ValueError(f"{key}/{name}: {rows.shape} bytes do not hold the stored {tuple(meta.shape)}")
        start = meta.untyped_storage()._checkpoint_offset + meta.storage_offset() * meta.element_size()
        fd = os.open(self.file, os.O_RDONLY)
        try:
            for first in range(0, rows.shape[0], _IOV_MAX):
                batch = list(rows[first : first + _IOV_MAX])
                expected = len(batch) * rows.shape[1]
                if os.preadv(fd, batch, start + first * rows.shape[1]) != expected:
                    raise CheckpointError(f"{self.file} is truncated at {key}/{name}")
        finally:
            os.close(fd)


def load_torch_rank(file: Path, vp_stage: int | None = None) -> dict[str, torch.Tensor]:
    reader = TorchRankReader(file)
    key = chunk_key(vp_stage)
    if key not in reader.chunks:
        raise CheckpointError(f"{file} holds {sorted(reader.chunks)}, not {key!r}")
    return {name: reader.read(key, name) for name in reader.chunks[key]}
