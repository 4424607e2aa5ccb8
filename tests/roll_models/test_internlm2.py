"""InternLM2, our implementation: checked against transformers' Llama (the same architecture
with q/k/v split and other names) on the same weights, loaded from a hub-layout checkpoint
(with the hub's ``auto_map``) without remote code."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import roll_models  # noqa: F401  (registers InternLM2 with transformers)
from mcore_adapter.parity import CONTROL_RTOL, compare_logits
from roll_models.internlm2 import InternLM2Config, InternLM2ForCausalLM

BASE = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 16,
    "rms_norm_eps": 1e-6,
    "bias": False,
    "rope_theta": 10000.0,
}
AUTO_MAP = {
    "AutoConfig": "configuration_internlm2.InternLM2Config",
    "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
}


def _tiny(rope_scaling=None, seed=0) -> InternLM2ForCausalLM:
    config = InternLM2Config(**BASE, rope_scaling=rope_scaling, attn_implementation="eager")
    torch.manual_seed(seed)
    model = InternLM2ForCausalLM(config)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def _as_llama(model: InternLM2ForCausalLM, grouped: bool = True):
    """transformers' Llama with the same weights: wqkv split per key/value group (or, with
    ``grouped=False``, wrongly, as if q, k and v were concatenated whole)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    llama = LlamaForCausalLM(
        LlamaConfig(
            **{k: v for k, v in BASE.items() if k not in ("bias", "rope_theta")},
            rope_parameters=dict(c.rope_parameters),
            attn_implementation="eager",
        )
    ).eval()
    heads, groups, d = c.num_attention_heads, c.num_key_value_heads, c.hidden_size // c.num_attention_heads
    sd = model.state_dict()
    out = {
        "model.embed_tokens.weight": sd["model.tok_embeddings.weight"],
        "model.norm.weight": sd["model.norm.weight"],
        "lm_head.weight": sd["output.weight"],
    }
    for i in range(c.num_hidden_layers):
        p = f"model.layers.{i}."
        wqkv = sd[p + "attention.wqkv.weight"]
        if grouped:
            per_group = wqkv.view(groups, heads // groups + 2, d, -1)
            q = per_group[:, :-2].reshape(heads * d, -1)
            k, v = per_group[:, -2].reshape(groups * d, -1), per_group[:, -1].reshape(groups * d, -1)
        else:
            q, k, v = wqkv.split([heads * d, groups * d, groups * d])
        out |= {
            p + "self_attn.q_proj.weight": q,
            p + "self_attn.k_proj.weight": k,
            p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": sd[p + "attention.wo.weight"],
            p + "mlp.gate_proj.weight": sd[p + "feed_forward.w1.weight"],
            p + "mlp.up_proj.weight": sd[p + "feed_forward.w3.weight"],
            p + "mlp.down_proj.weight": sd[p + "feed_forward.w2.weight"],
            p + "input_layernorm.weight": sd[p + "attention_norm.weight"],
            p + "post_attention_layernorm.weight": sd[p + "ffn_norm.weight"],
        }
    llama.load_state_dict(out, strict=True)
    return llama


@pytest.mark.parametrize(
    "rope_scaling",
    [None, {"type": "linear", "factor": 2.0}, {"type": "dynamic", "factor": 2.0}],
    ids=["default-rope", "linear-rope", "dynamic-ntk-rope"],
)
def test_logits_equal_transformers_llama_on_the_same_weights(rope_scaling):
    model = _tiny(rope_scaling)
    # 24 tokens > max_position_embeddings 16: dynamic NTK rescales
    tokens = torch.randint(0, 128, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = compare_logits(model(tokens).logits, _as_llama(model)(tokens).logits)
    assert diff.passed()


def test_ungrouped_wqkv_breaks_parity():
    model = _tiny()
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = compare_logits(model(tokens).logits, _as_llama(model, grouped=False)(tokens).logits)
    assert diff.relative > CONTROL_RTOL, diff.describe()


def test_hub_checkpoint_with_auto_map_loads_without_remote_code(tmp_path):
    from transformers import AutoModelForCausalLM

    from roll_models.model_providers import ModelArgs, default_model_provider

    model = _tiny({"type": "dynamic", "factor": 2.0})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    # as the hub writes it: legacy rope fields and the remote-code map
    config.pop("rope_parameters", None)
    config |= {
        "rope_theta": 10000.0,
        "rope_scaling": {"type": "dynamic", "factor": 2.0},
        "auto_map": AUTO_MAP,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False, dtype=torch.float32)
    assert type(loaded) is InternLM2ForCausalLM
    assert loaded.config.rope_parameters["rope_type"] == "dynamic"
    tokens = torch.randint(0, 128, (1, 20), generator=torch.Generator().manual_seed(1))
    provided = default_model_provider(
        "hf_infer", ModelArgs(str(tmp_path), dtype="float32", attn_implementation="eager")
    )
    with torch.no_grad():
        assert compare_logits(provided(tokens).logits, model(tokens).logits).passed()
    generated = provided.generate(tokens[:, :5], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)


# ---------------------------------------------------------------------- on Megatron-Core
def _checkpoint(path, rope_scaling=None):
    model = _tiny(rope_scaling)
    model.save_pretrained(path)
    return path


def test_megatron_matches_with_linear_rope_and_refuses_dynamic_ntk(megatron, tmp_path):
    """The template maps linear scaling to Megatron's seq_len_interpolation_factor; dynamic NTK,
    which Megatron-Core cannot compute, is refused with the reason."""
    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter.errors import ConversionError

    path = _checkpoint(tmp_path / "linear", {"type": "linear", "factor": 2.0})
    model = AutoModel.from_pretrained(path).eval()
    assert model.config.seq_len_interpolation_factor == 2.0
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = compare_logits(model(tokens), _tiny({"type": "linear", "factor": 2.0})(tokens).logits)
    assert diff.passed()
    dynamic = _checkpoint(tmp_path / "dynamic", {"type": "dynamic", "factor": 2.0})
    with pytest.raises(ConversionError, match="dynamic NTK scaling rescales the rope"):
        AutoModel.from_pretrained(dynamic)


def test_megatron_parity_notices_an_ungrouped_wqkv(megatron, tmp_path, monkeypatch):
    """Control for the template: reading wqkv as [all q; all k; all v] moves the logits."""
    from mcore_adapter import AutoModel
    from mcore_adapter.models.converter import registry as template_module
    from mcore_adapter.models.converter.ops import QKVConverOp, RenameConverOp
    from mcore_adapter.models.converter.template import get_template

    class Ungrouped(QKVConverOp):  # one HF tensor, split whole into q, k, v, then grouped
        hf_arity = 1

        def _hf_to_mca(self, tensors):
            heads, groups, d = self._dims()
            q, k, v = tensors[0].split([heads * d, groups * d, groups * d])
            tail = q.shape[1:]
            parts = [q.reshape(groups, heads // groups * d, *tail), k.reshape(groups, d, *tail)]
            return torch.cat([*parts, v.reshape(groups, d, *tail)], dim=1).reshape(-1, *tail)

        def _mca_to_hf(self, tensors):
            return torch.cat(super()._mca_to_hf(tensors))

    original = get_template("internlm2")
    ops = [
        Ungrouped(op.hf_names, op.mca_names) if op.hf_names == [".attention.wqkv.weight"] else op
        for op in original.weight_converters
    ]
    assert any(isinstance(op, Ungrouped) for op in ops) and not any(
        isinstance(op, RenameConverOp) and op.hf_names == [".attention.wqkv.weight"] for op in ops
    )
    broken = dataclasses.replace(original, weight_converters=ops)
    path = _checkpoint(tmp_path / "hf")
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    expected = _tiny()(tokens).logits.detach()
    good = AutoModel.from_pretrained(path).eval()
    with torch.no_grad():
        assert compare_logits(good(tokens), expected).passed()
    monkeypatch.setitem(template_module._TEMPLATES, "internlm2", broken)
    with torch.no_grad():
        diff = compare_logits(AutoModel.from_pretrained(path).eval()(tokens), expected)
    assert diff.relative > CONTROL_RTOL, diff.describe()
