"""Hugging Face checkpoint I/O: lazy safetensors reading and streaming sharded writing."""

from __future__ import annotations

import json
import math
import os
import re
import struct
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .buffers import Scratch
from .errors import CheckpointError
from .fused_experts import FUSED, FUSED_TRANSPOSED, PER_EXPERT, Part
from .untrusted import check_regular, open_regular, plain_name

HF_CONFIG_NAME = "config.json"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a regular file (a FIFO or device is refused, not waited on)."""
    try:
        with open_regular(Path(path)) as f:
            data = json.load(f)
    except json.JSONDecodeError as e:  # its message gives a position, never the text
        raise CheckpointError(f"{path} is not valid JSON ({e}); the file may be truncated") from None
    except UnicodeDecodeError:
        raise CheckpointError(f"{path} is not valid JSON (not UTF-8 text)") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} holds a JSON {type(data).__name__}, not an object")
    return data


def write_json(path: Path, data: dict[str, Any]) -> None:
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")


class HFCheckpoint:
    """An HF model directory, read lazily: tensors are loaded one at a time, file by file.

    With ``unfold_experts`` a mixture-of-experts checkpoint saved with transformers' fused
    in-memory expert tensors, or with fused tensors stored transposed (as the hub has
    Qwen3-VL-MoE's), reads as the hub's per-expert tensors (the names templates convert), each
    expert read alone (see ``fused_experts``); ``expert_layout`` says which layout the files
    have (``PER_EXPERT``, ``FUSED`` or ``FUSED_TRANSPOSED``)."""

    def __init__(self, path: str | os.PathLike, unfold_experts: bool = False):
        self.path = Path(path)
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a directory")
        self.config = read_json(self.path / HF_CONFIG_NAME)
        self._headers: dict[str, _ShardHeader] = {}
        self.weight_map = self._weight_map()
        self.parts: dict[str, Part] = {}
        self.expert_layout = PER_EXPERT
        # The expert block a transposed part was last read from (its next part reads from it).
        self._block: tuple[tuple[Path, str, int], torch.Tensor] | None = None
        if unfold_experts:
            self._unfold_experts()

    def _unfold_experts(self) -> None:
        from .registry import get_template

        fused = get_template(self.config.get("model_type")).fused_experts(self.config)
        if not fused:
            return
        weight_map: dict[str, str] = {}
        for name, filename in self.weight_map.items():
            parts = None
            if fused.holds(name):  # its shape (the header) says how many experts
                parts = fused.unfold(name, self._header(filename).tensors[name][1])
            if parts is None:
                weight_map[name] = filename
                continue
            for virtual, part in parts.items():
                weight_map[virtual] = filename
                self.parts[virtual] = part
        if not self.parts:
            return
        transposed = sorted({p.fused for p in self.parts.values() if p.transposed})
        in_memory = sorted(
            {p.fused for p in self.parts.values() if not p.transposed and fused.transposable(p.fused)}
        )
        if transposed and in_memory:
            shapes = {name: self._header(self.weight_map[name]).tensors[name][1] for name in in_memory}
            square = [name for name, shape in shapes.items() if len(shape) == 3 and shape[1] == shape[2]]
            hint = (
                f" ({square[0]} is square, {shapes[square[0]]}: like transformers, a square tensor is "
                "taken as in the in-memory layout)"
                if square
                else ""
            )
            raise CheckpointError(
                f"{self.path} mixes the two orientations of fused expert tensors: {len(transposed)} "
                f"stored transposed (e.g. {transposed[0]}), {len(in_memory)} as transformers holds them "
                f"(e.g. {in_memory[0]}){hint}; a checkpoint is converted back in one layout, so re-save "
                "it with one orientation"
            )
        self.weight_map = weight_map
        self.expert_layout = FUSED_TRANSPOSED if transposed else FUSED

    def _weight_map(self) -> dict[str, str]:
        index = self.path / SAFE_WEIGHTS_INDEX_NAME
        if index.exists():
            weight_map = read_json(index).get("weight_map")
            if not isinstance(weight_map, dict) or not weight_map:
                raise CheckpointError(f"{index} has no weight_map")
            for name, filename in weight_map.items():
                plain_name(filename, f"{index} (for {str(name)[:200]!r})")
            # a shard may be a link (the hub's cache links each to its blob); a FIFO is refused
            missing = sorted({f for f in weight_map.values() if not (self.path / f).exists()})
            if missing:
                raise CheckpointError(f"{index} names shard(s) that do not exist: {missing}")
            for filename in set(weight_map.values()):
                check_regular(self.path / filename)
            return weight_map
        single = self.path / SAFE_WEIGHTS_NAME
        if single.exists() or single.is_symlink():
            tensors = self._header(SAFE_WEIGHTS_NAME).tensors
            if not tensors:
                raise CheckpointError(f"{single} holds no tensors")
            return dict.fromkeys(tensors, SAFE_WEIGHTS_NAME)
        shards = sorted(p.name for p in self.path.glob("*.safetensors"))
        if shards:
            raise CheckpointError(
                f"{self.path} holds safetensors shards ({', '.join(shards[:3])}{', ...' if len(shards) > 3 else ''}) "
                f"but no {SAFE_WEIGHTS_INDEX_NAME}, which says which tensor is in which shard; copy the "
                "index file that came with the shards into the directory"
            )
        found = sorted(p.name for p in self.path.iterdir())
        raise CheckpointError(
            f"{self.path} holds no {SAFE_WEIGHTS_NAME} or {SAFE_WEIGHTS_INDEX_NAME} (found: {found}); "
            "only safetensors checkpoints are supported: re-save the model with "
            "save_pretrained(..., safe_serialization=True)"
        )

    def keys(self) -> list[str]:
        return list(self.weight_map)

    def tensors(
        self, names: Iterable[str] | None = None, meta: bool = False
    ) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(name, tensor)`` for ``names`` (default all), shard by shard.

        With ``meta=True`` the tensors are meta tensors of the stored shape and dtype, read from
        the shard headers only: a dry run that checks and plans a conversion without its I/O.
        """
        wanted = self.keys() if names is None else list(names)
        by_file: dict[str, list[str]] = {}
        for name in wanted:
            if name not in self.weight_map:
                raise CheckpointError(f"tensor {name!r} is not in the checkpoint at {self.path}")
            by_file.setdefault(self.weight_map[name], []).append(name)
        for filename, file_names in by_file.items():
            header = self._header(filename)
            for name in file_names:
                stored = self.parts[name].fused if name in self.parts else name
                if stored not in header.tensors:
                    raise CheckpointError(
                        f"the index maps {name!r} to {filename}, which does not hold it; "
                        "the checkpoint is incomplete"
                    )
                yield name, self._read(header, name, meta)

    def _header(self, filename: str) -> _ShardHeader:
        if filename not in self._headers:
            self._headers[filename] = _ShardHeader.read(self.path / filename)
        return self._headers[filename]

    def _read(self, header: _ShardHeader, name: str, meta: bool) -> torch.Tensor:
        """One tensor (an expert's part: its contiguous block of the fused tensor), read into
        fresh memory with plain reads. safetensors' own reader maps the whole shard, and every
        page it reads stays resident while the file is open; opening a shard per tensor instead
        parses its header each time, slow for the thousands of experts in a MoE shard."""
        part = self.parts.get(name)
        dtype, shape, begin = header.tensors[part.fused if part else name]
        if part is not None and part.transposed:
            return self._read_transposed(header, name, part, meta)
        if part is not None and part.expert is not None:
            begin += part.element_offset(shape) * dtype.itemsize
            shape = part.shape
        if meta:
            return torch.empty(shape, dtype=dtype, device="meta")
        return self._read_into(header, name, begin, torch.empty(shape, dtype=dtype))

    def _read_transposed(self, header: _ShardHeader, name: str, part: Part, meta: bool) -> torch.Tensor:
        """A part of a fused tensor stored transposed: its columns of the expert's contiguous
        block ``[columns, n x rows]`` (read whole, once for all its parts read in a row),
        transposed into fresh memory."""
        dtype, shape, begin = header.tensors[part.fused]
        if meta:
            return torch.empty(part.shape, dtype=dtype, device="meta")
        key = (header.file, part.fused, part.expert)
        if self._block is None or self._block[0] != key:
            self._block = None  # before the next block is read: one in memory at a time
            block = torch.empty(part.block_shape(shape), dtype=dtype)
            begin += part.element_offset(shape) * dtype.itemsize
            self._block = (key, self._read_into(header, name, begin, block))
        block = self._block[1]
        out = torch.empty(part.shape, dtype=dtype)
        out.copy_(block[:, part.rows].t())
        if part.rows.stop == block.shape[1]:  # the expert's last part
            self._block = None
        return out

    @staticmethod
    def _read_into(header: _ShardHeader, name: str, begin: int, out: torch.Tensor) -> torch.Tensor:
        if out.numel():
            view = out.reshape(-1).view(torch.uint8).numpy()
            with open(header.file, "rb", buffering=0) as f:
                f.seek(header.data_start + begin)
                if f.readinto(view) != view.nbytes:
                    raise CheckpointError(f"cannot read {name!r}: {header.file} is truncated")
        return out

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for _, t in self.tensors(meta=True))

    def dtype(self) -> torch.dtype:
        """The dtype of the checkpoint's weights (read from the first tensor's header)."""
        name = next(iter(self.weight_map))
        stored = self.parts[name].fused if name in self.parts else name
        return self._header(self.weight_map[name]).tensors[stored][0]


