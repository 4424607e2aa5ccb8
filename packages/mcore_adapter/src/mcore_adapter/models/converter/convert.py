"""Offline conversion in one process, with torch and safetensors only: HF -> MCA at any
parallel layout, MCA -> HF, and MCA -> MCA resharding, streamed weight by weight.

A conversion joins a *source* of canonical weights (whole tensors under their global Megatron
names) to a *sink*:

- sources: an HF checkpoint, through its template's ops; an MCA checkpoint in the per-rank
  ``torch`` format, each weight merged from its tensor-parallel slices;
- sinks: the ``torch`` rank files of a layout, each weight split and written in place; or
  safetensors shards, through the template's inverse ops.

Every conversion first runs dry on meta tensors (shapes and dtypes from the file headers):
that checks the whole checkpoint and the layout and plans every output file before a byte is
written. The real pass then holds one weight group at a time (e.g. q/k/v and their fused
result), never a rank's or the model's state dict. No megatron.core import: reading or
writing ``torch_dist`` needs a built model and goes through ``AutoModel`` (see the CLI).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from .atomic import check_free_space, check_output_dir, staged_output_dir
from .buffers import Scratch
from .config_check import check_counts_against_tensors
from .dist_converter import GATED_COLUMN, POST_PROCESS_PREFIXES, REPLICATED, ROW, VOCAB, DistConverter
from .errors import ConversionError, UserError
from .fused_experts import EXPERT_LAYOUTS, FUSED_TRANSPOSED, PER_EXPERT
from .hf_io import (
    HF_CONFIG_NAME,
    SAFE_WEIGHTS_INDEX_NAME,
    CheckpointError,
    HFCheckpoint,
    SafetensorsWriter,
    write_json,
)
from .layout import ParallelLayout, RankFile
from .mapper import ConversionReport
from .mca_io import (
    MCA_CONFIG_NAME,
    TRACKER_NAME,
    McaCheckpointMeta,
    TorchRankReader,
    TorchRankWriter,
    chunk_key,
    iteration_dir,
    layout_rank_file,
)
from .registry import get_template
from .shapes import Problems, ShapeCheck, describe
from .spec import Template
from .stream import DEFAULT_BUCKET_BYTES, Bucket, TensorMeta, bucketed

# Files a conversion writes itself; every other top-level non-weight file travels along.
_WRITTEN_BY_CONVERSION = {HF_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, MCA_CONFIG_NAME, TRACKER_NAME}
_WEIGHT_SUFFIXES = {".safetensors", ".bin", ".pt", ".pth", ".tmp"}

Weights = Iterator[tuple[str, torch.Tensor]]
logger = logging.getLogger("mcore_adapter")


def copy_side_files(src: str | os.PathLike, dst: str | os.PathLike) -> list[str]:
    """Copy the files that travel with a model but are not weights or its config (tokenizer,
    generation config, chat template...), so a conversion round trip keeps them. Each is copied
    as what it is: a symbolic link stays a link to the same file (the hub's cache links every
    file to its blob), never replaced by the contents of what it points to; anything but files
    and links (a FIFO, a socket) is left out, and the log says so."""
    copied = []
    for item in sorted(Path(src).iterdir()):
        if item.name.startswith(".") or item.name in _WRITTEN_BY_CONVERSION or item.is_dir():
            continue
        if item.suffix in _WEIGHT_SUFFIXES or item.name.endswith(".index.json"):
            continue
        if item.is_symlink():
            os.symlink(os.path.realpath(item), Path(dst) / item.name)  # absolute: valid from dst too
        elif item.is_file():
            shutil.copyfile(item, Path(dst) / item.name)  # made as new files are: the umask decides the mode
        else:
            logger.warning(f"left out {item.name}: not a regular file or a link")
            continue
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


def check_complete(template: Template, op_config, produced: set[str], problems: Problems) -> None:
    expected = template.expected_mca_names(op_config)
    missing = expected - produced
    if missing:
        problems.add(
            f"the checkpoint lacks the tensors for {len(missing)} Megatron parameter(s), "
            f"e.g. {sorted(missing)[:5]}; it is incomplete or does not match its config"
        )


def _config_hint(kwargs: dict[str, Any], where: str, fix: str = "") -> str:
    fields = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups")
    fields += ("kv_channels", "vocab_size", "num_moe_experts", "moe_ffn_hidden_size")
    stated = ", ".join(f"{f}={kwargs[f]}" for f in fields if kwargs.get(f) is not None)
    return (
        f"the expected shapes follow from {where} ({stated}); fix the tensors below or the config "
        f"they were saved with{fix}"
    )


def _not_floating(dtype: torch.dtype) -> str:
    return (
        f"stored as {dtype}, but a weight is floating point (fp32, bf16, fp16); an integer or boolean "
        "weight is a damaged or quantized checkpoint, which is not converted"
    )


def _raise(problems: Problems, path: Path, hint: str) -> None:
    if problems:
        raise ConversionError(problems.message(f"{path} does not match its config", hint))


def _digest(tensor: torch.Tensor) -> tuple:
    data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
    return tuple(tensor.shape), tensor.dtype, hashlib.blake2b(data, digest_size=16).hexdigest()


def _nbytes(spec: tuple[Sequence[int], torch.dtype]) -> int:
    return math.prod(spec[0]) * spec[1].itemsize


def count_rank_tensors(readers: Iterable[TorchRankReader]) -> int:
    return sum(len(tensors) for reader in readers for tensors in reader.chunks.values())


# ---------------------------------------------------------------------- sources
class _CanonicalStream:
    """The ``stream.WeightStream`` channels of a source whose ``weights(meta)`` yields its
    canonical weights: ``metadata()`` is the dry run (every check included), ``buckets()`` the
    real pass in buckets."""

    weights: Callable[..., Weights]

    def metadata(self) -> list[TensorMeta]:
        return [TensorMeta(name, t.dtype, tuple(t.shape)) for name, t in self.weights(meta=True)]

    def buckets(self, bucket_bytes: int | None = None) -> Iterator[Bucket]:
        return bucketed(self.weights(), DEFAULT_BUCKET_BYTES if bucket_bytes is None else bucket_bytes)


class HFSource(_CanonicalStream):
    """Canonical weights from an HF checkpoint, through its template's ops. With ``drop_mtp``
    its multi-token-prediction layers are left out (``dropped_mtp_layers`` says how many)."""

    def __init__(self, path: str | os.PathLike, drop_mtp: bool = False):
        self.path = Path(path)
        self.ckpt = HFCheckpoint(path, unfold_experts=True)
        self.hf_expert_layout = self.ckpt.expert_layout
        self.template = get_template(self.ckpt.config.get("model_type"))
        self.mca_kwargs = self.template.convert_hf_to_mca_config(self.ckpt.config)
        check_counts_against_tensors(
            self.mca_kwargs, len(self.ckpt.weight_map), str(self.path / HF_CONFIG_NAME)
        )
        num_layers = self.mca_kwargs["num_layers"]
        mtp = self.template.mtp_layers(self.ckpt.weight_map, num_layers)
        if drop_mtp and not mtp:
            raise UserError(
                f"--drop-mtp / drop_mtp leaves out multi-token-prediction layers; {self.path} has none "
                f"(its tensors stop at layer {num_layers - 1}), so it would do nothing: drop it"
            )
        self.dropped_mtp_layers = mtp if drop_mtp else 0
        if drop_mtp:
            self.ckpt.weight_map = {
                name: file
                for name, file in self.ckpt.weight_map.items()
                if (self.template.split_hf_name(name)[0] or 0) < num_layers
            }
        elif mtp:
            self.mca_kwargs["mtp_num_layers"] = mtp
        self.hf_config: dict[str, Any] | None = self.ckpt.config
        self.hf_weight_dtype = dtype_name(self.ckpt.dtype())
        self.op_config = self.template.op_config(self.mca_kwargs)
        self.report = ConversionReport()

    def weights(self, meta: bool = False) -> Weights:
        """The canonical weights. With ``meta`` (the dry run) every tensor's header is checked
        against the config, and all problems are raised together once every header is read."""
        if not meta:
            mapper = self.template.mapper(self.op_config, to_mca=True)
            for name, tensor in self.ckpt.tensors():
                yield from mapper.push(name, tensor)
            self.report = mapper.finish()
            return
        problems = Problems()
        shapes = ShapeCheck(self.template, self.mca_kwargs)
        mapper = self.template.mapper(self.op_config, to_mca=True, problems=problems)
        fused_reported: set[str] = set()
        for name, tensor in self.ckpt.tensors(meta=True):
            expected = shapes.hf_shape(name)
            if expected is not None and tuple(tensor.shape) != expected:
                part = self.ckpt.parts.get(name)
                if part is None:
                    problems.add(f"{name}: {describe(expected, tuple(tensor.shape))}")
                elif part.fused not in fused_reported:  # once per fused tensor, under its own name
                    fused_reported.add(part.fused)
                    stored = ", stored transposed" if part.transposed else ""
                    problems.add(
                        f"{part.fused} (fused experts{stored}): each expert's {name.rsplit('.', 2)[-2]} "
                        f"block is {tuple(tensor.shape)}, the config implies {expected}"
                    )
                tensor = torch.empty(expected, dtype=tensor.dtype, device="meta")
            if not tensor.dtype.is_floating_point and mapper.outputs_of(name):
                problems.add(f"{name}: {_not_floating(tensor.dtype)}")
            yield from mapper.push(name, tensor)
        self.report = mapper.finish()
        check_complete(self.template, self.op_config, self.report.produced, problems)
        self._check_mtp_repeats(problems)
        _raise(problems, self.path, _config_hint(self.mca_kwargs, "config.json"))

    def _check_mtp_repeats(self, problems: Problems) -> None:
        """The dry run compares by value what the MTP layers repeat of the main model (the only
        tensors it reads): Megatron keeps one, so repeats that differ cannot be converted."""
        num_layers = self.mca_kwargs["num_layers"]
        mtp = self.mca_kwargs.get("mtp_num_layers") or 0
        for local, original in self.template.mtp_shared_copies.items():
            if self.op_config.tie_embeddings_and_output_weights and original in self.template.tied_hf_names():
                original = self.template.embedding_hf_name()
            repeats = [self.template.join_hf_name(num_layers + k, local) for k in range(mtp)]
            repeats = [name for name in repeats if name in self.ckpt.weight_map]
            if not repeats:
                continue
            if original not in self.ckpt.weight_map:
                problems.add(f"{repeats[0]} repeats {original}, which the checkpoint lacks")
                continue
            digests = {name: _digest(tensor) for name, tensor in self.ckpt.tensors([original, *repeats])}
            for name in repeats:
                if digests[name] != digests[original]:
                    problems.add(
                        f"{name} repeats {original} in a multi-token-prediction layer, which Megatron "
                        f"shares with the main model, but {original} differs from it; the two cannot be kept apart"
                    )


class McaTorchSource(_CanonicalStream):
    """Canonical weights from an MCA checkpoint in ``torch`` format (any layout), ours or one
    written by ROLL's mcore_adapter; ``hf_config`` supplies an HF config the checkpoint lacks."""

    def __init__(self, path: str | os.PathLike, hf_config: dict[str, Any] | None = None):
        self.path = Path(path)
        meta = self.meta = McaCheckpointMeta.load(path, hf_config)
        if meta.checkpoint_format != "torch":
            raise CheckpointError(
                f"{path} is in {meta.checkpoint_format!r} format, which only a built model reads; "
                "use AutoModel.from_pretrained (the CLI does) to convert it"
            )
        self.template = get_template(meta.hf_model_type)
        self.mca_kwargs = meta.mca_config
        self.hf_config = meta.hf_config
        self.hf_weight_dtype = meta.hf_weight_dtype
        self.hf_expert_layout = meta.hf_expert_layout
        self.op_config = self.template.op_config(self.mca_kwargs)
        self.dist = DistConverter(self.mca_kwargs, meta.layout)
        layout = self.dist.layout
        files = {rank: layout_rank_file(path, rank, layout) for rank in layout.ranks()}
        expected = {file.parent.name for file in files.values()}
        found = {p.name for p in iteration_dir(path).glob("mp_rank_*")}
        if found - expected:
            raise CheckpointError(
                f"{path} holds rank directories {sorted(found)} but its {MCA_CONFIG_NAME} describes "
                f"{layout.describe()} ({sorted(expected)}); the config does not match the files"
            )
        self.readers = {rank: TorchRankReader(file) for rank, file in files.items()}
        check_counts_against_tensors(
            self.mca_kwargs, count_rank_tensors(self.readers.values()), str(path / MCA_CONFIG_NAME)
        )
        self._scratch = Scratch()
        first_of: dict[tuple[int, int], TorchRankReader] = {}
        for rank, reader in self.readers.items():
            keys = sorted(chunk_key(c.vp_stage) for c in layout.chunks_of(rank.pp))
            if sorted(reader.chunks) != keys:
                raise CheckpointError(
                    f"{reader.file} holds {sorted(reader.chunks)}, layout {layout.describe()} in "
                    f"{MCA_CONFIG_NAME} expects {keys}; the file and the config do not match"
                )
            other = first_of.setdefault((rank.pp, rank.ep), reader)
            names = set(reader.chunks[keys[0]]) if keys else set()
            first = set(other.chunks[keys[0]]) if keys else set()
            if names != first:
                raise CheckpointError(
                    f"{reader.file} and {other.file} hold different weights: {sorted(names ^ first)[:5]}"
                )

    def _entries(self, chunk) -> list[tuple[str, str, list[TorchRankReader]]]:
        """(canonical name, chunk-local name, the readers of its slices in order) of every weight
        of a chunk, layer by layer: dense weights from the files of tensor-parallel ranks 0..tp-1,
        each expert from the files of its expert-parallel rank (expert-tensor ranks 0..etp-1)."""
        layout = self.dist.layout
        ranks = [r for r in self.readers if r.pp == chunk.pp_rank]
        dense = [next(self.readers[r] for r in ranks if r.tp == t) for t in range(layout.tp)]
        key = chunk_key(chunk.vp_stage)
        entries: dict[str, tuple[str, str, list[TorchRankReader]]] = {}
        for ep in sorted({r.ep for r in ranks}):
            experts = [
                next(self.readers[r] for r in ranks if r.ep == ep and r.etp == j)
                for j in range(layout.expert_tp)
            ]
            for local in experts[0].chunks[key]:
                if local.endswith("_extra_state"):
                    continue
                name = self.dist.canonical_name(chunk, local, ep)
                if name is None or name in entries:
                    continue
                entries[name] = (name, local, experts if self.dist.expert_owner(name) is not None else dense)
        layer = lambda entry: Template.split_mca_name(entry[0])[0]  # noqa: E731
        first = [
            e for e in entries.values() if layer(e) is None and not e[0].startswith(POST_PROCESS_PREFIXES)
        ]
        last = [e for e in entries.values() if layer(e) is None and e[0].startswith(POST_PROCESS_PREFIXES)]
        layers = sorted((e for e in entries.values() if layer(e) is not None), key=layer)
        return [*first, *layers, *last]

    def weights(self, meta: bool = False) -> Weights:
        """The canonical weights, each merged from its tensor-parallel slices. With ``meta``
        (the dry run) every slice's shape is checked against the config, and all problems are
        raised together once every rank file's header is read."""
        produced: set[str] = set()
        problems = Problems()
        shapes = ShapeCheck(self.template, self.mca_kwargs)
        for chunk in self.dist.layout.chunks:
            key = chunk_key(chunk.vp_stage)
            for name, local, readers in self._entries(chunk):
                if meta:
                    merged = self._check_slices(name, key, local, readers, shapes, problems)
                else:
                    merged = self._read_merged(name, key, local, readers)
                produced.add(name)
                yield name, merged
                del merged  # the next weight may reuse its memory (buffers.Scratch)
        if meta:
            check_complete(self.template, self.op_config, produced, problems)
            roll = self.meta.extra.get("written_by") == "ROLL"
            fix = " (ROLL's mca_config.json can misstate the model: give its HF config with --hf-config)"
            _raise(problems, self.path, _config_hint(self.mca_kwargs, MCA_CONFIG_NAME, fix if roll else ""))

    def _check_slices(
        self, name: str, key: str, local: str, readers: list[TorchRankReader], shapes: ShapeCheck, problems
    ) -> torch.Tensor:
        """The merged weight as a meta tensor, after checking each rank's slice against the
        slice of the shape the config implies."""
        shards = [r.chunks[key][local] for r in readers]
        if not shards[0].dtype.is_floating_point:
            problems.add(f"{key}/{local}: {_not_floating(shards[0].dtype)}")
        dtypes = {s.dtype for s in shards}
        if len(dtypes) > 1:
            problems.add(
                f"{key}/{local}: the tensor-parallel slices have different dtypes {sorted(map(str, dtypes))}"
            )
        expected = shapes.mca_shape(name)
        if expected is None:
            try:
                return self.dist.merge(name, shards)
            except (ValueError, RuntimeError) as e:
                problems.add(f"{key}/{local}: the tensor-parallel slices do not fit together: {e}")
                return shards[0]
        full = torch.empty(expected, dtype=shards[0].dtype, device="meta")
        for reader, shard, part in zip(readers, shards, self.dist.split(name, full), strict=True):
            if shard.shape != part.shape:
                where = reader.file.relative_to(self.path)
                problems.add(f"{where} {key}/{local}: {describe(tuple(part.shape), tuple(shard.shape))}")
        return full

    def _read_merged(self, name: str, key: str, local: str, readers: list[TorchRankReader]) -> torch.Tensor:
        """``dist.merge`` of the tensor-parallel slices, each read straight into its place in the
        merged weight (no concatenation copy), in memory reused from the previous weight."""
        rule = self.dist.rule(name)
        shard = readers[0].chunks[key][local]
        tp = len(readers)
        if shard.dim() == 0 or not shard.is_contiguous() or rule in self.dist.sections:
            # (Gated DeltaNet's sectioned projections interleave the slices part by part)
            return self.dist.merge(name, [r.read(key, local) for r in readers])
        if rule == REPLICATED:
            full = self._scratch.take(shard.shape, shard.dtype)
            readers[0].read_into(key, local, full)
            return full
        if rule == ROW and tp > 1 and shard.dim() == 2:  # column blocks: each slice's rows into place
            full = self._scratch.take((shard.shape[0], shard.shape[1] * tp), shard.dtype)
            grid = full.view(torch.uint8).numpy()  # rows x bytes
            width = grid.shape[1] // tp
            for i, reader in enumerate(readers):
                reader.read_rows_into(key, local, grid[:, i * width : (i + 1) * width])
            return full
        rows = shard.shape[0]
        full = self._scratch.take((rows * tp, *shard.shape[1:]), shard.dtype)
        if rule == GATED_COLUMN:  # each slice is [gate rows; up rows]: gates first, then ups
            half = rows // 2
            half_bytes = full[:half].numel() * full.element_size()
            for i, reader in enumerate(readers):
                reader.read_into(key, local, full[i * half : (i + 1) * half])
                reader.read_into(key, local, full[(tp + i) * half : (tp + i + 1) * half], half_bytes)
            return full
        for i, reader in enumerate(readers):
            reader.read_into(key, local, full[i * rows : (i + 1) * rows])
        return full[: self.dist.vocab_size] if rule == VOCAB else full


