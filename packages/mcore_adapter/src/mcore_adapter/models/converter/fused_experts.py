"""The two HF layouts of a mixture-of-experts checkpoint.

The hub stores each expert's projections as separate tensors
(``mlp.experts.{e}.gate_proj.weight``...), the names the templates' ops read. transformers 5
keeps them fused in memory (``mlp.experts.gate_up_proj [E, 2I, H]``, ``down_proj [E, H, I]``)
and some checkpoints are saved that way. A template states how its fused tensors unfold
(``Template.hf_fused_experts``: fused name -> the per-expert names stacked in it, in order);
this module reads a fused checkpoint as its per-expert tensors, expert by expert (each a
contiguous block of the fused tensor, read alone), and writes per-expert tensors into fused
slots, so a conversion writes back the layout its source had without ever holding a layer's
experts at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from .errors import CheckpointError
from .ops import WILDCARD

FUSED, PER_EXPERT = "fused", "per_expert"


@dataclass(frozen=True)
class Part:
    """One per-expert tensor inside a fused one: ``fused[expert, rows]`` (the whole tensor for a
    plain rename, ``expert`` None)."""

    fused: str
    expert: int | None
    rows: slice
    shape: tuple[int, ...]

    def element_offset(self, fused_shape: Sequence[int]) -> int:
        row_elems = math.prod(fused_shape[2:]) if self.expert is not None else math.prod(fused_shape[1:])
        expert_elems = fused_shape[1] * row_elems if self.expert is not None else 0
        return (self.expert or 0) * expert_elems + self.rows.start * row_elems


class FusedExperts:
    """A template's fused-expert table, bound to its HF layer prefix."""

    def __init__(self, table: Mapping[str, Sequence[str]], layer_prefix: str):
        self.table = {name: tuple(parts) for name, parts in table.items()}
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
        self, plan: Mapping[str, tuple[Sequence[int], object]]
    ) -> tuple[dict[str, tuple[tuple[int, ...], object]], dict[str, Part]]:
        """The plan of a fused checkpoint from a per-expert plan: the fused tensors' shapes, and
        where each per-expert tensor goes."""
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
                out[fused] = ((len(members) // n, n * rows, *shape[1:]), dtype)
                for k, member in enumerate(members):
                    e, i = divmod(k, n)
                    parts[member] = Part(fused, e, slice(i * rows, (i + 1) * rows), tuple(shape))
        return out, parts


def _pattern(name: str) -> str:
    return "(\\d+)".join(re.escape(piece) for piece in name.split(WILDCARD))
