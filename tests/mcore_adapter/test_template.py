"""Template registry, config translation both ways, and accounting of every tensor."""

import json

import pytest
import torch

from mcore_adapter.models.converter import registry as template_module
from mcore_adapter.models.converter.template import (
    TOKEN_ID_FIELDS,
    ConversionError,
    RenameConverOp,
    UnsupportedModelError,
    get_template,
    register_template,
    registered_model_types,
)
from mcore_adapter.testing import TINY_MODELS, TINY_VL_MODELS, tiny_hf_config

MODEL_TYPES = sorted(TINY_MODELS)  # decoder-only; vision-language ones in test_qwen2_vl.py


def test_every_registered_template_has_a_tiny_fixture():
    missing = [t for t in registered_model_types() if t not in TINY_MODELS and t not in TINY_VL_MODELS]
    assert not missing, f"templates without a tiny model in mcore_adapter.testing.TINY_MODELS: {missing}"


@pytest.mark.parametrize("model_type", registered_model_types())
def test_every_megatron_weight_of_a_template_has_a_shape_rule(model_type, tiny_checkpoint):
    """The dry run checks a weight's shape only where converter/shapes.py knows it: a template
    adding a Megatron weight must add its rule (wildcard subtrees excepted)."""
    from mcore_adapter.models.converter.shapes import ShapeCheck

    template = get_template(model_type)
    config = json.loads((tiny_checkpoint(model_type) / "config.json").read_text())
    assert ShapeCheck(template, template.convert_hf_to_mca_config(config)).unknown_mca_names() == []


@pytest.mark.parametrize("model_type", registered_model_types())
def test_every_megatron_weight_of_a_template_has_a_sharding_rule(model_type, tiny_checkpoint):
    """TP_RULES fails closed (a weight without a rule is an error, not silently replicated):
    every weight a template produces must have a rule, also inside an MTP layer."""
    from mcore_adapter.models.converter.dist_converter import TP_RULES, DistConverter

    rule_kinds = set(TP_RULES.values())
    from mcore_adapter.models.converter.layout import ParallelLayout
    from mcore_adapter.models.converter.template import MTP_INNER, MTP_LAYER_PREFIX

    template = get_template(model_type)
    config = json.loads((tiny_checkpoint(model_type) / "config.json").read_text())
    dist = DistConverter(template.convert_hf_to_mca_config(config), ParallelLayout(tp=2))
    for op in template.weight_converters:
        for name in op.mca_names:
            if op.layers == "mtp":
                names = [f"{MTP_LAYER_PREFIX}0{name}"]
            elif op.is_layer_local:
                names = [
                    f"decoder.layers.0{name.format(0)}",
                    f"{MTP_LAYER_PREFIX}0{MTP_INNER}{name.format(0)}",
                ]
            else:
                names = [name.format("patch_embed.proj.weight")]  # a carried subtree (vision tower)
            for full in names:
                assert dist.rule(full) in {*rule_kinds, "replicated"}, full
    with pytest.raises(Exception, match="no tensor-parallel rule for '.mlp.mystery.weight'"):
        dist.rule("decoder.layers.0.mlp.mystery.weight")


def test_builtin_families_are_registered():
    assert {"llama", "mistral", "qwen2", "qwen3", "qwen2_vl", "qwen2_5_vl"} <= set(registered_model_types())


def test_unknown_model_type_lists_the_supported_ones():
    with pytest.raises(
        UnsupportedModelError,
        match=r"'gpt_oss_9000'.*supported: deepseek_v3, glm4_moe, internlm2, llama, mistral, mixtral, qwen2",
    ):
        get_template("gpt_oss_9000")


def test_registering_twice_raises_unless_overwrite(monkeypatch):
    monkeypatch.setattr(template_module, "_TEMPLATES", dict(template_module._TEMPLATES))
    llama = get_template("llama")
    args = dict(
        config_hf_to_mca=llama.config_hf_to_mca,
        weight_converters=llama.weight_converters,
        hf_layer_prefix="model.layers.",
    )
    with pytest.raises(ValueError, match="already registered; pass overwrite=True"):
        register_template("llama", **args)
    replacement = register_template("llama", **args, overwrite=True)
    assert get_template("llama") is replacement is not llama


