"""The HF layouts of a mixture-of-experts checkpoint.

The hub stores each expert's projections as separate tensors
(``mlp.experts.{e}.gate_proj.weight``...), the names the templates' ops read. transformers 5
keeps them fused in memory (``mlp.experts.gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``)
and some checkpoints are saved that way. A template states how its fused tensors unfold
(``Template.hf_fused_experts``: fused name -> the per-expert names stacked in it, in order);
this module reads a fused checkpoint as its per-expert tensors, expert by expert (each a
contiguous block of the fused tensor, read alone), and writes per-expert tensors into fused
slots, so a conversion writes back the layout its source had without ever holding a layer's
experts at once.

Some hub checkpoints (Qwen3-VL-MoE) store the fused tensors transposed,
``gate_up_proj [E, H, 2I]`` (columns: gate then up) and ``down_proj [E, I, H]``; a template
says which of its fused tensors may be (``Template.hf_fused_experts_transposed``: fused name ->
the HF config field the in-memory layout's last dim has). As transformers does, a stored
tensor whose last dim is that field's value is in the in-memory layout (a square one too),
any other must be the transposed shape. An expert's part of a transposed tensor is a column
block of the expert's contiguous ``[columns, n x rows]`` block: read with the block and
transposed, written by filling the block and writing it once all its parts arrived.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from .errors import CheckpointError
from .ops import WILDCARD

# How an HF checkpoint stores its experts: the hub's per-expert tensors, transformers' fused
# in-memory ones, or fused and transposed (as the hub has Qwen3-VL-MoE's).
FUSED, FUSED_TRANSPOSED, PER_EXPERT = "fused", "fused_transposed", "per_expert"
EXPERT_LAYOUTS = (PER_EXPERT, FUSED, FUSED_TRANSPOSED)


@dataclass(frozen=True)
class Part:
    """One per-expert tensor inside a fused one: ``fused[expert, rows]`` (the whole tensor for a
    plain rename, ``expert`` None). A ``transposed`` part is ``fused[expert][:, rows].T``: a
    column block of the expert's contiguous block ``[columns, n x rows]``; ``shape`` is always
    the per-expert tensor's, ``(rows, columns)``."""

    fused: str
    expert: int | None
    rows: slice
    shape: tuple[int, ...]
    transposed: bool = False

    def element_offset(self, fused_shape: Sequence[int]) -> int:
        """Where the part starts in the fused tensor, in elements (a transposed part: where its
        expert's block starts)."""
        if self.transposed:
            return self.expert * math.prod(fused_shape[1:])
        row_elems = math.prod(fused_shape[2:]) if self.expert is not None else math.prod(fused_shape[1:])
        expert_elems = fused_shape[1] * row_elems if self.expert is not None else 0
        return (self.expert or 0) * expert_elems + self.rows.start * row_elems

    def block_shape(self, fused_shape: Sequence[int]) -> tuple[int, ...]:
        """The shape of a transposed part's expert block, ``[columns, n x rows]``."""
        return tuple(fused_shape[1:])


