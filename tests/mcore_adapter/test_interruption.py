"""Interrupted conversions: SIGTERM and SIGINT remove the partial output; a run killed outright
leaves a staging directory that the next run into the same destination removes (only a dead
writer's, and it says so); outputs get the mode a plain mkdir would."""

from __future__ import annotations

import os
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
import sys, time
from pathlib import Path
from mcore_adapter.models.converter import mca_io
from mcore_adapter.cli import main

write = mca_io.TorchRankWriter.write

def slow_write(self, *args):
    Path(sys.argv[1]).touch()
    time.sleep(0.2)
    return write(self, *args)

mca_io.TorchRankWriter.write = slow_write
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
