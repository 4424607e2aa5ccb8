"""Benchmark of the offline converter: its fixed cost and its streaming rate, both directions,
against the floor of reading and writing the same bytes, and optionally against an earlier
version of itself (``--baseline REF``) and a converter that loads the whole model first.

A synthetic llama-shaped HF checkpoint (random bf16 weights, ~1 GB safetensors shards as on the
hub) is generated at two sizes, and each step runs as its own process, timed whole, imports
included, because that is what a user waits for:

- floor: read every tensor with ``safetensors`` and write the same bytes to one file;
- ours HF->MCA: ``mcore-adapter convert SRC DST --tp 2 --pp 2``; ours MCA->HF: back to HF;
- base HF->MCA / base MCA->HF: the same with the converter of git ``--baseline REF`` (checked
  out in a worktree under the workdir); both read the same MCA directory;
- naive HF->MCA (``--naive``): load every shard whole, convert and split in memory, then
  ``torch.save`` each rank (memory-hungry: about 2.5x the checkpoint).

Steps are interleaved and repeated (``--repeat``, median kept), with dirty pages flushed before
each. From the two sizes come the marginal rate, (size_b - size_a) / (time_b - time_a), which
no fixed cost distorts, and the fixed cost, the time extrapolated to an empty checkpoint.
Startup is also measured on its own: ``--help``, and a whole conversion of a tiny checkpoint
(and, for ours, the time until the first tensor is written: the converter logs the end of its
dry run), with the venv's compiled bytecode and without any (an empty ``PYTHONPYCACHEPREFIX``
and ``PYTHONDONTWRITEBYTECODE``: what a venv installed without ``compile-bytecode`` pays when the
environment forbids writing ``.pyc`` files, as these machines do).

With ``--drop-caches`` (root) every step starts from the same memory state: its input in the
page cache and nothing else (see ``drop_page_cache``); without it, on a machine whose memory the
checkpoints fill, a step's time depends on what the steps before it left in the page cache.

Peak RSS is the step's ``ru_maxrss`` from ``os.wait4``, measured through a small runner process
(see ``_RUNNER``); the anonymous part (``RssAnon``, sampled from ``/proc``) is printed beside it.

Usage: ``python tools/bench_convert.py [--size-gb 1 4] [--repeat 3] [--baseline REF] [--naive]``;
``--moe [...]`` runs the mixture-of-experts case instead (``tools/bench_moe.py``, its options).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GB = 10**9  # throughput and checkpoint sizes: decimal, as disks and the hub count
GIB = 1024**3  # memory
MAX_SHARD_BYTES = 10**9  # transformers' max_shard_size="1GB"
LAYOUT = ["--tp", "2", "--pp", "2"]
REPO = Path(__file__).resolve().parents[1]

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "rope_theta": 10000.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}  # as hub configs are: no head_dim, attention_bias, mlp_bias or tie_word_embeddings
HEAD_DIM = 128

GOAL_FLOOR_RATIO = 0.8
GOAL_FIXED_COST_OVER_FLOOR = 1.5  # seconds


# ---------------------------------------------------------------------- synthetic checkpoint
def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's tensors, layer-relative names."""
    h, ffn, d = cfg["hidden_size"], cfg["intermediate_size"], HEAD_DIM
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    return {
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "mlp.gate_proj.weight": (ffn, h),
        "mlp.up_proj.weight": (ffn, h),
        "mlp.down_proj.weight": (h, ffn),
        "input_layernorm.weight": (h,),
        "post_attention_layernorm.weight": (h,),
    }


