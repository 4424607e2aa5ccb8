"""The import rules of the workspace, checked with import-linter (run by ``.ci/run``):

- the converter imports no megatron, no transformers but its config classes, and no family;
- families do not import each other (what two share lives in a common module);
- mcore_adapter never imports roll_*; roll_models never imports roll_infer;
- roll_infer uses only mcore_adapter's public modules; its SGLang side not its vLLM side;
- no module imports another module's private (``_name``) names (checked here, with ``ast``).

The family list is not written down twice: the contracts are generated from the folders the
converter's registry finds (``builtin_families``), then handed to ``lint-imports``.

    python tools/import_contracts.py            # check; exit status 1 on a broken contract
    python tools/import_contracts.py --print    # show the generated configuration
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tempfile
from pathlib import Path

FIRST_PARTY = ("mcore_adapter", "roll_models", "roll_infer")
# What roll_infer may import of mcore_adapter: the documented, public modules.
PUBLIC_MCORE_ADAPTER = (
    "mcore_adapter",
    "mcore_adapter.export",
    "mcore_adapter.parity",
    "mcore_adapter.parallel",
    "mcore_adapter.registry",
    "mcore_adapter.models.converter.template",
)


def _lines(name: str, values: list[str]) -> str:
    return f"{name} =\n" + "".join(f"    {value}\n" for value in values)


def contracts() -> str:
    """The import-linter configuration (INI), families included."""
    from mcore_adapter.models.converter.registry import FAMILY_PACKAGE, builtin_families

    families = [f"{FAMILY_PACKAGE}.{name}" for name in builtin_families()]
    public = [f"roll_infer.** -> {module}" for module in PUBLIC_MCORE_ADAPTER]
    return "\n".join(
        [
            "[importlinter]\nroot_packages =\n    mcore_adapter\n    roll_models\n    roll_infer\n"
            "include_external_packages = True\n",
            "[importlinter:contract:converter]\n"
            "name = The converter imports no megatron, no transformers modeling code and no family\n"
            "type = forbidden\nsource_modules =\n    mcore_adapter.models.converter\n"
            + _lines("forbidden_modules", ["megatron", "transformers", f"{FAMILY_PACKAGE}.family", *families])
            # transformers' config registry only: its config classes fill in a config's defaults
            + "ignore_imports =\n    mcore_adapter.models.converter.config_map -> transformers\n"
            "    mcore_adapter.plugins -> transformers\n",
            "[importlinter:contract:families]\nname = Families do not import each other\n"
            "type = independence\n" + _lines("modules", families),
            "[importlinter:contract:adapter-below]\n"
            "name = mcore_adapter never imports roll_models or roll_infer\ntype = forbidden\n"
            "source_modules =\n    mcore_adapter\nforbidden_modules =\n    roll_models\n    roll_infer\n",
            "[importlinter:contract:models-below-infer]\n"
            "name = roll_models never imports roll_infer\ntype = forbidden\n"
            "source_modules =\n    roll_models\nforbidden_modules =\n    roll_infer\n",
            "[importlinter:contract:infer-public-api]\n"
            "name = roll_infer uses only mcore_adapter's public modules\ntype = forbidden\n"
            "source_modules =\n    roll_infer\nforbidden_modules =\n    mcore_adapter.**\n"
            "allow_indirect_imports = True\nunmatched_ignore_imports_alerting = none\n"
            + _lines("ignore_imports", public),
            "[importlinter:contract:sglang-apart]\n"
            "name = roll_infer's SGLang side does not import its vLLM side\ntype = forbidden\n"
            "source_modules =\n    roll_infer.sglang\nforbidden_modules =\n    roll_infer.vllm\n",
        ]
    )


def private_imports(root: Path) -> list[str]:
    """``from module import _name`` across the packages' sources. A module's private names are
    its own (a name another module needs is public, or the code belongs together); a dependency's
    are used only in ``mcore_adapter/compat/``, where each workaround is tested against the
    versions it applies to."""
    found = []
    for path in sorted(root.glob("packages/*/src/**/*.py")):
        quarantined = "mcore_adapter/compat/" in path.as_posix()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.ImportFrom) or node.module == "__future__":
                continue
            module = "." * node.level + (node.module or "")
            ours = node.level > 0 or module.split(".")[0] in FIRST_PARTY
            for alias in node.names:
                if (
                    alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and (ours or not quarantined)
                ):
                    found.append(f"{path.relative_to(root)}:{node.lineno}: from {module} import {alias.name}")
    return found


def main(argv: list[str]) -> int:
    config = contracts()
    if "--print" in argv:
        print(config)
        return 0
    private = private_imports(Path(__file__).resolve().parent.parent)
    for line in private:
        print(f"private name imported from another module: {line}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "importlinter.ini"
        path.write_text(config)
        lint = Path(sys.executable).with_name("lint-imports")
        status = subprocess.run([str(lint), "--no-cache", str(path)], check=False).returncode
    return status or int(bool(private))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
