"""Logits parity between the Megatron model built from an HF checkpoint and the HF model
itself (transformers, fp32, eager attention), at any parallel layout. A value or reward model
(token or sequence classification with one label) compares its values or scores."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .models.converter.config_map import head_of_architecture
from .models.converter.layout import ParallelLayout
from .parity import LogitsDiff, compare_logits


def random_tokens(vocab_size: int, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch_size, seq_len), generator=generator)


def hf_auto_class(config: dict[str, Any]):
    """transformers' auto class for an HF config: a value or reward model's classification
    class, a vision-language model's image-text class, else the causal LM's."""
    import transformers

    head = head_of_architecture((config.get("architectures") or [""])[0])
    if head is not None:
        return getattr(transformers, head.auto_class)
    if "vision_config" in config:
        return transformers.AutoModelForImageTextToText
    return transformers.AutoModelForCausalLM


def output_name(config: dict[str, Any]) -> str:
    """What the compared outputs are: "logit", or a value or reward head's "value" / "score"."""
    head = head_of_architecture((config.get("architectures") or [""])[0])
    return "logit" if head is None else head.output


def hf_model_class(hf_dir: str | os.PathLike) -> str:
    """The name of the transformers class that ``hf_logits`` builds for ``hf_dir``."""
    from transformers import AutoConfig

    from .models.converter.hf_io import HF_CONFIG_NAME, read_json

    auto = hf_auto_class(read_json(Path(hf_dir) / HF_CONFIG_NAME))
    return auto._model_mapping[type(AutoConfig.from_pretrained(hf_dir))].__name__


def megatron_model_class(model_type: str) -> str:
    """The name of the model class ``AutoModel`` builds for ``model_type`` (not imported)."""
    from .models.auto.modeling_auto import model_class_ref

    return model_class_ref(model_type).rpartition(":")[2]


def hf_logits(hf_dir: str | os.PathLike, tokens: torch.Tensor, **inputs: Any) -> torch.Tensor:
    """The HF model's logits (or a value or reward head's outputs; a vision-language checkpoint
    through its image-text class, its multimodal inputs, if any, in ``inputs``)."""
    from .models.converter.hf_io import HF_CONFIG_NAME, read_json
    from .plugins import require_hf_model_type

    config = read_json(Path(hf_dir) / HF_CONFIG_NAME)
    require_hf_model_type(config.get("model_type"), str(Path(hf_dir) / HF_CONFIG_NAME))
    auto = hf_auto_class(config)
    hf = auto.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    with torch.no_grad():
        return hf(tokens, **inputs).logits


def text_vocab_size(config: Any) -> int:
    """Token ids below this are text: a vision-language model's placeholder ids are excluded."""
    special = [
        getattr(config, name, None) for name in ("image_token_id", "video_token_id", "vision_start_token_id")
    ]
    return min([config.vocab_size, *[i for i in special if i is not None]])


def image_grid(vision: dict[str, Any]) -> list[int]:
    """The synthetic image's patch grid (t, h, w): 2 x 3 merged patches."""
    merge = int(vision["spatial_merge_size"])
    return [1, 2 * merge, 3 * merge]


def describe_tokens(hf_config: dict[str, Any], batch_size: int, seq_len: int, image: bool) -> str:
    """The compared input, in words: the random text, or the image prompt of ``image_prompt``."""
    if not image:
        return f"{batch_size} x {seq_len} random text tokens (seed 0)"
    vision = hf_config["vision_config"]
    t, h, w = image_grid(vision)
    merged = t * h * w // int(vision["spatial_merge_size"]) ** 2
    pixels = f"{h * vision['patch_size']} x {w * vision['patch_size']} pixels"
    return (
        f"1 x {7 + merged} = 3 random text tokens, vision start, {merged} image placeholders, 3 random "
        f"text tokens; one random image of {pixels} ({h} x {w} patches)"
    )


