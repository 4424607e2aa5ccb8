"""Qwen2-VL and Qwen2.5-VL: multimodal rope positions (``rope_index``)."""
