"""Qwen2-VL: the Qwen2 decoder (fields under ``text_config``) with multimodal rope, plus the
transformers vision tower, kept whole under ``vision_model.`` (replicated over tensor
parallelism, on the first pipeline stage)."""

from ..common import qwen_vl_template

TEMPLATE = qwen_vl_template("qwen2_vl", "Qwen2VLForConditionalGeneration")