def test_a_new_model_type_registers_through_the_public_api(monkeypatch):
    monkeypatch.setattr(template_module, "_TEMPLATES", dict(template_module._TEMPLATES))
    register_template(
        "my_model",
        config_hf_to_mca={"hidden_size": "hidden_size"},
        weight_converters=[RenameConverOp("model.embed.weight", "embedding.word_embeddings.weight")],
        hf_layer_prefix="model.blocks.",
    )
    assert "my_model" in registered_model_types()


def test_template_rejects_a_name_used_by_two_ops():
    with pytest.raises(ValueError, match="used by both"):
        register_template(
            "broken",
            config_hf_to_mca={},
            weight_converters=[RenameConverOp(".a", ".x"), RenameConverOp(".a", ".y")],
            hf_layer_prefix="model.layers.",
        )


@pytest.mark.parametrize("model_type", MODEL_TYPES)
@pytest.mark.parametrize("tie", [False, True])
def test_config_round_trip_returns_the_original_hf_config(model_type, tie):
    template = get_template(model_type)
    hf_config = tiny_hf_config(model_type, tie).to_dict()
    mca = template.convert_hf_to_mca_config(hf_config)
    assert mca["tie_embeddings_and_output_weights"] is tie
    if mca.get("multi_latent_attention"):
        assert (mca["num_layers"], mca["kv_lora_rank"], mca["qk_pos_emb_head_dim"]) == (2, 16, 8)
    else:
        assert (mca["num_layers"], mca["num_query_groups"], mca["kv_channels"]) == (
            hf_config["num_hidden_layers"],
            2,
            32,
        )
    assert template.convert_mca_to_hf_config(mca, hf_config) == hf_config
    # A Megatron-side change is carried back into the HF config.
    changed = template.convert_mca_to_hf_config({**mca, "layernorm_epsilon": 1e-3}, hf_config)
    assert changed["rms_norm_eps"] == 1e-3


def _leaves(config, prefix=""):
    for key, value in config.items():
        if isinstance(value, dict):
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


@pytest.mark.parametrize("model_type", registered_model_types())
@pytest.mark.parametrize("tie", [False, True])
def test_hf_config_rebuilt_from_megatron_fields_alone(model_type, tie, tiny_checkpoint):
    """What Megatron-LM checkpoints keep (no HF config) is enough to rebuild every field that
    shapes the model, each equal to the original's; the token ids come from the generation
    config, and without it the rebuild names what it lacks."""
    template = get_template(model_type)
    original = json.loads((tiny_checkpoint(model_type, tie) / "config.json").read_text())
    mca = template.convert_hf_to_mca_config(original)
    token_ids = {name: original.get(name) for name in TOKEN_ID_FIELDS}
    rebuilt = template.rebuild_hf_config(mca, "float32", token_ids)
    flat = dict(_leaves(original))  # fields it adds are transformers' defaults, checked below
    assert {path: value for path, value in _leaves(rebuilt) if flat.get(path, value) != value} == {}
    assert rebuilt["architectures"] == original["architectures"]
    assert template.convert_hf_to_mca_config(rebuilt) == mca
    with pytest.raises(ConversionError, match="lacks bos_token_id, eos_token_id, pad_token_id"):
        template.rebuild_hf_config(mca, "float32", None)
    without_eps = {k: v for k, v in mca.items() if k != "layernorm_epsilon"}
    with pytest.raises(ConversionError, match=r"rms_norm_eps \(Megatron field layernorm_epsilon\)"):
        template.rebuild_hf_config(without_eps, "float32", token_ids)


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_complete_configs_skip_transformers_with_the_same_result(model_type):
    """A config that states every field is read as is (no transformers import on the convert
    path); the result must equal what transformers' normalization gives."""
    template = get_template(model_type)
    raw = json.loads(tiny_hf_config(model_type).to_json_string(use_diff=False))
    assert template._states_every_field(raw)
    expected = template.convert_hf_to_mca_config(template.transformers_normalized_hf_config(raw))
    assert template.convert_hf_to_mca_config(raw) == expected