def model_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Every tensor of the HF checkpoint, in the order ``save_pretrained`` writes them."""
    embedding = (cfg["vocab_size"], cfg["hidden_size"])
    shapes = {"model.embed_tokens.weight": embedding}
    for i in range(cfg["num_hidden_layers"]):
        shapes.update({f"model.layers.{i}.{k}": s for k, s in layer_shapes(cfg).items()})
    shapes["model.norm.weight"] = (cfg["hidden_size"],)
    shapes["lm_head.weight"] = embedding
    return shapes


def config_for_size(size_bytes: float, itemsize: int, pp: int = 2) -> dict:
    """The llama config whose weights come closest to ``size_bytes`` (layers a multiple of pp)."""
    cfg = {**LLAMA_CONFIG}
    per_layer = sum(math.prod(s) for s in layer_shapes(cfg).values()) * itemsize
    fixed = (2 * cfg["vocab_size"] * cfg["hidden_size"] + cfg["hidden_size"]) * itemsize
    layers = round(max(size_bytes - fixed, 0) / per_layer / pp) * pp
    cfg["num_hidden_layers"] = max(layers, pp)
    return cfg


def generate_checkpoint(path: Path, cfg: dict, dtype_name: str) -> None:
    """Write config.json and random safetensors shards, one tensor in memory at a time."""
    import torch

    from mcore_adapter.models.converter.hf_io import SafetensorsWriter

    dtype = getattr(torch, dtype_name)
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**cfg, "torch_dtype": dtype_name}, indent=2) + "\n")
    shapes = model_shapes(cfg)
    writer = SafetensorsWriter(path, {n: (s, dtype) for n, s in shapes.items()}, MAX_SHARD_BYTES)
    generator = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        if name.endswith("norm.weight"):
            tensor = torch.ones(shape, dtype=dtype)
        else:
            tensor = torch.randn(shape, generator=generator).mul_(0.02).to(dtype)
        writer.write(name, tensor)
    writer.close()


# ---------------------------------------------------------------------- hidden child modes
def run_floor(src: Path, dst: Path) -> None:
    """Read every tensor with safetensors and write the same bytes to one file."""
    import torch
    from safetensors import safe_open

    with open(dst, "wb") as out:
        for shard in sorted(src.glob("*.safetensors")):
            with safe_open(shard, framework="pt") as f:
                for name in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    tensor = f.get_tensor(name)
                    out.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy())


def run_naive(src: Path, dst: Path) -> None:
    """HF -> MCA the naive way: the whole model in memory, then ``torch.save`` per rank."""
    import torch
    from safetensors.torch import load_file

    from mcore_adapter.models.converter.dist_converter import DistConverter
    from mcore_adapter.models.converter.layout import ParallelLayout
    from mcore_adapter.models.converter.mca_io import chunk_key, torch_rank_file
    from mcore_adapter.models.converter.template import get_template

    config = json.loads((src / "config.json").read_text())
    template = get_template(config["model_type"])
    mca_kwargs = template.convert_hf_to_mca_config(config)
    hf: dict[str, torch.Tensor] = {}
    for shard in sorted(src.glob("*.safetensors")):
        hf.update(load_file(shard))
    mapper = template.mapper(template.op_config(mca_kwargs), to_mca=True)
    mca: dict[str, torch.Tensor] = {}
    for name, tensor in hf.items():
        mca.update(mapper.push(name, tensor))
    mapper.finish()

    layout = ParallelLayout(tp=2, pp=2)
    dist = DistConverter({**mca_kwargs, **layout.to_kwargs()}, layout)
    ranks: dict[tuple[int, int], dict[str, dict[str, torch.Tensor]]] = {
        rank: {} for rank in dist.layout.ranks()
    }
    for name, tensor in mca.items():
        for chunk, local in dist.placements(name):
            for tp_rank, part in enumerate(dist.split(name, tensor)):
                model = ranks[tp_rank, chunk.pp_rank].setdefault(chunk_key(chunk.vp_stage), {})
                model[local] = part.clone()
    for (tp_rank, pp_rank), chunks in ranks.items():
        file = torch_rank_file(dst, tp_rank, pp_rank, layout.pp)
        file.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**chunks, "checkpoint_version": 3.0, "iteration": 1}, file)


# ---------------------------------------------------------------------- measuring a process
@dataclass
class Measure:
    seconds: float
    maxrss: int  # bytes, ru_maxrss
    anon: int  # bytes, sampled peak RssAnon
    first_tensor: float | None = None  # seconds until the converter logged the end of its dry run


# Runs a step and reports its peak memory and when the converter's dry run ended. Each step is
# started from this small process rather than from the benchmark itself: Linux carries a
# parent's RSS high-water mark into a forked child's ru_maxrss (the mm is copied at fork and its
# peak kept across exec), so children of a process that generated a 2 GB checkpoint would all
# report at least its size.
_RUNNER = r"""
import json, os, subprocess, sys, threading, time
out, cmd = sys.argv[1], sys.argv[2:]
start = time.perf_counter()
proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
peak, stop, first, tail = [0], threading.Event(), [None], []

