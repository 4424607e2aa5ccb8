"""``mcore-adapter demo`` keeps a complete tiny checkpoint (config, weights, tokenizer,
generation config) of every family and of the value and reward heads; ``mcore-adapter verify``
reports what it compared and what it found; a Megatron model asked for bf16 holds bf16
parameters, as transformers' does, and its bf16 logits are within bf16's own rounding of the
fp32 reference. In-process ``main([...])`` calls share one megatron import."""

from __future__ import annotations

import dataclasses
import json
import re

import pytest
import torch

from mcore_adapter.cli import main
from mcore_adapter.parity import FP32_RTOL
from mcore_adapter.testing import TINY_MODELS, TINY_TOKEN_IDS, TINY_VL_MODELS, make_tiny_demo_checkpoint
from mcore_adapter.testing.compare import compare_hf_dirs
from mcore_adapter.testing.tiny_tokenizer import ALPHABET

TEXT = "the water is good.\nUser: 42 WAYS to say {hi}! ~"  # ASCII: merged words and single characters


def result(out: str) -> tuple[str, dict[str, str]]:
    """The verdict and the fields of verify's last line (``PASS|FAIL key=value ...``)."""
    verdict, *fields = out.strip().splitlines()[-1].split()
    return verdict, dict(field.split("=", 1) for field in fields)


def swap_gate_and_up(monkeypatch, model_type: str) -> None:
    """A wrong conversion (the control): the MLP's gate and up projections swapped."""
    from mcore_adapter.models.converter import registry as template_module
    from mcore_adapter.models.converter.template import StackConverOp, get_template

    template = get_template(model_type)
    swapped = [
        StackConverOp(op.hf_names[::-1], op.mca_names, dim=op.dim) if isinstance(op, StackConverOp) else op
        for op in template.weight_converters
    ]
    assert swapped != template.weight_converters
    monkeypatch.setitem(
        template_module._TEMPLATES, model_type, dataclasses.replace(template, weight_converters=swapped)
    )


def text_config(config: dict) -> dict:
    return config.get("text_config") or config


