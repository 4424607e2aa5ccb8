"""Config translation: an HF ``config.json`` to Megatron config fields and back, as a template's
tables state it (``config_hf_to_mca``, expected values, transformers' defaults, derived fields,
rope). ``TemplateConfig`` holds these methods; ``Template`` (``spec.py``) inherits them."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .config_check import HF_CONFIG, check_config_values
from .errors import ConversionError

MISSING = object()


def as_json(value: Any) -> Any:
    """The value as mca_config.json gives it back (dict keys become strings)."""
    return json.loads(json.dumps(value))


def fold_legacy_rope(hf_config: Mapping[str, Any]) -> dict[str, Any]:
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


@dataclass(frozen=True)
class OutputHead:
    """A 1-wide head in place of the LM head, one table for every side: the head Megatron
    builds (``output_head``; see McaGPTModel), the HF architecture suffix and Auto class that
    name it, whether transformers gives it a bias, and what its outputs are (per token or per
    sequence)."""

    name: str
    suffix: str
    auto_class: str
    bias: bool
    output: str


OUTPUT_HEADS: dict[str, OutputHead] = {
    head.name: head
    for head in (
        OutputHead("value", "ForTokenClassification", "AutoModelForTokenClassification", True, "value"),
        OutputHead(
            "reward", "ForSequenceClassification", "AutoModelForSequenceClassification", False, "score"
        ),
    )
}


def head_of_architecture(architecture: str) -> OutputHead | None:
    return next((h for h in OUTPUT_HEADS.values() if architecture.endswith(h.suffix)), None)


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


def output_head(hf_config: Mapping[str, Any]) -> tuple[str, bool] | None:
    """(head, bias) of a value or reward model's HF config (by its architecture); ``None`` for a
    language model."""
    for architecture in hf_config.get("architectures") or ():
        head = head_of_architecture(architecture)
        if head is not None:
            return head.name, head.bias
    return None


def get_path(config: Mapping[str, Any], path: str) -> Any:
    node: Any = config
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return node


def set_path(config: dict[str, Any], path: str, value: Any) -> None:
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


class TemplateConfig:
    """The config side of a ``Template`` (its tables are the dataclass fields of ``Template``)."""

    hf_model_type: str
    config_hf_to_mca: dict[str, str]
    constant_mca_config: dict[str, Any]
    hf_config_expect: dict[str, Any]
    hf_config_defaults: dict[str, Any]
    hf_architecture: str | None
    config_derived: dict[str, DerivedField]

    def normalized_hf_config(self, hf_config: Mapping[str, Any]) -> dict[str, Any]:
        """The HF config as transformers reads it (defaults filled in, legacy fields such as
        ``rope_theta`` and ``rope_scaling`` folded into ``rope_parameters``), as a plain dict.

        A config that already states every field the template reads, in the current form (as
        transformers 5 saves them), is used as it is: importing transformers costs seconds, more
        than converting a small checkpoint takes.
        """
        folded = fold_legacy_rope(hf_config)
        if "rope_scaling" not in folded:  # a legacy rope_scaling without rope_theta: transformers' job
            for path, default in self.hf_config_defaults.items():
                if get_path(folded, path) is MISSING:
                    try:
                        set_path(folded, path, default(folded) if callable(default) else default)
                    except KeyError:  # derived from a field the config lacks too: transformers' job
                        continue
        if self._states_every_field(folded):
            return folded
        return self.transformers_normalized_hf_config(hf_config)

    def _states_every_field(self, hf_config: Mapping[str, Any]) -> bool:
        paths = [*self.config_hf_to_mca, *self.hf_config_expect, "rope_parameters.rope_type"]
        paths += [p for derived in self.config_derived.values() for p in derived.hf_paths]
        return all(get_path(hf_config, path) is not MISSING for path in paths)

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
        direct = {mca: get_path(hf_config, hf) for hf, mca in self.config_hf_to_mca.items()}
        names = self.hf_field_names
        # the sizes first: derived fields (layer patterns) are built from them
        check_config_values({k: v for k, v in direct.items() if v is not MISSING}, "config.json", names)
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
            found = get_path(hf, path)
            if found is not MISSING and found != expected:
                raise ConversionError(
                    f"template {self.hf_model_type!r} supports {path}={expected!r}, the config has "
                    f"{path}={found!r}; this model cannot be converted to Megatron-Core as is"
                )
        kwargs: dict[str, Any] = {}
        for hf_path, mca_field in self.config_hf_to_mca.items():
            value = get_path(hf, hf_path)
            if value is not MISSING and (value is not None or mca_field in NULLABLE_MCA_FIELDS):
                kwargs[mca_field] = value
        for mca_field, derived in self.config_derived.items():
            values = [get_path(hf, p) for p in derived.hf_paths]
            value = derived.to_mca(*(None if v is MISSING else v for v in values))
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
            head = OUTPUT_HEADS.get(mca_kwargs.get("output_head"))
            suffix = head.suffix if head is not None else None
            out["architectures"] = [self.hf_architecture.replace("ForCausalLM", suffix or "ForCausalLM")]
            if suffix is not None:
                out["id2label"] = {"0": "LABEL_0"}
        for hf_path, mca_field in self.config_hf_to_mca.items():
            if mca_field in mca_kwargs:
                set_path(out, hf_path, as_json(mca_kwargs[mca_field]))
            else:
                missing.append(f"{hf_path} (Megatron field {mca_field})")
        for mca_field, derived in self.config_derived.items():
            if derived.to_hf is None:
                missing.append(f"{', '.join(derived.hf_paths)} (Megatron field {mca_field})")
            elif mca_field in mca_kwargs:
                for path, value in derived.to_hf(mca_kwargs[mca_field], mca_kwargs).items():
                    set_path(out, path, as_json(value))
        rope_path = next((p for p in self.config_hf_to_mca if p.endswith("rope_theta")), None)
        if rope_path is not None:
            parent = rope_path.rpartition(".")[0]
            for key, value in self.rope_hf_parameters(mca_kwargs).items():
                set_path(out, f"{parent}.{key}", value)
        for path, value in self.hf_config_expect.items():
            set_path(out, path, value)
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
            set_path(out, hf_path, value)
        return out

    def hf_config_value(self, hf_config: Mapping[str, Any], path: str) -> Any:
        """The value of a dotted field of an HF config, as stated or as transformers fills it in."""
        value = get_path(hf_config, path)
        if value is MISSING or value is None:
            value = get_path(self.normalized_hf_config(hf_config), path)
        if value is MISSING or value is None:
            raise ConversionError(
                f"the {self.hf_model_type!r} HF config has no {path}, which the template needs"
            )
        return value
