"""The three workspace packages import on their own and are versioned together."""

import importlib

import pytest


@pytest.mark.parametrize("package", ["mcore_adapter", "roll_models", "roll_infer"])
def test_package_imports_with_the_shared_version(package):
    assert (
        importlib.import_module(package).__version__ == importlib.import_module("mcore_adapter").__version__
    )


def test_importing_mcore_adapter_does_not_import_megatron():
    import subprocess
    import sys

    code = "import sys, mcore_adapter; assert not [m for m in sys.modules if m.startswith('megatron')]"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_import_rules_hold():
    """tools/import_contracts.py: the converter, the families, the packages' layering and
    roll_infer's use of mcore_adapter's public modules (import-linter), and no private names
    imported across modules. Its report names each import that breaks a rule."""
    import subprocess
    import sys
    from pathlib import Path

    tool = Path(__file__).resolve().parent.parent / "tools" / "import_contracts.py"
    run = subprocess.run([sys.executable, str(tool)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
    assert "BROKEN" not in run.stdout


def test_import_rules_cover_every_family():
    """The generated contracts list every family the registry finds, so a new folder is covered."""
    import importlib.util
    from pathlib import Path

    from mcore_adapter.models.converter.registry import builtin_families

    path = Path(__file__).resolve().parent.parent / "tools" / "import_contracts.py"
    spec = importlib.util.spec_from_file_location("import_contracts", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    config = tool.contracts()
    section = config.split("[importlinter:contract:families]")[1].split("[importlinter:")[0]
    assert sorted(line.strip() for line in section.splitlines() if line.startswith("    ")) == sorted(
        f"mcore_adapter.models.{name}" for name in builtin_families()
    )
    assert len(builtin_families()) >= 18
