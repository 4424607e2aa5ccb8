"""Parallel layouts: which rank holds which layers and which slice of each weight.

Pure arithmetic on the config, without megatron.core: the offline converter writes every
rank's shard in one process, and a model inside a distributed job asks the same questions
about its own rank. The rules are Megatron-Core's own (``TransformerConfig.__post_init__``,
``get_num_layers_to_build``, ``get_transformer_layer_offset``), including its uneven split
(``num_layers_in_first_pipeline_stage`` / ``num_layers_in_last_pipeline_stage``); a layout
Megatron rejects is rejected here, with Megatron's reason, before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .errors import ConversionError
from .registry import get_template

DEFAULT_VOCAB_DIVISOR = 128  # Megatron-LM's --make-vocab-size-divisible-by default

# The mca_config.json fields that describe a layout rather than an architecture.
LAYOUT_FIELDS = (
    "tensor_model_parallel_size",
    "pipeline_model_parallel_size",
    "virtual_pipeline_model_parallel_size",
    "num_layers_in_first_pipeline_stage",
    "num_layers_in_last_pipeline_stage",
    "expert_model_parallel_size",
    "expert_tensor_parallel_size",
)


class LayoutError(ConversionError):
    """A parallel layout that Megatron-Core would not build for this model."""


def padded_vocab_size(vocab_size: int, tp: int, divisor: int = DEFAULT_VOCAB_DIVISOR) -> int:
    """Megatron-LM's padding: the vocab rounded up to a multiple of ``divisor * tp``, so that
    every tensor-parallel rank holds an equal, aligned slice of the embedding and output layer."""
    multiple = divisor * tp
    return -(-vocab_size // multiple) * multiple


@dataclass(frozen=True)
class Chunk:
    """One model chunk: the layers a (pipeline rank, virtual stage) builds, in global numbers."""

    pp_rank: int
    vp_stage: int | None
    layers: range
    pre_process: bool  # holds the embedding
    post_process: bool  # holds the final norm and the output layer


@dataclass(frozen=True)
class RankFile:
    """One rank's file of the per-rank ``torch`` format: its tensor-, pipeline- and
    expert-parallel ranks (the name) and its expert-tensor-parallel rank (which slice of each
    of its experts it holds)."""

    tp: int
    pp: int
    ep: int = 0
    etp: int = 0


@dataclass(frozen=True)
class ParallelLayout:
    tp: int = 1
    pp: int = 1
    vpp: int | None = None
    num_layers_in_first_pipeline_stage: int | None = None
    num_layers_in_last_pipeline_stage: int | None = None
    ep: int = 1
    etp: int | None = None  # expert tensor parallelism; None: as tp (Megatron's default)
    # The model numbers the layout is checked against (set by ``for_model``).
    num_layers: int = field(default=0, compare=False)

    # The process-group sizes (what initialize_model_parallel takes; the uneven split is the
    # model's own, given where it is built).
    SIZES = ("tp", "pp", "vpp", "ep", "etp")

    @classmethod
    def of(cls, layout: ParallelLayout | Mapping[str, Any] | None) -> ParallelLayout:
        """A layout given as a ``ParallelLayout`` or as its fields by name (``{"tp": 2, "pp": 2}``;
        a ``None`` value: that field's default). The one place another form becomes a layout."""
        if isinstance(layout, ParallelLayout):
            return layout
        given = {k: v for k, v in (layout or {}).items() if v is not None}
        names = [f for f in cls.__dataclass_fields__ if f != "num_layers"]
        unknown = sorted(set(given) - set(names), key=str)
        if unknown:
            raise LayoutError(f"{unknown} are not parallel layout fields; use {', '.join(names)}")
        vpp, tp, etp = given.get("vpp"), int(given.get("tp", 1)), given.get("etp")
        return cls(
            **{
                **given,
                "tp": tp,
                "vpp": int(vpp) if vpp and int(vpp) > 1 else None,
                "etp": int(etp) if etp and int(etp) != tp else None,
            }
        )

    @classmethod
    def from_kwargs(cls, kwargs: Mapping[str, Any]) -> ParallelLayout:
        """The layout an ``mca_config``-style dict describes (missing fields: no parallelism)."""
        vpp = kwargs.get("virtual_pipeline_model_parallel_size")
        tp = int(kwargs.get("tensor_model_parallel_size") or 1)
        etp = kwargs.get("expert_tensor_parallel_size")
        return cls(
            tp=tp,
            pp=int(kwargs.get("pipeline_model_parallel_size") or 1),
            vpp=int(vpp) if vpp and int(vpp) > 1 else None,
            num_layers_in_first_pipeline_stage=kwargs.get("num_layers_in_first_pipeline_stage"),
            num_layers_in_last_pipeline_stage=kwargs.get("num_layers_in_last_pipeline_stage"),
            ep=int(kwargs.get("expert_model_parallel_size") or 1),
            etp=int(etp) if etp and int(etp) != tp else None,
            num_layers=int(kwargs.get("num_layers") or 0),
        )

    def to_kwargs(self) -> dict[str, Any]:
        return dict(zip(LAYOUT_FIELDS, self._values(), strict=True))

    def _values(self) -> tuple[Any, ...]:
        return (
            self.tp,
            self.pp,
            self.vpp,
            self.num_layers_in_first_pipeline_stage,
            self.num_layers_in_last_pipeline_stage,
            self.ep,
            self.etp,
        )

    @property
    def expert_tp(self) -> int:
        return self.etp or self.tp

    @property
    def world_size(self) -> int:
        """The least number of ranks that runs this layout: each pipeline stage needs every dense
        slice (tp) and every expert slice of every expert-parallel rank (etp x ep)."""
        return self.pp * math.lcm(self.tp, self.expert_tp * self.ep)

    @property
    def is_bound(self) -> bool:
        """Whether ``validate`` checked it against a model (and bound its layer count)."""
        return self.num_layers > 0

    def describe(self) -> str:
        text = f"tp{self.tp}pp{self.pp}" + (f"vpp{self.vpp}" if self.vpp else "")
        text += (f"ep{self.ep}" if self.ep > 1 else "") + (f"etp{self.etp}" if self.etp else "")
        uneven = (self.num_layers_in_first_pipeline_stage, self.num_layers_in_last_pipeline_stage)
        return text + (f"(first={uneven[0]},last={uneven[1]})" if any(v is not None for v in uneven) else "")

    @property
    def num_chunks(self) -> int:
        return self.vpp or 1

    # ------------------------------------------------------------------ checks
    def validate(self, model: Mapping[str, Any]) -> ParallelLayout:
        """Check the layout against the model's numbers as Megatron-Core does; return the layout
        bound to the model's layer count."""
        tp, pp, vpp = self.tp, self.pp, self.vpp
        for name, value in (("tp", tp), ("pp", pp), ("vpp", vpp or 1)):
            if value < 1:
                raise LayoutError(f"{name} must be >= 1, got {value}")
        heads = model["num_attention_heads"]
        groups = model.get("num_query_groups") or heads
        if heads % tp:
            raise LayoutError(
                f"num_attention_heads={heads} is not divisible by tp={tp}; Megatron-Core splits whole "
                f"heads over tensor-parallel ranks: choose tp among {_divisors(heads)}"
            )
        if groups % tp and tp % groups:
            raise LayoutError(
                f"num_query_groups={groups} is neither a multiple nor a divisor of tp={tp}, which "
                "Megatron-Core requires"
            )
        if vpp is not None and pp < 2:
            raise LayoutError(f"virtual pipeline (vpp={vpp}) needs pp >= 2, got pp={pp}")
        if model.get("experimental_attention_variant") == "gated_delta_net":
            for field in ("linear_num_key_heads", "linear_num_value_heads"):
                if int(model[field]) % tp:
                    raise LayoutError(
                        f"{field}={model[field]} is not divisible by tp={tp}; Megatron-Core splits "
                        f"Gated DeltaNet's heads over tensor-parallel ranks: choose tp among "
                        f"{_divisors(int(model['linear_num_key_heads']))}"
                    )
        self._check_experts(model)
        bound = ParallelLayout(*self._values(), num_layers=int(model["num_layers"]))
        bound._check_layers()
        bound.ranks()  # the rank files must have distinct names
        if model.get("hf_model_type"):
            for rule in get_template(model["hf_model_type"]).layout_rules:
                rule(model, bound)
        return bound

    def _check_experts(self, model: Mapping[str, Any]) -> None:
        ep, etp = self.ep, self.expert_tp
        for name, value in (("ep", ep), ("etp", etp)):
            if value < 1:
                raise LayoutError(f"{name} must be >= 1, got {value}")
        experts = model.get("num_moe_experts")
        if not experts:
            if ep > 1 or self.etp:
                raise LayoutError(
                    f"expert parallelism (ep={ep}, etp={etp}) needs a mixture-of-experts model; "
                    f"this {model.get('hf_model_type') or 'model'} has no experts: drop --ep/--etp"
                )
            return
        if experts % ep:
            raise LayoutError(
                f"num_moe_experts={experts} is not divisible by ep={ep}; every expert-parallel rank "
                f"holds the same number of experts: choose ep among {_divisors(experts)}"
            )

    def _check_layers(self) -> None:
        first, last = self.num_layers_in_first_pipeline_stage, self.num_layers_in_last_pipeline_stage
        n, pp, v = self.num_layers, self.pp, self.num_chunks
        if pp == 1 and (first is not None or last is not None):
            raise LayoutError("num_layers_in_first/last_pipeline_stage need pp > 1")
        if first is None and last is None:
            if n % (pp * v):
                hint = "; give num_layers_in_first/last_pipeline_stage for an uneven split" if pp > 1 else ""
                raise LayoutError(f"num_layers={n} is not divisible by pp x vpp = {pp} x {v}{hint}")
            return
        middle_layers, middle_stages = n, pp
        for name, value in (("first", first), ("last", last)):
            if value is None:
                continue
            if value <= 0:
                raise LayoutError(f"num_layers_in_{name}_pipeline_stage must be > 0, got {value}")
            if value % v:
                raise LayoutError(f"num_layers_in_{name}_pipeline_stage={value} is not divisible by vpp={v}")
            middle_layers -= value
            middle_stages -= 1
        given = " + ".join(f"{name}={value}" for name, value in (("first", first), ("last", last)) if value)
        if not middle_stages and middle_layers:
            raise LayoutError(
                f"with pp={pp} the first and last stages are all the stages, so their layers must add up "
                f"to num_layers={n}; got {given} = {n - middle_layers}"
            )
        if middle_stages and middle_layers < middle_stages * v:
            room = n - middle_stages * v
            raise LayoutError(
                f"{given} leaves {middle_layers} of the model's {n} layers for the other {middle_stages} "
                f"pipeline stage(s), which need at least {middle_stages * v}: the uneven stage(s) may "
                f"hold at most {room} layer(s) together"
            )
        if middle_stages and middle_layers % (middle_stages * v):
            raise LayoutError(
                f"the {middle_layers} middle layers do not split evenly over {middle_stages} stage(s) x vpp={v}"
            )

    # ------------------------------------------------------------------ placement
    def stage_num_layers(self, pp_rank: int) -> int:
        first, last = self.num_layers_in_first_pipeline_stage, self.num_layers_in_last_pipeline_stage
        if pp_rank == 0 and first is not None:
            return first
        if pp_rank == self.pp - 1 and last is not None:
            return last
        middle_stages = self.pp - (first is not None) - (last is not None)
        return (self.num_layers - (first or 0) - (last or 0)) // middle_stages

    @cached_property
    def chunks(self) -> list[Chunk]:
        """Every chunk in execution order (virtual stage major, as the interleaved schedule runs)."""
        per_chunk = [self.stage_num_layers(p) // self.num_chunks for p in range(self.pp)]
        out, start = [], 0
        for v in range(self.num_chunks):
            for p in range(self.pp):
                layers = range(start, start + per_chunk[p])
                start += per_chunk[p]
                first = p == 0 and v == 0
                last = p == self.pp - 1 and v == self.num_chunks - 1
                out.append(Chunk(p, v if self.vpp else None, layers, first, last))
        return out

    def chunks_of(self, pp_rank: int) -> list[Chunk]:
        return [c for c in self.chunks if c.pp_rank == pp_rank]

    def locate(self, layer: int) -> tuple[Chunk, int]:
        """The chunk holding global ``layer`` and the layer's index inside it."""
        for chunk in self.chunks:
            if layer in chunk.layers:
                return chunk, layer - chunk.layers.start
        raise LayoutError(f"layer {layer} is outside the model's {self.num_layers} layers")

    def ranks(self) -> list[RankFile]:
        """Every rank file of the ``torch`` format, in rank order.

        Megatron-Core orders ranks tensor-parallel first, for the dense weights (tp, then data
        parallel) and for the experts (etp, then ep, then expert data parallel): within one
        pipeline stage, local rank ``k`` holds dense slice ``k % tp`` and the slice ``k % etp``
        of the experts of ``ep`` rank ``(k // etp) % ep``. A stage needs lcm(tp, etp x ep) ranks
        to hold every slice; Megatron-LM names each rank's file by its tp, pp and ep rank."""
        ep, etp = self.ep, self.expert_tp
        per_stage = math.lcm(self.tp, etp * ep)
        files: dict[tuple[int, int, int], RankFile] = {}
        for pp_rank in range(self.pp):
            for k in range(per_stage):
                rank = RankFile(k % self.tp, pp_rank, (k // etp) % ep if ep > 1 else 0, k % etp)
                key = (rank.tp, rank.pp, rank.ep)
                if key in files and files[key] != rank:
                    raise LayoutError(
                        f"with tp={self.tp}, etp={etp}, ep={ep} two ranks hold different expert slices "
                        f"under one file name (tp rank {rank.tp}, ep rank {rank.ep}); the per-rank "
                        "'torch' format cannot store this layout: choose etp dividing tp"
                    )
                files[key] = rank
        return list(files.values())


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]
