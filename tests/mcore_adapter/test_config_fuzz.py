"""Property-based fuzzing of config reading (hypothesis): a tiny checkpoint's config.json with
fields replaced by values of every kind (missing, null, text, lists, objects, negative, zero,
fractional, boolean, NaN, huge) is either planned (the conversion's dry run reads every header
against it) or refused with a ``UserError``; never a traceback from inside, and never a plan
sized by the claim (a huge layer or expert count would fill memory: the examples run under a
memory ceiling well below the machine's)."""

from __future__ import annotations

import json
import resource
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from mcore_adapter.models.converter.convert import HFSource
from mcore_adapter.models.converter.errors import UserError

VALUES = st.one_of(
    st.none(),
    st.text(max_size=3),
    st.just([]),
    st.just({}),
    st.integers(-3, 3),
    st.integers(10**6, 10**15),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.lists(st.integers(-2, 4), max_size=3),
)
DELETE = object()


@pytest.fixture(scope="module", params=["llama", "qwen3_moe", "deepseek_v3", "qwen2_vl"])
def checkpoint(request, tiny_checkpoint):
    return Path(tiny_checkpoint(request.param))


@pytest.fixture(scope="module")
def memory_ceiling():
    """4 GiB more address space than the process has now: a plan sized by a claimed billion
    layers fails here (MemoryError, a failure of the test) instead of swapping the machine."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/statm") as f:
        used = int(f.read().split()[0]) * resource.getpagesize()
    resource.setrlimit(resource.RLIMIT_AS, (used + (4 << 30), hard))
    yield
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _fields(config: dict, prefix: str = "") -> list[str]:
    paths = []
    for key, value in config.items():
        paths.append(prefix + key)
        if isinstance(value, dict):
            paths += _fields(value, f"{prefix}{key}.")
    return paths


@st.composite
def mutations(draw, fields: list[str]):
    chosen = draw(st.lists(st.sampled_from(fields), min_size=1, max_size=3, unique=True))
    return [(path, DELETE if draw(st.integers(0, 9)) == 0 else draw(VALUES)) for path in chosen]


def _apply(config: dict, path: str, value) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict):
        return  # an earlier mutation replaced the parent
    if value is DELETE:
        node.pop(leaf, None)
    else:
        node[leaf] = value


def test_any_config_is_planned_or_refused(checkpoint, memory_ceiling):
    config = json.loads((checkpoint / "config.json").read_text())

    @settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))
    @given(mutations(_fields(config)))
    def check(changes):
        mutated = json.loads(json.dumps(config))
        for path, value in changes:
            _apply(mutated, path, value)
        with tempfile.TemporaryDirectory() as tmp:
            for file in checkpoint.iterdir():  # the weights, linked as the hub's cache links them
                if file.name != "config.json":
                    (Path(tmp) / file.name).symlink_to(file)
            (Path(tmp) / "config.json").write_text(json.dumps(mutated))
            try:
                for _ in HFSource(tmp).weights(meta=True):
                    pass
            except UserError:
                event("refused")
                return
            event("planned")

    check()
