"""Render the README's support matrices (model type x parallel layout) from the test results.

The parity tests record every case they ran in build/test-results/layouts.json (see
tests/conftest.py ``record_layout``); this script turns that file into the table between the
README's ``support-matrix`` markers (dense models) and ``moe-matrix`` markers (mixture of
experts: layouts with expert parallelism, each cell naming the token dispatchers it ran with),
so the matrices say what the tests measured and nothing else. It also writes which layouts
each model type was tested at to mcore_adapter's package data (``mcore-adapter list`` reads it).
Run the tests first (``uv run pytest``), then::

    uv run python tools/support_matrix.py          # rewrite README.md and the package data
    uv run python tools/support_matrix.py --check  # exit 1 if either is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "build" / "test-results" / "layouts.json"
README = ROOT / "README.md"
PACKAGE_DATA = ROOT / "packages" / "mcore_adapter" / "src" / "mcore_adapter" / "data" / "support_matrix.json"
MARKERS = {
    "dense": ("<!-- support-matrix:begin -->", "<!-- support-matrix:end -->"),
    "moe": ("<!-- moe-matrix:begin -->", "<!-- moe-matrix:end -->"),
    "strategies": ("<!-- strategy-matrix:begin -->", "<!-- strategy-matrix:end -->"),
}
STRATEGY_RESULTS = RESULTS.with_name("strategies.json")
# roll_models' strategies, then roll_infer's: vLLM generating from the checkpoint (vllm_infer)
# and taking a weight sync from a trained Megatron model (vllm_refit).
STRATEGIES = [
    "hf_infer",
    "deepspeed_infer",
    "deepspeed_train",
    "megatron_infer",
    "megatron_train",
    "vllm_infer",
    "vllm_refit",
]


def render_strategies(results: dict[str, dict]) -> str:
    """model_type x strategy: what the provider tests did with each (roll_models)."""
    lines = ["| model_type | " + " | ".join(STRATEGIES) + " |", "| --- |" + " --- |" * len(STRATEGIES)]
    for model_type in sorted({r["model_type"] for r in results.values()}):
        cells = []
        for strategy in STRATEGIES:
            cell = results.get(f"{model_type}-{strategy}")
            if cell is None:
                cells.append("-")
            else:
                cells.append(("✓ " if cell["passed"] else "✗ ") + "; ".join(cell["notes"]))
        lines.append(f"| `{model_type}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# Column order; layouts the tests did not run for any model are left out.
LAYOUTS = ["TP1", "TP2", "PP2", "VPP2", "TP2xPP2", "TP4", "PP4", "TP2xPP2 uneven", "TP2xPP2xVPP2"]
MOE_LAYOUTS = ["TP1", "TP2", "EP2", "TP2xEP2", "TP2xEP2 ETP1", "TP2 ETP1", "PP2", "PP2xEP2", "TP2xPP2"]
DISPATCHERS = {"allgather": "ag", "alltoall": "a2a"}
# The families with experts (their TP1 rows come from the single-process tests, allgather).
MOE_TYPES = (
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v3",
    "glm4_moe",
    "qwen3_vl_moe",
    "qwen3_next",
    "qwen3_5_moe",
)


def split_layout(result: dict) -> tuple[str, str, str]:
    """(model_type with its variant, layout, dispatcher) of a recorded MoE case: its layout
    reads "EP2 alltoall" or "EP2 alltoall (q_lora_rank=None)"."""
    layout, _, variant = result["layout"].partition(" (")
    words = layout.split()
    dispatcher = words.pop() if words and words[-1] in DISPATCHERS else "allgather"
    name = result["model_type"] + (f" ({variant.rstrip(')')})" if variant else "")
    return name, " ".join(words), dispatcher


def cell(cases: list[dict]) -> str:
    if not cases:
        return "-"
    if not all(c["passed"] for c in cases):
        return "✗ fails"
    ties = {c["tied"] for c in cases}
    worst = max(c["max_abs_diff"] for c in cases)
    mark = "✓" if ties == {True, False} else ("✓ tied" if ties == {True} else "✓ untied")
    return f"{mark} {worst:.1e}" if worst else f"{mark} 0"


def render_moe(results: dict[str, dict]) -> str:
    cases = [(*split_layout(r), r) for r in results.values() if r["model_type"] in MOE_TYPES]
    unknown = sorted({layout for _, layout, _, _ in cases} - set(MOE_LAYOUTS))
    if unknown:
        raise SystemExit(f"results hold MoE layouts this script does not order: {unknown}; add them")
    layouts = [name for name in MOE_LAYOUTS if any(layout == name for _, layout, _, _ in cases)]
    lines = ["| model_type | " + " | ".join(layouts) + " |", "| --- |" + " --- |" * len(layouts)]
    for model_type in sorted({name for name, _, _, _ in cases}):
        cells = []
        for layout in layouts:
            here = [(d, r) for name, lay, d, r in cases if name == model_type and lay == layout]
            if not here:
                cells.append("-")
            elif not all(r["passed"] for _, r in here):
                cells.append("✗ fails")
            else:
                worst = max(r["max_abs_diff"] for _, r in here)
                used = ", ".join(DISPATCHERS[d] for d in DISPATCHERS if d in {d for d, _ in here})
                cells.append(f"✓ {worst:.1e} ({used})")
        lines.append(f"| `{model_type}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render(results: dict[str, dict]) -> str:
    results = {k: r for k, r in results.items() if r["model_type"] not in MOE_TYPES}
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


def tested_layouts(results: dict[str, dict]) -> dict[str, dict[str, bool]]:
    """model_type -> {layout: passed} of the parity cases, layouts in the matrices' column order;
    a variant's layouts read "EP2 (q_lora_rank=None)". Dispatchers, ties and diffs stay in the
    README's tables."""
    cases: dict[str, dict[str, bool]] = {}
    for r in results.values():
        if r["model_type"] in MOE_TYPES:
            name, layout, _ = split_layout(r)
            label = layout + name[len(r["model_type"]) :]
        else:
            label = r["layout"]
        row = cases.setdefault(r["model_type"], {})
        row[label] = row.get(label, True) and r["passed"]

    def ordered(model_type: str, row: dict[str, bool]) -> dict[str, bool]:
        order = MOE_LAYOUTS if model_type in MOE_TYPES else LAYOUTS
        return {
            label: row[label] for label in sorted(row, key=lambda label: order.index(label.split(" (")[0]))
        }

    return {model_type: ordered(model_type, row) for model_type, row in sorted(cases.items())}