_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "BF16": torch.bfloat16,
    "F16": torch.float16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


_DTYPE_CODES = {dtype: code for code, dtype in _SAFETENSORS_DTYPES.items()}


@dataclass
class _ShardHeader:
    """A safetensors file's header: where its tensors' bytes start, and each tensor's dtype,
    shape and offset (the format: an 8-byte length, a JSON header, the bytes)."""

    file: Path
    data_start: int
    tensors: dict[str, tuple[torch.dtype, tuple[int, ...], int]]

    @classmethod
    def read(cls, file: Path) -> _ShardHeader:
        """Check what safetensors itself checks (a header of at most 100 MB holding a JSON
        object; each entry a known dtype, a shape of non-negative integers and the byte range
        that shape needs; the ranges in order, without gaps or overlaps, covering the data to
        the end of the file) and that the ``__metadata__`` is strings. Nothing of the file is
        quoted in an error but tensor names."""

        def bad(why: str) -> CheckpointError:
            return CheckpointError(
                f"cannot read {file}: {why}; it is not a valid safetensors file (or truncated)"
            )

        with open_regular(file) as f:
            size = os.fstat(f.fileno()).st_size
            prefix = f.read(8)
            if len(prefix) < 8:
                raise bad(f"it has {size} bytes, fewer than a header needs")
            (length,) = struct.unpack("<Q", prefix)
            if length > min(size - 8, _MAX_HEADER_BYTES):
                raise bad("its header length exceeds the file (or safetensors' 100 MB limit)")
            raw = f.read(length)
        try:
            header = json.loads(raw)
        except (ValueError, RecursionError):  # not JSON, not UTF-8: the bytes are not echoed
            raise bad("its header is not JSON") from None
        if not isinstance(header, dict):
            raise bad("its header is not a JSON object")
        start = 8 + length
        tensors = {}
        ranges = []
        for name, info in header.items():
            if name == "__metadata__":
                if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                    raise bad("__metadata__ is not a map of strings")
                continue
            tensors[name] = _entry(info, name, bad)
            ranges.append((tensors[name][2], tensors[name][3], name))
        offset = 0
        for begin, end, name in sorted(ranges):
            if begin != offset:
                gap = "overlaps the tensor before it" if begin < offset else "leaves a gap before it"
                raise bad(f"{name!r}: its byte range {gap}")
            offset = end
        if start + offset != size:
            raise bad(f"its tensors end at byte {start + offset}, the file has {size}")
        return cls(file, start, {name: entry[:3] for name, entry in tensors.items()})


_MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit


def _entry(info: object, name: str, bad) -> tuple[torch.dtype, tuple[int, ...], int, int]:
    """(dtype, shape, begin, end) of one header entry, every field checked."""
    if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= info.keys():
        raise bad(f"{name!r} is not an entry of dtype, shape and data_offsets")
    code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if not isinstance(code, str) or code not in _SAFETENSORS_DTYPES:
        shown = code if isinstance(code, str) and re.fullmatch(r"[A-Z0-9_]{1,16}", code) else "unknown"
        raise CheckpointError(
            f"{name!r} is stored as {shown} in its shard, which this converter does not read "
            f"(supported: {', '.join(_SAFETENSORS_DTYPES)})"
        )
    if not _ints(shape, lambda n: n >= 0):
        raise bad(f"{name!r} has a shape that is not a list of non-negative integers")
    if not (_ints(offsets, lambda n: n >= 0) and len(offsets) == 2 and offsets[0] <= offsets[1]):
        raise bad(f"{name!r} has data_offsets that are not two ordered non-negative integers")
    dtype = _SAFETENSORS_DTYPES[code]
    if offsets[1] - offsets[0] != math.prod(shape) * dtype.itemsize:
        raise bad(f"{name!r}: its byte range does not hold a {code} tensor of shape {tuple(shape)}")
    return dtype, tuple(shape), offsets[0], offsets[1]


