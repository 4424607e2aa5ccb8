"""Tiny random HF models, one per model type, built from the real transformers config classes.

Each is small enough for CPU (2 layers, hidden 64, head_dim 32) but keeps every feature the
template converts: grouped-query attention (4 heads in 2 groups, so the
per-group q/k/v layout matters), rope scaling, biases, q/k norm,
sliding window. Weights are drawn with std 0.3 so that a wrong op moves logits by far more
than any tolerance.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

_BASE: dict[str, Any] = {
    "vocab_size": 128,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 32,
    "max_position_embeddings": 512,
    "rms_norm_eps": 1e-6,
}

# model_type -> config kwargs beyond _BASE; a registered template without an entry fails the
# coverage test.
TINY_MODELS: dict[str, dict[str, Any]] = {
    "llama": {
        # Llama 3 rope scaling with a short original context, so that scaling changes the
        # frequencies of this tiny head dim (Megatron's fixed 8192 would not).
        "rope_parameters": {
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "mistral": {"sliding_window": 4, "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0}},
    "qwen2": {"use_sliding_window": False},
    "qwen3": {"use_sliding_window": False},
    # q/k/v biases; residual and attention dropout as the hub config has them (off in eval)
    "seed_oss": {"attention_bias": True, "residual_dropout": 0.1, "attention_dropout": 0.1},
    # roll_models' implementation (import roll_models first); its head is hidden / heads wide.
    "internlm2": {"hidden_size": 128, "bias": False},
    # Mixture of experts: 4 experts, top-2, so that routing (not one expert) decides the output.
    "qwen2_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "norm_topk_prob": False,
        "mlp_only_layers": [1],  # a dense layer between expert layers
        "use_sliding_window": False,
    },
    "qwen3_moe": {
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "norm_topk_prob": True,
        "use_sliding_window": False,
    },
    "mixtral": {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": None},
    "deepseek_v3": {
        "num_key_value_heads": 4,
        "head_dim": 8,  # transformers' rope width: qk_rope_head_dim
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "q_lora_rank": 32,
        "kv_lora_rank": 16,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
        "n_group": 2,
        "topk_group": 1,
        "routed_scaling_factor": 2.5,
        # yarn with a short original context, so that scaling changes this tiny model's rope
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "original_max_position_embeddings": 128,  # x factor = max_position_embeddings
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
        },
    },
    "glm4_moe": {
        "n_routed_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "n_shared_experts": 1,
        "first_k_dense_replace": 1,
        "n_group": 1,
        "topk_group": 1,
        "routed_scaling_factor": 1.5,
        "partial_rotary_factor": 0.5,
        "use_qk_norm": True,
        "attention_bias": True,
    },
    # Gated DeltaNet (4 key heads, 8 value heads: TP4 splits them too) and gated full attention;
    # PP2 puts a stage boundary between a linear (1) and a full (2) attention layer; a dense
    # layer (3).
    "qwen3_next": {
        "layer_types": ["linear_attention", "linear_attention", "full_attention", "linear_attention"],
        "num_hidden_layers": 4,
        "linear_conv_kernel_dim": 4,
        "linear_key_head_dim": 16,
        "linear_value_head_dim": 16,
        "linear_num_key_heads": 4,
        "linear_num_value_heads": 8,
        "num_experts": 4,
        "num_experts_per_tok": 2,
        "moe_intermediate_size": 32,
        "shared_expert_intermediate_size": 48,
        "mlp_only_layers": [3],
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.25},
    },
}
MOE_MODELS = ("qwen2_moe", "qwen3_moe", "mixtral", "deepseek_v3", "glm4_moe", "qwen3_next")


# Vision-language models: the text model nests under text_config; 1-2 vision blocks. Token ids
# sit inside the tiny vocab. head_dim 32 (hidden 128 / 4 heads, 2 KV groups), mrope over 16.
_VL_TEXT: dict[str, Any] = {
    "vocab_size": 160,
    "hidden_size": 128,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-6,
    "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [4, 6, 6]},
}
VL_TOKENS = {
    "image_token_id": 151,
    "video_token_id": 152,
    "vision_start_token_id": 153,
    "vision_end_token_id": 154,
}
_QWEN3_VISION: dict[str, Any] = {
    "depth": 2,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "out_hidden_size": 128,
    "patch_size": 14,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
    "in_channels": 3,
    "num_position_embeddings": 36,
    "deepstack_visual_indexes": [0, 1],
}
_QWEN3_5_VISION = {k: v for k, v in _QWEN3_VISION.items() if k != "deepstack_visual_indexes"}
_QWEN3_5_TEXT: dict[str, Any] = {
    "num_hidden_layers": 4,
    "head_dim": 32,
    "layer_types": ["linear_attention", "full_attention", "linear_attention", "full_attention"],
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
    # Half of the 32 dims rotate (8 frequencies: sections 4 + 2 + 2), with a small theta so that
    # these few frequencies turn enough for the interleaving of the axes to show in the logits.
    "rope_parameters": {
        "rope_type": "default",
        "rope_theta": 100.0,
        "mrope_section": [4, 2, 2],
        "partial_rotary_factor": 0.5,
    },
}
TINY_VL_MODELS: dict[str, dict[str, Any]] = {
    "qwen2_vl": {
        "vision_config": {
            "depth": 2,
            "embed_dim": 32,
            "hidden_size": 128,
            "num_heads": 2,
            "mlp_ratio": 2,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_chans": 3,
        },
    },
    "qwen2_5_vl": {
        "vision_config": {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": 128,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "in_channels": 3,
            "window_size": 56,  # 2 x 2 merged patches: the tiny images span several windows
            "fullatt_block_indexes": [1],
            "tokens_per_second": 2,
        },
    },
    # Deepstack after decoder layers 0 and 1 (from vision blocks 0 and 1); 4 decoder layers, so
    # that PP2 keeps both on the first stage; a 6 x 6 learned position grid, interpolated.
    "qwen3_vl": {
        "vision_config": _QWEN3_VISION,
        "text_config": {"num_hidden_layers": 4, "head_dim": 32},
    },
    # Qwen3.5: the hybrid decoder (PP2: linear 0, full 1 | linear 2, full 3) with interleaved
    # mrope over its partial rotary.
    "qwen3_5": {"vision_config": _QWEN3_5_VISION, "text_config": _QWEN3_5_TEXT},
    "qwen3_5_moe": {
        "vision_config": _QWEN3_5_VISION,
        "text_config": {
            **_QWEN3_5_TEXT,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "shared_expert_intermediate_size": 48,
        },
    },
    # The MoE decoder: 4 experts, top-2, a dense layer (1) between expert layers.
    "qwen3_vl_moe": {
        "vision_config": _QWEN3_VISION,
        "text_config": {
            "num_hidden_layers": 4,
            "head_dim": 32,
            "num_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "mlp_only_layers": [1],
        },
    },
}


# Special token ids of every tiny model, inside its vocabulary (a vision-language config's
# defaults are Qwen's, beyond it); the tiny tokenizer puts its tokens there.
TINY_TOKEN_IDS = {"pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


# transformers' norms that scale by 1 + weight (zero-centered): their tiny weights are drawn so
# that the scale is distributed as the other families' weights.
ZERO_CENTERED_NORMS = ("Qwen3NextRMSNorm", "Qwen3_5RMSNorm", "Qwen3_5MoeRMSNorm")


def tiny_hf_config(model_type: str, tie_word_embeddings: bool = False, **overrides: Any):
    from transformers import AutoConfig

    from ..plugins import require_hf_model_type

    require_hf_model_type(model_type, f"tiny {model_type} model")
    if model_type in TINY_VL_MODELS:
        family = dict(TINY_VL_MODELS[model_type])
        text = {
            **_VL_TEXT,
            **TINY_TOKEN_IDS,
            **family.pop("text_config", {}),
            **overrides.pop("text_config", {}),
        }
        kwargs = {**family, **VL_TOKENS, "text_config": text}
        return AutoConfig.for_model(
            model_type, **kwargs, tie_word_embeddings=tie_word_embeddings, **overrides
        )
    if model_type not in TINY_MODELS:
        raise KeyError(
            f"no tiny model for {model_type!r}; available: {sorted(TINY_MODELS) + sorted(TINY_VL_MODELS)}"
        )
    kwargs = {
        **_BASE,
        **TINY_TOKEN_IDS,
        **TINY_MODELS[model_type],
        "tie_word_embeddings": tie_word_embeddings,
        **overrides,
    }
    return AutoConfig.for_model(model_type, **kwargs)


def make_tiny_hf_checkpoint(
    model_type: str,
    path: str | os.PathLike,
    tie_word_embeddings: bool = False,
    seed: int = 0,
    std: float = 0.3,
    dtype: torch.dtype = torch.float32,
    mtp_layers: int = 0,
    **overrides: Any,
) -> Path:
    """Write a tiny random HF checkpoint (config.json + safetensors) to ``path``; with
    ``mtp_layers``, as the hub has DeepSeek-V3 (``add_mtp_layers``)."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    config = tiny_hf_config(model_type, tie_word_embeddings, **overrides)
    torch.manual_seed(seed)
    auto = AutoModelForImageTextToText if model_type in TINY_VL_MODELS else AutoModelForCausalLM
    model = auto.from_config(config, attn_implementation="eager", dtype=torch.float32)
    persistent = set(model.state_dict())
    zero_centered = {
        f"{name}.weight"
        for name, module in model.named_modules()
        if type(module).__name__ in ZERO_CENTERED_NORMS
    }
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("linear_attn.norm.weight"):
                # Gated DeltaNet's output norm scales by w (its Megatron module by 1 + w): keep w
                # near 1, as trained checkpoints have it, where w - 1 is exact (see OffsetConverOp).
                param.uniform_(0.55, 1.45)
            elif name in zero_centered:  # scale 1 + w ~ N(0, std), as other families' norms
                param.normal_(-1.0, std)
            else:
                param.normal_(0.0, std)
        for name, buffer in model.named_buffers():  # e.g. the router's correction bias
            if name in persistent and buffer.is_floating_point():
                buffer.normal_(0.0, std)
    model.to(dtype).save_pretrained(path)
    if mtp_layers:
        add_mtp_layers(path, mtp_layers, seed=seed + 1, std=std)
    return Path(path)


