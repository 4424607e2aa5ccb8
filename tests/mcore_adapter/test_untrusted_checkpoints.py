"""A checkpoint is data, never code: loading a ``torch_dist`` checkpoint whose pickles would run
a command (``touch MARKER``) refuses it with one ``error:`` line naming the file, and the
command never runs. Each payload is first shown to be live: plain ``pickle`` (what torch's own
reader uses) runs it. The allowlist itself is exercised by every torch_dist round trip of every
family (test_models) and layout (test_parallel); the MTP layers are added here."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch

from mcore_adapter.cli import main
from mcore_adapter.models.converter.errors import CheckpointError

METADATA = "iter_0000001/.metadata"


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def torch_dist(megatron, tiny_checkpoint, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "mca"
    assert main(["convert", str(tiny_checkpoint("llama")), str(path), "--format", "torch_dist"]) == 0
    return path


def _metadata(src: Path):
    with open(src / METADATA, "rb") as f:
        return pickle.load(f)  # our own checkpoint, written just now


def _save_metadata(src: Path, metadata) -> None:
    with open(src / METADATA, "wb") as f:
        pickle.dump(metadata, f)


def _payload_in_metadata(src: Path, marker: Path) -> Path:
    """The real metadata with one more attribute, whose unpickling runs the command: an
    unrestricted load runs it and goes on to convert the checkpoint as if nothing happened."""
    metadata = _metadata(src)
    metadata.storage_meta.note = _RunsCommand(f"touch {marker}")
    _save_metadata(src, metadata)
    return src / METADATA


def _payload_in_stored_object(src: Path, marker: Path) -> Path:
    """An ``_extra_state`` object (read with torch.load(weights_only=False) by torch's planner)
    pointed at a pickle appended to its storage file."""
    metadata = _metadata(src)
    info = next(s for i, s in metadata.storage_data.items() if "_extra_state" in i.fqn)
    buffer = io.BytesIO()
    torch.save(_RunsCommand(f"touch {marker}"), buffer)
    storage = src / "iter_0000001" / info.relative_path
    offset = storage.stat().st_size
    with open(storage, "ab") as f:
        f.write(buffer.getvalue())
    info.offset, info.length = offset, len(buffer.getvalue())
    _save_metadata(src, metadata)
    return storage


def _payload_in_common(src: Path, marker: Path) -> Path:
    common = src / "iter_0000001" / "common.pt"
    state = torch.load(common, weights_only=True)
    state["note"] = _RunsCommand(f"touch {marker}")
    torch.save(state, common)
    return common


def _plain_pickle_runs(file: Path, kind: str) -> None:
    if kind == "stored object":
        metadata = _metadata(file.parent.parent)
        info = next(s for i, s in metadata.storage_data.items() if "_extra_state" in i.fqn)
        with open(file, "rb") as f:
            f.seek(info.offset)
            torch.load(io.BytesIO(f.read(info.length)), weights_only=False)
    elif kind == "metadata":
        with open(file, "rb") as f:
            pickle.load(f)
    else:
        torch.load(file, weights_only=False)


PAYLOADS = {
    "metadata": (_payload_in_metadata, ".metadata", "never made of"),
    "stored object": (_payload_in_stored_object, "stored object", "weights_only=True"),
    "common": (_payload_in_common, "common.pt", "weights_only=True"),
}


@pytest.mark.parametrize("kind", list(PAYLOADS))
def test_a_pickle_that_would_run_code_is_refused(kind, torch_dist, tmp_path, capsys):
    plant, names, why = PAYLOADS[kind]
    src, marker = tmp_path / "src", tmp_path / "MARKER"
    shutil.copytree(torch_dist, src)
    file = plant(src, marker)

    _plain_pickle_runs(file, kind)  # the control: the payload is live
    assert marker.exists()
    marker.unlink()

    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert names in err and why in err and "nothing in it was run" in err, err
    assert not marker.exists()
    assert not (tmp_path / "hf").exists()


def test_auto_model_refuses_it_too(torch_dist, tmp_path):
    from mcore_adapter import AutoModel

    src, marker = tmp_path / "src", tmp_path / "MARKER"
    shutil.copytree(torch_dist, src)
    _payload_in_metadata(src, marker)
    with pytest.raises(CheckpointError, match=r"\.metadata asks to load a class or function"):
        AutoModel.from_pretrained(src)
    assert not marker.exists()


def _storage_path(path: str):
    def edit(src: Path) -> None:
        metadata = _metadata(src)
        for info in metadata.storage_data.values():
            info.relative_path = path
        _save_metadata(src, metadata)

    return edit


def _fifo_storage(src: Path) -> None:
    name = next(iter(_metadata(src).storage_data.values())).relative_path
    (src / "iter_0000001" / name).unlink()
    os.mkfifo(src / "iter_0000001" / name)


def _not_metadata(src: Path) -> None:
    _save_metadata(src, {"state_dict_metadata": {}})


def _truncated_metadata(src: Path) -> None:
    data = (src / METADATA).read_bytes()
    (src / METADATA).write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize(
    ("damage", "facts"),
    [
        (_storage_path("../outside.distcp"), ["'../outside.distcp'", "nothing outside was read"]),
        (_storage_path("/etc/passwd"), ["'/etc/passwd'", "plain name"]),
        (_fifo_storage, ["is a FIFO"]),
        (_not_metadata, ["does not hold distributed-checkpoint metadata"]),
        (_truncated_metadata, ["not readable distributed-checkpoint metadata", "truncated"]),
    ],
    ids=["storage-outside", "storage-absolute", "storage-fifo", "not-metadata", "truncated-metadata"],
)
def test_damaged_torch_dist_metadata_is_one_error_line(damage, facts, torch_dist, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(torch_dist, src)
    damage(src)
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert all(fact in err for fact in facts), err


def test_the_allowlist_reads_mtp_layers(megatron, tiny_checkpoint, tmp_path):
    """A model with multi-token-prediction layers saves and reloads through the allowlist."""
    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter.untrusted import read_dcp_metadata

    model = AutoModel.from_pretrained(tiny_checkpoint("deepseek_v3", mtp_layers=1))
    model.save_pretrained(tmp_path / "mca")
    assert any("mtp" in key for key in read_dcp_metadata(tmp_path / "mca" / METADATA).state_dict_metadata)
    reloaded = AutoModel.from_pretrained(tmp_path / "mca")
    for (name, a), (_, b) in zip(model.state_dict().items(), reloaded.state_dict().items(), strict=True):
        if isinstance(a, torch.Tensor):
            assert torch.equal(a, b), name


# ---------------------------------------------------------------------- no file contents in errors
SECRET = "s3cr3t-Contents"


def _secret_shard_outside(src: Path, tmp: Path) -> str:
    """The index names a file outside the checkpoint whose first 8 bytes an error once printed
    as a number."""
    (tmp / "secret.txt").write_text(SECRET * 4)
    names = json.loads((src / "config.json").read_text()) and ["model.embed_tokens.weight"]
    (src / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": dict.fromkeys(names, "../secret.txt")})
    )
    return str(int.from_bytes(SECRET.encode()[:8], "little"))


def _secret_shard_inside(src: Path, tmp: Path) -> str:
    (src / "model.safetensors").write_bytes(SECRET.encode() * 4)
    return str(int.from_bytes(SECRET.encode()[:8], "little"))


def _secret_dtype(src: Path, tmp: Path) -> str:
    raw = (src / "model.safetensors").read_bytes()
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + length])
    header["model.norm.weight"]["dtype"] = SECRET
    encoded = json.dumps(header).encode()
    (src / "model.safetensors").write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :])
    return SECRET


def _secret_tracker(src: Path, tmp: Path) -> str:
    shutil.rmtree(src)
    from mcore_adapter.models.converter.convert import convert_hf_to_mca

    convert_hf_to_mca(tmp / "hf", src, progress=False)
    (src / "latest_checkpointed_iteration.txt").write_text(SECRET)
    return SECRET


def _secret_header_json(src: Path, tmp: Path) -> str:
    body = b'{"' + SECRET.encode() + b"\xff"
    (src / "model.safetensors").write_bytes(len(body).to_bytes(8, "little") + body)
    return SECRET


@pytest.mark.parametrize(
    "plant",
    [_secret_shard_outside, _secret_shard_inside, _secret_dtype, _secret_tracker, _secret_header_json],
    ids=["shard-outside", "shard-not-safetensors", "header-dtype", "tracker", "header-not-json"],
)
def test_errors_never_print_a_files_contents(plant, tiny_checkpoint, tmp_path, capsys):
    shutil.copytree(tiny_checkpoint("llama"), tmp_path / "hf")
    src = tmp_path / "src"
    shutil.copytree(tmp_path / "hf", src)
    secret = plant(src, tmp_path)
    capsys.readouterr()
    assert main(["convert", str(src), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and secret not in err and SECRET[:8] not in err, err


def test_a_hub_cache_snapshot_converts_and_keeps_its_links(tiny_checkpoint, tmp_path, capsys):
    """The hub's cache links each file of a snapshot to a blob outside it: shards and side files
    that are links are allowed, and a side file is copied as the link it is, not as its contents."""
    from mcore_adapter.testing.compare import compare_hf_dirs

    blobs, snapshot = tmp_path / "blobs", tmp_path / "snapshots" / "0123abcd"
    blobs.mkdir()
    snapshot.mkdir(parents=True)
    files = [*tiny_checkpoint("llama").iterdir(), tmp_path / "tokenizer.json"]
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0"}')
    for index, file in enumerate(files):
        shutil.copyfile(file, blobs / f"blob{index}")
        (snapshot / file.name).symlink_to(Path("../..") / "blobs" / f"blob{index}")
    assert main(["convert", str(snapshot), str(tmp_path / "mca"), "--tp", "2"]) == 0
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "hf")]) == 0
    assert compare_hf_dirs(tiny_checkpoint("llama"), tmp_path / "hf") == []
    for out in (tmp_path / "mca", tmp_path / "hf"):
        link = out / "tokenizer.json"
        assert link.is_symlink() and link.resolve() == (blobs / f"blob{len(files) - 1}").resolve()
