"""Render the README's support matrix (model type x parallel layout) from the test results.

The parity tests record every case they ran in build/test-results/layouts.json (see
tests/conftest.py ``record_layout``); this script turns that file into the table between the
README's ``support-matrix`` markers, so the matrix says what the tests measured and nothing
else. Run the tests first (``uv run pytest``), then::

    uv run python tools/support_matrix.py          # rewrite README.md
    uv run python tools/support_matrix.py --check  # exit 1 if README.md is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "test-results" / "layouts.json"
README = ROOT / "README.md"
BEGIN, END = "<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"
# Column order; layouts the tests did not run for any model are left out.
LAYOUTS = ["TP1", "TP2", "PP2", "VPP2", "TP2xPP2", "TP4", "PP4", "TP2xPP2 uneven", "TP2xPP2xVPP2"]


def cell(cases: list[dict]) -> str:
    if not cases:
        return "-"
    if not all(c["passed"] for c in cases):
        return "✗ fails"
    ties = {c["tied"] for c in cases}
    worst = max(c["max_abs_diff"] for c in cases)
    mark = "✓" if ties == {True, False} else ("✓ tied" if ties == {True} else "✓ untied")
    return f"{mark} {worst:.1e}" if worst else f"{mark} 0"


def render(results: dict[str, dict]) -> str:
    types = sorted({r["model_type"] for r in results.values()})
    layouts = [name for name in LAYOUTS if any(r["layout"] == name for r in results.values())]
    unknown = sorted({r["layout"] for r in results.values()} - set(LAYOUTS))
    if unknown:
        raise SystemExit(f"results hold layouts this script does not order: {unknown}; add them to LAYOUTS")
    lines = [
        "| model_type | " + " | ".join(layouts) + " |",
        "| --- |" + " --- |" * len(layouts),
    ]
    for model_type in types:
        cells = [
            cell([r for r in results.values() if r["model_type"] == model_type and r["layout"] == name])
            for name in layouts
        ]
        lines.append(f"| `{model_type}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that README.md is up to date")
    args = parser.parse_args()
    if not RESULTS.exists():
        print(f"{RESULTS} does not exist: run the tests first (uv run pytest)", file=sys.stderr)
        return 2
    table = render(json.loads(RESULTS.read_text()))
    text = README.read_text()
    if BEGIN not in text or END not in text:
        print(f"README.md lacks the markers {BEGIN} / {END}", file=sys.stderr)
        return 2
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    updated = f"{head}{BEGIN}\n{table}\n{END}{tail}"
    if args.check:
        if updated != text:
            print("README.md's support matrix is out of date: run tools/support_matrix.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
