"""InternLM2, our implementation: checked against transformers' Llama (the same architecture
with q/k/v split and other names) on the same weights, loaded from a hub-layout checkpoint
(with the hub's ``auto_map``) without remote code."""

from __future__ import annotations

import json

import pytest
import torch

import roll_models  # noqa: F401  (registers InternLM2 with transformers)
from roll_models.internlm2 import InternLM2Config, InternLM2ForCausalLM

TOL = 1e-5
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
        diff = (model(tokens).logits - _as_llama(model)(tokens).logits).abs().max().item()
    assert diff <= TOL


def test_ungrouped_wqkv_breaks_parity():
    model = _tiny()
    tokens = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (model(tokens).logits - _as_llama(model, grouped=False)(tokens).logits).abs().max().item()
    assert diff > 1.0, diff


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
        assert (provided(tokens).logits - model(tokens).logits).abs().max().item() <= TOL
    generated = provided.generate(tokens[:, :5], max_new_tokens=4, do_sample=False)
    assert generated.shape == (1, 9)