class FusedExperts:
    """A template's fused-expert table, bound to its HF layer prefix. ``transposed`` names the
    fused tensors a checkpoint may store transposed (fused name -> the HF config field of the
    in-memory layout's last dim) and ``config_value`` reads such a field from the checkpoint's
    config; without it every stored tensor is taken as in the in-memory layout."""

    def __init__(
        self,
        table: Mapping[str, Sequence[str]],
        layer_prefix: str,
        transposed: Mapping[str, str] | None = None,
        config_value: Callable[[str], int] | None = None,
    ):
        self.table = {name: tuple(parts) for name, parts in table.items()}
        self.transposed = dict(transposed or {})
        self._config_value = config_value
        self._fused_re = re.compile(
            rf"^{re.escape(layer_prefix)}(\d+)({'|'.join(re.escape(n) for n in self.table) or '(?!)'})$"
        )
        self.layer_prefix = layer_prefix
        self._part_res = {
            fused: [re.compile(rf"^{re.escape(layer_prefix)}(\d+)" + _pattern(p) + "$") for p in parts]
            for fused, parts in self.table.items()
        }

    def __bool__(self) -> bool:
        return bool(self.table)

    def holds(self, name: str) -> bool:
        """Whether ``name`` is one of the fused tensors."""
        return self._fused_re.match(name) is not None

    def transposable(self, name: str) -> bool:
        """Whether ``name`` is a fused tensor a checkpoint may store transposed."""
        match = self._fused_re.match(name)
        return match is not None and match.group(2) in self.transposed

    def unfold(self, name: str, shape: Sequence[int]) -> dict[str, Part] | None:
        """The per-expert names a stored fused tensor holds (``None``: not a fused tensor)."""
        match = self._fused_re.match(name)
        if not match:
            return None
        layer, local = match.groups()
        parts = self.table[local]
        prefix = f"{self.layer_prefix}{layer}"
        if all(WILDCARD not in p for p in parts):  # a rename (e.g. the router's in-memory name)
            (part,) = parts
            return {prefix + part: Part(name, None, slice(0, shape[0]), tuple(shape))}
        field = self.transposed.get(local)
        if field is not None and self._config_value is not None:
            columns = self._config_value(field)
            if len(shape) != 3 or shape[2] != columns:  # not the in-memory layout: the transposed one
                return self._unfold_transposed(name, shape, prefix, parts, field, columns)
        if len(shape) < 3 or shape[1] % len(parts):
            raise CheckpointError(
                f"{name} has shape {tuple(shape)}; a fused expert tensor is [experts, "
                f"{len(parts)} x rows, columns] ({', '.join(p.format('e') for p in parts)} stacked)"
            )
        rows = shape[1] // len(parts)
        out = {}
        for e in range(shape[0]):
            for i, part in enumerate(parts):
                out[prefix + part.format(e)] = Part(
                    name, e, slice(i * rows, (i + 1) * rows), (rows, *shape[2:])
                )
        return out

    def _unfold_transposed(
        self, name: str, shape: Sequence[int], prefix: str, parts: Sequence[str], field: str, columns: int
    ) -> dict[str, Part]:
        n = len(parts)
        if len(shape) != 3 or shape[1] != columns or shape[2] % n:
            experts = shape[0] if shape else "experts"
            rows = "rows" if n == 1 else f"{n} x rows"
            raise CheckpointError(
                f"{name} has shape {tuple(shape)}; with {field}={columns} a fused expert tensor is "
                f"[{experts}, {rows}, {columns}] (transformers' in-memory layout) or "
                f"[{experts}, {columns}, {rows}] (transposed, as the hub stores it) "
                f"({', '.join(p.format('e') for p in parts)} stacked)"
            )
        rows = shape[2] // n
        return {
            prefix + part.format(e): Part(name, e, slice(i * rows, (i + 1) * rows), (rows, columns), True)
            for e in range(shape[0])
            for i, part in enumerate(parts)
        }

    def fold(self, names: Sequence[str]) -> dict[str, list[str]]:
        """Per-expert names grouped by the fused tensor that holds them, experts in order;
        names no fused tensor holds are left out."""
        groups: dict[str, dict[tuple[int, int], str]] = {}
        for name in names:
            for fused, regexes in self._part_res.items():
                for i, regex in enumerate(regexes):
                    match = regex.match(name)
                    if match:
                        layer, *expert = match.groups()
                        key = (int(expert[0]) if expert else 0, i)
                        groups.setdefault(f"{self.layer_prefix}{layer}{fused}", {})[key] = name
        return {fused: [members[k] for k in sorted(members)] for fused, members in groups.items()}

    def fused_plan(
        self, plan: Mapping[str, tuple[Sequence[int], object]], transposed: bool = False
    ) -> tuple[dict[str, tuple[tuple[int, ...], object]], dict[str, Part]]:
        """The plan of a fused checkpoint from a per-expert plan: the fused tensors' shapes, and
        where each per-expert tensor goes. With ``transposed`` the fused tensors the table says
        may be stored transposed are planned so (``[E, columns, n x rows]``)."""
        groups = self.fold(list(plan))
        owner = {member: fused for fused, members in groups.items() for member in members}
        out: dict[str, tuple[tuple[int, ...], object]] = {}
        parts: dict[str, Part] = {}
        for name, (shape, dtype) in plan.items():
            fused = owner.get(name)
            if fused is None:
                out[name] = (tuple(shape), dtype)
            elif fused not in out:  # the fused tensor takes its first member's place
                members = groups[fused]
                part_names = self.table[self._fused_re.match(fused).group(2)]
                if all(WILDCARD not in p for p in part_names):
                    out[fused] = (tuple(shape), dtype)
                    parts[name] = Part(fused, None, slice(0, shape[0]), tuple(shape))
                    continue
                n, rows = len(part_names), shape[0]
                flip = transposed and self.transposable(fused)
                if flip and len(shape) != 2:
                    raise ValueError(f"{name} is {tuple(shape)}: only matrices are stored transposed")
                fused_shape = (n * rows, *shape[1:]) if not flip else (shape[1], n * rows)
                out[fused] = ((len(members) // n, *fused_shape), dtype)
                for k, member in enumerate(members):
                    e, i = divmod(k, n)
                    parts[member] = Part(fused, e, slice(i * rows, (i + 1) * rows), tuple(shape), flip)
        return out, parts


def _pattern(name: str) -> str:
    return "(\\d+)".join(re.escape(piece) for piece in name.split(WILDCARD))
