"""``AutoModel``: the model class registered for a checkpoint's model type (default McaGPTModel)."""

from __future__ import annotations

import os
from typing import Any

from ...registry import load_object
from ..converter.hf_io import HF_CONFIG_NAME, read_json
from ..converter.mca_io import McaCheckpointMeta, is_mca_dir
from .config_auto import config_class_ref, register_class

# model_type -> "module:Class"; types not listed use McaGPTModel.
MODEL_MAPPING: dict[str, str] = {}
DEFAULT_MODEL_CLASS = "mcore_adapter.models.model:McaGPTModel"


def register_model(hf_model_type: str, model_class: str | type, overwrite: bool = False) -> None:
    register_class(MODEL_MAPPING, hf_model_type, model_class, overwrite)


def model_class_ref(hf_model_type: str) -> str:
    """The "module:Class" of ``hf_model_type``'s model class (not imported)."""
    config_class_ref(hf_model_type)  # an unsupported type fails here, listing the supported ones
    return MODEL_MAPPING.get(hf_model_type, DEFAULT_MODEL_CLASS)


def model_class_for(hf_model_type: str) -> type:
    return load_object(model_class_ref(hf_model_type))


def model_type_of(path: str | os.PathLike) -> str:
    if is_mca_dir(path):
        return McaCheckpointMeta.load(path).hf_model_type
    return read_json(os.path.join(path, HF_CONFIG_NAME)).get("model_type")


class AutoModel:
    @staticmethod
    def from_pretrained(path: str | os.PathLike, **kwargs: Any):
        """Build and load the model of an HF directory (converted on the fly) or an MCA directory."""
        return model_class_for(model_type_of(path)).from_pretrained(path, **kwargs)
