"""Shared fixtures. Megatron is imported (~15 s) once per test process, and only by the tests
that build models: every such test shares one single-process gloo group."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


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
