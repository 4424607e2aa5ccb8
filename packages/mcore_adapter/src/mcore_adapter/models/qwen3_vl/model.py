"""Qwen3-VL's model classes (shared with the families built on it, in ``qwen3_vl_base``)."""

from ..qwen3_vl_base import Qwen3VLConfig, Qwen3VLModel

__all__ = ["Qwen3VLConfig", "Qwen3VLModel"]