def add_mtp_layers(path: str | os.PathLike, count: int, seed: int = 1, std: float = 0.3) -> None:
    """Append multi-token-prediction layers to a DeepSeek-V3-style checkpoint as the hub stores
    them (transformers builds none): after the decoder layers, each a decoder layer like the
    last plus ``enorm``, ``hnorm``, ``eh_proj``, ``shared_head.norm``, and repeats of the
    embedding and output head (``embed_tokens``, ``shared_head.head``)."""
    from safetensors.torch import load_file, save_file

    path = Path(path)
    tensors = load_file(path / "model.safetensors")
    config = json.loads((path / "config.json").read_text())
    n, hidden = config["num_hidden_layers"], config["hidden_size"]
    generator = torch.Generator().manual_seed(seed)
    last = f"model.layers.{n - 1}."

    def rand(*shape: int) -> torch.Tensor:
        return torch.randn(shape, generator=generator).mul_(std).to(tensors["lm_head.weight"].dtype)

    for k in range(n, n + count):
        for name, t in list(tensors.items()):
            if name.startswith(last):
                tensors[f"model.layers.{k}.{name[len(last) :]}"] = rand(*t.shape)
        tensors |= {
            f"model.layers.{k}.enorm.weight": rand(hidden),
            f"model.layers.{k}.hnorm.weight": rand(hidden),
            f"model.layers.{k}.eh_proj.weight": rand(hidden, 2 * hidden),
            f"model.layers.{k}.shared_head.norm.weight": rand(hidden),
            f"model.layers.{k}.shared_head.head.weight": tensors["lm_head.weight"].clone(),
            f"model.layers.{k}.embed_tokens.weight": tensors["model.embed_tokens.weight"].clone(),
        }
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})


