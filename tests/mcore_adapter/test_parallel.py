"""Every dense template at TP2, PP2, VPP2 and TP2xPP2 (and more layouts Megatron-Core accepts),
and every mixture-of-experts template at TP2, EP2, TP2xEP2, expert tensor parallelism and PP2,
with both token dispatchers, in real multi-process jobs (gloo on CPU): logits parity with
transformers, loading the offline converter's rank files, export back to HF, and torch_dist
reloaded at another layout.

One job per world size runs all its cases (each rank imports megatron once). Results are also
recorded (``record_layout``) for tools/support_matrix.py, which renders the README's layout
columns.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from layout_cases import run_cases  # this folder's helper (the ranks import it too)

from mcore_adapter.launch import launch
from mcore_adapter.models.converter.convert import convert_hf_to_mca
from mcore_adapter.models.converter.layout import ParallelLayout
from mcore_adapter.parity import FP32_RTOL
from mcore_adapter.testing import MOE_MODELS, TINY_MODELS, TINY_VL_MODELS

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TP2 = {"tp": 2}
PP2 = {"pp": 2}
VPP2 = {"pp": 2, "vpp": 2}
TP2PP2 = {"tp": 2, "pp": 2}
# Further layouts Megatron-Core accepts: query groups (2) < tp, deeper and uneven pipelines.
TP4 = {"tp": 4}
PP4 = {"pp": 4}
TP2PP2_UNEVEN = {
    "tp": 2,
    "pp": 2,
    "num_layers_in_first_pipeline_stage": 1,
    "num_layers_in_last_pipeline_stage": 3,
}
TP2VPP2 = {"tp": 2, "pp": 2, "vpp": 2}
# Expert parallelism (world sizes: pp x lcm(tp, etp x ep)).
EP2 = {"ep": 2}
TP2EP2 = {"tp": 2, "ep": 2}
TP2EP2_ETP1 = {"tp": 2, "ep": 2, "etp": 1}  # experts whole on each rank, attention split
PP2EP2 = {"pp": 2, "ep": 2}
TP2_ETP1 = {"tp": 2, "etp": 1}

NAMES = {
    "TP2": TP2,
    "PP2": PP2,
    "VPP2": VPP2,
    "TP2xPP2": TP2PP2,
    "TP4": TP4,
    "PP4": PP4,
    "TP2xPP2 uneven": TP2PP2_UNEVEN,
    "TP2xPP2xVPP2": TP2VPP2,
    "EP2": EP2,
    "TP2xEP2": TP2EP2,
    "TP2xEP2 ETP1": TP2EP2_ETP1,
    "PP2xEP2": PP2EP2,
    "TP2 ETP1": TP2_ETP1,
}

# Mixture of experts: (model_type, variant, layout name, token dispatcher, reload layout). A
# variant is a tiny-model override set (deepseek_v3 without the q low-rank projection).
MOE_VARIANTS = {"": {}, "q_lora_rank=None": {"q_lora_rank": None}, "MTP": {"mtp_layers": 1}}


def _moe_specs(world: int) -> list[tuple[str, str, str, str, dict | None]]:
    if world == 2:
        specs = [(t, "", "TP2", "allgather", None) for t in MOE_MODELS]
        specs += [(t, "", "EP2", "alltoall", None) for t in MOE_MODELS]
        specs += [(t, "", "PP2", "alltoall", None) for t in ("deepseek_v3", "glm4_moe")]  # dense stage 0
        specs += [
            ("qwen3_moe", "", "EP2", "allgather", TP2),  # saved at EP2, reloaded at TP2
            ("qwen2_moe", "", "TP2xEP2 ETP1", "alltoall", None),
            ("mixtral", "", "TP2 ETP1", "allgather", None),
            ("deepseek_v3", "q_lora_rank=None", "EP2", "alltoall", None),
            ("deepseek_v3", "MTP", "PP2", "alltoall", EP2),  # MTP on the last stage, with its embedding
            # Vision-language MoE: text and image prompts; deepstack layers on the first stage.
            ("qwen3_vl_moe", "", "EP2", "alltoall", TP2),
            ("qwen3_vl_moe", "", "TP2", "allgather", None),
            ("qwen3_vl_moe", "", "PP2", "alltoall", None),
            # Gated DeltaNet layers 0-1 on stage 0, the full attention layer 2 on stage 1.
            ("qwen3_next", "", "PP2", "alltoall", TP2),
            ("qwen3_5_moe", "", "TP2", "allgather", None),
            ("qwen3_5_moe", "", "EP2", "alltoall", None),
            ("qwen3_5_moe", "", "PP2", "alltoall", EP2),
        ]
        return specs
    specs = [(t, "", "TP2xEP2", "alltoall", None) for t in MOE_MODELS]
    specs += [
        ("qwen3_moe", "", "TP2xEP2", "allgather", None),
        ("glm4_moe", "", "PP2xEP2", "alltoall", TP2),
        ("deepseek_v3", "", "TP2xPP2", "allgather", EP2),
        ("deepseek_v3", "MTP", "TP2xEP2", "alltoall", None),
        ("qwen3_vl_moe", "", "TP2xEP2", "alltoall", None),
        ("qwen3_5_moe", "", "TP2xEP2", "alltoall", None),
        ("qwen3_next", "", "TP2xPP2", "allgather", None),
    ]
    return specs


def _moe_id(model_type: str, variant: str, name: str, dispatcher: str) -> str:
    return "-".join(filter(None, [model_type, variant, name.replace(" ", "_"), dispatcher]))


def _specs(world: int) -> list[tuple[str, bool, str, dict | None]]:
    """(model_type, tied, layout name, layout to reload torch_dist at) for a world size."""
    types = sorted(set(TINY_MODELS) - set(MOE_MODELS))
    if world == 2:
        specs = [
            (t, tie, name, None) for t in types for tie in (False, True) for name in ("TP2", "PP2", "VPP2")
        ]
        specs[0] = (*specs[0][:3], PP2)  # first llama case: saved at TP2, reloaded at PP2
        # Vision-language: the tower on the first stage, replicated over TP; text and image prompts.
        vision = [("qwen2_vl", False, "TP2", PP2), ("qwen2_vl", True, "PP2", None)]
        vision += [("qwen2_5_vl", True, "TP2", None), ("qwen2_5_vl", False, "PP2", TP2)]
        # Qwen3-VL: deepstack layers 0 and 1, both on the first of the two stages.
        vision += [("qwen3_vl", False, "TP2", PP2), ("qwen3_vl", True, "PP2", TP2)]
        # Qwen3.5: stage 0 ends with a full attention layer, stage 1 starts with Gated DeltaNet.
        vision += [("qwen3_5", False, "TP2", None), ("qwen3_5", False, "PP2", TP2)]
        return [*specs, *vision]
    specs = [(t, tie, "TP2xPP2", None) for t in types for tie in (False, True)]
    specs[0] = (*specs[0][:3], TP4)
    specs += [
        ("llama", False, "TP4", None),
        ("qwen3", True, "PP4", TP2VPP2),
        ("mistral", False, "TP2xPP2 uneven", None),
        ("qwen2", True, "TP2xPP2xVPP2", TP2PP2),
        ("qwen3_vl", False, "TP2xPP2", None),  # deepstack layers on the first of two stages, TP-split
        ("qwen3_5", True, "TP2xPP2", None),
    ]
    return specs


# A tiny Llama and its tp2pp2 conversion by ROLL's own mcore_adapter (see its README).
ROLL_WRITTEN = Path(__file__).resolve().parents[1] / "data" / "roll_written"
ROLL_CASE = {
    "id": "roll-written-llama-TP2xPP2",
    "model_type": "llama",
    "tied": False,
    "layout_name": "TP2xPP2",
    "layout": TP2PP2,
    "hf_dir": str(ROLL_WRITTEN / "llama_hf"),
    "torch_dir": str(ROLL_WRITTEN / "llama_tp2pp2_by_roll"),  # loaded at its own layout
    "torch_dist_reload_layout": None,
}


def _case(work: Path, case_id: str, model_type: str, tie: bool, name: str, hf_dir, reload) -> dict:
    """One case of a job: the HF checkpoint and its offline conversion to the case's layout."""
    torch_dir = work / f"{case_id}-torch"
    convert_hf_to_mca(hf_dir, torch_dir, layout=ParallelLayout(**NAMES[name]), progress=False)
    return {
        "id": case_id,
        "model_type": model_type,
        "tied": tie,
        "layout_name": name,
        "layout": NAMES[name],
        "hf_dir": str(hf_dir),
        "torch_dir": str(torch_dir),
        "torch_dist_reload_layout": reload,
        "imports": ["roll_models"],  # the ranks' transformers must know roll_models' InternLM2
    }


