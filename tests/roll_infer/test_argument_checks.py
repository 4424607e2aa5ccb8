"""Arguments checked at the call, with a message naming the argument (issue 19): vLLM and
SGLang architecture registration (an empty name, a malformed "module:Class", a module that
cannot be found, a class the module does not define), and ``sync_to_directory`` (a bad
``max_shard_bytes``; ``force`` into the directory the model was loaded from)."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from roll_infer.vllm.plugin import RegistrationError

PKG = "roll_argcheck_pkg"  # written to a temporary directory on sys.path, never imported here


@pytest.fixture
def user_package(tmp_path, monkeypatch):
    """A user package with a model module, findable but not imported, and no registration
    left behind in the environment."""
    pkg = tmp_path / "site" / PKG
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('registration must not import the package')\n")
    (pkg / "model.py").write_text(
        "import torch\n\nclass ArgCheckForCausalLM(torch.nn.Module):\n    pass\n\nEntryClass = ArgCheckForCausalLM\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("ROLL_INFER_VLLM_MODELS", raising=False)
    monkeypatch.delenv("ROLL_INFER_SGLANG_MODELS", raising=False)
    monkeypatch.delenv("SGLANG_EXTERNAL_MODEL_PACKAGE", raising=False)
    yield pkg
    assert PKG not in sys.modules


def _vllm(arch, target):
    def call(_):
        from roll_infer.vllm import register_architecture

        register_architecture(arch, target)

    return call


def _sglang(arch, target):
    def call(_):
        from roll_infer.sglang import register_architecture

        register_architecture(arch, target)

    return call


@dataclass
class Meta:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class OneTensorSource:
    def metadata(self):
        return [Meta("w", torch.float32, (4,))]

    def __iter__(self):
        yield "w", torch.ones(4)


class Config:
    """An HF config as ``from_pretrained`` leaves it: ``name_or_path`` is where it came from."""

    def __init__(self, name_or_path):
        self.name_or_path = str(name_or_path)

    def save_pretrained(self, path):
        Path(path, "config.json").write_text("{}")


def _checkpoint(tmp: Path) -> Path:
    src = tmp / "model"
    src.mkdir(exist_ok=True)
    (src / "config.json").write_text('{"model_type": "qwen3"}')
    (src / "model.safetensors").write_bytes(b"original weights")
    return src


def _sync(dst, force=False, **kwargs):
    def call(tmp):
        from roll_infer.weight_sync import sync_to_directory

        src = _checkpoint(tmp)
        sync_to_directory(OneTensorSource(), dst(tmp, src), config=Config(src), force=force, **kwargs)

    return call


ROWS = {
    # vLLM registration
    "vllm-empty-architecture": (_vllm("", f"{PKG}.model:ArgCheckForCausalLM"), RegistrationError, "architecture must be a non-empty"),
    "vllm-blank-architecture": (_vllm("  ", f"{PKG}.model:ArgCheckForCausalLM"), RegistrationError, "architecture must be a non-empty"),
    "vllm-architecture-not-a-string": (_vllm(None, f"{PKG}.model:ArgCheckForCausalLM"), RegistrationError, "architecture must be a non-empty"),
    "vllm-no-colon": (_vllm("ArgCheckForCausalLM", f"{PKG}.model.ArgCheckForCausalLM"), RegistrationError, "model_class must be 'module:Class'"),
    "vllm-empty-class": (_vllm("ArgCheckForCausalLM", f"{PKG}.model:"), RegistrationError, "model_class must be 'module:Class'"),
    "vllm-bad-module-path": (_vllm("ArgCheckForCausalLM", f"{PKG}..model:ArgCheckForCausalLM"), RegistrationError, "dotted module path"),
    "vllm-missing-package": (_vllm("ArgCheckForCausalLM", "roll_no_such_pkg.model:ArgCheckForCausalLM"), RegistrationError, "no module named 'roll_no_such_pkg.model'"),
    "vllm-missing-module": (_vllm("ArgCheckForCausalLM", f"{PKG}.no_such:ArgCheckForCausalLM"), RegistrationError, f"no module named '{PKG}.no_such'"),
    "vllm-missing-class": (_vllm("ArgCheckForCausalLM", f"{PKG}.model:NoSuchForCausalLM"), RegistrationError, r"model.py defines no 'NoSuchForCausalLM'"),
    "vllm-missing-class-imported-module": (_vllm("ArgCheckForCausalLM", "roll_infer.testing:NoSuchForCausalLM"), RegistrationError, "roll_infer.testing has no attribute 'NoSuchForCausalLM'"),
    # SGLang registration
    "sglang-empty-architecture": (_sglang("", f"{PKG}.model:ArgCheckForCausalLM"), RegistrationError, "architecture must be a non-empty"),
    "sglang-missing-module": (_sglang("ArgCheckForCausalLM", "roll_no_such_pkg:ArgCheckForCausalLM"), RegistrationError, "no module named 'roll_no_such_pkg'"),
    "sglang-missing-class": (_sglang("NoSuchForCausalLM", f"{PKG}.model:NoSuchForCausalLM"), RegistrationError, "defines no 'NoSuchForCausalLM'"),
    # sync_to_directory
    "max-shard-bytes-negative": (_sync(lambda t, s: t / "out", max_shard_bytes=-1), ValueError, "max_shard_bytes must be a positive int"),
    "max-shard-bytes-zero": (_sync(lambda t, s: t / "out", max_shard_bytes=0), ValueError, "max_shard_bytes must be a positive int"),
    "max-shard-bytes-float": (_sync(lambda t, s: t / "out", max_shard_bytes=1.5e9), ValueError, "max_shard_bytes must be a positive int"),
    "max-shard-bytes-str": (_sync(lambda t, s: t / "out", max_shard_bytes="1GB"), ValueError, "max_shard_bytes must be a positive int"),
    "max-shard-bytes-bool": (_sync(lambda t, s: t / "out", max_shard_bytes=True), ValueError, "max_shard_bytes must be a positive int"),
    "force-into-the-source": (_sync(lambda t, s: s, force=True), FileExistsError, "is the source"),
    "force-into-the-source-via-symlink": (_sync(lambda t, s: _link(t, s), force=True), FileExistsError, "is the source"),
    "into-the-source's-parent": (_sync(lambda t, s: t, force=True), FileExistsError, "contains the source"),
    "inside-the-source": (_sync(lambda t, s: s / "sub", force=True), FileExistsError, "lies inside the source"),
}  # fmt: skip


def _link(tmp: Path, src: Path) -> Path:
    link = tmp / "link"
    if not link.is_symlink():
        link.symlink_to(src)
    return link


@pytest.mark.parametrize("row", ROWS)
def test_bad_arguments_are_refused_at_the_call(row, user_package, tmp_path):
    call, error, message = ROWS[row]
    with pytest.raises(error, match=message):
        call(tmp_path)
    assert not os.environ.get("ROLL_INFER_VLLM_MODELS") and not os.environ.get("ROLL_INFER_SGLANG_MODELS")
    src = tmp_path / "model"
    if src.exists():  # sync rows: the source is as it was, nothing written
        assert sorted(p.name for p in src.iterdir()) == ["config.json", "model.safetensors"]
        assert (src / "model.safetensors").read_bytes() == b"original weights"
        assert not (tmp_path / "out").exists()


@pytest.mark.vllm
def test_a_good_registration_checks_without_importing_the_module(user_package):
    from vllm import ModelRegistry

    from roll_infer.sglang import register_architecture as register_sglang
    from roll_infer.vllm import register_architecture

    try:
        register_architecture("ArgCheckForCausalLM", f"{PKG}.model:ArgCheckForCausalLM")
        assert ModelRegistry.models["ArgCheckForCausalLM"].module_name == f"{PKG}.model"
        register_sglang("ArgCheckForCausalLM", f"{PKG}.model:ArgCheckForCausalLM")
    finally:
        ModelRegistry.models.pop("ArgCheckForCausalLM", None)
    assert PKG not in sys.modules  # the fixture checks it again


def test_a_good_sync_to_directory_still_writes(tmp_path):
    from safetensors.torch import load_file

    from roll_infer.weight_sync import sync_to_directory

    src = _checkpoint(tmp_path)
    sync_to_directory(OneTensorSource(), tmp_path / "out", config=Config(src), max_shard_bytes=1 << 20)
    assert torch.equal(load_file(tmp_path / "out" / "model.safetensors")["w"], torch.ones(4))
    sync_to_directory(OneTensorSource(), tmp_path / "out", config=Config(src), force=True)  # replaces
