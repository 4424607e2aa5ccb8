"""The example of docs/multimodal.md, run as a user would: a vision-language model defined
outside the package (here: in this test module) under its own model_type, registered through
the public API alone, then loaded, checked against its HF model and converted."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mcore_adapter.models.auto import config_auto, modeling_auto
from mcore_adapter.models.auto.config_auto import register_config
from mcore_adapter.models.auto.modeling_auto import register_model
from mcore_adapter.models.common import VISION_CONFIG_HF_TO_MCA
from mcore_adapter.models.converter import registry as template_module
from mcore_adapter.models.converter.template import (
    QKVBiasConverOp,
    QKVConverOp,
    RenameConverOp,
    StackConverOp,
    register_template,
)
from mcore_adapter.models.mrope import mm_token_types
from mcore_adapter.models.qwen2_vl.model import Qwen2VLConfig, Qwen2VLModel
from mcore_adapter.parity import compare_logits
from mcore_adapter.testing import VL_TOKENS, tiny_hf_config
from mcore_adapter.testing.compare import compare_hf_dirs

MODEL_TYPE = "guide_vlm"


@dataclass
class GuideVLConfig(Qwen2VLConfig):
    pass


class GuideVLModel(Qwen2VLModel):
    config_class = GuideVLConfig
    embed_calls = 0

    def embed(self, input_ids, *args, **kwargs):
        type(self).embed_calls += 1
        return super().embed(input_ids, *args, **kwargs)


def _hf_classes():
    """The user's HF side: a config and model class registered with transformers."""
    from transformers import AutoConfig, AutoModelForImageTextToText, Qwen2VLForConditionalGeneration
    from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLConfig as HFQwen2VLConfig

    class GuideHFConfig(HFQwen2VLConfig):
        model_type = MODEL_TYPE

    class GuideHFModel(Qwen2VLForConditionalGeneration):
        config_class = GuideHFConfig

    AutoConfig.register(MODEL_TYPE, GuideHFConfig, exist_ok=True)
    AutoModelForImageTextToText.register(GuideHFConfig, GuideHFModel, exist_ok=True)
    return GuideHFConfig, GuideHFModel


# A model type transformers does not know is saved with its in-memory names (known ones are
# saved with the hub's older names, as the qwen2_vl template expects): the user's template
# states the names their checkpoints have.
GUIDE_OPS = [
    RenameConverOp("model.language_model.embed_tokens.weight", "embedding.word_embeddings.weight"),
    RenameConverOp("model.language_model.norm.weight", "decoder.final_layernorm.weight"),
    RenameConverOp("lm_head.weight", "output_layer.weight"),
    RenameConverOp(".input_layernorm.weight", ".self_attention.linear_qkv.layer_norm_weight"),
    QKVConverOp(
        [".self_attn.q_proj.weight", ".self_attn.k_proj.weight", ".self_attn.v_proj.weight"],
        ".self_attention.linear_qkv.weight",
    ),
    QKVBiasConverOp(
        [".self_attn.q_proj.bias", ".self_attn.k_proj.bias", ".self_attn.v_proj.bias"],
        ".self_attention.linear_qkv.bias",
    ),
    RenameConverOp(".self_attn.o_proj.weight", ".self_attention.linear_proj.weight"),
    RenameConverOp(".post_attention_layernorm.weight", ".mlp.linear_fc1.layer_norm_weight"),
    StackConverOp([".mlp.gate_proj.weight", ".mlp.up_proj.weight"], ".mlp.linear_fc1.weight", dim=0),
    RenameConverOp(".mlp.down_proj.weight", ".mlp.linear_fc2.weight"),
    RenameConverOp("model.visual.{}", "vision_model.{}"),
]


@pytest.fixture
def registered(monkeypatch):
    """Registers the user's model the way docs/multimodal.md says; undone after the test."""
    monkeypatch.setattr(template_module, "_TEMPLATES", dict(template_module._TEMPLATES))
    monkeypatch.setattr(config_auto, "CONFIG_MAPPING", dict(config_auto.CONFIG_MAPPING))
    monkeypatch.setattr(modeling_auto, "MODEL_MAPPING", dict(modeling_auto.MODEL_MAPPING))
    register_template(
        MODEL_TYPE,
        config_hf_to_mca=VISION_CONFIG_HF_TO_MCA,
        weight_converters=GUIDE_OPS,
        hf_layer_prefix="model.language_model.layers.",
        constant_mca_config={
            "swiglu": True,
            "normalization": "RMSNorm",
            "position_embedding_type": "mrope",
            "add_bias_linear": False,
            "add_qkv_bias": True,
            "hidden_dropout": 0.0,
        },
        hf_config_expect={"text_config.hidden_act": "silu"},
    )
    register_config(MODEL_TYPE, GuideVLConfig)
    register_model(MODEL_TYPE, GuideVLModel)


@pytest.fixture
def checkpoint(tmp_path):
    hf_config_class, hf_model_class = _hf_classes()
    config = hf_config_class(
        **{k: v for k, v in tiny_hf_config("qwen2_vl").to_dict().items() if k != "model_type"}
    )
    torch.manual_seed(0)
    model = hf_model_class(config)
    with torch.no_grad():
        for param in model.parameters():
            param.normal_(0.0, 0.3)
    model.save_pretrained(tmp_path / "hf")
    return tmp_path / "hf", model.eval()


def test_user_defined_subclass_loads_matches_hf_and_converts(registered, checkpoint, megatron, tmp_path):
    from mcore_adapter import AutoModel
    from mcore_adapter.cli import main

    path, hf_model = checkpoint
    model = AutoModel.from_pretrained(path, dtype=torch.float32).eval()
    assert type(model) is GuideVLModel and type(model.config) is GuideVLConfig

    image, start, end = (
        VL_TOKENS["image_token_id"],
        VL_TOKENS["vision_start_token_id"],
        VL_TOKENS["vision_end_token_id"],
    )
    input_ids = torch.tensor([[1, 2, start, *[image] * 4, end, 3, 4]])
    grid = torch.tensor([[1, 4, 4]])
    pixel_values = torch.randn(16, 3 * 2 * 14 * 14, generator=torch.Generator().manual_seed(0))
    types = mm_token_types(input_ids, image, VL_TOKENS["video_token_id"])
    with torch.no_grad():
        expected = hf_model(
            input_ids=input_ids, pixel_values=pixel_values, image_grid_thw=grid, mm_token_type_ids=types
        ).logits
        actual = model(input_ids, pixel_values=pixel_values, image_grid_thw=grid)[..., : expected.shape[-1]]
    assert GuideVLModel.embed_calls > 0
    assert compare_logits(actual, expected).passed()

    assert main(["convert", str(path), str(tmp_path / "mca"), "--tp", "2", "--pp", "2"]) == 0
    assert main(["convert", str(tmp_path / "mca"), str(tmp_path / "back")]) == 0
    assert compare_hf_dirs(path, tmp_path / "back") == []
