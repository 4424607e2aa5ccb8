"""Value (token-level) and reward (sequence-level) models: transformers' token and sequence
classification with one label, on Megatron a GPTModel whose output layer is 1 wide and
replicated over tensor-parallel ranks; converted both ways through the family's template
(``score.weight`` <-> ``output_layer.weight``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mcore_adapter.models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.parity import FP32_RTOL, compare_logits
from mcore_adapter.testing import make_tiny_head_checkpoint
from mcore_adapter.testing.compare import compare_hf_dirs

HEADS = ("value", "reward")


@pytest.fixture(scope="module")
def heads(tiny_checkpoint, tmp_path_factory):
    """{(model_type, head): checkpoint} for a dense and a MoE family."""
    out = {}
    for model_type in ("qwen3", "qwen3_moe"):
        for head in HEADS:
            path = tmp_path_factory.mktemp(f"{model_type}-{head}") / "hf"
            out[model_type, head] = make_tiny_head_checkpoint(tiny_checkpoint(model_type), head, path)
    return out


def padded_tokens() -> torch.Tensor:
    tokens = torch.randint(1, 128, (2, 10), generator=torch.Generator().manual_seed(0))
    tokens[0, :3] = 0  # left padding (pad_token_id 0)
    tokens[1, -2:] = 0  # right padding
    return tokens


def hf_head_outputs(path, tokens):
    import transformers

    from mcore_adapter.models.converter.hf_io import HF_CONFIG_NAME, read_json

    architecture = read_json(Path(path) / HF_CONFIG_NAME)["architectures"][0]
    auto = transformers.AutoModelForTokenClassification
    if architecture.endswith("ForSequenceClassification"):
        auto = transformers.AutoModelForSequenceClassification
    model = auto.from_pretrained(path, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return model(tokens).logits


@pytest.mark.parametrize("head", HEADS)
@pytest.mark.parametrize("model_type", ["qwen3", "qwen3_moe"])
def test_head_models_match_transformers_and_round_trip(model_type, head, heads, megatron, tmp_path):
    from mcore_adapter import AutoModel

    path = heads[model_type, head]
    model = AutoModel.from_pretrained(path).eval()
    assert model.config.output_head == head and tuple(model.output_layer.weight.shape) == (1, 64)
    tokens = padded_tokens()
    with torch.no_grad():
        ours = model(tokens)
    theirs = hf_head_outputs(path, tokens)
    assert ours.shape == theirs.shape == ((2, 10, 1) if head == "value" else (2, 1))
    assert compare_logits(ours, theirs).passed()
    model.save_pretrained_as_hf(tmp_path / "hf")
    assert compare_hf_dirs(path, tmp_path / "hf") == []


def test_reward_reads_the_last_non_pad_token(heads, megatron):
    """With right padding the score is the last real token's; a pad after it changes nothing."""
    from mcore_adapter import AutoModel

    model = AutoModel.from_pretrained(heads["qwen3", "reward"]).eval()
    tokens = torch.randint(1, 128, (1, 8), generator=torch.Generator().manual_seed(3))
    padded = torch.cat([tokens, torch.zeros(1, 3, dtype=tokens.dtype)], dim=1)
    with torch.no_grad():
        assert compare_logits(model(padded), model(tokens)).passed()


@pytest.mark.parametrize("head", HEADS)
def test_head_checkpoints_convert_offline_at_tp2(head, heads, tmp_path):
    """The 1-wide head is replicated over tensor-parallel ranks, not vocab-split."""
    from mcore_adapter.models.converter.mca_io import TorchRankReader, torch_rank_file

    path = heads["qwen3", head]
    convert_hf_to_mca(path, tmp_path / "tp2", layout=ParallelLayout(tp=2), progress=False)
    for rank in range(2):
        stored = TorchRankReader(torch_rank_file(tmp_path / "tp2", rank)).chunks["model"]
        assert tuple(stored["output_layer.weight"].shape) == (1, 64)
        assert ("output_layer.bias" in stored) is (head == "value")
    convert_mca_to_hf(tmp_path / "tp2", tmp_path / "hf", progress=False)
    assert compare_hf_dirs(path, tmp_path / "hf") == []


def heads_at_tp2(paths: dict[str, str], out: str) -> dict[str, float]:
    """One rank of the TP2 job: each head model against transformers, and exported back."""
    import torch.distributed as dist

    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel

    initialize_model_parallel(tp=2)
    results = {}
    for head, path in paths.items():
        model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
        with torch.no_grad():
            ours = model(padded_tokens())
        model.save_pretrained_as_hf(Path(out) / head)
        if dist.get_rank() == 0:
            results[head] = compare_logits(ours, hf_head_outputs(path, padded_tokens())).relative
            results[f"{head}-round-trip"] = compare_hf_dirs(path, Path(out) / head)
    return results


@pytest.mark.distributed
def test_head_models_at_tp2(heads, tmp_path):
    from mcore_adapter.launch import launch

    paths = {head: str(heads["qwen3", head]) for head in HEADS}
    results = launch(heads_at_tp2, 2, paths, str(tmp_path))[0]
    for head in HEADS:
        assert results[head] <= FP32_RTOL, results
        assert results[f"{head}-round-trip"] == [], results


@pytest.mark.parametrize("head", ["value", "reward"])
def test_a_head_model_with_sequence_parallelism_is_refused(head, heads):
    """The scalar head needs whole hidden states; sequence parallelism would hand each rank a
    slice of the sequence, so the combination is refused rather than computed wrong."""
    from mcore_adapter.models.converter.errors import ConversionError
    from mcore_adapter.models.converter.hf_io import read_json
    from mcore_adapter.models.model_config import McaModelConfig

    hf_config = read_json(heads["qwen3", head] / "config.json")
    with pytest.raises(ConversionError, match=f"a {head} model cannot use sequence_parallel=True"):
        McaModelConfig.from_hf_config(hf_config, sequence_parallel=True, tensor_model_parallel_size=2)