def _run(world: int, tiny_checkpoint, tmp_path_factory, record_layout) -> dict[str, dict]:
    work = tmp_path_factory.mktemp(f"world{world}")
    cases = [ROLL_CASE] if world == 4 else []
    for model_type, tie, name, reload in _specs(world):
        # 4 layers for VPP2 and PP4 (the vision-language tiny model keeps its 2).
        hf_dir = tiny_checkpoint(
            model_type, tie, **({} if model_type in TINY_VL_MODELS else {"num_hidden_layers": 4})
        )
        case_id = f"{model_type}-{'tied' if tie else 'untied'}-{name.replace(' ', '_')}"
        cases.append(_case(work, case_id, model_type, tie, name, hf_dir, reload))
    for model_type, variant, name, dispatcher, reload in _moe_specs(world):
        hf_dir = tiny_checkpoint(model_type, **MOE_VARIANTS[variant])
        case_id = _moe_id(model_type, variant, name, dispatcher)
        case = _case(work, case_id, model_type, False, name, hf_dir, reload)
        case["layout_name"] = f"{name} {dispatcher}" + (f" ({variant})" if variant else "")
        case["overrides"] = {"moe_token_dispatcher_type": dispatcher}
        cases.append(case)
    results = {r["id"]: r for r in launch(run_cases, world, cases, str(work))[0]}
    for r in results.values():
        if r["id"] == ROLL_CASE["id"]:
            continue  # not a tiny model of the support matrix
        record_layout(r["model_type"], r["tied"], r["layout_name"], r["logits_diff"], _problems(r) == [])
    return results