def vl_prompt(*parts: int | tuple[str, tuple[int, int, int]], spatial_merge_size: int = 2) -> list[int]:
    """Token ids of a vision-language prompt for the tiny models: text runs given as ints (their
    length), images and videos as ``("image" | "video", (t, h, w))`` patch grids, each wrapped
    in vision start/end tokens with one placeholder per merged patch."""
    ids, token = [], 1
    for part in parts:
        if isinstance(part, int):
            ids += list(range(token, token + part))
            token += part
            continue
        kind, (t, h, w) = part
        placeholder = VL_TOKENS["image_token_id" if kind == "image" else "video_token_id"]
        ids += [VL_TOKENS["vision_start_token_id"], *[placeholder] * (t * h * w // spatial_merge_size**2)]
        ids.append(VL_TOKENS["vision_end_token_id"])
    return ids


def save_with_fused_experts(hf_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The checkpoint at ``hf_dir`` re-saved under transformers' in-memory names (fused expert
    tensors ``mlp.experts.gate_up_proj`` / ``down_proj``), as checkpoints written from a model's
    state dict are; transformers loads either layout."""
    import shutil

    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype="auto")
    path = Path(path)
    path.mkdir(parents=True)
    shutil.copyfile(Path(hf_dir) / "config.json", path / "config.json")
    tensors = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


def save_with_transposed_fused_experts(hf_dir: str | os.PathLike, path: str | os.PathLike) -> Path:
    """The checkpoint at ``hf_dir`` re-saved with fused expert tensors stored transposed, as the
    hub has Qwen3-VL-MoE's: ``mlp.experts.gate_up_proj [E, H, 2I]`` (columns: gate then up) and
    ``down_proj [E, I, H]`` (transformers' in-memory ``[E, 2I, H]`` / ``[E, H, I]`` with the last
    two dims swapped). A per-expert checkpoint is fused first (``save_with_fused_experts``); one
    transformers saved fused (Qwen3-VL-MoE's) is transposed as it is."""
    import shutil
    import tempfile

    from safetensors.torch import load_file, save_file

    fused_names = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(hf_dir)
        if not any(name.endswith(fused_names) for name in load_file(source / "model.safetensors")):
            source = save_with_fused_experts(hf_dir, Path(tmp) / "fused")
        tensors = load_file(source / "model.safetensors")
        path.mkdir(parents=True)
        shutil.copyfile(source / "config.json", path / "config.json")
    for name, tensor in tensors.items():
        if name.endswith(fused_names):
            tensors[name] = tensor.transpose(1, 2).contiguous()
    save_file(tensors, path / "model.safetensors", metadata={"format": "pt"})
    return path


HEAD_AUTO_CLASSES = {
    "value": "AutoModelForTokenClassification",
    "reward": "AutoModelForSequenceClassification",
}


def make_tiny_head_checkpoint(
    lm_dir: str | os.PathLike,
    head: str,
    path: str | os.PathLike,
    seed: int = 1,
    std: float = 0.3,
    pad_token_id: int = TINY_TOKEN_IDS["pad_token_id"],
) -> Path:
    """A value (token classification) or reward (sequence classification) model with one label
    on the decoder of the tiny LM at ``lm_dir``, its head drawn with ``std``, as transformers
    saves it; ``pad_token_id`` is what the reward model pools by."""
    import transformers
    from transformers.utils import logging as hf_logging

    auto = getattr(transformers, HEAD_AUTO_CLASSES[head])
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # its load report: lm_head unused, score missing (drawn below)
    try:
        model = auto.from_pretrained(lm_dir, num_labels=1, pad_token_id=pad_token_id, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.startswith("score."):
                param.copy_(torch.randn(param.shape, generator=generator) * std)
    model.save_pretrained(path)
    return Path(path)


def head_model_types() -> list[str]:
    """The tiny text models that transformers builds value and reward models of (token and
    sequence classification classes for their config)."""
    import transformers

    autos = [getattr(transformers, name) for name in HEAD_AUTO_CLASSES.values()]
    return [
        model_type
        for model_type in TINY_MODELS
        if all(type(tiny_hf_config(model_type)) in auto._model_mapping for auto in autos)
    ]


def make_tiny_demo_checkpoint(model_type: str, path: str | os.PathLike, head: str | None = None) -> Path:
    """A complete tiny HF checkpoint at ``path``, as the hub has them: config.json, weights, a
    tokenizer (``tiny_tokenizer``), generation_config.json (transformers writes none for a value
    or reward model, which does not generate), and for a vision-language model its image
    processor. ``head`` ("value" or "reward") puts a one-label head on the tiny LM, as
    ``make_tiny_head_checkpoint`` does."""
    import tempfile

    from .tiny_tokenizer import save_tiny_image_processor, save_tiny_tokenizer

    path = Path(path)
    if head is None:
        make_tiny_hf_checkpoint(model_type, path)
    else:
        with tempfile.TemporaryDirectory(prefix="tiny-lm-") as lm:
            make_tiny_head_checkpoint(make_tiny_hf_checkpoint(model_type, Path(lm) / "hf"), head, path)
    save_tiny_tokenizer(path)
    if model_type in TINY_VL_MODELS:
        save_tiny_image_processor(path)
    return path
