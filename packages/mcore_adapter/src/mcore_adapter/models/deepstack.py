"""Qwen3-VL's deepstack: features from intermediate vision blocks added to the outputs of the
first decoder layers at the visual tokens' positions (transformers' ``_deepstack_process``).

``DeepstackTransformerBlock`` is Megatron's ``TransformerBlock`` with one more forward argument,
``deepstack``; forward hooks on its first layers add the features, so the block's own loop (and
everything it does per layer) is Megatron's.

Placement under pipeline parallelism: the features come out of the vision tower, which lives on
the first pipeline stage, and Megatron's schedules pass exactly one activation tensor of shape
``[s, b, h]`` between stages. So the layers that take features must be on the first stage (its
first virtual chunk). Hub checkpoints have 3 such layers out of 28 to 94, so every usable split
places them there; a layout that does not is refused with the uneven split that fixes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from megatron.core.transformer.transformer_block import TransformerBlock


@dataclass
class Deepstack:
    """The features of one forward: ``index`` into the decoder's flattened ``[s * b]`` positions
    and one ``[len(index), h]`` tensor per deepstack layer, rows in ``index`` order."""

    index: torch.Tensor
    features: list[torch.Tensor]

    @classmethod
    def from_vision(cls, vision: list[tuple[torch.Tensor, Any]]) -> Deepstack | None:
        """From ``VisionLanguageModel.vision_outputs`` (placeholder masks ``[b, s]`` and tower
        outputs with ``deepstack_features``): images and videos merged by position."""
        if not vision or not getattr(vision[0][1], "deepstack_features", None):
            return None  # (a tower without deepstack, e.g. Qwen3.5's)
        visual = torch.stack([mask for mask, _ in vision]).any(0)  # [b, s]
        batch = visual.shape[0]
        rows, cols = visual.nonzero(as_tuple=True)  # [b, s] order, as the tower's outputs are
        slot = torch.full(visual.shape, -1, dtype=torch.long, device=visual.device)
        slot[rows, cols] = torch.arange(rows.numel(), device=visual.device)
        layers = len(vision[0][1].deepstack_features)
        features = []
        for layer in range(layers):
            first = vision[0][1].deepstack_features[layer]
            joint = first.new_zeros(rows.numel(), first.shape[-1])
            for mask, output in vision:
                joint[slot[mask]] = output.deepstack_features[layer]
            features.append(joint)
        return cls(index=cols * batch + rows, features=features)

    def add(self, layer: int, hidden: torch.Tensor) -> torch.Tensor:
        """``hidden [s, b, h]`` plus this layer's features at the visual positions."""
        s, b, h = hidden.shape
        flat = hidden.reshape(s * b, h).index_add(0, self.index, self.features[layer].to(hidden.dtype))
        return flat.view(s, b, h)


class DeepstackTransformerBlock(TransformerBlock):
    deepstack: Deepstack | None = None

    @classmethod
    def adopt(cls, block: TransformerBlock, num_layers: int) -> DeepstackTransformerBlock:
        """Make a built ``TransformerBlock`` this class, adding features after its first
        ``num_layers`` layers. GPTModel builds a plain block and takes no block class; the
        subclass adds no parameters, so the built block is reused instead of building twice."""
        if num_layers > len(block.layers):
            raise ValueError(f"{num_layers} deepstack layers, the block has {len(block.layers)}")
        block.__class__ = cls
        block.deepstack = None
        for index in range(num_layers):
            block.layers[index].register_forward_hook(partial(block._add_features, index))
        return block

    def forward(self, *args: Any, deepstack: Deepstack | None = None, **kwargs: Any):
        if deepstack is not None and self.training and self.config.recompute_granularity == "full":
            # Full recompute replays layers inside torch checkpointing, after this forward has
            # returned: the hooks would no longer see this micro-batch's features.
            raise ValueError(
                "deepstack features cannot be combined with recompute_granularity='full'; use "
                "'selective' recompute for this model"
            )
        self.deepstack = deepstack
        try:
            return super().forward(*args, **kwargs)
        finally:
            self.deepstack = None

    def _add_features(self, index: int, module, args, output):
        if self.deepstack is None:
            return None
        hidden, context = output
        return self.deepstack.add(index, hidden), context
