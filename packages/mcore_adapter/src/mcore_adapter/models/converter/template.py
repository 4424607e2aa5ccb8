"""Conversion templates: how one HF ``model_type`` maps onto Megatron-Core, config and weights.

A template is declarative: a table of config fields, a list of ``ConverOp``s, the constants
Megatron needs that HF does not state, and the HF keys that are deliberately ignored.
Templates are registered per HF ``model_type`` (``register_template``) and looked up with
``get_template``; the built-in families register themselves the first time the registry is
used, so importing this module stays cheap.

This module is pure tensor work: it imports neither megatron.core nor transformers' modeling
code (transformers' config classes are used to read HF configs in their normalized form).
"""

from __future__ import annotations

import copy
import importlib
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import torch

from .config_check import HF_CONFIG, check_config_values
from .errors import ConversionError, UnsupportedModelError
from .ops import (
    WILDCARD,
    ConcatConverOp,
    ConverOp,
    CopyConverOp,
    DropConverOp,
    QKVBiasConverOp,
    QKVConverOp,
    RenameConverOp,
    StackConverOp,
    name_pattern,
    resolve_wildcards,
)

__all__ = [
    "ConcatConverOp",
    "ConverOp",
    "ConversionError",
    "CopyConverOp",
    "DerivedField",
    "DropConverOp",
    "QKVBiasConverOp",
    "QKVConverOp",
    "RenameConverOp",
    "StackConverOp",
    "Template",
    "UnsupportedModelError",
    "WeightMapper",
    "get_template",
    "register_template",
    "registered_model_types",
]

MCA_LAYER_PREFIX = "decoder.layers."
# Multi-token prediction: Megatron's MTP layers, each a transformer layer plus its own norms and
# projection (ops limited to layers="mtp"); HF numbers them after the decoder layers.
MTP_LAYER_PREFIX = "mtp.layers."
MTP_INNER = ".transformer_layer"
# Megatron has no output layer weight when it is tied to the word embeddings.
MCA_OUTPUT_LAYER = "output_layer.weight"
# Transformer Engine keeps fp8/metadata state under this suffix: not a weight, never converted.
MCA_EXTRA_STATE_SUFFIX = "._extra_state"

# Built-in families, imported on first use of the registry (each registers its template).
_BUILTIN_FAMILIES = (
    "llama",
    "mistral",
    "qwen2",
    "qwen3",
    "seed_oss",
    "qwen2_vl",
    "qwen2_5_vl",
    "qwen3_vl",
    "qwen3_vl_moe",
    "qwen2_moe",
    "qwen3_moe",
    "mixtral",
    "deepseek_v3",
    "glm4_moe",
    "qwen3_next",
    "qwen3_5",
    "qwen3_5_moe",
    "internlm2",
)
_TEMPLATES: dict[str, Template] = {}
_builtins_loaded = False


_MISSING = object()


def as_json(value: Any) -> Any:
    """The value as mca_config.json gives it back (dict keys become strings)."""
    return json.loads(json.dumps(value))


