"""``roll_shm``: a weight-transfer backend for vLLM's RL weight-update API that moves tensors
through a shared-memory file, for engines on the trainer's host without CUDA (vLLM's own
``nccl``/``ipc`` backends allocate on CUDA).

It runs vLLM's four phases unchanged: ``init_weight_transfer_engine`` maps the segment,
``start_weight_update`` starts vLLM's layerwise reload (the CPU backend repacks linear weights
after loading, so a plain ``load_weights`` into a live model would not reach the kernels),
``update_weights`` loads one bucket, ``finish_weight_update`` finalizes. The trainer fills the
segment a bucket at a time and calls ``update_weights`` for each; the call returns when the
engine has copied the bucket out, so one segment serves the whole stream. A bucket is the
source's own (``WeightStream.buckets``: what a Megatron source gathers at once is what one
update moves); a source with only vLLM's channels is bucketed by the same rule
(``mcore_adapter.export.bucketed``). The segment grows to the largest bucket (which overshoots
``bucket_bytes`` by less than its last tensor).

An update is all or nothing as far as the engine reports: a name the engine's model does not
have, a shape it cannot take or a dtype other than the engine's fails the update with the name;
so does a trainer-side error, which the trainer passes on as an ``abort``. The engine then puts
back the weights of every layer the update had not completed (the model stays servable, some
layers new and some old), refuses ``finish_weight_update``, and so its weight version is not
advanced: a new full sync is what repairs it.

The engine maps only a segment the trainer created for it, read-only, and never creates, grows,
truncates or writes a file it was pointed at (``shm_segment`` says how it checks).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Self

import torch
from vllm.distributed.weight_transfer.base import (
    ParamMeta,
    TrainerInitInfo,
    TrainerWeightTransferEngine,
    VLLMWeightSyncClient,
    WeightSource,
    WeightTransferEngine,
    WeightTransferInitInfo,
    WeightTransferUpdateInfo,
)

from mcore_adapter.export import DEFAULT_BUCKET_BYTES, checked_buckets, stream_buckets, tensor_nbytes
from roll_infer.weight_sync.common import TransferStats, WeightSyncError, consumer_dtypes

from .shm_segment import Segment, open_segment

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.config.weight_transfer import WeightTransferConfig

_ALIGN = 64


def _align(n: int) -> int:
    return (n + _ALIGN - 1) // _ALIGN * _ALIGN


def _view(segment: torch.Tensor, offset: int, dtype: torch.dtype, shape: list[int]) -> torch.Tensor:
    nbytes = math.prod(shape) * dtype.itemsize
    return segment[offset : offset + nbytes].view(dtype).view(shape)


# ---------------------------------------------------------------------- engine side
@dataclass
class SharedMemoryInitInfo(WeightTransferInitInfo):
    path: str
    nbytes: int


@dataclass
class SharedMemoryUpdateInfo(WeightTransferUpdateInfo):
    """One bucket: where each tensor lies in the segment. ``total`` is how many tensors the whole
    update has (checked at finish); ``abort`` carries a trainer-side failure. ``path`` names the
    segment written: the engine refuses a bucket from a trainer whose segment it no longer maps
    (another trainer initialized the engine since), which it would otherwise read stale."""

    names: list[str] = field(default_factory=list)
    dtype_names: list[str] = field(default_factory=list)
    shapes: list[list[int]] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    nbytes: int = 0
    total: int = 0
    abort: str | None = None
    path: str = ""

    def __post_init__(self) -> None:
        lengths = {len(self.names), len(self.dtype_names), len(self.shapes), len(self.offsets)}
        if len(lengths) != 1:
            raise ValueError(
                f"names, dtype_names, shapes and offsets must have one entry per tensor; got lengths "
                f"{len(self.names)}, {len(self.dtype_names)}, {len(self.shapes)}, {len(self.offsets)}"
            )


class SharedMemoryWeightTransferEngine(WeightTransferEngine[SharedMemoryInitInfo, SharedMemoryUpdateInfo]):
    init_info_cls = SharedMemoryInitInfo
    update_info_cls = SharedMemoryUpdateInfo

    def __init__(
        self,
        config: WeightTransferConfig,
        vllm_config: VllmConfig,
        device: torch.device,
        model: torch.nn.Module,
    ) -> None:
        super().__init__(config, vllm_config, device, model)
        self._path: str | None = None
        self._segment: torch.Tensor | None = None
        self._received = 0
        self._expected: int | None = None
        self.incomplete: str | None = None  # why the last update failed, until one succeeds

    def init_transfer_engine(self, init_info: SharedMemoryInitInfo) -> None:
        self._segment = open_segment(init_info.path, init_info.nbytes)  # checks it is the trainer's
        self._path = init_info.path

    def start_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        if self._segment is None:
            raise WeightSyncError("roll_shm: init_weight_transfer_engine was not called")
        self._received, self._expected = 0, None
        initialize_layerwise_reload(self.model)

    def update_weights(self, update_info: dict[str, Any]) -> None:
        # The base class synchronizes the accelerator after each bucket; loading here is
        # synchronous CPU work with nothing to wait for.
        self.receive_weights(self.parse_update_info(update_info))

    def receive_weights(self, update_info: SharedMemoryUpdateInfo) -> None:
        try:
            self._receive(update_info)
        except BaseException as e:
            self._abort(str(e))
            raise

    def _receive(self, info: SharedMemoryUpdateInfo) -> None:
        from vllm.model_executor.model_loader.mtp_validation import disable_mtp_completeness_check

        if info.abort is not None:
            raise WeightSyncError(f"the trainer aborted the weight update: {info.abort}")
        assert self._segment is not None and self._path is not None
        if info.path != self._path:
            raise WeightSyncError(
                f"this update was written to {info.path!r}, but the engine reads {self._path!r}: another "
                "trainer initialized the engine's weight transfer since; send with the newest trainer"
            )
        if info.nbytes != self._segment.numel():  # the trainer grew it for a large tensor
            self._segment = open_segment(self._path, info.nbytes)
        dtype = self.model_config.dtype
        tensors = []
        for name, dtype_name, shape, offset in zip(
            info.names, info.dtype_names, info.shapes, info.offsets, strict=True
        ):
            sent = getattr(torch, dtype_name, None) if isinstance(dtype_name, str) else None
            if not isinstance(sent, torch.dtype):
                raise WeightSyncError(f"{name}: {dtype_name!r} is not a torch dtype")
            if not all(isinstance(n, int) and n >= 0 for n in shape) or not isinstance(offset, int):
                raise WeightSyncError(f"{name}: shape {shape} / offset {offset!r} are not non-negative ints")
            end = offset + math.prod(shape) * sent.itemsize
            if offset < 0 or offset % sent.itemsize or end > self._segment.numel():
                raise WeightSyncError(
                    f"{name}: bytes {offset}..{end} do not lie (aligned) in the {self._segment.numel()}-byte segment"
                )
            if sent.is_floating_point and sent != dtype:
                raise WeightSyncError(
                    f"{name}: sent as {sent}, but the engine's model is {dtype}; send the weights "
                    "in the engine's dtype (McaWeightSource does so by default, unless given another dtype=)"
                )
            # A copy: the layerwise reload keeps what it was given until the layer is complete,
            # and the trainer reuses the segment for the next bucket.
            tensors.append((name, _view(self._segment, offset, sent, shape).clone()))
        # One load_weights call per bucket: a call per tensor costs a walk over every module of
        # the model (vLLM's AutoWeightsLoader), most of a sync's time when measured. vLLM's loaders
        # consume the weights lazily, so the tensor being consumed when one fails is the culprit.
        current: list = [None]

        def tracked():
            for pair in tensors:
                current[0] = pair
                yield pair

        with disable_mtp_completeness_check():
            try:
                loaded = self.model.load_weights(tracked())
            except Exception as e:
                name, tensor = current[0] or (info.names[0], None)
                shape = tuple(tensor.shape) if tensor is not None else "?"
                raise WeightSyncError(
                    f"{name} {shape}: the engine's model ({type(self.model).__name__}) could not load "
                    f"it: {type(e).__name__}: {e}"
                ) from e
        if tensors and loaded is not None and not loaded:
            raise WeightSyncError(
                f"{info.names[0]} ... {info.names[-1]}: the engine's model ({type(self.model).__name__}) "
                "took none of these tensors; check that the trainer sends the checkpoint's HF names"
            )
        self._received += len(info.names)
        self._expected = info.total

    def finish_weight_update(self) -> None:
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        if self._expected is None or self._received != self._expected:
            reason = f"received {self._received} of {self._expected or 'an unknown number of'} tensors"
            self._abort(reason)
            raise WeightSyncError(f"weight update incomplete: {reason}")
        experts = _reloaded_expert_layers(self.model, pending=True)
        finalize_layerwise_reload(self.model, self.model_config)
        _reprocess_tied_modules(self.model)
        _repack_experts(experts)
        self.incomplete = None

    def _abort(self, reason: str) -> None:
        """Leave the model servable after a failed update: every layer the update had not
        completed gets its previous weights back (vLLM's layerwise reload has no abort).
        vLLM's own bookkeeping goes through its private ``_place_kernel_tensors``; this is the
        one place that relies on it."""
        from vllm.model_executor.model_loader.reload import layerwise

        experts = _reloaded_expert_layers(self.model, pending=False)
        for layer in self.model.modules():
            info = layerwise.LAYERWISE_INFO.get(layer)
            if info is None or not info.can_load():
                continue
            if info.kernel_tensors is not None:
                layerwise._place_kernel_tensors(layer, info)
            info.reset()
        if hasattr(self.model, "_original_do_torchao_reload"):
            self.model._do_torchao_reload = self.model._original_do_torchao_reload
        layerwise.LOADING_LAYERS.clear()
        _reprocess_tied_modules(self.model)  # the embedding may have been completed before the failure
        _repack_experts(experts)
        self.incomplete = reason

    def shutdown(self) -> None:
        self._segment = None


def _reloaded_expert_layers(model: torch.nn.Module, pending: bool) -> list[torch.nn.Module]:
    """The fused-expert layers this update has written: completed ones (their reload record was
    reset when vLLM processed them) and, with ``pending``, those still partly loaded, which
    finalizing will process."""
    from vllm.model_executor.model_loader.reload import layerwise

    out = []
    for module in model.modules():
        kernel = getattr(getattr(module, "quant_method", None), "moe_kernel", None)
        info = layerwise.LAYERWISE_INFO.get(module)
        if kernel is None or info is None:
            continue
        if not info.can_load() or (pending and info.load_numel > 0):
            out.append(module)
    return out


def _repack_experts(layers: list[torch.nn.Module]) -> None:
    """Prepack reloaded expert weights for the CPU kernel again. vLLM's
    ``UnquantizedFusedMoEMethod._setup_kernel`` skips the kernel's own
    ``process_weights_after_loading`` on a weight update (it assumes the kernel reads the
    parameters as they are, true on GPU), but the CPU kernel reads a prepacked layout, so the
    reloaded, unpacked weights were read as packed (measured: a Qwen3-MoE's greedy tokens wrong
    after a sync although every expert weight equalled the trainer's)."""
    for layer in layers:
        layer.quant_method.moe_kernel.fused_experts.process_weights_after_loading(layer)


def _reprocess_tied_modules(model: torch.nn.Module) -> None:
    """Re-run weight processing of unquantized modules that share a parameter with another
    module: a tied ``lm_head``. vLLM's layerwise reload processes only the module that a weight
    was loaded into (the embedding), and on CPU the lm_head keeps a oneDNN handle prepacked from
    the old weights (measured: a tied Qwen3's logits off by 1.8 after a sync, greedy tokens
    wrong). Processing an unquantized module again rebuilds the handle from the current weights."""
    owners: dict[int, list[torch.nn.Module]] = {}
    for module in model.modules():
        for param in module.parameters(recurse=False):
            owners.setdefault(param.data_ptr(), []).append(module)
    seen: set[int] = set()
    for modules in owners.values():
        for module in modules if len(modules) > 1 else ():
            method = getattr(module, "quant_method", None)
            if id(module) in seen or not type(method).__name__.startswith("Unquantized"):
                continue
            seen.add(id(module))
            method.process_weights_after_loading(module)


# ---------------------------------------------------------------------- trainer side
def _default_directory() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


@dataclass
class SharedMemoryTrainerInitInfo(TrainerInitInfo):
    backend: ClassVar[str] = "roll_shm"

    bucket_bytes: int = DEFAULT_BUCKET_BYTES
    directory: str = field(default_factory=_default_directory)


class SharedMemoryTrainerWeightTransferEngine(TrainerWeightTransferEngine[SharedMemoryTrainerInitInfo]):
    init_info_cls = SharedMemoryTrainerInitInfo

    def __init__(
        self,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource,
        is_sender: bool = True,
        bucket_bytes: int = DEFAULT_BUCKET_BYTES,
    ) -> None:
        super().__init__(client=client, source=source, is_sender=is_sender)
        if bucket_bytes <= 0:
            raise ValueError(f"bucket_bytes must be positive, got {bucket_bytes}")
        self.bucket_bytes = bucket_bytes
        self.segment: Segment | None = None
        self.last_stats: TransferStats | None = None
        # The engine's model dtype, where the client can tell it (``LLMWeightSyncClient`` can;
        # vLLM's HTTP and Ray clients cannot): a source that casts sends in it by default.
        self.engine_dtype: torch.dtype | None = getattr(client, "model_dtype", None) if is_sender else None

    @classmethod
    def trainer_init(
        cls,
        init_info: SharedMemoryTrainerInitInfo,
        *,
        client: VLLMWeightSyncClient,
        source: WeightSource | None = None,
    ) -> Self:
        if source is None:
            raise ValueError("roll_shm sends a full copy each round: it needs a WeightSource")
        engine = cls(
            client=client, source=source, is_sender=init_info.is_sender, bucket_bytes=init_info.bucket_bytes
        )
        if engine.is_sender:
            engine.segment = Segment(init_info.directory, _align(init_info.bucket_bytes))
            client.init_weight_transfer_engine(
                asdict(SharedMemoryInitInfo(path=engine.segment.path, nbytes=engine.segment.nbytes))
            )
        return engine

    def send_weights(self, weight_version: str | None = None) -> TransferStats | None:
        """One full update round (every trainer rank calls it; rank 0 sends). Returns what was
        sent on the sender. Raises ``WeightSyncError`` naming the failure; the engine is then
        left on its previous weight version (see the module docstring)."""
        assert self.source is not None
        with consumer_dtypes(self.source, self.engine_dtype):
            return self._send(weight_version)

    def _send(self, weight_version: str | None) -> TransferStats | None:
        assert self.source is not None
        meta = self.source.metadata()  # collective for Megatron sources: every rank runs it
        buckets = stream_buckets(self.source, self.bucket_bytes)
        if not self.is_sender:
            for _ in buckets:
                pass
            return None
        stats, start = TransferStats(), time.perf_counter()
        self.client.start_weight_update()
        try:
            # Iteration must match metadata() (name, dtype, shape, count), as vLLM's backends check.
            for update in self._updates(checked_buckets(buckets, meta), meta, stats):
                try:
                    self.client.update_weights(update)
                except Exception as e:  # the engine failed the update and has aborted it
                    raise WeightSyncError(f"the engine rejected the weight update: {e}") from e
        except WeightSyncError:
            raise
        except BaseException as e:
            self._abort_engine(f"{type(e).__name__}: {e}")
            if isinstance(e, Exception):
                raise WeightSyncError(f"weight update failed on the trainer: {type(e).__name__}: {e}") from e
            raise
        self.client.finish_weight_update(weight_version)
        stats.seconds = time.perf_counter() - start
        self.last_stats = stats
        return stats

    def _abort_engine(self, reason: str) -> None:
        assert self.segment is not None
        with contextlib.suppress(Exception):  # the engine raises on an abort, by design
            self.client.update_weights(asdict(self._update_info(abort=reason)))

    def _update_info(self, **fields: Any) -> SharedMemoryUpdateInfo:
        assert self.segment is not None
        return SharedMemoryUpdateInfo(nbytes=self.segment.nbytes, path=self.segment.path, **fields)

    def _updates(
        self, buckets: Iterator[list[tuple[str, torch.Tensor]]], meta: list[ParamMeta], stats: TransferStats
    ) -> Iterator[dict[str, Any]]:
        """One update per bucket, written into the segment."""
        assert self.segment is not None
        segment = self.segment
        for pairs in buckets:
            needed = sum(_align(tensor_nbytes(tensor)) for _, tensor in pairs)
            if needed > segment.nbytes:  # a bucket larger than the segment: grow, tell the engine
                segment.resize(needed)
            bucket, offset = self._update_info(total=len(meta)), 0
            for name, tensor in pairs:
                _view(segment.tensor, offset, tensor.dtype, list(tensor.shape)).copy_(tensor)
                bucket.names.append(name)
                bucket.dtype_names.append(str(tensor.dtype).removeprefix("torch."))
                bucket.shapes.append(list(tensor.shape))
                bucket.offsets.append(offset)
                offset = _align(offset + tensor_nbytes(tensor))
                stats.add(tensor)
            stats.buckets += 1
            yield asdict(bucket)
        if not stats.buckets:  # nothing to send: the engine still learns the update's size
            stats.buckets += 1
            yield asdict(self._update_info(total=len(meta)))

    def shutdown(self) -> None:
        if self.segment is not None:
            self.segment.close()
            self.segment = None


# A trainer process that never started an engine has not run vLLM's plugins: importing this
# module (for SharedMemoryTrainerInitInfo) is enough to make the backend known to the factories.
def _register() -> None:
    from .plugin import register_transfer_backend

    register_transfer_backend()


_register()