def _default_cases():
    for model_type in MODEL_TYPES:
        for path in get_template(model_type).hf_config_defaults:
            yield pytest.param(model_type, path, id=f"{model_type}-{path}")


@pytest.mark.parametrize(("model_type", "path"), list(_default_cases()))
def test_defaults_for_left_out_fields_are_transformers_own(model_type, path, monkeypatch):
    """A config without the field (as hub configs often are) converts without transformers, to
    the Megatron config transformers' own defaults give."""
    template = get_template(model_type)
    raw = json.loads(tiny_hf_config(model_type).to_json_string(use_diff=False))
    top, _, leaf = path.partition(".")
    raw.pop(top if leaf else path, None)  # rope_parameters.*: a config with no rope description at all
    if path == "num_key_value_heads":  # its class default (8 to 32) must serve whole groups of heads
        raw["num_attention_heads"] = template.transformers_normalized_hf_config(raw)["num_key_value_heads"]
    expected = template.convert_hf_to_mca_config(template.transformers_normalized_hf_config(raw))

    def no_transformers(config):
        raise AssertionError(f"the defaults left {path!r} to transformers")

    monkeypatch.setattr(template, "transformers_normalized_hf_config", no_transformers)
    assert template.convert_hf_to_mca_config(raw) == expected


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_legacy_rope_fields_are_folded_like_transformers(model_type):
    """Hub configs written before transformers 5 state rope_theta / rope_scaling."""
    template = get_template(model_type)
    legacy = json.loads(tiny_hf_config(model_type).to_json_string(use_diff=False))
    rope = legacy.pop("rope_parameters")
    legacy["rope_theta"] = rope.pop("rope_theta")
    if rope["rope_type"] != "default":
        legacy["rope_scaling"] = {**rope, "type": rope.pop("rope_type")}
    expected = template.convert_hf_to_mca_config(template.transformers_normalized_hf_config(legacy))
    assert template.convert_hf_to_mca_config(legacy) == expected


def test_sparse_configs_go_through_transformers():
    template = get_template("qwen2")
    # 32 heads: transformers' default of 32 key/value heads must serve whole groups of them
    sparse = {"model_type": "qwen2", "hidden_size": 64, "num_attention_heads": 32, "num_hidden_layers": 2}
    sparse.update(intermediate_size=128, vocab_size=128, rope_theta=12345.0)
    assert not template._states_every_field(sparse)
    mca = template.convert_hf_to_mca_config(sparse)
    assert mca["rotary_base"] == 12345.0
    assert mca["num_query_groups"] == 32  # transformers' qwen2 default for num_key_value_heads


def test_llama3_rope_parameters_reach_megatron():
    mca = get_template("llama").convert_hf_to_mca_config(tiny_hf_config("llama").to_dict())
    assert mca["rope_scaling"] is True
    assert mca["rope_scaling_original_max_position_embeddings"] == 64


@pytest.mark.parametrize(
    ("model_type", "field", "value"),
    [
        ("llama", "hidden_act", "gelu"),
        ("llama", "attention_bias", True),
        ("qwen2", "use_sliding_window", True),
        ("seed_oss", "attention_out_bias", True),
        ("seed_oss", "mlp_bias", True),
    ],
)
def test_config_the_template_cannot_represent_is_rejected(model_type, field, value):
    hf_config = {**tiny_hf_config(model_type).to_dict(), field: value}
    with pytest.raises(ConversionError, match=f"supports {field}="):
        get_template(model_type).convert_hf_to_mca_config(hf_config)


