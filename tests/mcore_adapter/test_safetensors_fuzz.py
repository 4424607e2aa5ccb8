"""Property-based fuzzing of the safetensors reader (hypothesis): whatever bytes a shard holds,
``HFCheckpoint`` either returns exactly the tensors safetensors itself reads from the file, or
raises our ``CheckpointError``; it never raises anything else, never accepts a file safetensors
refuses, and never hangs (every example has a deadline).

Two generators: byte-level damage to a valid shard's header (flips, cuts, insertions), and
headers built from hostile fields (negative, overlapping, short or huge offsets; wrong types;
unknown dtypes; shapes that disagree with the bytes)."""

from __future__ import annotations

import json
import struct
import tempfile
from pathlib import Path

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from mcore_adapter.models.converter.errors import CheckpointError
from mcore_adapter.models.converter.hf_io import HFCheckpoint

VALID = save(
    {
        "a": torch.arange(6, dtype=torch.float32).reshape(2, 3),
        "b": torch.ones(4, dtype=torch.bfloat16),
        "c": torch.zeros(0, dtype=torch.float16),
    },
    metadata={"format": "pt"},
)
SETTINGS = settings(
    max_examples=1000, deadline=2000, suppress_health_check=[HealthCheck.too_slow], derandomize=True
)


def _read_both(data: bytes) -> None:
    """The property, for one shard's bytes."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp)
        (path / "config.json").write_text(json.dumps({"model_type": "llama"}))
        (path / "model.safetensors").write_bytes(data)
        try:
            ckpt = HFCheckpoint(path)
            ours = dict(ckpt.tensors())
        except CheckpointError:
            event("refused")
            return  # refused, with our error: fine whatever safetensors thinks
        event("read")
        try:
            theirs = load_file(path / "model.safetensors")
        except (SafetensorError, ValueError, RuntimeError) as e:
            raise AssertionError(f"we accepted a shard safetensors refuses ({e})") from None
        assert ours.keys() == theirs.keys()
        for name, tensor in ours.items():
            assert tensor.dtype == theirs[name].dtype and torch.equal(tensor, theirs[name]), name


def _with_header(header: bytes, data: bytes) -> bytes:
    return struct.pack("<Q", len(header)) + header + data


HEADER_LENGTH = struct.unpack("<Q", VALID[:8])[0]
HEADER, DATA = VALID[8 : 8 + HEADER_LENGTH], VALID[8 + HEADER_LENGTH :]


@st.composite
def damaged_bytes(draw) -> bytes:
    data = bytearray(VALID)
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "length"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        else:
            data[:8] = struct.pack("<Q", draw(st.integers(0, 2**64 - 1)))
    return bytes(data)


_ints = st.one_of(st.integers(-(2**40), 2**40), st.integers(0, 64))
_fields = {
    "dtype": st.one_of(
        st.sampled_from(["F32", "BF16", "F16", "I64", "BOOL", "F8_E4M3", "X", ""]), st.integers()
    ),
    "shape": st.one_of(st.lists(st.integers(-2, 8), max_size=3), st.text(max_size=3), st.none()),
    "data_offsets": st.one_of(st.lists(_ints, min_size=0, max_size=3), st.none(), st.text(max_size=3)),
}


@st.composite
def hostile_headers(draw) -> bytes:
    header: dict = json.loads(HEADER)
    for name in draw(st.lists(st.sampled_from(["a", "b", "c", "d"]), min_size=1, max_size=3)):
        base = header.get(name)
        entry = (
            dict(base) if isinstance(base, dict) else {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}
        )
        for key in draw(st.lists(st.sampled_from(list(_fields)), max_size=2)):
            if draw(st.booleans()):
                entry[key] = draw(_fields[key])
            else:
                entry.pop(key, None)
        header[name] = (
            entry if draw(st.integers(0, 9)) else draw(st.one_of(st.integers(), st.text(max_size=3)))
        )
    if draw(st.booleans()):
        header["__metadata__"] = draw(
            st.one_of(
                st.just({"format": "pt"}), st.dictionaries(st.text(max_size=2), st.integers(), max_size=2)
            )
        )
    data = (
        DATA + draw(st.binary(max_size=8)) if draw(st.booleans()) else DATA[: draw(st.integers(0, len(DATA)))]
    )
    return _with_header(json.dumps(header).encode(), data)


@SETTINGS
@given(damaged_bytes())
def test_damaged_shard_bytes(data):
    _read_both(data)


@SETTINGS
@given(hostile_headers())
def test_hostile_header_fields(data):
    _read_both(data)


def test_the_valid_shard_reads():
    """The property's other side: an undamaged shard is read, equal to safetensors' reading."""
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "config.json").write_text("{}")
        (Path(tmp) / "model.safetensors").write_bytes(VALID)
        assert sorted(dict(HFCheckpoint(tmp).tensors())) == ["a", "b", "c"]
