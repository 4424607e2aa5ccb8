"""Interrupted conversions: SIGTERM and SIGINT remove the partial output; a run killed outright
leaves a staging directory that the next run into the same destination removes (only a dead
writer's, and it says so); outputs get the mode a plain mkdir would."""

from __future__ import annotations

import errno
import os
import re
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mcore_adapter.cli import main
from mcore_adapter.models.converter import atomic
from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.mca_io import McaCheckpointMeta

# The CLI, with each rank-file write slowed down and announced, so that a signal reliably lands
# while tensors are being written.
SLOW_CONVERT = """
import signal, sys, time
from pathlib import Path
from mcore_adapter.models.converter import mca_io
from mcore_adapter.cli import main

write = mca_io.TorchRankWriter.write

def slow_write(self, *args):
    Path(sys.argv[1]).touch()
    time.sleep(0.2)
    return write(self, *args)

mca_io.TorchRankWriter.write = slow_write
# A suite started in the background (nohup, `cmd &`) hands its children SIGINT ignored, and
# Python then leaves it ignored: restore what an interactive user's process has.
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.exit(main(sys.argv[2:]))
"""


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _staging(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


def _start_slow_conversion(src: Path, dst: Path, marker: Path) -> subprocess.Popen:
    argv = [sys.executable, "-c", SLOW_CONVERT, str(marker), "convert", str(src), str(dst), "--tp", "2"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the conversion never started writing"
        time.sleep(0.05)
    return proc


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_removes_the_partial_output(signum, tiny_checkpoint, tmp_path):
    src, dst = tiny_checkpoint("llama"), tmp_path / "mca"
    before = _snapshot(src)
    proc = _start_slow_conversion(src, dst, tmp_path / "writing")
    assert _staging(tmp_path), "the conversion writes into a staging directory"
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signum, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "partial output was removed" in errors[0], err
    assert "Traceback" not in err
    assert not dst.exists() and _staging(tmp_path) == []
    assert _snapshot(src) == before


def test_the_next_run_removes_what_a_killed_run_left(tiny_checkpoint, tmp_path, capsys):
    src, dst = tiny_checkpoint("llama"), tmp_path / "mca"
    proc = _start_slow_conversion(src, dst, tmp_path / "writing")
    proc.kill()
    proc.communicate(timeout=120)
    (left,) = _staging(tmp_path)
    assert f"-{proc.pid}-" in left
    # Directories of writers that may still run are kept: this process's, another host's.
    running = f".mca.tmp-{atomic._HOST}-{os.getpid()}-0123abcd"
    elsewhere = ".mca.tmp-some_other_host-1-0123abcd"
    for name in (running, elsewhere):
        (tmp_path / name).mkdir()
    assert main(["convert", str(src), str(dst)]) == 0
    err = capsys.readouterr().err
    assert f"removed {tmp_path / left}, left by process {proc.pid} (no longer running)" in err
    assert _staging(tmp_path) == sorted([running, elsewhere])
    assert McaCheckpointMeta.load(dst).checkpoint_format == "torch"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_output_moved_aside_by_a_killed_force_run_is_put_back(tiny_checkpoint, tmp_path, capsys):
    """A --force run moves the old output aside just before renaming the new one into place;
    killed in between, the user's old output must come back, not be removed as staging."""
    dst = tmp_path / "mca"
    convert_hf_to_mca(tiny_checkpoint("llama"), dst, progress=False)
    before = _snapshot(dst)
    aside = tmp_path / f".mca.old-{atomic._HOST}-{_dead_pid()}-0123abcd"
    dst.rename(aside)
    assert atomic.remove_stale_staging(dst) == []
    assert _snapshot(dst) == before and _staging(tmp_path) == []


@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_outputs_get_the_mode_of_a_plain_mkdir(umask, tiny_checkpoint, tmp_path):
    old = os.umask(umask)
    try:
        convert_hf_to_mca(tiny_checkpoint("llama"), tmp_path / "mca", ParallelLayout(tp=2), progress=False)
        convert_mca_to_hf(tmp_path / "mca", tmp_path / "hf", progress=False)
    finally:
        os.umask(old)
    for out in (tmp_path / "mca", tmp_path / "hf"):
        paths = [out, *out.rglob("*")]
        modes = {p.relative_to(tmp_path): stat.S_IMODE(p.stat().st_mode) for p in paths}
        expected = {p.relative_to(tmp_path): (0o777 if p.is_dir() else 0o666) & ~umask for p in paths}
        assert modes == expected


# ---------------------------------------------------------------------- races at the destination
def _one_error_line(err: str) -> str:
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


def test_two_conversions_into_one_new_destination(tiny_checkpoint, tmp_path):
    """Both pass the early check and write at once; the second to finish must not replace the
    first's output: it exits 2 and discards its own."""
    src, dst = tiny_checkpoint("llama"), tmp_path / "mca"
    first = _start_slow_conversion(src, dst, tmp_path / "first-writing")
    second = _start_slow_conversion(src, dst, tmp_path / "second-writing")
    results = [proc.communicate(timeout=300) for proc in (first, second)]
    codes = sorted(proc.returncode for proc in (first, second))
    assert codes == [0, 2], results
    err = next(err for (_, err), proc in zip(results, (first, second), strict=True) if proc.returncode == 2)
    assert "created by someone else while this conversion ran" in _one_error_line(err)
    assert McaCheckpointMeta.load(dst).checkpoint_format == "torch"
    assert convert_mca_to_hf(dst, tmp_path / "hf", progress=False).produced  # complete, readable
    assert _staging(tmp_path) == []


@pytest.mark.parametrize("force", [False, True], ids=["new", "force"])
def test_a_directory_made_at_the_destination_during_a_run_is_kept(force, tiny_checkpoint, tmp_path):
    """The user makes the destination (their own files, no checkpoint) while a conversion
    writes: it is theirs, with or without --force, and stays as it is."""
    src, dst = tiny_checkpoint("llama"), tmp_path / "mca"
    marker = tmp_path / "writing"
    argv = [sys.executable, "-c", SLOW_CONVERT, str(marker), "convert", str(src), str(dst), "--tp", "2"]
    proc = subprocess.Popen([*argv, *(["--force"] if force else [])], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not marker.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    dst.mkdir()
    (dst / "notes.txt").write_text("mine")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err
    line = _one_error_line(err)
    assert ("created by someone else" in line) if not force else ("holds other files (notes.txt)" in line)
    assert _snapshot(dst) == {"notes.txt": b"mine"}
    assert _staging(tmp_path) == []


def test_force_onto_a_link_replaces_the_link_and_leaves_nothing_behind(tiny_checkpoint, tmp_path):
    earlier = tmp_path / "earlier"
    convert_hf_to_mca(tiny_checkpoint("llama"), earlier, progress=False)
    before = _snapshot(earlier)
    (tmp_path / "mca").symlink_to(earlier)
    assert (
        main(["convert", str(tiny_checkpoint("llama")), str(tmp_path / "mca"), "--tp", "2", "--force"]) == 0
    )
    assert not (tmp_path / "mca").is_symlink()
    assert McaCheckpointMeta.load(tmp_path / "mca").tp == 2
    assert _snapshot(earlier) == before  # the link's target is not touched
    assert _staging(tmp_path) == []


def test_an_output_put_back_is_never_replaced_without_force(tiny_checkpoint, tmp_path, capsys):
    """A killed --force run left the earlier output aside; a later run without --force puts it
    back and then refuses to write over it."""
    dst = tmp_path / "mca"
    convert_hf_to_mca(tiny_checkpoint("llama"), dst, progress=False)
    before = _snapshot(dst)
    dst.rename(tmp_path / f".mca.old-{atomic._HOST}-{_dead_pid()}-0123abcd")
    assert main(["convert", str(tiny_checkpoint("llama")), str(dst), "--tp", "2"]) == 2
    assert "already exists" in _one_error_line(capsys.readouterr().err)
    assert _snapshot(dst) == before and _staging(tmp_path) == []


def test_an_output_aside_is_kept_when_the_destination_exists_again(tiny_checkpoint, tmp_path):
    dst = tmp_path / "mca"
    convert_hf_to_mca(tiny_checkpoint("llama"), dst, progress=False)
    aside = tmp_path / f".mca.old-{atomic._HOST}-{_dead_pid()}-0123abcd"
    dst.rename(aside)
    before = _snapshot(aside)
    dst.mkdir()
    assert atomic.remove_stale_staging(dst) == []
    assert _snapshot(aside) == before  # neither restored over the new one nor removed


# ---------------------------------------------------------------------- a full disk
class _Statvfs:
    f_bavail, f_frsize = 3, 4096  # 12 KiB free


@pytest.mark.parametrize("direction", ["hf-to-mca", "mca-to-hf", "hf-to-torch_dist"])
def test_a_full_disk_is_said_before_writing(direction, tiny_checkpoint, tmp_path, capsys, monkeypatch):
    src = tiny_checkpoint("llama")
    if direction == "mca-to-hf":
        convert_hf_to_mca(src, tmp_path / "src", progress=False)
        src = tmp_path / "src"
    if direction == "hf-to-torch_dist":
        pytest.importorskip("megatron.core")
    monkeypatch.setattr(atomic.os, "statvfs", lambda path: _Statvfs())
    argv = ["convert", str(src), str(tmp_path / "out")]
    assert main(argv + (["--format", "torch_dist"] if direction == "hf-to-torch_dist" else [])) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert re.search(r"no space left on device for .* \(needed [0-9.]+ KiB, free 12\.0 KiB\)", line), line
    assert not (tmp_path / "out").exists() and _staging(tmp_path) == []


def test_a_disk_that_fills_while_torch_dist_writes(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    """Megatron's writer fails on a rank (ENOSPC): the system's one line, and nothing left behind."""
    from megatron.core.dist_checkpointing.strategies import filesystem_async

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(filesystem_async, "_write_item", full)  # what megatron's writer calls
    assert (
        main(["convert", str(tiny_checkpoint("llama")), str(tmp_path / "out"), "--format", "torch_dist"]) == 2
    )
    assert "No space left on device" in _one_error_line(capsys.readouterr().err)
    assert not (tmp_path / "out").exists() and _staging(tmp_path) == []