Source = HFSource | McaTorchSource


def open_source(path: str | os.PathLike) -> Source:
    from .mca_io import is_mca_dir

    return McaTorchSource(path) if is_mca_dir(path) else HFSource(path)


# ---------------------------------------------------------------------- sinks
class _StageLog:
    """Progress for a log rather than a terminal: a line when a stage starts and one when it
    ends (a bar redrawn a hundred times is noise in a job's log)."""

    def __init__(self, total: int, desc: str, enabled: bool):
        self.total, self.desc, self.enabled = total, desc, enabled

    def __enter__(self):
        self.start = time.perf_counter()
        if self.enabled:
            size = f"{self.total / 1e9:.2f} GB" if self.total >= 1e8 else f"{self.total / 1e6:.1f} MB"
            logger.info(f"{self.desc}: writing {size}")
        return self

    def update(self, n: int) -> None:
        pass

    def __exit__(self, *exc) -> None:
        if self.enabled and exc[0] is None:
            logger.info(f"{self.desc}: done in {time.perf_counter() - self.start:.1f} s")


def _progress(total: int, desc: str, enabled: bool):
    if enabled and sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit="B", unit_scale=True, unit_divisor=1024)
    return _StageLog(total, desc, enabled)


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)


def write_mca_torch(
    tmp: Path,
    source: Source,
    layout: ParallelLayout,
    dtype: torch.dtype | None,
    progress: bool,
    desc: str,
    moe_grouped_gemm: bool | None = None,
) -> dict[str, Any]:
    """Write ``source`` as the ``torch`` rank files of ``layout`` into ``tmp``; returns the
    mca_config kwargs of the result. Experts are named for grouped GEMM (``moe_grouped_gemm``)
    or for Megatron's SequentialMLP; ``None`` keeps the source's choice."""
    kwargs = {**source.mca_kwargs, **layout.to_kwargs(), "padded_vocab_size": None}  # padding follows tp
    if moe_grouped_gemm is not None:
        if not kwargs.get("num_moe_experts"):
            raise UserError(
                f"--moe-grouped-gemm / moe_grouped_gemm names the experts of a mixture-of-experts model; "
                f"this {source.template.hf_model_type} has none, so it would do nothing: drop it"
            )
        kwargs["moe_grouped_gemm"] = moe_grouped_gemm
    dist = DistConverter(kwargs, layout)
    layout = dist.layout
    kwargs.update(vocab_size=dist.vocab_size, padded_vocab_size=dist.padded_vocab_size)

    specs: dict[RankFile, dict[str, dict[str, tuple[torch.Size, torch.dtype]]]] = {
        rank: {chunk_key(c.vp_stage): {} for c in layout.chunks_of(rank.pp)} for rank in layout.ranks()
    }
    total = 0
    for name, tensor in source.weights(meta=True):  # dry run: checks everything, plans the files
        tensor = _cast(tensor, dtype)
        for rank, chunk, local, part in dist.shards(name, tensor):
            specs[rank][chunk_key(chunk.vp_stage)][local] = (part.shape, part.dtype)
        total += tensor.numel() * tensor.element_size()
    if progress:
        logger.info(f"{desc}: checked every tensor against the config; {len(specs)} rank file(s) planned")
    check_free_space(
        tmp, sum(_nbytes(t) for spec in specs.values() for ts in spec.values() for t in ts.values())
    )

    scratch = Scratch()
    writers = {
        rank: TorchRankWriter(layout_rank_file(tmp, rank, layout), spec, scratch)
        for rank, spec in specs.items()
    }
    with _progress(total, desc, progress) as bar:
        for name, tensor in source.weights():  # the writers cast to the planned dtype
            for rank, chunk, local, part in dist.shards(name, tensor):
                writers[rank].write(chunk_key(chunk.vp_stage), local, part)
            bar.update(tensor.numel() * (dtype or tensor.dtype).itemsize)
    for writer in writers.values():
        writer.close()
    return kwargs