def _ints(value: object, ok) -> bool:
    return isinstance(value, list) and all(type(n) is int and ok(n) for n in value)


class SafetensorsWriter:
    """Writes planned safetensors shards tensor by tensor, holding none of them, and names
    them and writes the index as transformers does (``model.safetensors`` when one shard
    suffices, else ``model-0000i-of-0000n.safetensors`` + ``model.safetensors.index.json``).

    safetensors' own ``save_file`` needs every tensor of a shard in memory at once; a
    converter that streams weights cannot afford that. The format is a length-prefixed JSON
    header of names, dtypes, shapes and byte ranges followed by the raw bytes, so once all
    shapes are known (a conversion's dry run gives them) each shard's header is written first
    and each tensor's bytes go to their place when the tensor is ready. The files are read
    back by safetensors itself in the tests.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        plan: Mapping[str, tuple[Sequence[int], torch.dtype]],
        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES,
        parts: Mapping[str, Part] | None = None,
    ):
        """``parts`` names tensors that are written into a planned (fused) tensor, in place; a
        transposed part is strided there, so its expert's block is filled in memory and written
        whole once all its parts arrived (only blocks in progress are held)."""
        if not (type(max_shard_bytes) is int and max_shard_bytes > 0):
            raise ValueError(f"max_shard_bytes must be a positive int, got {max_shard_bytes!r}")
        self.path = Path(path)
        self.parts = dict(parts or {})
        shards: list[dict[str, tuple[Sequence[int], torch.dtype]]] = [{}]
        size = 0
        for name, (shape, dtype) in plan.items():
            nbytes = math.prod(shape) * dtype.itemsize
            if shards[-1] and size + nbytes > max_shard_bytes:
                shards.append({})
                size = 0
            shards[-1][name] = (tuple(shape), dtype)
            size += nbytes
        n = len(shards)
        names = (
            [SAFE_WEIGHTS_NAME] if n == 1 else [f"model-{i + 1:05d}-of-{n:05d}.safetensors" for i in range(n)]
        )
        self.total_bytes = 0
        self._slots: dict[str, tuple[int, int, tuple[int, ...], torch.dtype]] = {}
        self._fds: list[int] = []
        self.weight_map: dict[str, str] = {}
        for index, (filename, tensors) in enumerate(zip(names, shards, strict=True)):
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
            offset = 0
            for name, (shape, dtype) in tensors.items():
                if dtype not in _DTYPE_CODES:
                    raise CheckpointError(f"{name}: dtype {dtype} cannot be stored in safetensors")
                nbytes = math.prod(shape) * dtype.itemsize
                header[name] = {
                    "dtype": _DTYPE_CODES[dtype],
                    "shape": list(shape),
                    "data_offsets": [offset, offset + nbytes],
                }
                offset += nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)  # safetensors aligns the data to 8 bytes
            fd = os.open(self.path / filename, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666)  # umask applies
            os.write(fd, struct.pack("<Q", len(encoded)) + encoded)
            start = 8 + len(encoded)
            os.ftruncate(fd, start + offset)
            self._fds.append(fd)
            for name, entry in header.items():
                if name != "__metadata__":
                    shape, dtype = tensors[name]
                    self._slots[name] = (index, start + entry["data_offsets"][0], shape, dtype)
                    self.weight_map[name] = filename
            self.total_bytes += offset
        fused = {part.fused for part in self.parts.values()}
        self._pending = (set(self._slots) - fused) | set(self.parts)
        self._scratch = Scratch()
        # Transposed parts: how many each expert block holds, and the blocks being filled.
        self._block_parts: dict[tuple[str, int], int] = {}
        for part in self.parts.values():
            if part.transposed:
                key = (part.fused, part.expert)
                self._block_parts[key] = self._block_parts.get(key, 0) + 1
        self._blocks: dict[tuple[str, int], list] = {}

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor, cast to its planned dtype (a view of any strides will do);
        a part of a fused tensor goes to its place in it."""
        if name not in self._slots and name not in self.parts:
            raise ValueError(f"tensor {name!r} is not in the planned output")
        if name not in self._pending:
            raise ValueError(f"tensor {name!r} written twice")
        part = self.parts.get(name)
        if part is not None:
            index, offset, fused_shape, dtype = self._slots[part.fused]
            offset += part.element_offset(fused_shape) * dtype.itemsize
            shape = part.shape
        else:
            index, offset, shape, dtype = self._slots[name]
        if tuple(tensor.shape) != shape or tensor.dtype.is_floating_point != dtype.is_floating_point:
            raise ValueError(
                f"tensor {name!r} is {tuple(tensor.shape)} {tensor.dtype}, planned as {shape} {dtype}"
            )
        if part is not None and part.transposed:
            key = (part.fused, part.expert)
            entry = self._blocks.get(key)
            if entry is None:
                entry = self._blocks[key] = [torch.empty(part.block_shape(fused_shape), dtype=dtype), 0]
            entry[0][:, part.rows].copy_(tensor.detach().t())
            entry[1] += 1
            self._pending.discard(name)
            if entry[1] < self._block_parts[key]:
                return
            del self._blocks[key]
            name, tensor = f"{part.fused} (expert {part.expert})", entry[0]
        data = self._scratch.contiguous(tensor.detach(), dtype).reshape(-1).view(torch.uint8).numpy()
        if os.pwrite(self._fds[index], data, offset) != data.nbytes:
            raise OSError(f"short write of {name!r} to {self.path}")
        self._pending.discard(name)

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        if self._pending:
            blocks = (
                f" ({len(self._blocks)} fused expert block(s) left incomplete, not written)"
                if self._blocks
                else ""
            )
            self._blocks = {}
            raise ValueError(
                f"{len(self._pending)} planned tensor(s) never written, e.g. {sorted(self._pending)[:5]}"
                + blocks
            )
        if len(set(self.weight_map.values())) > 1:
            write_json(
                self.path / SAFE_WEIGHTS_INDEX_NAME,
                {"metadata": {"total_size": self.total_bytes}, "weight_map": self.weight_map},
            )


def save_safetensors(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], **kwargs: Any) -> None:
    """Write in-memory tensors as (possibly sharded) safetensors files."""
    writer = SafetensorsWriter(path, {n: (t.shape, t.dtype) for n, t in tensors.items()}, **kwargs)
    for name, tensor in tensors.items():
        writer.write(name, tensor)
    writer.close()
