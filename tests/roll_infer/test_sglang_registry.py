"""roll_infer's SGLang external model package, in SGLang's real registry.

sglang is CUDA-only and pins another torch, so it is not a dependency of the workspace: the
fixture installs the sglang wheel (no dependencies, plus the three small modules its registry
imports) into build/ and runs the registry in a subprocess with it on ``PYTHONPATH``. Importing
the registry imports no model code of SGLang's when an external package is set."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SGLANG = "sglang==0.5.23"
SITE = Path(__file__).resolve().parents[2] / "build" / "sglang-registry"


@pytest.fixture(scope="module")
def sglang_site() -> Path:
    if not (SITE / "sglang" / "srt" / "models" / "registry.py").exists():
        command = [
            "uv",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--target",
            str(SITE),
            SGLANG,
            "orjson",
            "ipython",
            "traitlets",
        ]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            pytest.skip(f"could not install {SGLANG} for its registry: {result.stderr.strip()[-500:]}")
    return SITE


def _in_sglang(site: Path, code: str, tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(tmp_path), os.environ.get("PYTHONPATH", "")]),
        "SGLANG_EXTERNAL_MODEL_PACKAGE": "roll_infer.sglang",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=environ, timeout=300
    )


USER_MODULE = """
import torch

class GuideForCausalLM(torch.nn.Module):
    pass

EntryClass = GuideForCausalLM
"""
CHECK = """
import json
from roll_infer.sglang import check_registry
from sglang.srt.models.registry import ModelRegistry
from transformers import AutoConfig
print(json.dumps({
    "resolved": check_registry(),
    "registry": sorted(ModelRegistry.models),
    "internlm2_config": AutoConfig.for_model("internlm2").__class__.__module__,
}))
"""


def test_sglang_registry_resolves_our_package_and_a_user_architecture(sglang_site, tmp_path):
    (tmp_path / "guide_sgl_model.py").write_text(USER_MODULE)
    result = _in_sglang(
        sglang_site,
        CHECK,
        tmp_path,
        ROLL_INFER_SGLANG_MODELS="GuideForCausalLM=guide_sgl_model:GuideForCausalLM",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["resolved"] == {"GuideForCausalLM": "guide_sgl_model:GuideForCausalLM"}
    assert "GuideForCausalLM" in report["registry"]
    # hub InternLM2 configs (auto_map) resolve to roll_models' class in SGLang's process
    assert report["internlm2_config"] == "roll_models.internlm2.configuration_internlm2"


def test_a_class_sglang_could_not_import_is_reported_with_its_error(sglang_site, tmp_path):
    (tmp_path / "broken_sgl_model.py").write_text("import a_kernel_that_is_not_installed\n")
    result = _in_sglang(
        sglang_site,
        "from roll_infer.sglang import check_registry; check_registry()",
        tmp_path,
        ROLL_INFER_SGLANG_MODELS="BrokenForCausalLM=broken_sgl_model:BrokenForCausalLM",
    )
    assert result.returncode != 0
    assert "No module named 'a_kernel_that_is_not_installed'" in result.stderr


def _sglang_entry_classes(site: Path) -> set[str]:
    """Every EntryClass name in SGLang's model modules, read from their source (importing them
    needs CUDA kernels)."""
    names = set()
    for path in (site / "sglang" / "srt" / "models").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and any(
                getattr(t, "id", None) == "EntryClass" for t in node.targets
            ):
                values = node.value.elts if isinstance(node.value, ast.List | ast.Tuple) else [node.value]
                names |= {v.id for v in values if isinstance(v, ast.Name)}
    return names


def test_every_roll_models_architecture_is_served_by_sglang(sglang_site):
    from roll_infer.sglang import ENGINE_CLASSES, NATIVE_ARCHITECTURES
    from roll_infer.vllm.plugin import roll_models_architectures

    native = _sglang_entry_classes(sglang_site)
    assert native >= NATIVE_ARCHITECTURES, (
        f"SGLang does not implement {sorted(NATIVE_ARCHITECTURES - native)}"
    )
    unserved = set(roll_models_architectures()) - NATIVE_ARCHITECTURES - set(ENGINE_CLASSES)
    assert not unserved


@pytest.mark.parametrize(
    "arch, target, message",
    [
        ("MyForCausalLM", "pkg.MyForCausalLM", "must be 'module:Class'"),
        ("MyForCausalLM", "pkg:MyModel", "registers a class under its own name"),
    ],
)
def test_sglang_register_architecture_refuses_what_sglang_would_not_resolve(
    arch, target, message, monkeypatch
):
    from roll_infer.sglang import ENV_MODELS, register_architecture
    from roll_infer.vllm import RegistrationError

    monkeypatch.delenv(ENV_MODELS, raising=False)
    with pytest.raises(RegistrationError, match=message):
        register_architecture(arch, target)