def write_hf(
    tmp: Path,
    template: Template,
    mca_kwargs: dict[str, Any],
    weights: Callable[[bool], Weights],
    dtype: torch.dtype,
    progress: bool = False,
    max_shard_bytes: int | None = None,
    expert_layout: str = PER_EXPERT,
) -> ConversionReport:
    """Write canonical weights (``weights(meta)`` gives them, twice) as HF safetensors, the
    experts in ``expert_layout`` (``PER_EXPERT`` tensors, transformers' ``FUSED`` ones, or fused
    ones stored transposed where the template allows it, ``FUSED_TRANSPOSED``)."""
    if expert_layout not in EXPERT_LAYOUTS:
        raise ConversionError(f"expert layout {expert_layout!r} is not one of {EXPERT_LAYOUTS}")
    if expert_layout == PER_EXPERT and template.hf_fused_experts_transposed:
        # Such a family's checkpoints only ever store experts fused and transposed (the hub's
        # layout): transformers would not load per-expert names. A Megatron checkpoint that does
        # not say how its HF source stored them is written in the hub's layout.
        expert_layout = FUSED_TRANSPOSED
    if expert_layout == FUSED_TRANSPOSED and not template.hf_fused_experts_transposed:
        raise ConversionError(
            f"the checkpoint's experts were stored fused and transposed, which the "
            f"{template.hf_model_type!r} template does not write (it has no hf_fused_experts_transposed)"
        )
    op_config = template.op_config(mca_kwargs)
    plan: dict[str, tuple[torch.Size, torch.dtype]] = {}
    mapper = template.mapper(op_config, to_mca=False)
    for name, tensor in weights(True):
        for hf_name, hf_tensor in mapper.push(name, tensor):
            plan[hf_name] = (hf_tensor.shape, dtype)
    mapper.finish()
    extra: dict[str, Any] = {"max_shard_bytes": max_shard_bytes} if max_shard_bytes is not None else {}
    if expert_layout != PER_EXPERT:
        transposed = expert_layout == FUSED_TRANSPOSED
        plan, extra["parts"] = template.fused_experts().fused_plan(plan, transposed=transposed)
    check_free_space(tmp, sum(_nbytes(spec) for spec in plan.values()))
    writer = SafetensorsWriter(tmp, plan, **extra)
    if progress:
        files = len(set(writer.weight_map.values()))
        logger.info(
            f"MCA -> HF: checked every tensor against the config; {files} safetensors file(s) planned"
        )
    mapper = template.mapper(op_config, to_mca=False)
    with _progress(writer.total_bytes, "MCA -> HF", progress) as bar:
        for name, tensor in weights(False):
            for hf_name, hf_tensor in mapper.push(name, tensor):
                writer.write(hf_name, hf_tensor)  # cast to the planned dtype by the writer
                bar.update(hf_tensor.numel() * dtype.itemsize)
            tensor = hf_tensor = None  # before the next weight is read: the source reuses its memory
    report = mapper.finish()
    writer.close()
    return report


