"""Saving this rank's model chunks, collectively: as an MCA directory (``torch_dist``) or as an
HF directory, each staged and moved into place whole by rank 0, so that an error on the way
leaves the destination untouched."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.distributed as dist

from ..parallel import is_rank_zero
from .chunks import sharded_state_dict
from .converter.atomic import check_output_dir, staged_output_dir
from .converter.convert import write_hf
from .converter.hf_io import HF_CONFIG_NAME, write_json
from .converter.mca_io import iteration_dir
from .converter.template import ConversionError, get_template
from .dist_checkpoint import save_dist_checkpoint
from .model_source import ModelSource


def save_pretrained(models: list, path: str | os.PathLike, force: bool = False) -> None:
    """``mca_config.json`` + dist_checkpointing (``torch_dist``). Collective."""

    def write(tmp: Path) -> None:
        ckpt_dir = iteration_dir(tmp)
        if is_rank_zero():
            ckpt_dir.mkdir(parents=True)
        barrier()
        save_dist_checkpoint(sharded_state_dict(models), ckpt_dir)
        if is_rank_zero():
            models[0].config.to_meta("torch_dist").save(tmp)

    collective_output(path, force, write)


def save_pretrained_as_hf(
    models: list, path: str | os.PathLike, force: bool = False, max_shard_bytes: int | None = None
) -> None:
    """HF config + safetensors of the whole model, written by rank 0 as the weights are
    gathered (a bucket at a time). Collective."""
    config = models[0].config
    template = get_template(config.hf_model_type)
    mca_kwargs = config.to_mca_kwargs()
    if config.hf_config is None:
        raise ConversionError(
            "this model has no HF config: its MCA checkpoint kept none and one cannot be rebuilt from "
            "its Megatron config alone; load it with AutoModel.from_pretrained(path, hf_config=...)"
        )
    hf_config = template.convert_mca_to_hf_config(mca_kwargs, config.hf_config)
    source = ModelSource(models)

    def write(tmp: Path) -> None:
        if is_rank_zero():
            write_hf(
                tmp,
                template,
                mca_kwargs,
                source.weights,
                config.torch_hf_weight_dtype,
                max_shard_bytes=max_shard_bytes,
                expert_layout=config.hf_expert_layout,
            )
            write_json(tmp / HF_CONFIG_NAME, hf_config)
        else:
            for _ in source.weights():
                pass

    collective_output(path, force, write)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def collective_output(path: str | os.PathLike, force: bool, write) -> None:
    """Run ``write(tmp)`` on every rank into one staging directory that rank 0 then moves to
    ``path``; an error on rank 0 leaves ``path`` untouched."""
    check_output_dir(path, force)
    if not dist.is_initialized() or dist.get_world_size() == 1:
        with staged_output_dir(path, force) as tmp:
            write(tmp)
        return
    box: list[Any] = [None]
    if is_rank_zero():
        context = staged_output_dir(path, force)
        box[0] = str(context.__enter__())
    dist.broadcast_object_list(box, src=0)
    try:
        write(Path(box[0]))
        barrier()
    except BaseException as e:
        if is_rank_zero():
            context.__exit__(type(e), e, e.__traceback__)
        raise
    if is_rank_zero():
        context.__exit__(None, None, None)
