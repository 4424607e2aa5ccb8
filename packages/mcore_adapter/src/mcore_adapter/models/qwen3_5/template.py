"""Qwen3.5: a vision-language model whose decoder is Qwen3-Next's hybrid (Gated DeltaNet layers
between gated full-attention layers, zero-centered norms, partial rotary) with Qwen3-VL's
interleaved multimodal rope, and a vision tower without deepstack."""

from ..common import dense_mlp_layer_ops
from ..qwen3_vl_common import qwen3_5_template

TEMPLATE = qwen3_5_template("qwen3_5", "Qwen3_5ForConditionalGeneration", dense_mlp_layer_ops())
