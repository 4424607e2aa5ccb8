"""Bad inputs to the CLI, one row each: a destination that overlaps the source or holds other
files, checkpoints whose tensors, shards, index or config are wrong, layouts Megatron would
reject, flags that do not go together, damaged MCA checkpoints and verify runs that cannot work.

Every row proves the same contract: ``main`` returns 2 and says so in one ``error:`` line (a
report of several problems continues on lines indented by two spaces), never a traceback; the
message states the key facts (what was expected, what was found); nothing the user had changes
and no temporary directory is left behind. A verify row never gets as far as launching ranks.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from mcore_adapter.cli import main
from mcore_adapter.launch import launch
from mcore_adapter.models.converter.convert import convert_hf_to_mca
from mcore_adapter.models.converter.errors import CheckpointError
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.models.converter.mca_io import torch_rank_file

SRC, DST, TMP = "{src}", "{dst}", "{tmp}"
DOWN = "model.layers.0.mlp.down_proj.weight"
O_PROJ = "model.layers.1.self_attn.o_proj.weight"
NORM = "model.norm.weight"
UP = "model.layers.1.mlp.up_proj.weight"
GATE_UP = "model.layers.0.mlp.experts.gate_up_proj"
MTP_EMBED = "model.layers.2.embed_tokens.weight"  # the tiny DeepSeek-V3's MTP layer
INDEX = "model.safetensors.index.json"
NORM_MCA = "embedding.word_embeddings.weight"  # on the first stage


@dataclass
class Case:
    tmp: Path
    tiny: Path  # the cached tiny llama checkpoint: read, never written
    checkpoint: Callable[..., Path]  # the tiny_checkpoint fixture, for other model types

    @property
    def src(self) -> Path:
        return self.tmp / "src"


Step = Callable[[Case], None]


# ---------------------------------------------------------------------- sources
def _hf(case: Case) -> None:
    shutil.copytree(case.tiny, case.src)


def _hf_of(model_type: str) -> Step:
    return lambda case: shutil.copytree(case.checkpoint(model_type), case.src)


def _hf_of_mtp(case: Case) -> None:
    shutil.copytree(case.checkpoint("deepseek_v3", mtp_layers=1), case.src)


def _fused_of(model_type: str) -> Step:
    from mcore_adapter.testing import save_with_fused_experts

    return lambda case: save_with_fused_experts(case.checkpoint(model_type), case.src)


def _mca(case: Case) -> None:
    convert_hf_to_mca(case.tiny, case.src, layout=ParallelLayout(tp=2, pp=2), progress=False)


def _to_mca(case: Case, model_type: str) -> None:
    """The source becomes the MCA conversion of the tiny ``model_type`` (a valid layout)."""
    shutil.rmtree(case.src)
    convert_hf_to_mca(case.checkpoint(model_type), case.src, progress=False)


def _empty(case: Case) -> None:
    case.src.mkdir()


# ---------------------------------------------------------------------- damage
def _file(case: Case, where: str | tuple[int, int]) -> Path:
    """A file of the source: a relative path, or the (tp, pp) rank file of a tp2pp2 checkpoint."""
    return torch_rank_file(case.src, *where, 2) if isinstance(where, tuple) else case.src / where


def _truncate(where: str | tuple[int, int]) -> Step:
    def step(case: Case) -> None:
        file = _file(case, where)
        file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])

    return step


def _delete(where: str | tuple[int, int]) -> Step:
    return lambda case: _file(case, where).unlink()


def _rename(where: str, new_name: str) -> Step:
    return lambda case: _file(case, where).rename(case.src / new_name)


def _write_json(where: str, data: dict) -> Step:
    return lambda case: _file(case, where).write_text(json.dumps(data))


def _edit_json(where: str, edit: Callable[[dict], None]) -> Step:
    def step(case: Case) -> None:
        data = json.loads(_file(case, where).read_text())
        edit(data)
        _file(case, where).write_text(json.dumps(data))

    return step


def _edit_weights(edit: Callable[[dict[str, torch.Tensor]], None]) -> Step:
    def step(case: Case) -> None:
        tensors = load_file(case.src / "model.safetensors")
        edit(tensors)
        save_file(tensors, case.src / "model.safetensors", metadata={"format": "pt"})

    return step


def _edit_rank(rank: tuple[int, int], edit: Callable[[dict[str, torch.Tensor]], None]) -> Step:
    def step(case: Case) -> None:
        state = torch.load(_file(case, rank), weights_only=True)
        edit(state["model"])
        torch.save(state, _file(case, rank))

    return step


def _transposed(*names: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        for name in names:
            tensors[name] = tensors[name].T.contiguous()

    return edit


def _replace(name: str, make: Callable[[torch.Tensor | None], torch.Tensor]) -> Step:
    return _edit_weights(lambda tensors: tensors.update({name: make(tensors.get(name))}))


def _drop(name: str) -> Step:
    return _edit_weights(lambda tensors: tensors.pop(name))


def _index_with_bogus_entry(case: Case) -> None:
    weight_map = dict.fromkeys(load_file(case.src / "model.safetensors"), "model.safetensors")
    weight_map["model.layers.0.bogus.weight"] = "model.safetensors"
    (case.src / INDEX).write_text(json.dumps({"weight_map": weight_map}))


def _existing_dst(*files: str) -> Step:
    def step(case: Case) -> None:
        (case.tmp / "dst").mkdir()
        for name in files:
            (case.tmp / "dst" / name).write_text("keep me")

    return step


def _link_to_src(case: Case) -> None:
    (case.tmp / "link").symlink_to(case.src)


def _index_naming(shard: str) -> Step:
    """An index that maps every tensor to ``shard`` (``{tmp}`` is the test's directory)."""

    def step(case: Case) -> None:
        names = load_file(case.src / "model.safetensors")
        target = shard.format(tmp=case.tmp)
        (case.src / INDEX).write_text(json.dumps({"weight_map": dict.fromkeys(names, target)}))

    return step


def _copy_outside(case: Case) -> None:
    """A valid shard outside the checkpoint, which an index could name with '..'."""
    shutil.copyfile(case.src / "model.safetensors", case.tmp / "outside.safetensors")


def _fifo(where: str) -> Step:
    def step(case: Case) -> None:
        _file(case, where).unlink()
        os.mkfifo(_file(case, where))

    return step


def _edit_header(edit: Callable[[dict], None]) -> Step:
    """Rewrite the shard's JSON header (the data bytes stay as they are)."""

    def step(case: Case) -> None:
        file = case.src / "model.safetensors"
        raw = file.read_bytes()
        length = int.from_bytes(raw[:8], "little")
        header = json.loads(raw[8 : 8 + length])
        edit(header)
        encoded = json.dumps(header).encode()
        file.write_bytes(len(encoded).to_bytes(8, "little") + encoded + raw[8 + length :])

    return step


def _entry(name: str, **fields) -> Callable[[dict], None]:
    def edit(header: dict) -> None:
        for key, value in fields.items():
            if value is None:
                del header[name][key]
            else:
                header[name][key] = value

    return edit


def _offsets_of(name: str, shift: Callable[[list[int], dict], list[int]]) -> Callable[[dict], None]:
    return lambda header: header[name].update(data_offsets=shift(header[name]["data_offsets"], header))


def _pickled_payload(rank: tuple[int, int]) -> Step:
    """A rank file whose pickle would run a command (``touch MARKER``) when loaded unrestricted."""

    def step(case: Case) -> None:
        state = torch.load(_file(case, rank), weights_only=True)
        state["args"] = _RunsCommand(f"touch {case.tmp / 'MARKER'}")
        torch.save(state, _file(case, rank))

    return step


class _RunsCommand:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# ---------------------------------------------------------------------- the table
def _shape(name: str, expected: tuple[int, ...], found: tuple[int, ...]) -> str:
    return re.escape(f"{name}: expected {expected}, found {found}")


TRANSPOSED_DOWN = _shape(DOWN, (64, 128), (128, 64))
TRANSPOSED_O_PROJ = _shape(O_PROJ, (64, 128), (128, 64))
SHORT_NORM = _shape(NORM, (64,), (32,))


def _row(id: str, steps: list[Step], argv: list[str], *facts: str):
    return pytest.param(steps, argv, facts, id=id)


ROWS = [
    _row("dst-is-src", [_hf], ["convert", SRC, SRC, "--force"], "is the source"),
    _row("dst-contains-src", [_hf], ["convert", SRC, TMP, "--force"], "contains the source"),
    _row("dst-inside-src", [_hf], ["convert", SRC, SRC + "/out"], "lies inside the source"),
    _row(
        "dst-symlink-to-src", [_hf, _link_to_src], ["convert", SRC, TMP + "/link", "--force"], "is the source"
    ),
    _row("dst-exists", [_hf, _existing_dst("notes.txt")], ["convert", SRC, DST], "already exists", "--force"),
    _row(
        "force-over-other-files",
        [_hf, _existing_dst("notes.txt")],
        ["convert", SRC, DST, "--force"],
        r"holds other files \(notes\.txt\)",
    ),
    _row(
        "force-over-a-file",
        [_hf, _write_json("../dst", {"mine": True})],
        ["convert", SRC, DST, "--force"],
        "is a file",
    ),
    _row(
        "transposed-down-proj",
        [_hf, _edit_weights(_transposed(DOWN))],
        ["convert", SRC, DST],
        TRANSPOSED_DOWN,
    ),
    _row(
        "transposed-o-proj",
        [_hf, _edit_weights(_transposed(O_PROJ))],
        ["convert", SRC, DST],
        TRANSPOSED_O_PROJ,
    ),
    _row("short-norm", [_hf, _replace(NORM, lambda t: t[:32].clone())], ["convert", SRC, DST], SHORT_NORM),
    _row(
        "three-problems-at-once",
        [_hf, _edit_weights(_transposed(DOWN, O_PROJ)), _replace(NORM, lambda t: t[:32].clone())],
        ["convert", SRC, DST],
        r"3 problem\(s\)",
        TRANSPOSED_DOWN,
        TRANSPOSED_O_PROJ,
        SHORT_NORM,
    ),
    _row(
        "dtype-mix-in-fused-group",
        [_hf, _replace(UP, lambda t: t.to(torch.bfloat16))],
        ["convert", SRC, DST],
        "gate_proj",
        "up_proj",
        "one dtype",
    ),
    _row(
        "unmapped-key",
        [_hf, _replace("model.layers.0.self_attn.mystery.weight", lambda _: torch.zeros(2))],
        ["convert", SRC, DST],
        r"'model\.layers\.0\.self_attn\.mystery\.weight' is not mapped",
    ),
    _row(
        "missing-tensor",
        [_hf, _drop("model.layers.1.mlp.down_proj.weight")],
        ["convert", SRC, DST],
        r"decoder\.layers\.1\.mlp\.linear_fc2\.weight|down_proj",
    ),
    _row("truncated-shard", [_hf, _truncate("model.safetensors")], ["convert", SRC, DST], "truncated"),
    _row(
        "missing-shard",
        [
            _hf,
            _write_json(
                INDEX, {"weight_map": {"model.embed_tokens.weight": "model-00001-of-00002.safetensors"}}
            ),
            _delete("model.safetensors"),
        ],
        ["convert", SRC, DST],
        "do not exist",
        "model-00001-of-00002.safetensors",
    ),
    _row(
        "shards-without-index",
        [_hf, _rename("model.safetensors", "model-00001-of-00001.safetensors")],
        ["convert", SRC, DST],
        r"no model\.safetensors\.index\.json",
    ),
    _row(
        "wrong-index",
        [_hf, _index_with_bogus_entry],
        ["convert", SRC, DST],
        r"model\.layers\.0\.bogus\.weight",
        "does not hold it",
    ),
    _row("corrupt-config-json", [_hf, _truncate("config.json")], ["convert", SRC, DST], "not valid JSON"),
    _row(
        "unknown-model-type",
        [_hf, _edit_json("config.json", lambda c: c.update(model_type="mamba_lite"))],
        ["convert", SRC, DST],
        "no conversion template for model_type 'mamba_lite'",
    ),
    _row("src-missing", [], ["convert", SRC, DST], "does not exist"),
    _row("src-not-a-checkpoint", [_empty], ["convert", SRC, DST], "neither config.json"),
    _row("tp-zero", [_hf], ["convert", SRC, DST, "--tp", "0"], "--tp", "expected a positive integer, got 0"),
    _row("pp-zero", [_hf], ["convert", SRC, DST, "--pp", "0"], "--pp", "expected a positive integer, got 0"),
    _row(
        "vpp-zero", [_hf], ["convert", SRC, DST, "--vpp", "0"], "--vpp", "expected a positive integer, got 0"
    ),
    _row(
        "tp-not-dividing-heads",
        [_hf],
        ["convert", SRC, DST, "--tp", "3"],
        "num_attention_heads=4 is not divisible by tp=3",
    ),
    _row(
        "first-stage-too-large",
        [_hf],
        ["convert", SRC, DST, "--pp", "2", "--num-layers-in-first-pipeline-stage", "2"],
        "leaves 0 of the model's 2 layers",
    ),
    _row(
        "tp-with-torch-dist",
        [_hf],
        ["convert", SRC, DST, "--format", "torch_dist", "--tp", "2"],
        "--tp",
        "layout-free",
    ),
    _row(
        "ep-without-experts",
        [_hf],
        ["convert", SRC, DST, "--ep", "2"],
        r"expert parallelism \(ep=2",
        "this llama has no experts",
        "drop --ep",
    ),
    _row(
        "ep-not-dividing-experts",
        [_hf_of("qwen3_moe")],
        ["convert", SRC, DST, "--ep", "3"],
        "num_moe_experts=4 is not divisible by ep=3",
        r"\[1, 2, 4\]",
    ),
    _row(
        "etp-above-tp",
        [_hf_of("qwen3_moe")],
        ["convert", SRC, DST, "--etp", "2"],
        "tp=1, etp=2",
        "choose etp dividing tp",
    ),
    _row(
        "missing-expert",
        [_hf_of("qwen3_moe"), _drop("model.layers.1.mlp.experts.3.up_proj.weight")],
        ["convert", SRC, DST, "--ep", "2"],
        r"model\.layers\.1\.mlp\.experts\.3\.up_proj\.weight",
    ),
    _row(
        "fused-experts-wrong-shape",
        [_fused_of("qwen3_moe"), _replace(GATE_UP, lambda t: t[:, :, :60].clone())],
        ["convert", SRC, DST],
        re.escape(f"{GATE_UP} (fused experts)"),
        re.escape("(32, 60), the config implies (32, 64)"),
    ),
    _row(
        "fused-experts-one-short",
        [_fused_of("qwen3_moe"), _replace(GATE_UP, lambda t: t[:3].clone())],
        ["convert", SRC, DST],
        "incomplete",
        r"decoder\.layers\.0\.mlp\.experts\.local_experts\.3\.linear_fc1\.weight",
        "num_moe_experts=4",
    ),
    _row(
        "routing-megatron-cannot-express",
        [_hf_of("deepseek_v3"), _edit_json("config.json", lambda c: c.update(norm_topk_prob=False))],
        ["convert", SRC, DST],
        "norm_topk_prob=True",
        "norm_topk_prob=False",
    ),
    _row(
        "group-routing-megatron-cannot-express",
        [_hf_of("deepseek_v3"), _edit_json("config.json", lambda c: c.update(topk_group=2))],
        ["convert", SRC, DST],
        "top-2 experts",
        "num_experts_per_tok // topk_group = 1",
    ),
    _row(
        "verify-ep-not-dividing", [_hf_of("glm4_moe")], ["verify", SRC, "--ep", "3"], "not divisible by ep=3"
    ),
    _row(
        "mtp-repeat-differs",
        [_hf_of_mtp, _replace(MTP_EMBED, lambda t: t + 1)],
        ["convert", SRC, DST],
        re.escape(f"{MTP_EMBED} repeats model.embed_tokens.weight"),
        "differs from it",
    ),
    _row(
        "hf-config-with-hf-source",
        [_hf, _write_json("hf_config.json", {"model_type": "llama"})],
        ["convert", SRC, DST, "--hf-config", SRC + "/hf_config.json"],
        "--hf-config",
    ),
    _row(
        "missing-rank-file",
        [_mca, _delete((1, 1))],
        ["convert", SRC, DST],
        "missing rank file",
        "mp_rank_01_001",
    ),
    _row(
        "truncated-rank-file", [_mca, _truncate((0, 1))], ["convert", SRC, DST], "mp_rank_00_001", "truncated"
    ),
    _row(
        "corrupt-mca-config",
        [_mca, _truncate("mca_config.json")],
        ["convert", SRC, DST],
        "mca_config.json",
        "not valid JSON",
    ),
    _row(
        "mca-config-wrong-tp",
        [_mca, _edit_json("mca_config.json", lambda c: c["mca_config"].update(tensor_model_parallel_size=1))],
        ["convert", SRC, DST],
        "rank directories",
    ),
    # At tp2 every rank's linear_fc2 slice is square (64 x 64): its transpose has the same shape,
    # so the non-square slice of linear_fc1 (128 x 64) is the one transposed.
    _row(
        "rank-file-wrong-shape",
        [_mca, _edit_rank((0, 0), _transposed("decoder.layers.0.mlp.linear_fc1.weight"))],
        ["convert", SRC, DST],
        "mp_rank_00_000",
        "linear_fc1",
        re.escape("expected (128, 64), found (64, 128)"),
    ),
    _row(
        "mca-without-hf-config",
        [
            _mca,
            _edit_json("mca_config.json", lambda c: c.update(hf_config=None)),
            _delete("generation_config.json"),
        ],
        ["convert", SRC, DST],
        "bos_token_id",
        "eos_token_id",
        "cannot be rebuilt",
        "--hf-config",
    ),
    _row(
        "index-names-an-absolute-path",
        [_hf, _index_naming("/etc/passwd")],
        ["convert", SRC, DST],
        "/etc/passwd",
        "plain names inside its directory",
    ),
    _row(
        "index-names-a-file-outside",
        [_hf, _copy_outside, _index_naming("../outside.safetensors")],
        ["convert", SRC, DST],
        r"'\.\./outside\.safetensors'",
        "nothing outside was read",
    ),
    _row("shard-is-a-fifo", [_hf, _fifo("model.safetensors")], ["convert", SRC, DST], "is a FIFO"),
    _row("config-is-a-fifo", [_hf, _fifo("config.json")], ["convert", SRC, DST], "is a FIFO"),
    _row("verify-shard-is-a-fifo", [_hf, _fifo("model.safetensors")], ["verify", SRC], "is a FIFO"),
    _row(
        "header-negative-offset",
        [_hf, _edit_header(_offsets_of(NORM, lambda o, h: [o[0] - 8, o[1] - 8]))],
        ["convert", SRC, DST],
        re.escape(f"{NORM!r} has data_offsets that are not two ordered non-negative integers")
        + "|overlaps|gap",
    ),
    _row(
        "header-overlapping-offsets",
        [_hf, _edit_header(_offsets_of(NORM, lambda o, h: [o[0] - 4, o[1] - 4]))],
        ["convert", SRC, DST],
        "overlaps the tensor before it|leaves a gap",
    ),
    _row(
        "header-short-offsets",
        [_hf, _edit_header(_offsets_of(NORM, lambda o, h: [o[0], o[1] - 4]))],
        ["convert", SRC, DST],
        re.escape(f"{NORM!r}: its byte range does not hold a F32 tensor of shape (64,)"),
    ),
    _row(
        "header-offsets-past-the-end",
        [_hf, _edit_header(_offsets_of(NORM, lambda o, h: [o[0] + 10**9, o[1] + 10**9]))],
        ["convert", SRC, DST],
        "gap",
    ),
    _row(
        "header-shape-not-a-list",
        [_hf, _edit_header(_entry(NORM, shape="64"))],
        ["convert", SRC, DST],
        "shape that is not a list of non-negative integers",
    ),
    _row(
        "header-negative-dimension",
        [_hf, _edit_header(_entry(NORM, shape=[-64]))],
        ["convert", SRC, DST],
        "shape that is not a list of non-negative integers",
    ),
    _row(
        "header-dtype-missing",
        [_hf, _edit_header(_entry(NORM, dtype=None))],
        ["convert", SRC, DST],
        "not an entry of dtype, shape and data_offsets",
    ),
    _row(
        "header-shape-missing",
        [_hf, _edit_header(_entry(NORM, shape=None))],
        ["convert", SRC, DST],
        "not an entry of dtype, shape and data_offsets",
    ),
    _row(
        "header-entry-not-an-object",
        [_hf, _edit_header(lambda h: h.update({NORM: [1, 2, 3]}))],
        ["convert", SRC, DST],
        "not an entry of dtype, shape and data_offsets",
    ),
    _row(
        "header-dtype-unknown",
        [_hf, _edit_header(_entry(NORM, dtype="\u001b[31mRED"))],
        ["convert", SRC, DST],
        "stored as unknown",
    ),
    _row(
        "header-not-an-object",
        [_hf, _edit_header(lambda h: (h.clear(), h.update({"x": None})))],
        ["convert", SRC, DST],
        "not an entry",
    ),
    _row(
        "fp8-weight",
        [_hf, _replace(DOWN, lambda t: t.to(torch.float8_e4m3fn))],
        ["convert", SRC, DST],
        "stored as F8_E4M3",
        "does not read",
    ),
    _row(
        "integer-weight",
        [_hf, _replace(DOWN, lambda t: t.to(torch.int32))],
        ["convert", SRC, DST],
        re.escape(f"{DOWN}: stored as torch.int32, but a weight is floating point"),
    ),
    _row(
        "boolean-weight",
        [_hf, _replace(NORM, lambda t: t > 0)],
        ["convert", SRC, DST],
        re.escape(f"{NORM}: stored as torch.bool, but a weight is floating point"),
    ),
    _row(
        "rank-file-runs-code",
        [_mca, _pickled_payload((0, 1))],
        ["convert", SRC, DST],
        "mp_rank_00_001",
        r"weights_only=True\) refuses",
        "nothing in it was run",
    ),
    _row(
        "rank-file-integer-weight",
        [_mca, _edit_rank((0, 0), lambda s: s.update({NORM_MCA: s[NORM_MCA].to(torch.int64)}))],
        ["convert", SRC, DST],
        re.escape(f"model/{NORM_MCA}: stored as torch.int64"),
    ),
    _row(
        "config-nan-epsilon",
        [_hf, _edit_json("config.json", lambda c: c.update(rms_norm_eps=float("nan")))],
        ["convert", SRC, DST],
        r"rms_norm_eps \(Megatron's layernorm_epsilon\) must be a finite number > 0, found nan",
    ),
    _row(
        "config-inf-rope-theta",
        [_hf, _edit_json("config.json", lambda c: c.update(rope_theta=float("inf")))],
        ["convert", SRC, DST],
        "rope_theta is not a finite number",
    ),
    _row(
        "config-negative-size",
        [_hf, _edit_json("config.json", lambda c: c.update(hidden_size=-64))],
        ["convert", SRC, DST],
        "hidden_size must be a positive integer, found -64",
    ),
    _row(
        "config-zero-heads",
        [_hf, _edit_json("config.json", lambda c: c.update(num_attention_heads=0))],
        ["convert", SRC, DST],
        "num_attention_heads must be a positive integer, found 0",
    ),
    _row(
        "config-size-as-text",
        [_hf, _edit_json("config.json", lambda c: c.update(intermediate_size="128"))],
        ["convert", SRC, DST],
        "intermediate_size .* must be a positive integer, found str",
    ),
    _row(
        "config-layers-1e9",
        [_hf, _edit_json("config.json", lambda c: c.update(num_hidden_layers=1e9))],
        ["convert", SRC, DST],
        r"num_hidden_layers .* must be a positive integer, found 1000000000\.0",
    ),
    _row(
        "config-a-billion-layers",
        [_hf, _edit_json("config.json", lambda c: c.update(num_hidden_layers=10**9))],
        ["convert", SRC, DST],
        "must be at most 10000",
    ),
    _row(
        "config-more-layers-than-tensors",
        [_hf, _edit_json("config.json", lambda c: c.update(num_hidden_layers=500))],
        ["convert", SRC, DST],
        "claims 500 layers, but the checkpoint holds only 21 tensors",
    ),
    _row(
        "verify-config-more-layers-than-tensors",
        [_hf, _edit_json("config.json", lambda c: c.update(num_hidden_layers=500))],
        ["verify", SRC],
        "claims 500 layers",
    ),
    _row(
        "mca-config-a-billion-layers",
        [_mca, _edit_json("mca_config.json", lambda c: c["mca_config"].update(num_layers=10**9))],
        ["convert", SRC, DST],
        "mca_config.json is not a usable model config",
        "num_layers must be at most 10000",
    ),
    _row(
        "mca-config-layers-times-experts",
        [
            _hf_of("qwen3_moe"),
            lambda case: _to_mca(case, "qwen3_moe"),
            _edit_json(
                "mca_config.json", lambda c: c["mca_config"].update(num_layers=5000, num_moe_experts=5000)
            ),
        ],
        ["convert", SRC, DST],
        "5000 layers x 5000 experts exceeds 1000000 expert blocks",
    ),
    _row(
        "mca-config-more-layers-than-tensors",
        [_mca, _edit_json("mca_config.json", lambda c: c["mca_config"].update(num_layers=400))],
        ["convert", SRC, DST],
        "claims 400 layers, but the checkpoint holds only",
    ),
    _row(
        "mca-config-nan-epsilon",
        [
            _mca,
            _edit_json("mca_config.json", lambda c: c["mca_config"].update(layernorm_epsilon=float("inf"))),
        ],
        ["convert", SRC, DST, "--tp", "1"],
        "layernorm_epsilon must be a finite number > 0, found inf",
    ),
    _row(
        "deepstack-off-the-first-stage",
        [_hf_of("qwen3_vl")],
        ["convert", SRC, DST, "--pp", "4"],
        "decoder layers 0..1, which must be on the first pipeline stage",
        "num_layers_in_first_pipeline_stage >= 2",
    ),
    _row(
        "reshard-deepstack-off-the-first-stage",
        [_hf_of("qwen3_vl"), lambda case: _to_mca(case, "qwen3_vl")],
        ["convert", SRC, DST, "--pp", "4"],
        "must be on the first pipeline stage",
    ),
    _row(
        "verify-deepstack-off-the-first-stage",
        [_hf_of("qwen3_vl")],
        ["verify", SRC, "--pp", "4"],
        "must be on the first pipeline stage",
    ),
    _row(
        "grouped-gemm-on-a-dense-model",
        [_hf],
        ["convert", SRC, DST, "--moe-grouped-gemm"],
        "this llama has none, so it would do nothing",
    ),
    _row(
        "no-grouped-gemm-on-a-dense-model",
        [_hf],
        ["convert", SRC, DST, "--no-moe-grouped-gemm"],
        "this llama has none",
    ),
    _row(
        "grouped-gemm-with-torch-dist",
        [_hf_of("qwen3_moe")],
        ["convert", SRC, DST, "--format", "torch_dist", "--moe-grouped-gemm"],
        "--moe-grouped-gemm names the experts in 'torch' rank files",
    ),
    _row(
        "drop-mtp-without-mtp",
        [_hf_of("deepseek_v3")],
        ["convert", SRC, DST, "--drop-mtp"],
        "has none .its tensors stop at layer 1., so it would do nothing",
    ),
    _row("demo-unknown-model-type", [], ["demo", "--model-type", "bogus"], "no built-in tiny model", "llama"),
    _row("verify-mca-dir", [_mca], ["verify", SRC], "verify compares against transformers"),
    _row("verify-missing-dir", [], ["verify", SRC], "does not exist"),
    _row(
        "verify-image-on-text-model",
        [_hf],
        ["verify", SRC, "--image"],
        "--image needs a vision-language checkpoint",
    ),
    _row("verify-bad-layout", [_hf], ["verify", SRC, "--tp", "3"], "not divisible by tp=3"),
    _row(
        "verify-transposed-weight",
        [_hf, _edit_weights(_transposed(DOWN))],
        ["verify", SRC, "--tp", "2"],
        TRANSPOSED_DOWN,
    ),
]


# ---------------------------------------------------------------------- the contract
def _snapshot(root: Path) -> dict[str, object]:
    """Every entry under ``root``, hidden ones included: file bytes, link targets, directories."""
    entries: dict[str, object] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            rel = str(path.relative_to(root))
            if path.is_symlink():
                entries[rel] = ("link", os.readlink(path))
            elif path.is_fifo():  # never opened: it would block
                entries[rel] = "fifo"
            else:
                entries[rel] = "dir" if path.is_dir() else path.read_bytes()
    return entries


def _staging_left(directory: Path) -> list[str]:
    return sorted(
        p.name
        for p in directory.iterdir()
        if p.name.startswith(".") and (".tmp-" in p.name or ".old-" in p.name)
    )


def _check_one_error_line(err: str) -> None:
    lines = err.splitlines()
    assert "Traceback" not in err, err
    assert lines and lines[0].startswith("error:"), err
    assert all(line.startswith("  ") for line in lines[1:]), err


def _check_facts(err: str, facts: tuple[str, ...]) -> None:
    missing = [fact for fact in facts if not re.search(fact, err)]
    assert not missing, f"{missing} not in:\n{err}"


def _assert_refused(argv: list[str], facts: tuple[str, ...], root: Path, capsys) -> None:
    """The whole contract, for a command whose inputs and outputs all lie under ``root``."""
    before = _snapshot(root)
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2, f"main returned {code!r}; stderr:\n{err}"
    _check_one_error_line(err)
    _check_facts(err, facts)
    dst_parent = Path(argv[2]).parent if argv[0] == "convert" else root
    assert _staging_left(dst_parent) == []
    assert _snapshot(root) == before  # also: no MARKER, which a payload would have created


def _no_ranks(*args, **kwargs):
    raise AssertionError("verify got as far as running the model: the bad input was not refused first")


@pytest.mark.parametrize(("steps", "argv", "facts"), ROWS)
def test_bad_input_is_one_error_line_and_changes_nothing(
    steps, argv, facts, tiny_checkpoint, tmp_path, capsys, monkeypatch
):
    case = Case(tmp_path, tiny_checkpoint("llama"), tiny_checkpoint)
    for step in steps:
        step(case)
    monkeypatch.setitem(sys.modules, "mcore_adapter.verify", types.SimpleNamespace(verify=_no_ranks))
    paths = {"src": case.src, "dst": tmp_path / "dst", "tmp": tmp_path}
    _assert_refused([arg.format(**paths) for arg in argv], facts, tmp_path, capsys)


# ---------------------------------------------------------------------- several ranks
def _fail_on_rank_one(x):
    if int(os.environ["RANK"]) == 1:
        raise CheckpointError("rank one says no")
    return x


@pytest.mark.distributed
def test_a_user_error_on_one_rank_is_raised_once_by_launch():
    with pytest.raises(CheckpointError, match="rank one says no"):
        launch(_fail_on_rank_one, 2, 5)
