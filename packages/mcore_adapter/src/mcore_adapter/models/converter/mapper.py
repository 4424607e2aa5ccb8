"""The mapper engine: streams tensors through a template's ops in one direction, holding at most
one layer's partial groups, and reports what it consumed, produced and dropped."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch

from .errors import ConversionError
from .names import MCA_EXTRA_STATE_SUFFIX, MTP_INNER, MTP_LAYER_PREFIX, attention_kinds, layer_kinds
from .ops import ConverOp, DropConverOp, name_pattern, resolve_wildcards


@dataclass
class ConversionReport:
    """What a conversion consumed, produced and deliberately dropped (each a set of full names)."""

    consumed: set[str] = field(default_factory=set)
    produced: set[str] = field(default_factory=set)
    dropped: set[str] = field(default_factory=set)
    dropped_mtp_layers: int = 0  # multi-token-prediction layers left out on request


class WeightMapper:
    """Streams tensors through a template's ops, one direction.

    ``push(name, tensor)`` returns the converted ``(name, tensor)`` pairs as soon as an op has
    all its inputs, so a converter holds at most one layer's partial groups. ``finish()``
    raises if an op is left waiting for an input, and returns the report.

    With ``problems`` (a dry run's ``shapes.Problems``) an unmapped or repeated tensor, a fused
    group of mixed dtypes or an op's shape error is recorded there and the run goes on, so
    that every problem of a checkpoint is reported at once; otherwise each raises.
    """

    # template: a spec.Template (not imported: spec imports this module to build its mappers)
    def __init__(self, template: Any, mca_config: Any, to_mca: bool, problems: Any = None):
        self.template = template
        self.mca_config = mca_config
        self.to_mca = to_mca
        self.problems = problems
        self.tied = bool(getattr(mca_config, "tie_embeddings_and_output_weights", False))
        self.report = ConversionReport()
        self._pending: dict[tuple[int, int | None, tuple[str, ...]], dict[int, torch.Tensor]] = {}
        self._ops = template.active_ops(mca_config)
        self._kinds = layer_kinds(mca_config) if mca_config is not None else []
        self._attention = attention_kinds(mca_config) if mca_config is not None else []
        self._mtp = int(getattr(mca_config, "mtp_num_layers", None) or 0)
        # The MTP layers' repeats of main-model tensors, by the global HF name they repeat:
        # written with it; when read, dropped (a conversion's dry run checks them equal).
        self._repeats: dict[str, list[str]] = {}
        for local, original in template.mtp_shared_copies.items():
            if self.tied and original in template.tied_hf_names():
                original = template.embedding_hf_name()
            self._repeats.setdefault(original, []).append(local)
        self._exact: dict[tuple[bool, str], list[tuple[int, int]]] = {}
        self._wild: list[tuple[bool, re.Pattern[str], int, int]] = []
        src_is_mca = not to_mca
        for op_index, op in enumerate(self._ops):
            for slot, name in enumerate(op.names(mca=src_is_mca)):
                key = (op.is_layer_local, name)
                if "{}" in name:
                    self._wild.append((op.is_layer_local, name_pattern(name), op_index, slot))
                else:
                    self._exact.setdefault(key, []).append((op_index, slot))
        self._dropped_tied = set(template.tied_hf_names()) if self.tied and to_mca else set()

    def _split(self, name: str) -> tuple[int | None, str]:
        if self.to_mca:
            return self.template.split_hf_name(name)
        if name.startswith(MTP_LAYER_PREFIX):  # HF numbers MTP layers after the decoder's
            index, _, rest = name[len(MTP_LAYER_PREFIX) :].partition(".")
            rest = "." + rest
            rest = rest[len(MTP_INNER) :] if rest.startswith(MTP_INNER + ".") else rest
            return len(self._kinds) + int(index), rest
        return self.template.split_mca_name(name)

    def _is_mtp(self, layer: int | None) -> bool:
        return layer is not None and bool(self._kinds) and layer >= len(self._kinds)

    def _join(self, layer: int | None, local: str, mca: bool, op: ConverOp | None = None) -> str:
        if mca and self._is_mtp(layer):
            inner = "" if op is not None and op.layers == "mtp" else MTP_INNER
            return f"{MTP_LAYER_PREFIX}{layer - len(self._kinds)}{inner}{local}"
        return self.template.join_mca_name(layer, local) if mca else self.template.join_hf_name(layer, local)

    def _fits(self, op_index: int, layer: int | None) -> bool:
        op = self._ops[op_index]
        kind = op.layers
        if not self._kinds or layer is None:
            return kind != "mtp"
        if kind == "mtp":
            return self._is_mtp(layer)
        index = len(self._kinds) - 1 if self._is_mtp(layer) else layer  # MTP: built like the last
        if op.attention is not None and self._attention[index] != op.attention:
            return False
        return kind is None or self._kinds[index] == kind

    def _lookup(self, layer: int | None, local: str) -> tuple[int, int, tuple[str, ...]] | None:
        is_local = layer is not None
        for op_index, slot in self._exact.get((is_local, local), []):
            if self._fits(op_index, layer):
                return op_index, slot, ()
        for wild_local, pattern, op_index, slot in self._wild:
            if wild_local == is_local and self._fits(op_index, layer):
                match = pattern.match(local)
                if match:
                    return op_index, slot, match.groups()
        return None

    def outputs_of(self, name: str) -> list[str] | None:
        """The names converting ``name`` contributes to, without converting; ``None`` when no
        op maps it (``push`` would raise), ``[]`` when it is dropped."""
        layer, local = self._split(name)
        if self.to_mca and (self.template.is_invalid_hf_key(local) or name in self._dropped_tied):
            return []
        if self.to_mca and self._is_mtp(layer) and local in self.template.mtp_shared_copies:
            return []
        hit = self._lookup(layer, local)
        if hit is None:
            return None
        op_index, _, captures = hit
        op = self._ops[op_index]
        if isinstance(op, DropConverOp):
            return []
        names = resolve_wildcards(op.names(mca=self.to_mca), captures)
        return [self._join(layer, n, self.to_mca, op) for n in names]

    def push(self, name: str, tensor: torch.Tensor) -> list[tuple[str, torch.Tensor]]:
        layer, local = self._split(name)
        if not self.to_mca and name.endswith(MCA_EXTRA_STATE_SUFFIX):
            return []
        if self.to_mca and (self.template.is_invalid_hf_key(local) or name in self._dropped_tied):
            self.report.dropped.add(name)
            return []
        if self.to_mca and self._is_mtp(layer):
            if not self._mtp or layer - len(self._kinds) >= self._mtp:
                return self._problem(
                    f"{name}: layer {layer} is beyond the config's {len(self._kinds)} layers and its "
                    f"{self._mtp} multi-token-prediction layer(s)"
                )
            if local in self.template.mtp_shared_copies:  # checked equal by the dry run
                self.report.consumed.add(name)
                self.report.dropped.add(name)
                return []
        hit = self._lookup(layer, local)
        if hit is None:
            side = "HF" if self.to_mca else "Megatron"
            hint = (
                f"add an op for it to the {self.template.hf_model_type!r} template, or list it in hf_invalid_keys"
                if self.to_mca
                else f"the {self.template.hf_model_type!r} template has no op producing it"
            )
            return self._problem(f"{side} tensor {name!r} is not mapped by any op ({local!r}); {hint}")
        op_index, slot, captures = hit
        op = self._ops[op_index]
        self.report.consumed.add(name)
        if isinstance(op, DropConverOp):
            self.report.dropped.add(name)
            return []
        key = (op_index, layer, captures)
        group = self._pending.setdefault(key, {})
        if slot in group:
            return self._problem(f"tensor {name!r} was given twice")
        group[slot] = tensor
        src_names = op.names(mca=not self.to_mca)
        if len(group) < len(src_names):
            return []
        del self._pending[key]
        inputs = [group[i] for i in range(len(src_names))]
        in_names = [self._join(layer, n, not self.to_mca, op) for n in resolve_wildcards(src_names, captures)]
        out_names = [
            self._join(layer, n, self.to_mca, op)
            for n in resolve_wildcards(op.names(mca=self.to_mca), captures)
        ]
        self.report.produced.update(out_names)
        dtypes = [t.dtype for t in inputs]
        if len(set(dtypes)) > 1:
            found = ", ".join(
                f"{n} {str(d).removeprefix('torch.')}" for n, d in zip(in_names, dtypes, strict=True)
            )
            self._problem(
                f"{found} are fused into {', '.join(out_names)}, which has one dtype; "
                "re-save the checkpoint with one dtype for them"
            )
            inputs = [t.to(dtypes[0]) for t in inputs]
        # Ops are shared by every model of a template: give this op this mapper's config now.
        op.bind(self.mca_config)
        try:
            outputs = op.convert(inputs, to_mca=self.to_mca)
        except ValueError as e:  # an op's own shape check: the checkpoint, not the op, is wrong
            return self._problem(f"{', '.join(in_names)}: {e}")
        out = list(zip(out_names, outputs, strict=True))
        if not self.to_mca and self._mtp:  # the MTP layers' repeats of main-model tensors
            for hf_name, tensor in list(out):
                for local in self._repeats.get(hf_name, []):
                    for k in range(self._mtp):
                        out.append((self.template.join_hf_name(len(self._kinds) + k, local), tensor))
            self.report.produced.update(n for n, _ in out)
        return out

    def _problem(self, message: str) -> list[tuple[str, torch.Tensor]]:
        if self.problems is None:
            raise ConversionError(message)
        self.problems.add(message)
        return []

    def finish(self) -> ConversionReport:
        if self._pending:
            missing = []
            for (op_index, layer, captures), group in self._pending.items():
                op = self._ops[op_index]
                names = resolve_wildcards(op.names(mca=not self.to_mca), captures)
                missing += [
                    self._join(layer, n, mca=not self.to_mca) for i, n in enumerate(names) if i not in group
                ]
            self._pending.clear()
            self._problem(
                f"incomplete checkpoint: {len(missing)} tensor(s) needed by an op are missing: "
                f"{sorted(missing)[:10]}"
            )
        return self.report