def _problems(r: dict) -> list[str]:
    problems = []
    if not r["logits_diff"].passed():  # fp32; the reductions' order differs by layout
        problems.append(
            f"logits differ from transformers beyond {FP32_RTOL:g}: {r['logits_diff'].describe()}"
        )
    if r["torch_format_vs_hf_load"] != 0.0:
        problems.append(
            f"loading the offline rank files changed the logits by {r['torch_format_vs_hf_load']:.3g}"
        )
    if r["hf_round_trip_problems"]:
        problems.append(f"export to HF is not bit-exact: {r['hf_round_trip_problems'][:3]}")
    if not r["export_names_match"]:
        problems.append("export_hf_weights did not yield exactly the checkpoint's names")
    if r["layout"].get("pp", 1) > 1 and max(r["hf_tensors_read_per_rank"]) >= r["hf_tensors_total"]:
        problems.append(f"a pipeline rank read every HF tensor: {r['hf_tensors_read_per_rank']}")
    reload = r.get("torch_dist_reload_rel_diff")
    if r["torch_dist_reload_layout"] and not (reload is not None and reload <= FP32_RTOL):
        problems.append(
            f"torch_dist reloaded at {r['torch_dist_reload_layout']} differs from transformers by {reload:.3g} "
            "of the logits' scale"
        )
    return problems


@pytest.fixture(scope="module")
def world2(tiny_checkpoint, tmp_path_factory, record_layout):
    return _run(2, tiny_checkpoint, tmp_path_factory, record_layout)


@pytest.fixture(scope="module")
def world4(tiny_checkpoint, tmp_path_factory, record_layout):
    return _run(4, tiny_checkpoint, tmp_path_factory, record_layout)


def _ids(world: int) -> list[str]:
    dense = [f"{t}-{'tied' if tie else 'untied'}-{n.replace(' ', '_')}" for t, tie, n, _ in _specs(world)]
    return dense + [_moe_id(t, v, n, d) for t, v, n, d, _ in _moe_specs(world)]


@pytest.mark.parametrize("case_id", _ids(2))
def test_two_ranks(case_id, world2):
    assert _problems(world2[case_id]) == []  # includes the torch_dist reload where a case has one


@pytest.mark.parametrize("case_id", _ids(4))
def test_four_ranks(case_id, world4):
    assert _problems(world4[case_id]) == []


def test_checkpoint_written_by_roll_loads_at_its_layout(world4):
    """ROLL's rank files load into the model at tp2pp2 with the logits of the HF load, exactly,
    and the model exports its HF source back bit-exactly."""
    assert _problems(world4[ROLL_CASE["id"]]) == []


def test_every_template_at_every_required_layout():
    covered = {(t, n) for t, _, n, _ in _specs(2) + _specs(4)}
    for model_type in sorted(set(TINY_MODELS) - set(MOE_MODELS)):
        for name in ("TP2", "PP2", "VPP2", "TP2xPP2"):
            assert (model_type, name) in covered
    moe = {(t, n, d) for t, _, n, d, _ in _moe_specs(2) + _moe_specs(4)}
    for model_type in MOE_MODELS:
        for name in ("TP2", "EP2", "TP2xEP2"):
            assert {(model_type, name, "allgather"), (model_type, name, "alltoall")} & moe
    for model_type in ("deepseek_v3", "glm4_moe"):  # a dense first stage
        assert any(t == model_type and n.startswith("PP2") for t, n, _ in moe)


def test_verify_cli_launches_the_ranks_itself(tiny_checkpoint, capsys):
    from mcore_adapter.cli import main

    path = str(tiny_checkpoint("mistral", True))
    from mcore_adapter.parity import FP32_RTOL

    assert main(["verify", path, "--tp", "2", "--pp", "2"]) == 0
    verdict, *fields = capsys.readouterr().out.strip().splitlines()[-1].split()
    fields = dict(field.split("=", 1) for field in fields)
    assert verdict == "PASS" and fields["layout"] == "tp2pp2" and float(fields["max_rel_diff"]) <= FP32_RTOL
    # A layout Megatron rejects fails before any rank starts.
    assert main(["verify", path, "--tp", "3"]) == 2
    assert "num_attention_heads=4 is not divisible by tp=3" in capsys.readouterr().err