# ---------------------------------------------------------------------- entry points
def save_mca_torch(
    source: Source,
    dst: str | os.PathLike,
    layout: ParallelLayout | None = None,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
    side_files_from: str | os.PathLike | None = None,
    desc: str = "-> MCA",
    moe_grouped_gemm: bool | None = None,
) -> None:
    """Write any source as an MCA directory in ``torch`` format, all ranks of ``layout``."""
    sources = [] if side_files_from is None else [side_files_from]
    with staged_output_dir(dst, force, sources) as tmp:
        kwargs = write_mca_torch(
            tmp, source, layout or ParallelLayout(), parse_dtype(dtype), progress, desc, moe_grouped_gemm
        )
        McaCheckpointMeta(
            hf_model_type=source.template.hf_model_type,
            mca_config=kwargs,
            hf_config=source.hf_config,
            checkpoint_format="torch",
            hf_weight_dtype=source.hf_weight_dtype,
            hf_expert_layout=source.hf_expert_layout,
        ).save(tmp)
        if side_files_from is not None:
            copy_side_files(side_files_from, tmp)


def convert_hf_to_mca(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    layout: ParallelLayout | None = None,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
    moe_grouped_gemm: bool | None = None,
    drop_mtp: bool = False,
) -> ConversionReport:
    """Convert an HF directory to an MCA directory in ``torch`` format, all ranks of ``layout``
    (experts named for grouped GEMM with ``moe_grouped_gemm``; with ``drop_mtp`` without the
    multi-token-prediction layers, which the report counts)."""
    check_output_dir(dst, force, [src])
    source = HFSource(src, drop_mtp)
    save_mca_torch(
        source, dst, layout, dtype, force, progress, src, "HF -> MCA", moe_grouped_gemm=moe_grouped_gemm
    )
    source.report.dropped_mtp_layers = source.dropped_mtp_layers
    return source.report


