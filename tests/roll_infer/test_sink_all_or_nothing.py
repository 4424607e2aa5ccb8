"""``sync_to_hf_model`` is all or nothing (issue 19): a source that fails mid-stream, sends a
tensor of a broadcastable but wrong shape, a name twice or one it did not announce, or is
interrupted, leaves the transformers model exactly as it was. A fake source (vLLM's two
channels: ``metadata()`` and iteration over ``(name, tensor)``) drives it; no Megatron model."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from roll_infer.weight_sync import WeightSyncError, sync_to_hf_model


@dataclass
class Meta:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]


class FakeSource:
    """Announces ``tensors`` and yields ``stream`` (by default the same), raising ``fail`` (an
    exception instance) after ``fail_after`` tensors."""

    def __init__(self, tensors, stream=None, fail=None, fail_after=0):
        self.tensors = tensors
        self.stream = list(tensors.items()) if stream is None else stream
        self.fail, self.fail_after = fail, fail_after

    def metadata(self):
        return [Meta(n, t.dtype, tuple(t.shape)) for n, t in self.tensors.items()]

    def __iter__(self):
        for i, pair in enumerate(self.stream):
            if self.fail is not None and i == self.fail_after:
                raise self.fail
            yield pair
        if self.fail is not None and self.fail_after >= len(self.stream):
            raise self.fail


@pytest.fixture(scope="module")
def hf_model():
    from transformers import AutoModelForCausalLM

    from mcore_adapter.testing import tiny_hf_config

    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(tiny_hf_config("qwen3", tie_word_embeddings=True)).eval()


def _new_weights(model):
    """Different values for every tensor a source sends (the tied lm_head once)."""
    generator = torch.Generator().manual_seed(1)
    out = {}
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight":
            continue
        out[name] = torch.randn(tensor.shape, generator=generator).to(tensor.dtype)
    return out


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before):
    after = model.state_dict()
    assert after.keys() == before.keys()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert not changed, f"changed by a failed sync: {changed[:5]}"


def test_a_good_source_is_written(hf_model):
    weights = _new_weights(hf_model)
    before = _snapshot(hf_model)
    try:
        stats = sync_to_hf_model(FakeSource(weights), hf_model)
        state = hf_model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in weights.items())
        assert torch.equal(state["lm_head.weight"], weights["model.embed_tokens.weight"])  # tied
        assert stats.tensors == len(weights)
    finally:
        hf_model.load_state_dict(before)


NORM = "model.norm.weight"  # (64,)


def _stream_with(weights, name, tensor):
    """The whole stream, with ``name``'s tensor replaced, placed after most of the others so that
    the failure comes after many writes."""
    pairs = [(n, t) for n, t in weights.items() if n != name]
    return [*pairs, (name, tensor)]


BAD_STREAMS = {
    # name -> (stream builder, message)
    "one-element-where-64-expected": (
        lambda w: _stream_with(w, NORM, torch.ones(1)),
        rf"{NORM}: sent \(1,\), the model's is \(64,\)",
    ),
    "transposed-shape": (
        lambda w: _stream_with(
            w, "model.layers.0.mlp.down_proj.weight", w["model.layers.0.mlp.down_proj.weight"].t()
        ),
        r"model.layers.0.mlp.down_proj.weight: sent \(128, 64\), the model's is \(64, 128\)",
    ),
    "wrong-dtype": (
        lambda w: _stream_with(w, NORM, w[NORM].double()),
        rf"{NORM}: sent as torch.float64, the model's is torch.float32",
    ),
    "sent-twice": (
        lambda w: [*w.items(), (NORM, w[NORM])],
        rf"{NORM}: sent twice",
    ),
    "not-announced": (
        lambda w: [*list(w.items())[:-1], ("model.extra.weight", torch.ones(64))],
        r"model.extra.weight: sent, but not announced",
    ),
    "not-held": (
        lambda w: _stream_with(w, NORM, None),
        rf"{NORM}: not held on this rank",
    ),
    "not-a-tensor": (
        lambda w: _stream_with(w, NORM, [1.0] * 64),
        rf"{NORM}: sent a list, not a tensor",
    ),
    "ends-early": (
        lambda w: list(w.items())[:-2],
        r"the source ended after \d+ of the \d+ tensors it announced",
    ),
}


@pytest.mark.parametrize("case", BAD_STREAMS)
def test_a_bad_stream_is_refused_and_the_model_left_as_it_was(case, hf_model):
    build, message = BAD_STREAMS[case]
    weights = _new_weights(hf_model)
    before = _snapshot(hf_model)
    with pytest.raises(WeightSyncError, match=message):
        sync_to_hf_model(FakeSource(weights, stream=build(weights)), hf_model)
    _assert_unchanged(hf_model, before)


@pytest.mark.parametrize(
    "fail",
    [RuntimeError("gather failed"), KeyboardInterrupt(), SystemExit(3)],
    ids=["source-raises", "keyboard-interrupt", "system-exit"],
)
@pytest.mark.parametrize("fail_after", [0, 5, -1], ids=["first", "middle", "after-the-last"])
def test_a_source_that_fails_mid_stream_leaves_the_model_as_it_was(fail, fail_after, hf_model):
    weights = _new_weights(hf_model)
    before = _snapshot(hf_model)
    fail_after = len(weights) if fail_after == -1 else fail_after
    with pytest.raises(type(fail)) as info:
        sync_to_hf_model(FakeSource(weights, fail=fail, fail_after=fail_after), hf_model)
    _assert_unchanged(hf_model, before)
    if fail_after:
        assert any("restored" in note for note in getattr(info.value, "__notes__", []))