def sample():  # ru_maxrss mixes in file pages: sample the anonymous part too
    path = f"/proc/{proc.pid}/status"
    while not stop.wait(0.02):
        try:
            text = open(path).read()
        except OSError:
            return
        for line in text.splitlines():
            if line.startswith("RssAnon:"):
                peak[0] = max(peak[0], int(line.split()[1]) * 1024)

threading.Thread(target=sample, daemon=True).start()
for line in proc.stderr:  # the converter logs "...checked every tensor..." when its dry run ends
    if first[0] is None and "checked every tensor" in line:
        first[0] = time.perf_counter() - start
    tail = (tail + [line])[-40:]
_, status, usage = os.wait4(proc.pid, 0)
stop.set()
with open(out, "w") as f:
    json.dump({"maxrss": usage.ru_maxrss * 1024, "anon": peak[0], "first": first[0],
               "exit": os.waitstatus_to_exitcode(status), "tail": "".join(tail)}, f)
"""


def measure(cmd: list[str], log: Path, env: dict[str, str] | None = None) -> Measure:
    """Run ``cmd`` as a process; its wall time and peak memory. Fails loudly on error."""
    os.sync()  # earlier steps' dirty pages are not this step's to write back
    report = log.with_suffix(".json")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", _RUNNER, str(report), *map(str, cmd)], check=True, env=env)
    seconds = time.perf_counter() - start
    result = json.loads(report.read_text())
    if result["exit"] != 0:
        raise SystemExit(f"step failed (exit {result['exit']}): {' '.join(map(str, cmd))}\n{result['tail']}")
    return Measure(seconds, result["maxrss"], result["anon"], result["first"])


def median(measures: list[Measure]) -> Measure:
    pick = sorted(measures, key=lambda m: m.seconds)[len(measures) // 2]
    firsts = [m.first_tensor for m in measures if m.first_tensor is not None]
    return Measure(
        pick.seconds,
        max(m.maxrss for m in measures),
        max(m.anon for m in measures),
        statistics.median(firsts) if firsts else None,
    )


# ---------------------------------------------------------------------- converters
def converter(baseline_src: Path | None) -> list[str]:
    """The command that runs ``mcore-adapter``: this checkout, or the baseline's sources (put
    first on sys.path, ahead of this checkout's editable install)."""
    if baseline_src is None:
        return [str(Path(sys.executable).parent / "mcore-adapter")]
    code = f"import sys; sys.path.insert(0, {str(baseline_src)!r}); from mcore_adapter.cli import main; sys.exit(main())"
    return [sys.executable, "-c", code]