def test_seed_oss_qkv_bias_and_residual_dropout_follow_the_config():
    template = get_template("seed_oss")
    mca = template.convert_hf_to_mca_config(tiny_hf_config("seed_oss").to_dict())
    assert (mca["add_qkv_bias"], mca["hidden_dropout"], mca["attention_dropout"]) == (True, 0.1, 0.1)
    plain = tiny_hf_config("seed_oss", attention_bias=False, residual_dropout=0.0)
    mca = template.convert_hf_to_mca_config(plain.to_dict())
    assert (mca["add_qkv_bias"], mca["hidden_dropout"]) == (False, 0.0)
    # without attention_bias a q/k/v bias has nowhere to go
    mapper = template.mapper(template.op_config(mca), to_mca=True)
    with pytest.raises(ConversionError, match="'model.layers.0.self_attn.q_proj.bias' is not mapped"):
        mapper.push("model.layers.0.self_attn.q_proj.bias", torch.zeros(plain.num_attention_heads * 32))


def test_unsupported_rope_type_is_rejected():
    hf_config = tiny_hf_config(
        "llama", rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}
    )
    with pytest.raises(ConversionError, match="rope_type 'linear' is not supported"):
        get_template("llama").convert_hf_to_mca_config(hf_config.to_dict())


def _mapper(model_type="llama", tie=False):
    template = get_template(model_type)
    mca = template.convert_hf_to_mca_config(tiny_hf_config(model_type, tie).to_dict())
    return template.mapper(template.op_config(mca), to_mca=True)


def test_unmapped_hf_key_names_the_key():
    with pytest.raises(
        ConversionError, match=r"'model.layers.0.self_attn.rotary_alpha' is not mapped.*hf_invalid_keys"
    ):
        _mapper().push("model.layers.0.self_attn.rotary_alpha", torch.zeros(1))


def test_invalid_keys_and_tied_lm_head_are_reported_as_dropped():
    mapper = _mapper(tie=True)
    assert mapper.push("model.layers.1.self_attn.rotary_emb.inv_freq", torch.zeros(1)) == []
    assert mapper.push("lm_head.weight", torch.zeros(1)) == []
    assert mapper.finish().dropped == {"model.layers.1.self_attn.rotary_emb.inv_freq", "lm_head.weight"}


def test_incomplete_group_is_an_error_naming_the_missing_tensor():
    mapper = _mapper()
    mapper.push("model.layers.0.self_attn.q_proj.weight", torch.zeros(128, 64))
    mapper.push("model.layers.0.self_attn.k_proj.weight", torch.zeros(64, 64))
    with pytest.raises(ConversionError, match=r"model.layers.0.self_attn.v_proj.weight"):
        mapper.finish()


def test_wildcards_carry_their_match_to_the_output():
    template = register_template(
        "wildcard_demo",
        config_hf_to_mca={},
        weight_converters=[RenameConverOp("visual.{}", "vision_model.{}")],
        hf_layer_prefix="model.layers.",
    )
    template_module._TEMPLATES.pop("wildcard_demo")
    mapper = template.mapper(None, to_mca=True)
    t = torch.ones(2)
    assert mapper.push("visual.blocks.0.attn.qkv.weight", t) == [("vision_model.blocks.0.attn.qkv.weight", t)]
    back = template.mapper(None, to_mca=False)
    assert back.push("vision_model.merger.mlp.0.bias", t) == [("visual.merger.mlp.0.bias", t)]


def test_auto_class_registries_are_lazy_and_refuse_duplicates(monkeypatch):
    from mcore_adapter.models.auto import config_auto, modeling_auto, register_model

    monkeypatch.setattr(modeling_auto, "MODEL_MAPPING", {})
    register_model("llama", "my_pkg.models:MyLlama")  # a string: nothing is imported yet
    with pytest.raises(ValueError, match="my_pkg.models:MyLlama is already registered for 'llama'"):
        register_model("llama", "other:Class")
    register_model("llama", config_auto.AutoConfig, overwrite=True)
    assert modeling_auto.MODEL_MAPPING["llama"] == "mcore_adapter.models.auto.config_auto:AutoConfig"
    with pytest.raises(UnsupportedModelError, match="no conversion template for model_type 'nope'"):
        modeling_auto.model_class_for("nope")
