"""A tokenizer (and, for vision-language models, an image processor) for the tiny checkpoints,
built locally: a byte-level BPE as Qwen's, Llama 3's and DeepSeek's are, exactly as large as
the model's vocabulary, with its special tokens at the ids its config names.

Its base alphabet is printable ASCII and the newline (the model's vocabulary has no room for all
256 bytes), so any such text encodes and decodes back unchanged; merges build common English
words from the ids left. It is written in the form transformers' Qwen2 tokenizer class rebuilds
(that class replaces the saved one for ``qwen2`` and ``qwen3_5`` checkpoints): one pipeline
whichever class loads it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..models.converter.hf_io import HF_CONFIG_NAME, read_json

UNK_TOKEN_ID = 3  # beside the tiny configs' pad 0, bos 1, eos 2 (tiny_models.TINY_TOKEN_IDS)
# The config's id field -> (the tokenizer's attribute, the token)
SPECIAL_TOKENS = {
    "pad_token_id": ("pad_token", "<pad>"),
    "bos_token_id": ("bos_token", "<s>"),
    "eos_token_id": ("eos_token", "</s>"),
}
# Vision-language placeholders, named as Qwen's tokenizers name them
VISION_TOKENS = {
    "image_token_id": ("image_token", "<|image_pad|>"),
    "video_token_id": ("video_token", "<|video_pad|>"),
    "vision_start_token_id": ("vision_start_token", "<|vision_start|>"),
    "vision_end_token_id": ("vision_end_token", "<|vision_end|>"),
}
ALPHABET = "\n" + "".join(chr(c) for c in range(0x20, 0x7F))  # printable ASCII and the newline
# Words merged, in this order, while ids are left (each after a space, as it follows one in text)
_WORDS = """
user assistant system the of and to in is that it was for on are as with they at be this from
have or by one had not but what all were when we there can an your which their said if do will
each about how up out them then many some so these would other into has more two like see time
could no make than first been its who now people my made over did down only way find use may
water long little very after words called just where most know get through back much go good
"""
WORDS = tuple(_WORDS.split())
# transformers' Qwen2 tokenizer's pre-tokenization (tokenization_qwen2.PRETOKENIZE_REGEX)
PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ message['role'] }}: {{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The decoder's part of an HF config (a vision-language model nests it in ``text_config``)."""
    return config.get("text_config") or config


def _byte_level(text: str) -> str:
    """``text`` as byte-level BPE spells it (a space is 'Ġ', a newline 'Ċ')."""
    from tokenizers import pre_tokenizers

    level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    return "".join(piece for piece, _ in level.pre_tokenize_str(text))


def special_tokens(config: dict[str, Any]) -> dict[str, int]:
    """Special token -> id: pad, bos, eos where the config puts them, ``<unk>``, and a
    vision-language model's placeholders."""
    special = {
        token: text_config(config)[field]
        for field, (_, token) in SPECIAL_TOKENS.items()
        if text_config(config).get(field) is not None
    }
    special["<unk>"] = UNK_TOKEN_ID
    return special | {token: config[field] for field, (_, token) in VISION_TOKENS.items() if field in config}


def tiny_bpe(config: dict[str, Any]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary (every id below the model's vocab_size) and merges of the tiny tokenizer."""
    size = text_config(config)["vocab_size"]
    special = special_tokens(config)
    taken = set(special.values())
    if len(taken) != len(special) or not all(0 <= i < size for i in taken):
        raise ValueError(f"special token ids {special} must be distinct and below vocab_size {size}")
    free = [i for i in range(size) if i not in taken]
    chars = _byte_level(ALPHABET)
    if len(chars) > len(free):
        raise ValueError(f"vocab_size {size} leaves no room for the {len(chars)} characters")
    vocab = special | dict(zip(chars, free, strict=False))
    merges = []
    for word in (_byte_level(" " + word) for word in WORDS):
        for end in range(2, len(word) + 1):  # " the": Ġ+t, Ġt+h, Ġth+e
            if len(vocab) == size:
                return vocab, merges
            if word[:end] not in vocab:
                vocab[word[:end]] = free[len(vocab) - len(special)]
                merges.append((word[: end - 1], word[end - 1]))
    raise ValueError(f"vocab_size {size} has more ids than the tiny vocabulary's {len(vocab)} tokens")


def save_tiny_tokenizer(path: str | os.PathLike):
    """Write the tokenizer of the checkpoint at ``path`` (from its config.json) next to it, as
    transformers saves one; returns it."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    config = read_json(Path(path) / HF_CONFIG_NAME)
    vocab, merges = tiny_bpe(config)
    backend = Tokenizer(models.BPE(vocab, merges, unk_token=None, fuse_unk=False, byte_fallback=False))
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    names = {
        attr: token
        for field, (attr, token) in SPECIAL_TOKENS.items()
        if text_config(config).get(field) is not None
    }
    vision = {attr: token for field, (attr, token) in VISION_TOKENS.items() if field in config}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<unk>",
        chat_template=CHAT_TEMPLATE,
        extra_special_tokens=vision,
        model_max_length=text_config(config).get("max_position_embeddings", 512),
        **names,
    )
    tokenizer.save_pretrained(path)
    return tokenizer


def save_tiny_image_processor(path: str | os.PathLike):
    """Write the image processor of the vision-language checkpoint at ``path``: Qwen's, with the
    vision config's patch, merge and temporal sizes, and at most 16 merged patches per image (a
    small image stays a few tokens); returns it."""
    from transformers import Qwen2VLImageProcessorPil  # the torchvision-free class, same config

    vision = read_json(Path(path) / HF_CONFIG_NAME)["vision_config"]
    patch, merge = vision["patch_size"], vision["spatial_merge_size"]
    merged = (patch * merge) ** 2  # pixels of one merged patch
    processor = Qwen2VLImageProcessorPil(
        patch_size=patch,
        merge_size=merge,
        temporal_patch_size=vision["temporal_patch_size"],
        size={"shortest_edge": merged, "longest_edge": 16 * merged},
    )
    processor.save_pretrained(path)
    return processor