def reshard_mca(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    layout: ParallelLayout,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
    hf_config: dict[str, Any] | None = None,
    moe_grouped_gemm: bool | None = None,
) -> None:
    """Rewrite an MCA ``torch`` checkpoint for another layout, without going through HF."""
    check_output_dir(dst, force, [src])
    source = McaTorchSource(src, hf_config)
    save_mca_torch(
        source, dst, layout, dtype, force, progress, src, "MCA -> MCA", moe_grouped_gemm=moe_grouped_gemm
    )


def convert_mca_to_hf(
    src: str | os.PathLike,
    dst: str | os.PathLike,
    dtype: str | torch.dtype | None = None,
    force: bool = False,
    progress: bool = True,
    max_shard_bytes: int | None = None,
    hf_config: dict[str, Any] | None = None,
) -> ConversionReport:
    """Convert an MCA directory in ``torch`` format (any layout) to an HF directory. A
    checkpoint without its HF config gets one rebuilt from the Megatron config, or takes
    ``hf_config`` (checked against the Megatron config)."""
    check_output_dir(dst, force, [src])
    source = McaTorchSource(src, hf_config)
    out_dtype = parse_dtype(dtype) or getattr(torch, source.hf_weight_dtype)
    hf_config = source.template.convert_mca_to_hf_config(source.mca_kwargs, source.meta.require_hf_config())
    with staged_output_dir(dst, force, [src]) as tmp:
        report = write_hf(
            tmp,
            source.template,
            source.mca_kwargs,
            lambda meta: source.weights(meta=meta),
            out_dtype,
            progress,
            max_shard_bytes,
            source.hf_expert_layout,
        )
        write_json(tmp / HF_CONFIG_NAME, hf_config)
        copy_side_files(src, tmp)
    return report