def checkout_baseline(ref: str, root: Path) -> Path:
    tree = root / "baseline"
    subprocess.run(
        ["git", "-C", str(REPO), "worktree", "add", "--detach", str(tree), ref],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    src = tree / "packages" / "mcore_adapter" / "src"
    # Compiled like this checkout's (uv's compile-bytecode): only torch & co. differ between them.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(src)], check=True)
    return src


def remove_worktree(root: Path) -> None:
    if (root / "baseline").exists():
        subprocess.run(
            ["git", "-C", str(REPO), "worktree", "remove", "--force", str(root / "baseline")], check=False
        )


def step_commands(src: Path, mca: Path, work: Path, baseline: Path | None, naive: bool) -> dict:
    """Each step's command line and output path. Both converters' MCA->HF read ``mca`` (ours)."""
    me = [sys.executable, str(Path(__file__).resolve())]
    steps = {
        "floor": ([*me, "--_floor", str(src), str(work / "floor.bin")], work / "floor.bin"),
        "ours HF->MCA": ([*converter(None), "convert", str(src), str(mca), *LAYOUT], mca),
        "ours MCA->HF": ([*converter(None), "convert", str(mca), str(work / "hf_out")], work / "hf_out"),
    }
    if baseline is not None:
        base = converter(baseline)
        steps["base HF->MCA"] = (
            [*base, "convert", str(src), str(work / "base_mca"), *LAYOUT],
            work / "base_mca",
        )
        steps["base MCA->HF"] = ([*base, "convert", str(mca), str(work / "base_hf")], work / "base_hf")
    if naive:
        steps["naive HF->MCA"] = ([*me, "--_naive", str(src), str(work / "naive")], work / "naive")
    return steps


def drop_page_cache(warm: Path) -> None:
    """Start a step from a known memory state (``--drop-caches``, root only): every dirty page
    written, the page cache emptied, then the step's input read once, so the input is cached
    and nothing else is. Without it a step that writes into a full page cache pays the kernel's
    reclaim (measured here: the floor's system time went from 1.9 to 5.3 s on the same 4 GB),
    and which step pays depends on what ran before."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")
    for file in [warm] if warm.is_file() else sorted(p for p in warm.rglob("*") if p.is_file()):
        with open(file, "rb", buffering=0) as f:
            while f.read(64 << 20):
                pass


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


# ---------------------------------------------------------------------- checks
def tensor_bytes(hf_dir: Path) -> tuple[int, str, int]:
    """Total tensor bytes of an HF dir, and its largest tensor's name and bytes."""
    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    sizes = {n: t.numel() * t.element_size() for n, t in HFCheckpoint(hf_dir).tensors(meta=True)}
    largest = max(sizes, key=sizes.__getitem__)
    return sum(sizes.values()), largest, sizes[largest]


def check_round_trip(src: Path, out: Path, num_layers: int) -> int:
    """Compare the embedding, output layer, final norm and the first and last layers bit by bit."""
    import torch

    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    a, b = HFCheckpoint(src), HFCheckpoint(out)
    if set(a.weight_map) != set(b.weight_map):
        raise SystemExit(
            f"round trip changed the tensor names: {sorted(set(a.weight_map) ^ set(b.weight_map))[:10]}"
        )
    prefixes = (
        "model.embed_tokens.",
        "lm_head.",
        "model.norm.",
        "model.layers.0.",
        f"model.layers.{num_layers - 1}.",
    )
    names = [n for n in a.weight_map if n.startswith(prefixes)]
    for name in names:  # one by one: the two checkpoints need not be sharded alike
        (_, x), (_, y) = next(a.tensors([name])), next(b.tensors([name]))
        if x.dtype != y.dtype or not torch.equal(x, y):
            raise SystemExit(f"round trip changed {name}")
    return len(names)


def check_same_ranks(ours: Path, other: Path) -> int:
    """Another converter must have written the same rank files (names, shapes, values)."""
    import torch

    files = sorted(p.relative_to(ours) for p in ours.rglob("model_optim_rng.pt"))
    for rel in files:
        x = torch.load(ours / rel, mmap=True, weights_only=True)["model"]
        y = torch.load(other / rel, mmap=True, weights_only=True)["model"]
        if set(x) != set(y) or not all(torch.equal(x[k], y[k]) for k in x):
            raise SystemExit(f"{rel}: {other.name} and ours hold different tensors")
    return len(files)


def check_output(step: str, out: Path, src: Path, mca: Path, num_layers: int) -> None:
    """The first run of each step is checked: ours round trips bit-exactly, the other
    converters write the same rank files as ours."""
    if step == "ours MCA->HF":
        print(f"  check: {check_round_trip(src, out, num_layers)} tensors bit-exact after HF->MCA->HF")
    elif step.endswith("HF->MCA") and out != mca:
        print(f"  check: {check_same_ranks(mca, out)} rank files of {step} identical to ours")


# ---------------------------------------------------------------------- one size
@dataclass
class SizeResult:
    requested_gb: float
    layers: int
    total: int
    largest: int
    steps: dict[str, Measure]


def bench_size(size_gb: float, work: Path, args: argparse.Namespace, baseline: Path | None) -> SizeResult:
    import torch

    dtype_name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
    cfg = config_for_size(size_gb * GB, getattr(torch, dtype_name).itemsize)
    src, mca = work / "hf", work / "mca"
    generate_checkpoint(src, cfg, dtype_name)
    total, largest_name, largest = tensor_bytes(src)
    print(
        f"\n## {total / GB:.3f} GB: llama hidden {cfg['hidden_size']}, {cfg['num_hidden_layers']} layers, "
        f"{dtype_name}; largest tensor {largest_name} {largest / 2**20:.0f} MiB",
        flush=True,
    )
    commands = step_commands(src, mca, work, baseline, args.naive)
    measure(commands["floor"][0], work / "warmup")  # warm the page cache, not measured
    remove(commands["floor"][1])
    runs: dict[str, list[Measure]] = {step: [] for step in commands}
    for run in range(args.repeat):
        for step, (cmd, out) in commands.items():
            remove(out)
            if args.drop_caches:
                drop_page_cache(mca if step.endswith("MCA->HF") else src)
            runs[step].append(measure(cmd, work / step.replace(" ", "_").replace(">", "")))
            print(f"  run {run + 1}/{args.repeat} {step:<14} {runs[step][-1].seconds:7.2f} s", flush=True)
            if run == 0:
                check_output(step, out, src, mca, cfg["num_hidden_layers"])
            if out != mca:  # only the input of the MCA->HF steps stays: the page cache holds the
                remove(out)  # source, it and one output, so no step reads what another evicted
    return SizeResult(
        size_gb, cfg["num_hidden_layers"], total, largest, {s: median(m) for s, m in runs.items()}
    )


# ---------------------------------------------------------------------- startup
def bytecode_env(root: Path, compiled: bool) -> dict[str, str]:
    """With the venv's compiled bytecode, or without any (an empty private cache, not written)."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    if compiled:
        env.pop("PYTHONPYCACHEPREFIX", None)
        return env
    empty = root / "no-bytecode"
    empty.mkdir(exist_ok=True)
    return {**env, "PYTHONPYCACHEPREFIX": str(empty), "PYTHONDONTWRITEBYTECODE": "1"}


def measure_startup(root: Path, baseline: Path | None, repeat: int) -> dict[tuple[str, bool], Measure]:
    """``--help`` and a whole conversion of a tiny checkpoint (2 layers of hidden 256), each way,
    with and without compiled bytecode."""
    tiny = root / "tiny"
    cfg = {
        **LLAMA_CONFIG,
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_attention_heads": 2,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "num_hidden_layers": 2,
    }
    generate_checkpoint(tiny / "hf", cfg, "bfloat16")  # head_dim 256 / 2 = HEAD_DIM
    me = [sys.executable, str(Path(__file__).resolve())]
    cases = {"floor": [*me, "--_floor", str(tiny / "hf"), str(tiny / "floor.bin")]}
    for who, base in [("ours", None), ("base", baseline)]:
        if who == "base" and baseline is None:
            continue
        cli = converter(base)
        cases[f"{who} --help"] = [*cli, "--help"]
        cases[f"{who} HF->MCA"] = [*cli, "convert", str(tiny / "hf"), str(tiny / f"{who}_mca"), *LAYOUT]
        cases[f"{who} MCA->HF"] = [*cli, "convert", str(tiny / f"{who}_mca"), str(tiny / f"{who}_hf")]
    results: dict[tuple[str, bool], Measure] = {}
    for compiled in (True, False):
        env = bytecode_env(root, compiled)
        runs: dict[str, list[Measure]] = {case: [] for case in cases}
        for _ in range(repeat):
            for case, cmd in cases.items():
                for p in tiny.glob("*_hf"):
                    remove(p)
                if case.endswith("HF->MCA"):
                    remove(tiny / f"{case.split()[0]}_mca")
                remove(tiny / "floor.bin")
                runs[case].append(measure(cmd, root / "startup", env))
        results.update({(case, compiled): median(m) for case, m in runs.items()})
    return results


# ---------------------------------------------------------------------- reporting
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_startup(results: dict[tuple[str, bool], Measure]) -> None:
    print("\n### Startup (median; whole processes; tiny checkpoint of 2 layers, hidden 256)")
    print(f"{'step':<16}{'bytecode s':>12}{'first tensor s':>16}{'no bytecode s':>15}{'first tensor s':>16}")
    for case in dict.fromkeys(c for c, _ in results):
        row = f"{case:<16}"
        for compiled in (True, False):
            m = results[case, compiled]
            first = f"{m.first_tensor:.2f}" if m.first_tensor is not None else "-"
            row += f"{m.seconds:>12.2f}{first:>16}" if compiled else f"{m.seconds:>15.2f}{first:>16}"
        print(row)


def marginal(a: SizeResult, b: SizeResult, step: str) -> tuple[float, float]:
    """(marginal rate GB/s, fixed cost s) of a step from two sizes."""
    dt = b.steps[step].seconds - a.steps[step].seconds
    rate = (b.total - a.total) / GB / dt if dt > 0 else math.inf
    fixed = a.steps[step].seconds - a.total / GB / rate if rate != math.inf else a.steps[step].seconds
    return rate, fixed


def print_results(results: list[SizeResult], repeat: int) -> None:
    steps = list(results[0].steps)
    print(f"\n### Whole processes (median of {repeat}); x floor = floor time / step time")
    head = f"{'step':<15}" + "".join(
        f"{f'{r.total / GB:.2f} GB s':>12}{'x floor':>9}{'RSS GiB':>9}" for r in results
    )
    print(head)
    print("-" * len(head))
    for step in steps:
        row = f"{step:<15}"
        for r in results:
            m, floor = r.steps[step], r.steps["floor"]
            row += f"{m.seconds:>12.2f}{floor.seconds / m.seconds:>9.2f}{m.maxrss / GIB:>9.2f}"
        print(row)
    if len(results) < 2 or results[0].total == results[-1].total:
        return
    a, b = results[0], results[-1]
    floor_rate, floor_fixed = marginal(a, b, "floor")
    print(
        f"\n### Marginal rate between {a.total / GB:.2f} and {b.total / GB:.2f} GB, and fixed cost (extrapolated to 0 GB)"
    )
    print(f"{'step':<15}{'GB/s':>8}{'x floor':>9}{'fixed s':>9}{'- floor s':>11}")
    for step in steps:
        rate, fixed = marginal(a, b, step)
        print(f"{step:<15}{rate:>8.3f}{rate / floor_rate:>9.2f}{fixed:>9.2f}{fixed - floor_fixed:>11.2f}")
    print("\nGoals:")
    for step in ("ours HF->MCA", "ours MCA->HF"):
        rate, fixed = marginal(a, b, step)
        whole = (
            max(r.steps["floor"].seconds / r.steps[step].seconds for r in results if r.requested_gb >= 2)
            if any(r.requested_gb >= 2 for r in results)
            else float("nan")
        )
        print(
            f"  {step}: marginal {rate / floor_rate:.2f}x floor (>= {GOAL_FLOOR_RATIO}) "
            f"{verdict(rate / floor_rate >= GOAL_FLOOR_RATIO)}; fixed cost floor + {fixed - floor_fixed:.2f} s "
            f"(<= {GOAL_FIXED_COST_OVER_FLOOR}) {verdict(fixed - floor_fixed <= GOAL_FIXED_COST_OVER_FLOOR)}; "
            f"whole process at >= 2 GB {whole:.2f}x floor"
        )
    for r in results:
        bound = 2 * r.largest + GIB
        for step in ("ours HF->MCA", "ours MCA->HF"):
            rss = r.steps[step].maxrss
            print(
                f"  {r.total / GB:.2f} GB {step}: peak RSS {rss / GIB:.2f} GiB <= 2 x largest tensor + 1 GiB "
                f"= {bound / GIB:.2f} {verdict(rss <= bound)}"
            )


# ---------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-gb",
        type=float,
        nargs=2,
        default=[1.0, 4.0],
        metavar=("A", "B"),
        help="the two checkpoint sizes (default 1 4)",
    )
    parser.add_argument("--repeat", type=int, default=3, help="runs per step; the median is kept (default 3)")
    parser.add_argument("--baseline", metavar="REF", help="also measure the converter of this git ref")
    parser.add_argument("--naive", action="store_true", help="also measure a load-everything converter")
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a /tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="synthetic weights")
    parser.add_argument(
        "--drop-caches",
        action="store_true",
        help="root: before each step empty the page cache and read the step's input (see drop_page_cache)",
    )
    parser.add_argument("--skip-startup", action="store_true", help="do not measure startup on its own")
    parser.add_argument("--_floor", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--_naive", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--moe" in argv:  # the MoE case has its own options
        from bench_moe import main as moe_main

        return moe_main([a for a in argv if a != "--moe"])
    args = parse_args(argv)
    if args._floor:
        run_floor(*args._floor)
        return 0
    if args._naive:
        run_naive(*args._naive)
        return 0
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["TQDM_DISABLE"] = "1"
    os.environ.pop("PYTHONPYCACHEPREFIX", None)  # the venv's own bytecode (see bytecode_env)
    print(
        f"workdir {root}; layout tp2 pp2; {os.cpu_count()} CPUs; baseline {args.baseline or 'none'}; "
        f"repeat {args.repeat}"
    )
    try:
        baseline = checkout_baseline(args.baseline, root) if args.baseline else None
        if not args.skip_startup:
            print_startup(measure_startup(root, baseline, args.repeat))
        results = []
        for i, size in enumerate(args.size_gb):
            work = root / f"size{i}_{size:g}GB"
            results.append(bench_size(size, work, args, baseline))
            if not args.keep:
                shutil.rmtree(work)
        print_results(results, args.repeat)
    finally:
        remove_worktree(root)
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
