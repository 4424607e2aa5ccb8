"""Qwen2.5-VL: converted like Qwen2-VL (its vision tower differs inside, which the template
does not see: the tower's weights move whole)."""

from ..common import qwen_vl_template

TEMPLATE = qwen_vl_template("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration")
