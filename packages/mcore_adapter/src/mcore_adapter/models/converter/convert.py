"""Offline HF <-> MCA conversion in one process, with torch and safetensors only.

No megatron.core import: the ``torch`` per-rank format is written and read directly. (Reading
the ``torch_dist`` format needs Megatron; the CLI sends those through ``AutoModel``.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import staged_output_dir
from .hf_io import (
    HF_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    CheckpointError,
    HFCheckpoint,
    SafetensorsWriter,
    write_json,
)
from .mca_io import (
    MCA_CONFIG_NAME,
    TRACKER_NAME,
    McaCheckpointMeta,
    load_torch_rank,
    save_torch_rank,
    torch_rank_file,
)
from .template import ConversionError, ConversionReport, Template, get_template

# Files a conversion writes itself; every other top-level non-weight file travels along.
_WRITTEN_BY_CONVERSION = {HF_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, MCA_CONFIG_NAME, TRACKER_NAME}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".tmp"}


def copy_side_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the files that travel with a model but are not weights or its config (tokenizer,
    generation config, chat template...), so a conversion round trip keeps them."""
    copied = []
    for item in sorted(Path(src).iterdir()):
        if not item.is_file() or item.name.startswith(".") or item.name in _WRITTEN_BY_CONVERSION:
            continue
        if item.suffix in _WEIGHT_SUFFIXES or item.name.endswith(".index.json"):
            continue
        shutil.copy2(item, Path(dst) / item.name)
        copied.append(item.name)
    return copied


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str | torch.dtype | None) -> torch.dtype | None:
    if name is None or isinstance(name, torch.dtype):
        return name
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)}") from None


def check_complete(template: Template, op_config, report: ConversionReport) -> None:
    expected = template.expected_mca_names(op_config.num_layers, op_config.tie_embeddings_and_output_weights)
    missing = expected - report.produced
    if missing:
        raise ConversionError(
            f"the HF checkpoint lacks the tensors for {len(missing)} Megatron parameter(s), "
            f"e.g. {sorted(missing)[:5]}; the checkpoint is incomplete or does not match its config"
        )


def convert_hf_to_mca(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert an HF directory to an MCA directory (``torch`` format, one rank)."""
    ckpt = HFCheckpoint(src)
    template = get_template(ckpt.config.get("model_type"))
    mca_kwargs = template.convert_hf_to_mca_config(ckpt.config)
    op_config = template.op_config(mca_kwargs)
    mapper = template.mapper(op_config, to_mca=True)
    out_dtype = parse_dtype(dtype)
    state_dict: dict[str, torch.Tensor] = {}
    names = ckpt.keys()
    for name, tensor in tqdm(ckpt.tensors(names), total=len(names), desc="HF -> MCA", disable=not progress):
        for mca_name, mca_tensor in mapper.push(name, tensor):
            state_dict[mca_name] = mca_tensor if out_dtype is None else mca_tensor.to(out_dtype)
    report = mapper.finish()
    check_complete(template, op_config, report)
    meta = McaCheckpointMeta(
        hf_model_type=template.hf_model_type,
        mca_config=mca_kwargs,
        hf_config=ckpt.config,
        checkpoint_format="torch",
        hf_weight_dtype=dtype_name(ckpt.dtype()),
    )
    with staged_output_dir(dst, force) as tmp:
        save_torch_rank(torch_rank_file(tmp), state_dict)
        meta.save(tmp)
        copy_side_files(src, tmp)
    return report


def convert_mca_to_hf(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Convert an MCA directory in ``torch`` format (one rank) to an HF directory."""
    meta = McaCheckpointMeta.load(src)
    if meta.checkpoint_format != "torch":
        raise CheckpointError(f"{src} is in {meta.checkpoint_format!r} format; read it with AutoModel")
    if (meta.tp, meta.pp) != (1, 1):
        raise CheckpointError(f"{src} is sharded tp={meta.tp} pp={meta.pp}; offline conversion reads tp=pp=1")
    template = get_template(meta.hf_model_type)
    op_config = template.op_config(meta.mca_config)
    mapper = template.mapper(op_config, to_mca=False)
    out_dtype = parse_dtype(dtype) or getattr(torch, meta.hf_weight_dtype)
    state_dict = load_torch_rank(torch_rank_file(src))
    hf_config = template.convert_mca_to_hf_config(meta.mca_config, meta.hf_config)
    with staged_output_dir(dst, force) as tmp:
        writer = SafetensorsWriter(tmp)
        for name, tensor in tqdm(state_dict.items(), desc="MCA -> HF", disable=not progress):
            for hf_name, hf_tensor in mapper.push(name, tensor):
                writer.add(hf_name, hf_tensor.to(out_dtype))
        report = mapper.finish()
        writer.close()
        write_json(Path(tmp) / HF_CONFIG_NAME, hf_config)
        copy_side_files(src, tmp)
    return report
