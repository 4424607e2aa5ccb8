"""``AutoConfig``: an ``McaModelConfig`` (or a registered subclass) from an HF or MCA directory."""

from __future__ import annotations

import os
from typing import Any

from ...registry import load_object, object_ref
from ..converter.config_check import check_counts_against_tensors
from ..converter.hf_io import HF_CONFIG_NAME, read_json
from ..converter.mca_io import McaCheckpointMeta, is_mca_dir
from ..converter.template import get_template

# model_type -> "module:Class" of its config class; types not listed use McaModelConfig.
CONFIG_MAPPING: dict[str, str] = {}
DEFAULT_CONFIG_CLASS = "mcore_adapter.models.model_config:McaModelConfig"


def register_class(mapping: dict[str, str], hf_model_type: str, cls: str | type, overwrite: bool) -> None:
    """Record ``cls`` (a class, or a lazy "module:Class" string) for ``hf_model_type``."""
    if hf_model_type in mapping and not overwrite:
        raise ValueError(
            f"{mapping[hf_model_type]} is already registered for {hf_model_type!r}; pass overwrite=True"
        )
    mapping[hf_model_type] = cls if isinstance(cls, str) else object_ref(cls)


def register_config(hf_model_type: str, config_class: str | type, overwrite: bool = False) -> None:
    register_class(CONFIG_MAPPING, hf_model_type, config_class, overwrite)


def config_class_ref(hf_model_type: str) -> str:
    """The "module:Class" of ``hf_model_type``'s config class (not imported)."""
    get_template(hf_model_type)  # an unsupported type fails here, listing the supported ones
    return CONFIG_MAPPING.get(hf_model_type, DEFAULT_CONFIG_CLASS)


def config_class_for(hf_model_type: str) -> type:
    return load_object(config_class_ref(hf_model_type))


class AutoConfig:
    @staticmethod
    def from_pretrained(path: str | os.PathLike, **overrides: Any):
        """The Megatron config of an HF directory (through its template) or an MCA directory
        (ours or ROLL's; ``hf_config=`` supplies the HF config of one that kept none)."""
        if is_mca_dir(path):
            meta = McaCheckpointMeta.load(path, overrides.pop("hf_config", None))
            if meta.checkpoint_format == "torch":  # its layers must be there before a model is built
                from ..converter.convert import count_rank_tensors
                from ..converter.mca_io import TorchRankReader, iteration_dir

                files = sorted(iteration_dir(path).glob("mp_rank_*/model_optim_rng.pt"))
                tensors = count_rank_tensors(TorchRankReader(file) for file in files)
                check_counts_against_tensors(meta.mca_config, tensors, os.path.join(path, "mca_config.json"))
            return config_class_for(meta.hf_model_type).from_mca_meta(meta, **overrides)
        hf_config = read_json(os.path.join(path, HF_CONFIG_NAME))
        config_class = config_class_for(hf_config.get("model_type"))
        from ..converter.hf_io import HFCheckpoint

        ckpt = HFCheckpoint(path, unfold_experts=True)
        if "hf_weight_dtype" not in overrides:
            from ..converter.convert import dtype_name

            overrides["hf_weight_dtype"] = dtype_name(ckpt.dtype())
        overrides.setdefault("hf_expert_layout", ckpt.expert_layout)
        template = get_template(hf_config.get("model_type"))
        mca_kwargs = template.convert_hf_to_mca_config(hf_config)
        check_counts_against_tensors(mca_kwargs, len(ckpt.weight_map), os.path.join(path, HF_CONFIG_NAME))
        num_layers = mca_kwargs["num_layers"]
        mtp = template.mtp_layers(ckpt.weight_map, num_layers)
        if mtp:
            overrides.setdefault("mtp_num_layers", mtp)
        return config_class.from_hf_config(hf_config, **overrides)
