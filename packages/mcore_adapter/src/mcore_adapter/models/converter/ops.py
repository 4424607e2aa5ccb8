"""Weight conversion ops: one declarative, invertible step from HF tensors to Megatron tensors.

Names follow ROLL's convention: a name that starts with "." is relative to a transformer layer
(HF ``{hf_layer_prefix}{i}{name}``, Megatron ``decoder.layers.{i}{name}``); any other name is
global. ``{}`` is a wildcard: every name of one op has the same number of them, and what an
input wildcard matched is substituted into the outputs.

Ops are pure tensor functions. The Megatron-side numbers an op needs (heads, groups, head dim)
come from ``bind(mca_config)``, which a ``WeightMapper`` calls before each conversion.

An op can be limited to some layers or configs (``op.only(...)``): in a mixture-of-experts
model the dense layers and the expert layers name the same HF tensor differently in Megatron,
and optional parts (a shared expert, q low-rank projections) exist only when the config says so.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

WILDCARD = "{}"


def _as_list(names: str | Sequence[str]) -> list[str]:
    return [names] if isinstance(names, str) else list(names)


def cat(tensors: Sequence[torch.Tensor], dim: int = 0) -> torch.Tensor:
    """``torch.cat``, except on meta tensors (a conversion's dry run), where only the result's
    shape is computed: the meta kernel of ``torch.cat`` is registered in Python and its first
    call imports ``torch._dynamo`` (1.5 s), longer than converting a small checkpoint takes."""
    if tensors[0].device.type != "meta":
        return torch.cat(list(tensors), dim=dim)
    shape = list(tensors[0].shape)
    dim %= len(shape)
    shape[dim] = sum(t.shape[dim] for t in tensors)
    return torch.empty(shape, dtype=tensors[0].dtype, device="meta")


def name_pattern(name: str) -> re.Pattern[str]:
    """Regex for a name with ``{}`` wildcards; a wildcard matches one or more characters."""
    return re.compile("^" + "(.+?)".join(re.escape(part) for part in name.split(WILDCARD)) + "$")


class ConverOp:
    """Base op: ``hf_names`` <-> ``mca_names`` with an exact inverse.

    Subclasses implement ``_hf_to_mca`` and ``_mca_to_hf`` on lists of tensors ordered like the
    names, and may restrict how many names each side takes (``hf_arity``/``mca_arity``).
    """

    hf_arity: int | None = None  # None: any number >= 1
    mca_arity: int | None = None

    def __init__(self, hf_names: str | Sequence[str], mca_names: str | Sequence[str]):
        self.hf_names = _as_list(hf_names)
        self.mca_names = _as_list(mca_names)
        self.mca_config: Any = None
        self.layers: str | None = None
        self.attention: str | None = None
        self.if_config: tuple[str, ...] = ()
        self.unless_config: tuple[str, ...] = ()
        self._validate()

    LAYER_KINDS = ("dense", "moe", "mtp")
    ATTENTION_KINDS = ("full", "linear")

    def only(
        self,
        layers: str | None = None,
        if_config: str | Sequence[str] = (),
        unless_config: str | Sequence[str] = (),
        attention: str | None = None,
    ) -> ConverOp:
        """Limit the op (returns it): to ``layers`` ("dense" or "moe" layers of a model that
        mixes them; "mtp": a multi-token-prediction layer's own tensors, beside its transformer
        layer, which is built like the model's last layer), to configs where every ``if_config`` Megatron field is set (not None, 0 or
        False) and every ``unless_config`` field is not, and to layers whose ``attention`` is
        "full" (softmax attention) or "linear" (Gated DeltaNet; Megatron's
        ``linear_attention_freq``)."""
        if layers is not None and layers not in self.LAYER_KINDS:
            raise ValueError(f"layers must be one of {self.LAYER_KINDS}, got {layers!r}")
        if attention is not None and attention not in self.ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {self.ATTENTION_KINDS}, got {attention!r}")
        if (layers is not None or attention is not None) and not self.is_layer_local:
            raise ValueError(f"{self!r}: only layer-relative ops can be limited to some layers")
        self.layers = layers
        self.attention = attention
        self.if_config = tuple(_as_list(if_config))
        self.unless_config = tuple(_as_list(unless_config))
        return self

    def applies_to(self, config: Any) -> bool:
        """Whether the op takes part in converting a model with this Megatron config."""
        return all(getattr(config, f, None) for f in self.if_config) and not any(
            getattr(config, f, None) for f in self.unless_config
        )

    @property
    def condition(self) -> tuple[Any, ...]:
        return (self.layers, self.attention, self.if_config, self.unless_config)

    # -- construction-time checks (fail when the template is written, not mid-conversion) --
    def _validate(self) -> None:
        kind = type(self).__name__
        for side, names, arity in (
            ("hf_names", self.hf_names, self.hf_arity),
            ("mca_names", self.mca_names, self.mca_arity),
        ):
            if arity is not None and len(names) != arity:
                raise ValueError(f"{kind} takes {arity} {side}, got {len(names)}: {names}")
            if arity is None and len(names) < 1 and not isinstance(self, DropConverOp):
                raise ValueError(f"{kind} needs at least one of {side}")
        all_names = self.hf_names + self.mca_names
        counts = {name: name.count(WILDCARD) for name in all_names}
        if len(set(counts.values())) > 1:
            raise ValueError(
                f"{kind}: every name must hold the same number of '{{}}' wildcards, got {counts}; "
                "a wildcard on the input side must have a place on the output side"
            )
        local = {name.startswith(".") for name in all_names}
        if len(local) > 1:
            raise ValueError(
                f"{kind}: names must be all layer-relative (leading '.') or all global, got {all_names}"
            )
        if len(set(self.hf_names)) != len(self.hf_names) or len(set(self.mca_names)) != len(self.mca_names):
            raise ValueError(f"{kind}: repeated name in {self.hf_names} / {self.mca_names}")

    @property
    def is_layer_local(self) -> bool:
        return (self.hf_names + self.mca_names)[0].startswith(".")

    def bind(self, mca_config: Any) -> None:
        self.mca_config = mca_config

    def names(self, mca: bool) -> list[str]:
        return self.mca_names if mca else self.hf_names

    def convert(self, tensors: list[torch.Tensor], to_mca: bool) -> list[torch.Tensor]:
        out = self._hf_to_mca(tensors) if to_mca else self._mca_to_hf(tensors)
        out = [out] if isinstance(out, torch.Tensor) else list(out)
        expected = len(self.names(mca=to_mca))
        if len(out) != expected:
            raise RuntimeError(f"{self!r} produced {len(out)} tensors, expected {expected}")
        return out

    def _hf_to_mca(self, tensors: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raise NotImplementedError

    def _mca_to_hf(self, tensors: list[torch.Tensor]) -> list[torch.Tensor] | torch.Tensor:
        raise NotImplementedError

    def _need(self, *fields: str) -> list[int]:
        if self.mca_config is None:
            raise RuntimeError(
                f"{type(self).__name__} needs the Megatron config; call op.bind(mca_config) first (WeightMapper does)"
            )
        return [getattr(self.mca_config, field) for field in fields]

    def __repr__(self) -> str:
        limits = [f"layers={self.layers!r}"] if self.layers else []
        limits += [f"attention={self.attention!r}"] if self.attention else []
        limits += [f"if_config={list(self.if_config)}"] if self.if_config else []
        limits += [f"unless_config={list(self.unless_config)}"] if self.unless_config else []
        extra = "".join(f", {x}" for x in limits)
        return f"{type(self).__name__}(hf_names={self.hf_names}, mca_names={self.mca_names}{extra})"


class RenameConverOp(ConverOp):
    """Same tensor under another name."""

    hf_arity = 1
    mca_arity = 1

    def _hf_to_mca(self, tensors):
        return tensors

    def _mca_to_hf(self, tensors):
        return tensors


class CopyConverOp(ConverOp):
    """One HF tensor used by several Megatron parameters (or the reverse); the copies must agree."""

    def _validate(self) -> None:
        super()._validate()
        if (len(self.hf_names) == 1) == (len(self.mca_names) == 1):
            raise ValueError(f"CopyConverOp needs exactly one name on one side, got {self!r}")

    @staticmethod
    def _fan(tensors: list[torch.Tensor], n: int, names: list[str]) -> list[torch.Tensor]:
        if len(tensors) == 1:
            return tensors * n
        first = tensors[0]
        for name, other in zip(names[1:], tensors[1:], strict=True):
            if not torch.equal(first, other):
                raise ValueError(f"CopyConverOp: {name} differs from {names[0]}; copies must be identical")
        return [first]

    def _hf_to_mca(self, tensors):
        return self._fan(tensors, len(self.mca_names), self.hf_names)

    def _mca_to_hf(self, tensors):
        return self._fan(tensors, len(self.hf_names), self.mca_names)


class StackConverOp(ConverOp):
    """Several equally shaped HF tensors concatenated along ``dim`` into one Megatron tensor.

    This is the gate/up -> ``linear_fc1`` fusion of SwiGLU. The parts stay distinguishable:
    tensor parallelism splits each part separately, never the concatenation as a whole.
    """

    mca_arity = 1

    def __init__(self, hf_names, mca_names, dim: int = 0):
        self.dim = dim
        super().__init__(hf_names, mca_names)
        if len(self.hf_names) < 2:
            raise ValueError(f"StackConverOp needs at least two hf_names, got {self.hf_names}")

    def _hf_to_mca(self, tensors):
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) != 1:
            raise ValueError(f"StackConverOp {self.hf_names}: parts must share one shape, got {shapes}")
        return cat(tensors, dim=self.dim)

    def _mca_to_hf(self, tensors):
        (fused,) = tensors
        if fused.shape[self.dim] % len(self.hf_names):
            raise ValueError(
                f"StackConverOp {self.mca_names[0]}: dim {self.dim} of size {fused.shape[self.dim]} "
                f"does not split into {len(self.hf_names)} equal parts"
            )
        return list(torch.chunk(fused, len(self.hf_names), dim=self.dim))


class ConcatConverOp(ConverOp):
    """HF tensors concatenated along ``dim`` into one Megatron tensor, split back by ``sizes``.

    ``sizes`` gives each part's extent along ``dim``; each entry is an int or the name of a
    Megatron config field. ``None`` means equal parts. Unlike ``StackConverOp`` the result is
    one tensor to tensor parallelism.
    """

    mca_arity = 1

    def __init__(self, hf_names, mca_names, dim: int = 0, sizes: Sequence[int | str] | None = None):
        self.dim = dim
        self.sizes = None if sizes is None else list(sizes)
        super().__init__(hf_names, mca_names)
        if self.sizes is not None and len(self.sizes) != len(self.hf_names):
            raise ValueError(f"ConcatConverOp: {len(self.sizes)} sizes for {len(self.hf_names)} hf_names")

    def _hf_to_mca(self, tensors):
        return cat(tensors, dim=self.dim)

    def _mca_to_hf(self, tensors):
        (fused,) = tensors
        if self.sizes is None:
            return list(torch.chunk(fused, len(self.hf_names), dim=self.dim))
        sizes = [s if isinstance(s, int) else self._need(s)[0] for s in self.sizes]
        if sum(sizes) != fused.shape[self.dim]:
            raise ValueError(
                f"ConcatConverOp {self.mca_names[0]}: sizes {sizes} != dim {fused.shape[self.dim]}"
            )
        return list(torch.split(fused, sizes, dim=self.dim))


class QKVConverOp(ConverOp):
    """HF q/k/v projections -> Megatron's fused ``linear_qkv`` in per-query-group layout.

    Megatron groups the rows as ``[ng, (nh/ng)*d + d + d, ...]``: each key/value group is
    preceded by the query heads that attend to it, so a tensor-parallel split along dim 0 gives
    each rank whole groups.
    """

    hf_arity = 3
    mca_arity = 1

    def _dims(self) -> tuple[int, int, int]:
        nh, ng, d = self._need("num_attention_heads", "num_query_groups", "kv_channels")
        if nh % ng:
            raise ValueError(f"num_attention_heads={nh} is not a multiple of num_query_groups={ng}")
        return nh, ng, d

    def _hf_to_mca(self, tensors):
        nh, ng, d = self._dims()
        q, k, v = tensors
        tail = q.shape[1:]
        for name, t, rows in zip(self.hf_names, tensors, (nh * d, ng * d, ng * d), strict=True):
            if t.shape[0] != rows:
                raise ValueError(
                    f"{name}: expected {rows} rows (heads x head_dim from the config), got {tuple(t.shape)}"
                )
        parts = [q.reshape(ng, nh // ng * d, *tail), k.reshape(ng, d, *tail), v.reshape(ng, d, *tail)]
        return cat(parts, dim=1).reshape(-1, *tail)

    def _mca_to_hf(self, tensors):
        nh, ng, d = self._dims()
        (qkv,) = tensors
        tail = qkv.shape[1:]
        grouped = qkv.reshape(ng, (nh // ng + 2) * d, *tail)
        q, k, v = torch.split(grouped, [nh // ng * d, d, d], dim=1)
        return [t.reshape(-1, *tail) for t in (q, k, v)]


class QKVBiasConverOp(QKVConverOp):
    """The q/k/v biases, grouped like ``QKVConverOp`` groups the weights."""

    def _hf_to_mca(self, tensors):
        if any(t.dim() != 1 for t in tensors):
            raise ValueError(f"QKVBiasConverOp expects 1-D biases, got {[tuple(t.shape) for t in tensors]}")
        return super()._hf_to_mca(tensors)


class DropConverOp(ConverOp):
    """Tensors that are consumed and deliberately not converted (e.g. a cached ``inv_freq``).

    Names on either side may be given; each side's names are dropped when converting from that
    side. Dropped names are reported, never silently lost; they cannot come back in a round trip.
    """

    def __init__(self, hf_names: str | Sequence[str] = (), mca_names: str | Sequence[str] = ()):
        super().__init__(hf_names, mca_names)
        if not self.hf_names and not self.mca_names:
            raise ValueError("DropConverOp needs at least one name")

    def convert(self, tensors, to_mca):
        return []


def resolve_wildcards(names: Sequence[str], captures: tuple[str, ...]) -> list[str]:
    """Fill ``{}`` placeholders of ``names`` with the values an input name matched."""
    return [name.format(*captures) if captures else name for name in names]
