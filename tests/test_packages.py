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
