"""Extending mcore-adapter from the command line: packages found through the
``mcore_adapter.plugins`` entry points (loaded when a lookup misses; a broken one is named and
stops nothing else), ``--import MODULE[:FUNCTION]``, ``list`` checked against the registries
and the generated support matrix, ``--version``, and InternLM2 (whose HF model roll_models
provides) and docs/new_architecture.md's example converting and verifying from the CLI."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import torch

from mcore_adapter import plugins, supported
from mcore_adapter.cli import main
from mcore_adapter.models.converter import registry as template
from mcore_adapter.models.converter.errors import UnsupportedModelError
from mcore_adapter.testing.compare import compare_hf_dirs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"

GOOD_PLUGIN = """
from mcore_adapter.models.common import (
    DENSE_CONFIG_HF_TO_MCA, DENSE_CONSTANT_MCA_CONFIG, DENSE_HF_CONFIG_EXPECT, dense_weight_converters,
)
from mcore_adapter.models.converter.template import register_template

register_template(
    "plugin_llama",
    config_hf_to_mca=DENSE_CONFIG_HF_TO_MCA,
    weight_converters=dense_weight_converters(),
    hf_layer_prefix="model.layers.",
    constant_mca_config=DENSE_CONSTANT_MCA_CONFIG,
    hf_invalid_keys=[".self_attn.rotary_emb.inv_freq"],
    hf_config_expect={**DENSE_HF_CONFIG_EXPECT, "attention_bias": False, "mlp_bias": False},
    hf_architecture="PluginLlamaForCausalLM",
)
"""
ENTRY_POINTS = """
[mcore_adapter.plugins]
good = good_plugin
broken = broken_plugin:register
"""


@pytest.fixture
def registries(monkeypatch):
    """The template registry, the plugin state and the modules a test imports are its own:
    each test starts with the built-in templates (and the installed plugins not yet loaded)."""
    template.registered_model_types()  # the built-ins, before the copy
    monkeypatch.setattr(
        template, "_TEMPLATES", {k: v for k, v in template._TEMPLATES.items() if k != "wrapped_lm"}
    )
    monkeypatch.setattr(plugins, "_plugins", None)
    monkeypatch.setattr(plugins, "_imports", {})
    monkeypatch.setenv(plugins.IMPORTS_ENV, "")
    for name in [n for n in sys.modules if n.partition(".")[0] == "wrapped_lm"]:
        monkeypatch.delitem(sys.modules, name)  # so that --import runs its registration again
    before = set(sys.modules)
    yield
    for name in set(sys.modules) - before:
        if name.partition(".")[0] in ("wrapped_lm", "good_plugin", "broken_plugin", "raising"):
            del sys.modules[name]


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err
    return err[0]


def _plugin_site(tmp_path: Path) -> Path:
    """A directory on sys.path holding a distribution "demo-plugins" with two entry points: one
    that registers a template, one whose module imports a package that is not installed."""
    site = tmp_path / "site"
    (site / "demo_plugins-1.0.dist-info").mkdir(parents=True)
    (site / "demo_plugins-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: demo-plugins\nVersion: 1.0\n"
    )
    (site / "demo_plugins-1.0.dist-info" / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "good_plugin.py").write_text(GOOD_PLUGIN)
    (site / "broken_plugin.py").write_text("import missing_dependency_of_the_plugin\n")
    return site


def test_plugins_load_when_a_template_is_missing_and_a_broken_one_stops_nothing_else(
    registries, tmp_path, monkeypatch, capsys, tiny_checkpoint
):
    monkeypatch.syspath_prepend(str(_plugin_site(tmp_path)))
    llama = tiny_checkpoint("llama")
    assert main(["convert", str(llama), str(tmp_path / "llama_mca")]) == 0
    assert plugins._plugins is None  # a built-in type needs no plugin: none was loaded

    hf = tmp_path / "plugin_hf"
    hf.mkdir()
    for file in llama.iterdir():
        (hf / file.name).write_bytes(file.read_bytes())
    config = json.loads((hf / "config.json").read_text())
    (hf / "config.json").write_text(json.dumps({**config, "model_type": "plugin_llama"}))
    assert main(["convert", str(hf), str(tmp_path / "mca")]) == 0
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "back")]) == 0
    assert compare_hf_dirs(hf, tmp_path / "back") == []

    loaded = {e.spec: e for e in plugins.extensions()}
    assert loaded["good_plugin"].templates == ["plugin_llama"]
    assert loaded["good_plugin"].provider == "demo-plugins"
    error = loaded["broken_plugin:register"].error
    assert "plugin 'broken' = 'broken_plugin:register' of distribution demo-plugins 1.0" in error
    assert "ModuleNotFoundError: No module named 'missing_dependency_of_the_plugin'" in error
    with pytest.raises(UnsupportedModelError, match="no conversion template for model_type 'nope'") as e:
        template.get_template("nope")
    assert error in str(e.value)  # the lookup that missed names the plugin that did not load

    capsys.readouterr()
    assert main(["list", "--json"]) == 0
    captured = capsys.readouterr()
    row = next(r for r in json.loads(captured.out) if r["model_type"] == "plugin_llama")
    assert (row["template"], row["architectures"]) == ("demo-plugins", ["PluginLlamaForCausalLM"])
    assert captured.err.strip() == f"warning: {error}"


def _guide_checkpoint(path: Path) -> Path:
    """A tiny checkpoint of docs/examples/wrapped_lm (as tests/roll_infer's guide test builds it)."""
    spec = importlib.util.spec_from_file_location("guide_modeling", EXAMPLES / "wrapped_lm" / "modeling.py")
    modeling = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(modeling)
    from mcore_adapter.testing.tiny_models import _BASE

    config = modeling.WrappedLMConfig(
        **{**_BASE, "head_dim": 64}, tie_word_embeddings=False, use_sliding_window=False
    )
    torch.manual_seed(0)
    model = modeling.WrappedLMForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(path)
    return path


def test_import_makes_a_users_template_convert_both_ways(registries, tmp_path, monkeypatch, capsys):
    hf = _guide_checkpoint(tmp_path / "hf")
    capsys.readouterr()
    assert main(["convert", str(hf), str(tmp_path / "refused")]) == 2
    assert "no conversion template for model_type 'wrapped_lm'" in _one_error_line(capsys)

    monkeypatch.syspath_prepend(str(EXAMPLES))
    assert main(["--import", "wrapped_lm.template", "convert", str(hf), str(tmp_path / "mca")]) == 0
    # after the command too; imported once per process
    assert (
        main(["convert", str(tmp_path / "mca"), str(tmp_path / "back"), "--import", "wrapped_lm.template"])
        == 0
    )
    assert compare_hf_dirs(hf, tmp_path / "back") == []
    assert plugins._imports["wrapped_lm.template"].templates == ["wrapped_lm"]
    assert os.environ[plugins.IMPORTS_ENV] == "wrapped_lm.template"  # what launched ranks import


@pytest.mark.parametrize(
    "spec, message",
    [
        (
            "no_such_package.template",
            "--import no_such_package.template: no module named 'no_such_package' on the import path",
        ),
        (
            "docs/examples/wrapped_lm/template.py",
            "(a file: put its directory on PYTHONPATH and name the module)",
        ),
        ("raising", "--import raising failed: RuntimeError: the user's module broke (at "),
        (
            "raising_ok:nope",
            "--import raising_ok:nope failed: AttributeError: module 'raising_ok' has no attribute 'nope'",
        ),
    ],
)
def test_import_errors_are_one_line(registries, tmp_path, monkeypatch, capsys, spec, message):
    (tmp_path / "raising.py").write_text('x = 1\nraise RuntimeError("the user\'s module broke")\n')
    (tmp_path / "raising_ok.py").write_text("x = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(["--import", spec, "list"]) == 2
    line = _one_error_line(capsys)
    assert message in line
    if spec == "raising":
        assert line.endswith(f"{tmp_path / 'raising.py'}:2)")


def test_list_is_the_registries_and_the_generated_matrix(registries, capsys):
    assert main(["list", "--json"]) == 0
    rows = {row["model_type"]: row for row in json.loads(capsys.readouterr().out)}
    assert sorted(rows) == template.registered_model_types()
    matrix = supported.tested_layouts()
    assert set(matrix) <= set(rows)  # the generated matrix names no type that has no template
    for model_type, row in rows.items():
        assert row["architectures"] == [template.get_template(model_type).hf_architecture]
        assert row["template"] == "mcore-adapter"
        layouts = matrix.get(model_type, {})
        assert row["tested_layouts"] == [layout for layout, passed in layouts.items() if passed]
        assert row["failed_layouts"] == [layout for layout, passed in layouts.items() if not passed]
    assert rows["internlm2"]["hf_implementation"] == "roll-models"  # through its entry point
    assert rows["llama"]["hf_implementation"] == "transformers"
    assert "TP2xPP2" in rows["llama"]["tested_layouts"]

    assert main(["list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[0] == "model_type"
    assert [line.split()[0] for line in lines[1:]] == sorted(rows)
    internlm2 = next(line for line in lines if line.startswith("internlm2 "))
    assert internlm2.split()[1:4] == ["InternLM2ForCausalLM", "mcore-adapter", "roll-models"]


def test_support_matrix_tool_writes_the_tested_layouts():
    spec = importlib.util.spec_from_file_location("support_matrix", ROOT / "tools" / "support_matrix.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    results = {
        "a": {"model_type": "llama", "layout": "TP2", "passed": False},
        "b": {"model_type": "llama", "layout": "TP1", "passed": True},
        "c": {"model_type": "llama", "layout": "TP2", "passed": True},
        "d": {"model_type": "deepseek_v3", "layout": "EP2 alltoall (q_lora_rank=None)", "passed": True},
        "e": {"model_type": "deepseek_v3", "layout": "TP1 alltoall", "passed": True},
        "f": {"model_type": "deepseek_v3", "layout": "TP1", "passed": True},
    }
    document = json.loads(tool.package_data(results))
    assert document["tested_layouts"] == {
        "deepseek_v3": {"TP1": True, "EP2 (q_lora_rank=None)": True},
        "llama": {"TP1": True, "TP2": False},  # one failing case fails the layout
    }


def test_version_names_the_stack_without_importing_it():
    code = (
        "import sys\nfrom mcore_adapter.cli import main\nrc = main(['--version'])\n"
        "print(sorted(m for m in ('torch', 'transformers', 'megatron') if m in sys.modules))\nsys.exit(rc)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    versions = ", ".join(f"{d} {metadata.version(d)}" for d in ("megatron-core", "transformers", "torch"))
    assert done.stdout.splitlines() == [
        f"mcore-adapter {metadata.version('mcore-adapter')} ({versions})",
        "[]",
    ]


CLI_RUN = """
import json, sys
from mcore_adapter.cli import main

report = {"roll_models imported at start": "roll_models" in sys.modules}
report["demo"] = main(["demo", "--model-type", "internlm2", "--workdir", sys.argv[1]])
report["verify"] = main(["verify", sys.argv[1] + "/hf"])
report["guide"] = main(["--import", "wrapped_lm:register", "verify", sys.argv[2], "--tp", "2"])
print(json.dumps(report))
"""


@pytest.mark.slow
@pytest.mark.distributed
def test_internlm2_and_the_guide_example_verify_from_the_cli(tmp_path):
    """One process, as a user's shell runs the CLI: InternLM2's HF model comes from roll_models
    through its entry point; the guide's model from --import, in the two ranks of --tp 2 too."""
    guide = _guide_checkpoint(tmp_path / "guide")
    env = {**os.environ, "PYTHONPATH": str(EXAMPLES)}
    done = subprocess.run(
        [sys.executable, "-c", CLI_RUN, str(tmp_path / "internlm2"), str(guide)],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == {"roll_models imported at start": False, "demo": 0, "verify": 0, "guide": 0}, done.stdout
