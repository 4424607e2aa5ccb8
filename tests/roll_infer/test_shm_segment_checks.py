"""The ``roll_shm`` engine maps only a segment the trainer created for it (issue 19): every other
path the init RPC could carry is refused with a message saying what is wrong, and the file it
names is neither created, grown, truncated nor written. The engine-side check is tested
directly (no vLLM import, no engine start); test_vllm_refit.py runs the happy path end to end."""

from __future__ import annotations

import hashlib
import os
import secrets
import stat
import tempfile
from pathlib import Path

import pytest
import torch

from roll_infer.vllm.shm_segment import DIR_PREFIX, Segment, open_segment
from roll_infer.weight_sync import WeightSyncError

NBYTES = 4096
TOKEN = "0123456789abcdef" * 2


@pytest.fixture
def private_dir(tmp_path):
    """A directory shaped like the trainer's: ``roll-refit-*``, mode 0700."""
    d = tmp_path / f"{DIR_PREFIX}test"
    d.mkdir(mode=0o700)
    d.chmod(0o700)
    return d


def _user_file(path: Path, size: int = NBYTES) -> Path:
    path.write_bytes(bytes(range(256)) * (size // 256))
    path.chmod(0o600)
    return path


def _fingerprint(path: Path):
    st = os.lstat(path)
    data = path.read_bytes() if stat.S_ISREG(st.st_mode) else b""
    return st.st_mode, st.st_size, hashlib.sha256(data).hexdigest()


# Each case builds a hostile path (and what must not change) from a temporary directory and the
# private directory; the message says what the engine reports.
def _missing(tmp, priv):
    return priv / f"segment-{TOKEN}", None


def _user_file_with_another_name(tmp, priv):
    return _user_file(tmp / "notes.txt"), None


def _user_file_in_private_dir_wrong_name(tmp, priv):
    return _user_file(priv / "id_ed25519"), None


def _symlink_to_user_file(tmp, priv):
    link = priv / f"segment-{TOKEN}"
    link.symlink_to(_user_file(tmp / "precious.bin"))
    return link, tmp / "precious.bin"


def _fifo(tmp, priv):
    path = priv / f"segment-{TOKEN}"
    os.mkfifo(path, 0o600)
    return path, None


def _directory(tmp, priv):
    path = priv / f"segment-{TOKEN}"
    path.mkdir(mode=0o700)
    return path, None


def _in_tmp_directly(tmp, priv):
    # /tmp itself (mode 1777): a well-named file there is still refused.
    return _user_file(Path(tempfile.gettempdir()) / f"segment-{secrets.token_hex(16)}"), None


def _in_world_writable_dir(tmp, priv):
    d = tmp / f"{DIR_PREFIX}open"
    d.mkdir()
    d.chmod(0o777)
    return _user_file(d / f"segment-{TOKEN}"), None


def _in_group_readable_dir(tmp, priv):
    d = tmp / f"{DIR_PREFIX}shared"
    d.mkdir()
    d.chmod(0o750)
    return _user_file(d / f"segment-{TOKEN}"), None


def _dir_is_a_symlink(tmp, priv):
    link = tmp / f"{DIR_PREFIX}link"
    link.symlink_to(priv)
    _user_file(priv / f"segment-{TOKEN}")
    return link / f"segment-{TOKEN}", priv / f"segment-{TOKEN}"


def _group_writable_file(tmp, priv):
    path = _user_file(priv / f"segment-{TOKEN}")
    path.chmod(0o620)
    return path, None


def _too_small(tmp, priv):
    return _user_file(priv / f"segment-{TOKEN}", size=256), None


def _hard_link(tmp, priv):
    target = _user_file(tmp / "precious.bin")
    os.link(target, priv / f"segment-{TOKEN}")
    return priv / f"segment-{TOKEN}", target


def _dot_dot(tmp, priv):
    _user_file(priv / f"segment-{TOKEN}")
    return Path(f"{priv}/../{priv.name}/segment-{TOKEN}"), priv / f"segment-{TOKEN}"


def _relative(tmp, priv):
    _user_file(priv / f"segment-{TOKEN}")
    return Path(os.path.relpath(priv / f"segment-{TOKEN}")), priv / f"segment-{TOKEN}"


CASES = {
    "missing-file": (_missing, "does not exist"),
    "user-file": (_user_file_with_another_name, "is not a segment the trainer created"),
    "private-file-wrong-name": (_user_file_in_private_dir_wrong_name, "is not a segment the trainer created"),
    "symlink-to-user-file": (_symlink_to_user_file, "is a symbolic link"),
    "fifo": (_fifo, "is a FIFO"),
    "directory": (_directory, "is a directory"),
    "file-in-tmp": (_in_tmp_directly, "is not a segment the trainer created"),
    "world-writable-dir": (_in_world_writable_dir, "has mode 0777"),
    "group-readable-dir": (_in_group_readable_dir, "has mode 0750"),
    "dir-is-a-symlink": (_dir_is_a_symlink, "is a symbolic link"),
    "group-writable-file": (_group_writable_file, "has mode 0620"),
    "too-small": (_too_small, "holds 256 bytes, fewer than the 4096"),
    "hard-link": (_hard_link, "has 2 links"),
    "dot-dot": (_dot_dot, "must be absolute and normalized"),
    "relative": (_relative, "must be absolute and normalized"),
}


@pytest.mark.parametrize("case", CASES)
def test_the_engine_refuses_a_segment_the_trainer_did_not_create(case, tmp_path, private_dir, monkeypatch):
    make, message = CASES[case]
    monkeypatch.chdir(tmp_path)
    path, also = make(tmp_path, private_dir)
    existed = os.path.lexists(path)
    watched = [p for p in (path, also) if p is not None and os.path.lexists(p)]
    before = {p: _fingerprint(p) for p in watched}
    try:
        with pytest.raises(WeightSyncError, match=message) as info:
            open_segment(str(path), NBYTES)
        assert "roll_shm" in str(info.value)
        assert os.path.lexists(path) == existed  # nothing created
        assert {p: _fingerprint(p) for p in watched} == before  # nor grown, truncated or written
    finally:
        if case == "file-in-tmp":
            os.unlink(path)


@pytest.mark.parametrize(
    "path, nbytes, message",
    [
        ("", NBYTES, "non-empty string"),
        (None, NBYTES, "non-empty string"),
        ("/dev/shm/x\0y", NBYTES, "NUL byte"),
        (f"/{DIR_PREFIX}x/segment-{TOKEN}", 0, "positive int"),
        (f"/{DIR_PREFIX}x/segment-{TOKEN}", -1, "positive int"),
        (f"/{DIR_PREFIX}x/segment-{TOKEN}", "4096", "positive int"),
    ],
)
def test_the_init_info_fields_are_checked(path, nbytes, message):
    with pytest.raises(WeightSyncError, match=message):
        open_segment(path, nbytes)


def test_the_trainers_segment_is_private_and_the_engine_maps_it_read_only(tmp_path):
    segment = Segment(str(tmp_path), NBYTES)
    try:
        directory = Path(segment.directory)
        assert directory.parent == tmp_path and directory.name.startswith(DIR_PREFIX)
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert stat.S_IMODE(os.stat(segment.path).st_mode) == 0o600
        segment.tensor[:4].copy_(torch.tensor([1, 2, 3, 4], dtype=torch.uint8))
        mapped = open_segment(segment.path, NBYTES)
        assert mapped.numel() == NBYTES and mapped[:4].tolist() == [1, 2, 3, 4]
        segment.tensor[0] = 9  # shared, not a copy
        assert mapped[0].item() == 9
        segment.resize(2 * NBYTES)  # the trainer grows it before telling the engine
        assert open_segment(segment.path, 2 * NBYTES).numel() == 2 * NBYTES
        with pytest.raises(WeightSyncError, match="fewer than"):
            open_segment(segment.path, 4 * NBYTES)
        assert os.path.getsize(segment.path) == 2 * NBYTES  # not grown by the engine
    finally:
        segment.close()
    assert not directory.exists()  # file and directory removed