def image_prompt(config: Any, seed: int = 0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Text, one synthetic image (``image_grid``: 2 x 3 merged patches' worth of placeholders)
    and text again, for a vision-language model: the tokens and the multimodal inputs."""
    vision = config.vision_config
    merge = int(vision["spatial_merge_size"])
    grid = image_grid(vision)
    patches = grid[0] * grid[1] * grid[2]
    channels = vision.get("in_chans", vision.get("in_channels", 3))
    patch_dim = channels * vision["temporal_patch_size"] * vision["patch_size"] ** 2
    text = random_tokens(text_vocab_size(config), 1, 6, seed)
    image = torch.full((1, patches // merge**2), config.image_token_id)
    start = torch.full((1, 1), config.vision_start_token_id)
    tokens = torch.cat([text[:, :3], start, image, text[:, 3:]], dim=1)
    pixels = torch.randn(patches, patch_dim, generator=torch.Generator().manual_seed(seed))
    return tokens, {"pixel_values": pixels, "image_grid_thw": torch.tensor([grid])}


def hf_inputs(config: Any, tokens: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What the HF model needs beyond ours: the modality of each token (the processor's output)."""
    if not inputs:
        return {}
    from .models.mrope import mm_token_types

    return {
        **inputs,
        "mm_token_type_ids": mm_token_types(tokens, config.image_token_id, config.video_token_id),
    }


def megatron_logits(models: Any, tokens: torch.Tensor, **inputs: Any) -> torch.Tensor | None:
    """Logits on the last pipeline stage, ``None`` elsewhere."""
    from .models.pipeline import forward_logits

    models = list(models) if isinstance(models, torch.nn.ModuleList) else [models]
    for model in models:
        model.eval()
    with torch.no_grad():
        return forward_logits(models, tokens, **inputs)


def diff_with_hf(
    models: Any,
    hf_dir: str | os.PathLike,
    batch_size: int = 2,
    seq_len: int = 16,
    seed: int = 0,
    image: bool = False,
) -> LogitsDiff:
    """Our logits against transformers' on the same random text tokens (or, with ``image``, a
    prompt with one synthetic image), agreed by every rank. Collective."""
    from megatron.core import parallel_state

    config = models_config(models)
    if image:
        tokens, inputs = image_prompt(config, seed)
    else:
        tokens, inputs = random_tokens(text_vocab_size(config), batch_size, seq_len, seed), {}
    actual = megatron_logits(models, tokens, **inputs)
    diff = None
    if actual is not None and parallel_state.get_tensor_model_parallel_rank() == 0:
        expected = hf_logits(hf_dir, tokens, **hf_inputs(config, tokens, inputs))
        diff = compare_logits(actual, expected)
    return agree(diff)


def agree(diff: LogitsDiff | None) -> LogitsDiff:
    """The comparison made on the ranks that hold logits, on every rank (ranks without logits
    pass ``None``). Collective when distributed."""
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        assert diff is not None
        return diff
    # MAX over ranks: the ranks holding logits (several with data/expert parallelism) hold the
    # same comparison; the others pass what loses (-2; a missing top-1 agreement is -1).
    if diff is None:
        packed = torch.tensor([-2.0, -2.0, -2.0, 0.0], dtype=torch.float64)
    else:
        top1 = -1.0 if diff.top1_agreement is None else diff.top1_agreement
        packed = torch.tensor([diff.max_abs, diff.scale, top1, diff.positions], dtype=torch.float64)
    dist.all_reduce(packed, op=dist.ReduceOp.MAX)
    max_abs, scale, top1, positions = packed.tolist()
    return LogitsDiff(max_abs, scale, None if top1 < 0 else top1, int(positions))


def models_config(models: Any):
    return models.config if hasattr(models, "config") else models[0].config


def verify_rank(
    hf_dir: str, layout: ParallelLayout, batch_size: int, seq_len: int, seed: int, image: bool = False
) -> LogitsDiff:
    """One rank of ``mcore-adapter verify``: build the model at ``layout`` and compare."""
    from . import AutoModel
    from .parallel import initialize_model_parallel

    initialize_model_parallel(layout)
    # the uneven pipeline split is the model's (its config), not the process groups'
    uneven = {k: v for k, v in layout.to_kwargs().items() if k.startswith("num_layers_in_") and v is not None}
    with warnings.catch_warnings():  # verify runs inference; the advice is for training
        warnings.filterwarnings("ignore", message="When using expert parallelism and tensor parallelism")
        models = AutoModel.from_pretrained(hf_dir, dtype=torch.float32, **uneven)
    return diff_with_hf(models, hf_dir, batch_size, seq_len, seed, image)


def verify(
    hf_dir: str | os.PathLike,
    layout: ParallelLayout | Mapping[str, Any] | None = None,
    batch_size: int = 2,
    seq_len: int = 16,
    seed: int = 0,
    image: bool = False,
) -> LogitsDiff:
    """Our logits against transformers' at ``layout`` (a ``ParallelLayout`` or its fields by
    name; default one rank); more than one rank is launched here as local processes (gloo on CPU)."""
    layout = ParallelLayout.of(layout)
    world = layout.world_size
    args = (str(Path(hf_dir)), layout, batch_size, seq_len, seed, image)
    if world == 1:
        return verify_rank(*args)
    from .launch import launch

    return launch(verify_rank, world, *args)[0]