def package_data(results: dict[str, dict]) -> str:
    document = {
        "generated_by": "tools/support_matrix.py, from the parity tests' results; do not edit",
        "tested_layouts": tested_layouts(results),
    }
    return json.dumps(document, indent=1, ensure_ascii=False) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check", action="store_true", help="only check that README.md and the package data are up to date"
    )
    args = parser.parse_args()
    if not RESULTS.exists():
        print(f"{RESULTS} does not exist: run the tests first (uv run pytest)", file=sys.stderr)
        return 2
    results = json.loads(RESULTS.read_text())
    strategies = json.loads(STRATEGY_RESULTS.read_text()) if STRATEGY_RESULTS.exists() else {}
    tables = {
        "dense": render(results),
        "moe": render_moe(results),
        "strategies": render_strategies(strategies),
    }
    text = README.read_text()
    updated = text
    for kind, (begin, end) in MARKERS.items():
        if begin not in updated or end not in updated:
            print(f"README.md lacks the markers {begin} / {end}", file=sys.stderr)
            return 2
        head, rest = updated.split(begin, 1)
        _, tail = rest.split(end, 1)
        updated = f"{head}{begin}\n{tables[kind]}\n{end}{tail}"
    table = "\n\n".join(tables.values())
    data = package_data(results)
    if args.check:
        stale = [
            path.relative_to(ROOT).as_posix()
            for path, content in ((README, updated), (PACKAGE_DATA, data))
            if not path.exists() or path.read_text() != content
        ]
        if stale:
            print(f"{', '.join(stale)} out of date: run tools/support_matrix.py", file=sys.stderr)
            return 1
        return 0
    README.write_text(updated)
    PACKAGE_DATA.parent.mkdir(exist_ok=True)
    PACKAGE_DATA.write_text(data)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
