"""Qwen3-VL: the Qwen3 decoder (q/k norm, no biases; fields under ``text_config``) with
interleaved multimodal rope, and the transformers vision tower (its deepstack mergers
included) kept whole under ``vision_model.``."""

from ..common import dense_mlp_layer_ops
from ..qwen3_vl_common import qwen3_vl_template

TEMPLATE = qwen3_vl_template("qwen3_vl", "Qwen3VLForConditionalGeneration", dense_mlp_layer_ops())