def _fold_legacy_rope(hf_config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the config with pre-transformers-5 ``rope_theta`` / ``rope_scaling`` folded into
    ``rope_parameters`` as transformers does (hub configs of Llama 3, Qwen 2.5... are written
    so). Parity with transformers' own folding is tested."""
    out = copy.deepcopy(dict(hf_config))
    if "rope_parameters" in out or "rope_theta" not in out:
        return out
    scaling = out.pop("rope_scaling", None) or {}
    rope = {k: v for k, v in scaling.items() if k != "type"}
    rope["rope_type"] = scaling.get("rope_type", scaling.get("type", "default"))
    rope["rope_theta"] = out.pop("rope_theta")
    out["rope_parameters"] = rope
    return out


# Architecture fields every GPT checkpoint records, whether or not its template sets them.
ARCH_FIELDS = (
    "hf_model_type",
    "num_layers",
    "hidden_size",
    "num_attention_heads",
    "num_query_groups",
    "kv_channels",
    "ffn_hidden_size",
    "vocab_size",
    "padded_vocab_size",
    "make_vocab_size_divisible_by",
    "mtp_num_layers",
    "output_head",
    "output_head_bias",
)

# HF architectures with a 1-wide head instead of the LM head: the head Megatron builds
# (``output_head``; see McaGPTModel) and whether transformers gives it a bias.
OUTPUT_HEADS = {"ForTokenClassification": ("value", True), "ForSequenceClassification": ("reward", False)}

# Megatron fields whose None is a setting (no window, no low-rank q projection), kept when an
# HF config states null; other None values mean "Megatron's default" and are left out.
# What every model config states (a config without one cannot be planned).
REQUIRED_MCA_FIELDS = ("num_layers", "hidden_size", "num_attention_heads", "vocab_size")
# ... and what a template that reads them needs (an MoE family its experts).
MAPPED_REQUIRED_MCA_FIELDS = ("ffn_hidden_size", "num_moe_experts", "moe_ffn_hidden_size", "moe_router_topk")

NULLABLE_MCA_FIELDS = frozenset({"sliding_window", "q_lora_rank"})

# HF config fields no Megatron config holds; a rebuilt HF config takes them from
# generation_config.json.
TOKEN_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")

# Megatron fields a template derives from HF's ``rope_parameters`` (see Template.rope_kwargs).
# Llama-3 rope scaling: HF rope_parameters key -> Megatron field (with rope_scaling=True).
LLAMA3_ROPE_HF_TO_MCA = {
    "factor": "rope_scaling_factor",
    "low_freq_factor": "rope_scaling_low_freq_factor",
    "high_freq_factor": "rope_scaling_high_freq_factor",
    "original_max_position_embeddings": "rope_scaling_original_max_position_embeddings",
}
ROPE_MCA_FIELDS = ("rope_scaling", *LLAMA3_ROPE_HF_TO_MCA.values())


# Megatron's experts of one layer (SequentialMLP names, global expert index): what templates
# produce; the per-rank files hold local indices (see dist_converter).
MCA_EXPERT_PREFIX = ".mlp.experts.local_experts.{}."


def output_head(hf_config: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(head, bias) of a value or reward model's HF config (by its architecture); ``None`` for a
    language model."""
    for architecture in hf_config.get("architectures") or ():
        for suffix, head in OUTPUT_HEADS.items():
            if architecture.endswith(suffix):
                return head
    return None


def layer_kinds(config: Any) -> list[str]:
    """ "dense" or "moe" for each decoder layer, as Megatron reads ``moe_layer_freq``: an int N
    puts experts in every N-th layer from the first, a list gives 1 (experts) or 0 per layer."""
    num_layers = int(getattr(config, "num_layers", 0) or 0)
    if not getattr(config, "num_moe_experts", None):
        return ["dense"] * num_layers
    freq = getattr(config, "moe_layer_freq", 1)
    if isinstance(freq, int):
        return ["moe" if i % freq == 0 else "dense" for i in range(num_layers)]
    return ["moe" if f else "dense" for f in _layer_pattern(freq, num_layers, "moe_layer_freq")]


def attention_kinds(config: Any) -> list[str]:
    """ "full" or "linear" (Gated DeltaNet) for each decoder layer, as Megatron reads
    ``linear_attention_freq``: an int N makes every N-th layer (counting from 1) full attention,
    a list gives 1 (linear) or 0 per layer, unset is full attention everywhere."""
    num_layers = int(getattr(config, "num_layers", 0) or 0)
    freq = getattr(config, "linear_attention_freq", None)
    if freq is None or getattr(config, "experimental_attention_variant", None) != "gated_delta_net":
        return ["full"] * num_layers
    if isinstance(freq, int):
        return ["full" if (i + 1) % freq == 0 else "linear" for i in range(num_layers)]
    return ["linear" if f else "full" for f in _layer_pattern(freq, num_layers, "linear_attention_freq")]


def _layer_pattern(freq: str | list[int], num_layers: int, field: str) -> list[int]:
    """A per-layer 0/1 list given as a list, or in Megatron-LM's command-line form (e.g.
    ``"([0]+[1]*3)"``), checked to have one entry per layer."""
    if isinstance(freq, str):
        if not re.fullmatch(r"[\s\[\]\(\)\d,*+]+", freq):
            raise ConversionError(f"{field} {freq!r} is not a list pattern such as '([0]*1+[1]*3)'")
        freq = list(eval(freq, {"__builtins__": {}}))  # digits, brackets, + and * only (checked above)
    if len(freq) != num_layers:
        raise ConversionError(f"{field} has {len(freq)} entries for {num_layers} layers: {freq}")
    return list(freq)


def _exclusive(a: ConverOp, b: ConverOp) -> bool:
    """Whether two ops can never both convert one tensor: limited to different layer kinds, or
    one needs a config field that the other needs to be unset."""
    if a.layers and b.layers and a.layers != b.layers:
        return True
    if a.attention and b.attention and a.attention != b.attention:
        return True
    return bool(set(a.if_config) & set(b.unless_config) or set(b.if_config) & set(a.unless_config))


def _get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return _MISSING
        node = node[part]
    return node


def _set_path(config: dict[str, Any], path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    node = config
    for part in parents:
        node = node.setdefault(part, {})
    node[leaf] = value


@dataclass(frozen=True)
class DerivedField:
    """A Megatron config field computed from HF fields rather than copied (e.g. Megatron's
    ``moe_layer_freq`` from HF's ``first_k_dense_replace``). ``to_mca`` takes the HF values of
    ``hf_paths`` in order (a missing one as ``None``) and returns the Megatron value, or raises
    ``ConversionError`` for a value Megatron cannot express; ``to_hf`` maps the Megatron value
    (and the other Megatron fields) back to ``{hf_path: value}``, for rebuilding an HF config."""

    hf_paths: tuple[str, ...]
    to_mca: Callable[..., Any]
    to_hf: Callable[[Any, Mapping[str, Any]], dict[str, Any]] | None = None


@dataclass
class Template:
    """Everything needed to convert one HF ``model_type`` to and from Megatron-Core.

    ``config_hf_to_mca`` maps HF config fields (dotted paths into the normalized HF config,
    e.g. ``rope_parameters.rope_theta``) to Megatron config fields. ``hf_config_expect`` lists
    HF config values the template relies on; a config that differs is rejected rather than
    converted into a different model. ``hf_config_defaults`` are transformers' defaults for
    fields hub configs often leave out (a value, ``None`` for "no such field", or a function of
    the config), so such configs convert without importing transformers (tested against
    transformers' own). ``hf_architecture`` is the HF model class an exported ``config.json``
    names when the HF config has to be rebuilt from the Megatron config.
    """

    hf_model_type: str
    config_hf_to_mca: dict[str, str]
    weight_converters: list[ConverOp]
    hf_layer_prefix: str
    constant_mca_config: dict[str, Any] = field(default_factory=dict)
    hf_invalid_keys: list[str] = field(default_factory=list)
    hf_config_expect: dict[str, Any] = field(default_factory=dict)
    hf_config_defaults: dict[str, Any] = field(default_factory=dict)
    hf_architecture: str | None = None
    config_derived: dict[str, DerivedField] = field(default_factory=dict)
    # transformers' fused in-memory expert tensors -> the per-expert names stacked in them (see
    # fused_experts); checkpoints saved from memory carry these names.
    hf_fused_experts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # Fused tensors (keys of hf_fused_experts) hub checkpoints may store transposed,
    # [E, columns, n x rows] -> the dotted HF config field the in-memory layout's last dim has
    # (e.g. "text_config.hidden_size" for gate_up_proj); see fused_experts.
    hf_fused_experts_transposed: dict[str, str] = field(default_factory=dict)
    # HF tensors of an MTP layer that repeat a main-model tensor (Megatron's MTP layers share
    # the embedding and output layer): layer-relative HF name -> the global HF name it repeats.
    # Read: checked equal and not stored twice; written: repeated.
    mtp_shared_copies: dict[str, str] = field(default_factory=dict)
    # What a parallel layout must satisfy beyond Megatron's own rules, for this family:
    # rule(mca_kwargs, bound_layout) raises LayoutError. ParallelLayout.validate applies them, so
    # convert, reshard, verify and model building refuse the same layouts.
    layout_rules: tuple[Callable[[Mapping[str, Any], Any], None], ...] = ()

    def __post_init__(self) -> None:
        if not self.hf_layer_prefix.endswith("."):
            raise ValueError(f"hf_layer_prefix must end with '.', got {self.hf_layer_prefix!r}")
        seen: dict[tuple[bool, str], list[ConverOp]] = {}
        for op in self.weight_converters:
            if not isinstance(op, ConverOp):
                raise TypeError(f"weight_converters holds {op!r}, which is not a ConverOp")
            for mca, names in ((False, op.hf_names), (True, op.mca_names)):
                for name in names:
                    for other in seen.get((mca, name), []):
                        if not _exclusive(op, other):
                            raise ValueError(
                                f"template {self.hf_model_type!r}: {name!r} is used by both "
                                f"{other!r} and {op!r}"
                            )
                    seen.setdefault((mca, name), []).append(op)
        duplicated = {
            v for v in self.config_hf_to_mca.values() if list(self.config_hf_to_mca.values()).count(v) > 1
        }
        if duplicated:
            raise ValueError(f"template {self.hf_model_type!r}: Megatron fields mapped twice: {duplicated}")
        for name, path in self.hf_fused_experts_transposed.items():
            parts = self.hf_fused_experts.get(name)
            if parts is None:
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed names {name!r}, "
                    f"which is not a key of hf_fused_experts ({sorted(self.hf_fused_experts)})"
                )
            if all(WILDCARD not in p for p in parts):
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed names {name!r}, "
                    "a renamed tensor rather than fused experts"
                )
            if not isinstance(path, str) or not path:
                raise ValueError(
                    f"template {self.hf_model_type!r}: hf_fused_experts_transposed[{name!r}] must be "
                    f"a dotted HF config field such as 'text_config.hidden_size', got {path!r}"
                )
        self._layer_re = re.compile(rf"^{re.escape(self.hf_layer_prefix)}(\d+)(\..+)$")
        self._invalid = [name_pattern(name) for name in self.hf_invalid_keys]

    # ------------------------------------------------------------------ config
    def normalized_hf_config(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        """The HF config as transformers reads it (defaults filled in, legacy fields such as
        ``rope_theta`` and ``rope_scaling`` folded into ``rope_parameters``), as a plain dict.

        A config that already states every field the template reads, in the current form (as
        transformers 5 saves them), is used as it is: importing transformers costs seconds, more
        than converting a small checkpoint takes.
        """
        folded = _fold_legacy_rope(hf_config)
        if "rope_scaling" not in folded:  # a legacy rope_scaling without rope_theta: transformers' job
            for path, default in self.hf_config_defaults.items():
                if _get_path(folded, path) is _MISSING:
                    try:
                        _set_path(folded, path, default(folded) if callable(default) else default)
                    except KeyError:  # derived from a field the config lacks too: transformers' job
                        continue
        if self._states_every_field(folded):
            return folded
        return self.transformers_normalized_hf_config(hf_config)

    def _states_every_field(self, hf_config: Mapping[str, Any]) -> bool:
        paths = [*self.config_hf_to_mca, *self.hf_config_expect, "rope_parameters.rope_type"]
        paths += [p for derived in self.config_derived.values() for p in derived.hf_paths]
        return all(_get_path(hf_config, path) is not _MISSING for path in paths)

    def transformers_normalized_hf_config(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        from transformers import AutoConfig as HFAutoConfig

        from ...plugins import require_hf_model_type

        kwargs = {k: v for k, v in hf_config.items() if k != "model_type"}
        model_type = hf_config.get("model_type", self.hf_model_type)
        # fields the config leaves out take transformers' defaults: its class must be known
        require_hf_model_type(
            model_type, f"config.json leaves out fields template {self.hf_model_type!r} reads"
        )
        return HFAutoConfig.for_model(model_type, **kwargs).to_dict()

    def convert_hf_to_mca_config(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        """Megatron config kwargs (fields of ``McaModelConfig``) for an HF config dict, every
        field checked (``config_check``): a config is input, and a malformed one is a
        ``ConversionError``, never a traceback from deep inside the conversion."""
        self._check_structure(hf_config)
        try:
            kwargs = self._convert_hf_to_mca_config(hf_config)
        except Exception as e:  # transformers' config classes raise their own kinds too
            if isinstance(e, ConversionError):
                raise
            # a field of an unexpected type or value that no check names (transformers' own config
            # classes normalize it too): say so instead of a traceback
            raise ConversionError(
                f"config.json cannot be read as a {self.hf_model_type} config ({type(e).__name__}: "
                f"{str(e)[:120]}); compare it with the config transformers saves for this model"
            ) from None
        mapped = set(self.config_hf_to_mca.values())
        required = [*REQUIRED_MCA_FIELDS, *(f for f in MAPPED_REQUIRED_MCA_FIELDS if f in mapped)]
        missing = [f for f in required if kwargs.get(f) is None]
        if missing:
            names = self.hf_field_names
            raise ConversionError(
                f"config.json lacks {', '.join(names.get(f, f) for f in missing)}, which every "
                f"{self.hf_model_type} config states"
            )
        return kwargs

    @property
    def hf_field_names(self) -> dict[str, str]:
        """Megatron field -> the HF config field it is read from (for messages in HF's words)."""
        return {mca: hf for hf, mca in self.config_hf_to_mca.items()}

    def _check_structure(self, hf_config: Mapping[str, Any]) -> None:
        """The containers the template walks are containers: ``architectures`` a list of names,
        each parent of a field it reads (``text_config``, ``rope_parameters``...) an object."""
        architectures = hf_config.get("architectures")
        if architectures is not None and not (
            isinstance(architectures, list) and all(isinstance(a, str) for a in architectures)
        ):
            raise ConversionError("config.json: architectures must be a list of class names")
        paths = [*self.config_hf_to_mca, *self.hf_config_expect, *self.hf_config_defaults]
        paths += [p for derived in self.config_derived.values() for p in derived.hf_paths]
        direct = {mca: _get_path(hf_config, hf) for hf, mca in self.config_hf_to_mca.items()}
        names = self.hf_field_names
        # the sizes first: derived fields (layer patterns) are built from them
        check_config_values({k: v for k, v in direct.items() if v is not _MISSING}, "config.json", names)
        for path in paths:
            parts = path.split(".")
            node: Any = hf_config
            for depth, part in enumerate(parts[:-1]):
                node = node.get(part) if isinstance(node, Mapping) else None
                if node is not None and not isinstance(node, Mapping):
                    parent = ".".join(parts[: depth + 1])
                    raise ConversionError(
                        f"config.json: {parent} must be an object (it holds {path}), found {type(node).__name__}"
                    )

    def _convert_hf_to_mca_config(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        hf = self.normalized_hf_config(hf_config)
        for path, expected in self.hf_config_expect.items():
            found = _get_path(hf, path)
            if found is not _MISSING and found != expected:
                raise ConversionError(
                    f"template {self.hf_model_type!r} supports {path}={expected!r}, the config has "
                    f"{path}={found!r}; this model cannot be converted to Megatron-Core as is"
                )
        kwargs: dict[str, Any] = {}
        for hf_path, mca_field in self.config_hf_to_mca.items():
            value = _get_path(hf, hf_path)
            if value is not _MISSING and (value is not None or mca_field in NULLABLE_MCA_FIELDS):
                kwargs[mca_field] = value
        for mca_field, derived in self.config_derived.items():
            values = [_get_path(hf, p) for p in derived.hf_paths]
            value = derived.to_mca(*(None if v is _MISSING else v for v in values))
            if value is not None:
                kwargs[mca_field] = value
        kwargs.update(self.rope_kwargs(hf))
        kwargs.update(self.constant_mca_config)
        head = output_head(hf)
        if head is not None:
            labels = len(hf.get("id2label") or {}) or hf.get("num_labels", 1)
            if labels != 1:
                raise ConversionError(
                    f"{hf['architectures'][0]} with {labels} labels: value and reward models convert "
                    "with a 1-wide head (num_labels=1)"
                )
            # The head is its own weight, never tied to the embedding.
            kwargs.update(
                output_head=head[0], output_head_bias=head[1], tie_embeddings_and_output_weights=False
            )
        kwargs["hf_model_type"] = self.hf_model_type
        check_config_values({**kwargs, HF_CONFIG: dict(hf)}, "config.json", self.hf_field_names)
        return kwargs

    def rope_kwargs(self, hf: Mapping[str, Any]) -> dict[str, Any]:
        """Translate ``rope_parameters`` (the transformers-wide rope description)."""
        rope = hf.get("rope_parameters") or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type == "default":
            return {}
        if rope_type == "llama3":
            return {"rope_scaling": True, **{mca: rope[hf] for hf, mca in LLAMA3_ROPE_HF_TO_MCA.items()}}
        raise ConversionError(
            f"template {self.hf_model_type!r}: rope_type {rope_type!r} is not supported "
            "(supported: 'default', 'llama3')"
        )

    def mca_fields(self) -> list[str]:
        """Every Megatron config field this template can set."""
        fields = [*self.config_hf_to_mca.values(), *self.config_derived, *self.rope_mca_fields()]
        return list(dict.fromkeys([*fields, *self.constant_mca_config]))

    def rope_mca_fields(self) -> tuple[str, ...]:
        """The Megatron fields ``rope_kwargs`` can set."""
        return ROPE_MCA_FIELDS

    def rope_hf_parameters(self, mca_kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The inverse of ``rope_kwargs``: HF ``rope_parameters`` entries besides ``rope_theta``."""
        if not mca_kwargs.get("rope_scaling"):
            return {"rope_type": "default"}
        return {
            "rope_type": "llama3",
            **{hf: mca_kwargs.get(mca) for hf, mca in LLAMA3_ROPE_HF_TO_MCA.items()},
        }

    def rebuild_hf_config(
        self, mca_kwargs: Mapping[str, Any], dtype: str, token_ids: Mapping[str, Any] | None
    ) -> dict[str, Any]:
        """The HF config of a model whose checkpoint kept only its Megatron config (as
        Megatron-LM writes them): every field of ``config_hf_to_mca``, the rope parameters, the
        values the template relies on, ``architectures``, the dtype, and the special token ids
        (``token_ids``, from the checkpoint's ``generation_config.json``), which no Megatron config
        holds. A field that cannot be rebuilt raises ``ConversionError`` naming it; fields that do
        not shape the model (``initializer_range``, ``use_cache``...) are left to transformers'
        defaults.
        """
        out: dict[str, Any] = {"model_type": self.hf_model_type}
        missing = []
        if self.hf_architecture is None:
            missing.append("architectures (the template names no hf_architecture)")
        else:
            suffix = next(
                (s for s, (h, _) in OUTPUT_HEADS.items() if h == mca_kwargs.get("output_head")), None
            )
            out["architectures"] = [self.hf_architecture.replace("ForCausalLM", suffix or "ForCausalLM")]
            if suffix is not None:
                out["id2label"] = {"0": "LABEL_0"}
        for hf_path, mca_field in self.config_hf_to_mca.items():
            if mca_field in mca_kwargs:
                _set_path(out, hf_path, as_json(mca_kwargs[mca_field]))
            else:
                missing.append(f"{hf_path} (Megatron field {mca_field})")
        for mca_field, derived in self.config_derived.items():
            if derived.to_hf is None:
                missing.append(f"{', '.join(derived.hf_paths)} (Megatron field {mca_field})")
            elif mca_field in mca_kwargs:
                for path, value in derived.to_hf(mca_kwargs[mca_field], mca_kwargs).items():
                    _set_path(out, path, as_json(value))
        rope_path = next((p for p in self.config_hf_to_mca if p.endswith("rope_theta")), None)
        if rope_path is not None:
            parent = rope_path.rpartition(".")[0]
            for key, value in self.rope_hf_parameters(mca_kwargs).items():
                _set_path(out, f"{parent}.{key}", value)
        for path, value in self.hf_config_expect.items():
            _set_path(out, path, value)
        out["dtype"] = dtype
        if token_ids is None:
            missing.append(f"{', '.join(TOKEN_ID_FIELDS)} (kept in generation_config.json, which is absent)")
        else:
            out.update({name: token_ids.get(name) for name in TOKEN_ID_FIELDS})
        if missing:
            raise ConversionError(
                f"the {self.hf_model_type!r} HF config cannot be rebuilt from the Megatron config alone: "
                f"it lacks {'; '.join(missing)}"
            )
        return out

    def convert_mca_to_hf_config(
        self, mca_kwargs: Mapping[str, Any], hf_config: Mapping[str, Any]
    ) -> dict[str, Any]:
        """The HF config dict for Megatron config kwargs and the HF config the model came from
        (or ``rebuild_hf_config``'s): that config unchanged where the Megatron fields still
        agree with it, and updated where they differ."""
        forward = self.convert_hf_to_mca_config(hf_config)
        changed = {
            hf_path: mca_kwargs[mca_field]
            for hf_path, mca_field in self.config_hf_to_mca.items()
            if mca_field in mca_kwargs and as_json(forward.get(mca_field)) != as_json(mca_kwargs[mca_field])
        }
        if not changed:
            return copy.deepcopy(dict(hf_config))
        out = self.normalized_hf_config(hf_config)
        for hf_path, value in changed.items():
            _set_path(out, hf_path, value)
        return out

    # ------------------------------------------------------------------ weights
    def fused_experts(self, hf_config: Mapping[str, Any] | None = None):
        """The fused-expert table. With the checkpoint's ``hf_config`` it also tells stored
        transposed tensors (``hf_fused_experts_transposed``) from in-memory ones."""
        from .fused_experts import FusedExperts

        config_value = None if hf_config is None else (lambda path: self.hf_config_value(hf_config, path))
        return FusedExperts(
            self.hf_fused_experts, self.hf_layer_prefix, self.hf_fused_experts_transposed, config_value
        )

    def hf_config_value(self, hf_config: Mapping[str, Any], path: str) -> Any:
        """The value of a dotted field of an HF config, as stated or as transformers fills it in."""
        value = _get_path(hf_config, path)
        if value is _MISSING or value is None:
            value = _get_path(self.normalized_hf_config(hf_config), path)
        if value is _MISSING or value is None:
            raise ConversionError(
                f"the {self.hf_model_type!r} HF config has no {path}, which the template needs"
            )
        return value

    def active_ops(self, config: Any) -> list[ConverOp]:
        """The ops that convert a model with this Megatron config (``None``: every op)."""
        if config is None:
            return list(self.weight_converters)
        tied = bool(getattr(config, "tie_embeddings_and_output_weights", False))
        return [
            op
            for op in self.weight_converters
            if op.applies_to(config) and not (tied and MCA_OUTPUT_LAYER in op.mca_names)
        ]

    def mtp_layers(self, hf_names: Iterable[str], num_layers: int) -> int:
        """How many multi-token-prediction layers an HF checkpoint holds: the layers numbered
        after the config's decoder layers (configs state ``num_nextn_predict_layers`` whether or
        not the weights are there)."""
        layers = {self.split_hf_name(name)[0] for name in hf_names}
        return len({i for i in layers if i is not None and i >= num_layers})

    def embedding_hf_name(self) -> str | None:
        return next(
            (
                op.hf_names[0]
                for op in self.weight_converters
                if "embedding.word_embeddings.weight" in op.mca_names
            ),
            None,
        )

    def tied_hf_names(self) -> list[str]:
        """HF names that only exist for an untied output layer (dropped when embeddings are tied)."""
        return [n for op in self.weight_converters if MCA_OUTPUT_LAYER in op.mca_names for n in op.hf_names]

    def split_hf_name(self, name: str) -> tuple[int | None, str]:
        match = self._layer_re.match(name)
        return (int(match.group(1)), match.group(2)) if match else (None, name)

    def join_hf_name(self, layer: int | None, local: str) -> str:
        return local if layer is None else f"{self.hf_layer_prefix}{layer}{local}"

    @staticmethod
    def split_mca_name(name: str) -> tuple[int | None, str]:
        if name.startswith(MCA_LAYER_PREFIX):
            index, _, rest = name[len(MCA_LAYER_PREFIX) :].partition(".")
            if index.isdigit():
                return int(index), "." + rest
        return None, name

    @staticmethod
    def layer_relative(name: str) -> str | None:
        """A decoder or MTP layer's Megatron name without its layer prefix (``.mlp.router.weight``;
        an MTP layer's own tensors: ``.enorm.weight``); ``None`` for a global name."""
        layer, rest = Template.split_mca_name(name)
        if layer is not None:
            return rest
        if name.startswith(MTP_LAYER_PREFIX):
            rest = "." + name[len(MTP_LAYER_PREFIX) :].partition(".")[2]
            return rest[len(MTP_INNER) :] if rest.startswith(MTP_INNER + ".") else rest
        return None

    @staticmethod
    def join_mca_name(layer: int | None, local: str) -> str:
        return local if layer is None else f"{MCA_LAYER_PREFIX}{layer}{local}"

    def is_invalid_hf_key(self, local_name: str) -> bool:
        return any(p.match(local_name) for p in self._invalid)

    def expected_mca_names(self, config: Any) -> set[str]:
        """The Megatron names a complete checkpoint of this config produces: every expert of
        every expert layer included, other wildcard ops (a subtree carried whole) excluded."""
        names: set[str] = set()
        kinds = layer_kinds(config)
        attention = attention_kinds(config)
        experts = range(getattr(config, "num_moe_experts", None) or 0)
        mtp = range(getattr(config, "mtp_num_layers", None) or 0)
        for op in self.active_ops(config):
            if isinstance(op, DropConverOp):
                continue
            for name in op.mca_names:
                if not op.is_layer_local:
                    if WILDCARD not in name:
                        names.add(name)
                    continue
                if name.count(WILDCARD) == 1 and name.startswith(MCA_EXPERT_PREFIX):
                    local = [name.format(e) for e in experts]
                elif WILDCARD in name:
                    continue
                else:
                    local = [name]
                if op.layers == "mtp":
                    names.update(f"{MTP_LAYER_PREFIX}{k}{n}" for k in mtp for n in local)
                    continue
                layers = [
                    i
                    for i, kind in enumerate(kinds)
                    if op.layers in (None, kind) and op.attention in (None, attention[i])
                ]
                names.update(self.join_mca_name(i, n) for i in layers for n in local)
                last = (kinds[-1], attention[-1]) if kinds else None
                if last and op.layers in (None, last[0]) and op.attention in (None, last[1]):
                    # MTP layers are built like the last
                    names.update(f"{MTP_LAYER_PREFIX}{k}{MTP_INNER}{n}" for k in mtp for n in local)
        return names

    @staticmethod
    def op_config(mca_kwargs: Mapping[str, Any]) -> SimpleNamespace:
        """The Megatron config as the ops and the converter read it, with Megatron's defaults
        of the numbers they need, without building a TransformerConfig."""
        heads = mca_kwargs["num_attention_heads"]
        return SimpleNamespace(
            **{
                **mca_kwargs,
                "num_query_groups": mca_kwargs.get("num_query_groups") or heads,
                "kv_channels": mca_kwargs.get("kv_channels") or mca_kwargs["hidden_size"] // heads,
                "tie_embeddings_and_output_weights": bool(
                    mca_kwargs.get("tie_embeddings_and_output_weights", False)
                ),
            }
        )

    def mapper(self, mca_config: Any, to_mca: bool, problems: Any = None) -> WeightMapper:
        return WeightMapper(self, mca_config, to_mca, problems)


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

    def __init__(self, template: Template, mca_config: Any, to_mca: bool, problems: Any = None):
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


def _load_builtin_templates() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    for family in _BUILTIN_FAMILIES:
        importlib.import_module(f"mcore_adapter.models.{family}")


def register_template(
    hf_model_type: str,
    config_hf_to_mca: dict[str, str],
    weight_converters: Sequence[ConverOp],
    hf_layer_prefix: str,
    constant_mca_config: dict[str, Any] | None = None,
    hf_invalid_keys: Iterable[str] | None = None,
    *,
    hf_config_expect: dict[str, Any] | None = None,
    hf_config_defaults: dict[str, Any] | None = None,
    hf_architecture: str | None = None,
    config_derived: dict[str, DerivedField] | None = None,
    hf_fused_experts: dict[str, Sequence[str]] | None = None,
    hf_fused_experts_transposed: dict[str, str] | None = None,
    mtp_shared_copies: dict[str, str] | None = None,
    layout_rules: Iterable[Callable[[Mapping[str, Any], Any], None]] = (),
    template_class: type[Template] = Template,
    overwrite: bool = False,
) -> Template:
    """Register the conversion template of one HF ``model_type`` (the ``config.json`` field).

    Registering a type that already has a template raises unless ``overwrite=True``.
    ``hf_fused_experts_transposed`` (fused name, a key of ``hf_fused_experts`` -> the dotted HF
    config field the in-memory layout's last dim has) names the fused expert tensors hub
    checkpoints may store transposed; such checkpoints convert back in that layout.
    """
    _load_builtin_templates()  # so that a user's overwrite=True really replaces a built-in
    if hf_model_type in _TEMPLATES and not overwrite:
        raise ValueError(
            f"a template for model_type {hf_model_type!r} is already registered; "
            "pass overwrite=True to replace it"
        )
    template = template_class(
        hf_model_type=hf_model_type,
        config_hf_to_mca=dict(config_hf_to_mca),
        weight_converters=list(weight_converters),
        hf_layer_prefix=hf_layer_prefix,
        constant_mca_config=dict(constant_mca_config or {}),
        hf_invalid_keys=list(hf_invalid_keys or []),
        hf_config_expect=dict(hf_config_expect or {}),
        hf_config_defaults=dict(hf_config_defaults or {}),
        hf_architecture=hf_architecture,
        config_derived=dict(config_derived or {}),
        hf_fused_experts={k: tuple(v) for k, v in (hf_fused_experts or {}).items()},
        hf_fused_experts_transposed=dict(hf_fused_experts_transposed or {}),
        mtp_shared_copies=dict(mtp_shared_copies or {}),
        layout_rules=tuple(layout_rules),
    )
    _TEMPLATES[hf_model_type] = template
    return template


def get_template(hf_model_type: str) -> Template:
    """The template registered for ``hf_model_type``; an unknown type lists the supported ones."""
    _load_builtin_templates()
    template = _TEMPLATES.get(hf_model_type) if isinstance(hf_model_type, str) else None
    if template is None and isinstance(hf_model_type, str):
        from ...plugins import load_plugins

        load_plugins()  # an installed package may provide it
        template = _TEMPLATES.get(hf_model_type)
    if template is None:
        from ...plugins import failures

        shown = (
            repr(hf_model_type)[:60]
            if isinstance(hf_model_type, str) or hf_model_type is None
            else "a " + type(hf_model_type).__name__
        )
        raise UnsupportedModelError(
            f"no conversion template for model_type {shown}; supported: "
            f"{', '.join(sorted(_TEMPLATES))}. Register one with "
            "mcore_adapter.models.converter.template.register_template(...) in a module named by "
            f"--import or by an 'mcore_adapter.plugins' entry point{failures()}"
        )
    return template


def registered_model_types() -> list[str]:
    _load_builtin_templates()
    return sorted(_TEMPLATES)