# ---------------------------------------------------------------------- the tiny checkpoints
@pytest.mark.parametrize("model_type", sorted({*TINY_MODELS, *TINY_VL_MODELS}))
def test_tiny_checkpoint_is_complete_and_its_tokenizer_loads(model_type, tmp_path):
    """Every family: transformers' AutoTokenizer and roll_models' tokenizer provider load the
    tokenizer (transformers picks Qwen's own class for qwen2 and qwen3_5: the same pipeline),
    every id of the model is a token, the special tokens sit at the config's and generation
    config's ids, and ASCII text round-trips."""
    from transformers import AutoTokenizer, GenerationConfig

    from roll_models.model_providers import default_tokenizer_provider

    path = make_tiny_demo_checkpoint(model_type, tmp_path / "hf")
    expected = {
        "config.json",
        "model.safetensors",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    if model_type in TINY_VL_MODELS:
        expected.add("preprocessor_config.json")
    assert expected <= {p.name for p in path.iterdir()}
    config = text_config(json.loads((path / "config.json").read_text()))
    generation = GenerationConfig.from_pretrained(path)
    for tokenizer in (AutoTokenizer.from_pretrained(path), default_tokenizer_provider(str(path))):
        assert len(tokenizer) == config["vocab_size"]
        for field, expected_id in TINY_TOKEN_IDS.items():
            token_id = getattr(tokenizer, field)
            assert token_id == config[field] == getattr(generation, field) == expected_id, field
        assert tokenizer.decode(tokenizer(TEXT).input_ids) == TEXT
        assert tokenizer.decode(tokenizer(ALPHABET).input_ids) == ALPHABET
        assert len(tokenizer(TEXT).input_ids) < len(TEXT)  # common words are merged
        chat = [{"role": "user", "content": "how are you"}]
        prompt = tokenizer.apply_chat_template(chat, add_generation_prompt=True, tokenize=False)
        assert tokenizer.decode(tokenizer(prompt).input_ids) == prompt == "user: how are you</s>\nassistant: "
    assert tokenizer.padding_side == "left" and tokenizer.pad_token == "<pad>"


@pytest.mark.parametrize("model_type", sorted(TINY_VL_MODELS))
def test_vision_language_tokens_and_image_processor_match_the_config(model_type, tmp_path):
    """The placeholders are special tokens at the config's ids, and the image processor cuts an
    image into the vision config's patches: the HF model runs on what it returns."""
    import numpy as np
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageTextToText, AutoTokenizer

    from mcore_adapter.models.mrope import mm_token_types

    path = make_tiny_demo_checkpoint(model_type, tmp_path / "hf")
    config = json.loads((path / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(path)
    for attr, field in [
        ("image_token", "image_token_id"),
        ("video_token", "video_token_id"),
        ("vision_start_token", "vision_start_token_id"),
        ("vision_end_token", "vision_end_token_id"),
    ]:
        assert tokenizer.convert_tokens_to_ids(getattr(tokenizer, attr)) == config[field]
    pixels = np.random.default_rng(0).integers(0, 256, (56, 84, 3), dtype=np.uint8)
    image = AutoImageProcessor.from_pretrained(path)(images=[Image.fromarray(pixels)], return_tensors="pt")
    grid = image["image_grid_thw"]
    assert grid.tolist() == [[1, 4, 6]]  # 14-pixel patches
    merged = int(grid.prod()) // config["vision_config"]["spatial_merge_size"] ** 2
    text = f"the <|vision_start|>{'<|image_pad|>' * merged}<|vision_end|> water"
    ids = tokenizer(text, return_tensors="pt").input_ids
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32).eval()
    types = mm_token_types(ids, config["image_token_id"], config["video_token_id"])
    with torch.no_grad():
        logits = model(ids, **image, mm_token_type_ids=types).logits
    assert logits.shape == (1, ids.shape[1], text_config(config)["vocab_size"])


# ---------------------------------------------------------------------- demo
@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen2_vl"])
def test_demo_keeps_the_checkpoints(model_type, megatron, tmp_path, capsys):
    keep = tmp_path / "keep"
    keep.mkdir()  # an empty directory is accepted
    assert main(["demo", "--model-type", model_type, "--keep", str(keep)]) == 0
    out = capsys.readouterr().out
    assert result(out)[0] == "PASS"
    assert f"MCA -> HF: {keep / 'hf_back'}: bit-exact" in out
    assert (keep / "mca" / "mca_config.json").is_file()
    assert compare_hf_dirs(keep / "hf", keep / "hf_back") == []
    assert (keep / "hf_back" / "tokenizer.json").read_bytes() == (keep / "hf" / "tokenizer.json").read_bytes()
    if model_type in TINY_VL_MODELS:  # the text prompt and the image prompt
        assert out.count("\ntokens: ") == 2 and "image placeholders" in out


@pytest.mark.parametrize("head", ["value", "reward"])
def test_demo_makes_value_and_reward_models(head, megatron, tmp_path, capsys):
    from transformers import (
        AutoModelForSequenceClassification,
        AutoModelForTokenClassification,
        AutoTokenizer,
    )

    keep = tmp_path / "keep"
    assert main(["demo", "--model-type", "qwen3_moe", "--head", head, "--workdir", str(keep)]) == 0
    out = capsys.readouterr().out
    verdict, fields = result(out)
    assert verdict == "PASS" and fields["top1_agreement"] == "n/a"
    kind = "Qwen3MoeForTokenClassification" if head == "value" else "Qwen3MoeForSequenceClassification"
    assert f"models: transformers {kind} (eager attention) vs Megatron-Core McaGPTModel" in out
    config = json.loads((keep / "hf" / "config.json").read_text())
    assert config["architectures"] == [kind] and len(config["id2label"]) == 1
    assert json.loads((keep / "mca" / "mca_config.json").read_text())["mca_config"]["output_head"] == head
    auto = AutoModelForTokenClassification if head == "value" else AutoModelForSequenceClassification
    model = auto.from_pretrained(keep / "hf")
    assert model.config.pad_token_id == AutoTokenizer.from_pretrained(keep / "hf").pad_token_id == 0
    assert not (keep / "hf" / "generation_config.json").exists()  # not a generative model


def test_demo_refuses_a_directory_with_files(tmp_path, capsys):
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "notes.txt").write_text("my notes")
    assert main(["demo", "--keep", str(keep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --keep ") and "not empty" in err[0]
    assert [p.name for p in keep.iterdir()] == ["notes.txt"] and (
        keep / "notes.txt"
    ).read_text() == "my notes"
    assert main(["demo", "--workdir", str(keep / "notes.txt")]) == 2
    assert "is not a directory" in capsys.readouterr().err
    assert main(["demo", "--model-type", "qwen2_vl", "--head", "value"]) == 2
    assert "transformers has no token classification model of qwen2_vl" in capsys.readouterr().err


# ---------------------------------------------------------------------- verify's report
def test_verify_reports_models_tokens_differences_and_tolerance(megatron, tiny_checkpoint, capsys):
    path = str(tiny_checkpoint("qwen2"))
    assert main(["verify", path]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-7:-1] == [
        "models: transformers Qwen2ForCausalLM (eager attention) vs Megatron-Core McaGPTModel at tp1pp1, "
        "both float32",
        "tokens: 2 x 16 random text tokens (seed 0)",
        *lines[-5:-3],
        "top-1 agreement: 100.0% of 32 positions",
        f"tolerance: {FP32_RTOL:g} of max |logit| (--tol)",
    ]
    verdict, fields = result(lines[-1])
    max_abs, rel = float(fields["max_abs_diff"]), float(fields["max_rel_diff"])
    assert verdict == "PASS" and rel <= FP32_RTOL and max_abs > 0
    assert lines[-5] == f"max |diff|: {max_abs:.3g}"
    assert lines[-4].startswith(f"max |diff| / max |logit|: {rel:.3g} (max |logit| ")
    assert fields | {"max_abs_diff": "", "max_rel_diff": ""} == {
        "max_abs_diff": "",
        "max_rel_diff": "",
        "top1_agreement": "1",
        "rtol": f"{FP32_RTOL:g}",
        "layout": "tp1pp1",
        "dtype": "fp32",
    }
    # Both bounds hold when both are given; --tol alone is relative.
    assert main(["verify", path, "--atol", f"{max_abs / 2:g}"]) == 1
    verdict, fields = result(capsys.readouterr().out)
    assert verdict == "FAIL" and fields["atol"] == f"{max_abs / 2:g}"
    assert main(["verify", path, "--tol", f"{rel / 2:g}", "--atol", "1"]) == 1
    assert result(capsys.readouterr().out)[0] == "FAIL"


def test_help_states_the_default_relative_tolerance(capsys):
    assert main(["verify", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    default = re.search(
        r"--tol RTOL largest max \|logits diff\| relative to max \|logit\| that passes \(default (\S+),", text
    )
    assert float(default.group(1)) == FP32_RTOL


def test_verify_fails_a_wrong_conversion(megatron, tiny_checkpoint, capsys, monkeypatch):
    """Control: gate and up swapped in the template."""
    swap_gate_and_up(monkeypatch, "qwen2")
    assert main(["verify", str(tiny_checkpoint("qwen2"))]) == 1
    verdict, fields = result(capsys.readouterr().out)
    assert verdict == "FAIL" and float(fields["max_rel_diff"]) > FP32_RTOL


def test_verify_reports_a_reward_model(megatron, tiny_checkpoint, tmp_path, capsys):
    from mcore_adapter.testing import make_tiny_head_checkpoint

    path = make_tiny_head_checkpoint(tiny_checkpoint("llama"), "reward", tmp_path / "reward")
    assert main(["verify", str(path)]) == 0
    out = capsys.readouterr().out
    assert "max |diff| / max |score|: " in out and "top-1 agreement: n/a (one score per sequence)" in out
    verdict, fields = result(out)
    assert verdict == "PASS" and float(fields["max_rel_diff"]) <= FP32_RTOL


@pytest.mark.distributed
def test_verify_a_value_model_at_tp2(tiny_checkpoint, tmp_path, capsys):
    """The 1-wide head is whole on every tensor-parallel rank: its outputs are not gathered."""
    from mcore_adapter.testing import make_tiny_head_checkpoint

    path = make_tiny_head_checkpoint(tiny_checkpoint("qwen3"), "value", tmp_path / "value")
    assert main(["verify", str(path), "--tp", "2"]) == 0
    verdict, fields = result(capsys.readouterr().out)
    assert verdict == "PASS" and fields["layout"] == "tp2pp1" and float(fields["max_rel_diff"]) <= FP32_RTOL


# ---------------------------------------------------------------------- bf16
def _bf16_errors(model, path, tokens) -> tuple[float, float]:
    """Mean |logits - fp32 reference| of the Megatron model and of transformers in bf16."""
    from transformers import AutoModelForCausalLM

    from mcore_adapter.verify import hf_logits, megatron_logits

    reference = hf_logits(path, tokens)
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16, attn_implementation="eager").eval()
    with torch.no_grad():
        hf_error = (hf(tokens).logits.float() - reference).abs().mean().item()
    ours = megatron_logits(model, tokens)
    assert ours.dtype == torch.bfloat16
    return (ours.float() - reference).abs().mean().item(), hf_error


@pytest.mark.parametrize("model_type", ["llama", "qwen3_moe", "qwen3_next", "deepseek_v3"])
def test_bf16_model_holds_bf16_parameters(model_type, megatron, tiny_checkpoint):
    """As transformers' ``dtype=torch.bfloat16``: every parameter, the local norms included
    (torch's RMSNorm, and the zero-centered one of Qwen3-Next); the router's expert bias
    (DeepSeek-V3) stays a float32 buffer by Megatron's design, as transformers keeps it."""
    from mcore_adapter import AutoModel

    model = AutoModel.from_pretrained(tiny_checkpoint(model_type), dtype=torch.bfloat16)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert model.config.bf16 and not model.config.fp16  # attention's softmax in fp32, as transformers'
    biases = {name: b.dtype for name, b in model.named_buffers() if name.endswith("router.expert_bias")}
    assert set(biases.values()) == ({torch.float32} if model_type == "deepseek_v3" else set())


def test_bf16_through_the_megatron_provider(megatron, tiny_checkpoint):
    from roll_models.model_providers import ModelArgs, default_model_provider

    model = default_model_provider(
        "megatron_infer", ModelArgs(str(tiny_checkpoint("llama")), dtype="bfloat16")
    )
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}


@pytest.mark.parametrize(
    ("model_type", "wrong"),
    [
        ("llama", {}),  # gate and up swapped in the template
        ("qwen3_moe", {"moe_router_pre_softmax": True}),  # norm_topk_prob=True read as False
    ],
)
def test_bf16_logits_are_as_close_to_fp32_as_transformers_bf16(
    model_type, wrong, megatron, tiny_checkpoint, monkeypatch
):
    """bf16 has no exact reference: transformers' own bf16 logits differ from its fp32 ones by
    bf16 rounding (mean |diff| 6e-3 for logits up to ~2.5 here). The Megatron model in bf16 is within
    twice that of the fp32 reference (two implementations round in different places: measured
    0.5-1.2x on the tiny MoE models, 0.9-1.0x on the dense ones); the controls, conversions wrong
    in one detail, are beyond it (gate/up swapped: 50x, top-k weights not normalized: 7x)."""
    from mcore_adapter import AutoModel
    from mcore_adapter.verify import random_tokens

    path = tiny_checkpoint(model_type)
    tokens = random_tokens(128, 4, 32)
    error, hf_error = _bf16_errors(AutoModel.from_pretrained(path, dtype=torch.bfloat16), path, tokens)
    assert 0 < error <= 2 * hf_error, (error, hf_error)
    if not wrong:
        swap_gate_and_up(monkeypatch, model_type)
    control, _ = _bf16_errors(AutoModel.from_pretrained(path, dtype=torch.bfloat16, **wrong), path, tokens)
    assert control > 2 * hf_error, (control, hf_error)  # the bound tells a wrong conversion
