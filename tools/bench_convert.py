"""Benchmark of the offline converter: HF -> MCA (tp2 pp2) and MCA -> HF on a synthetic llama.

For each requested size a llama-shaped HF checkpoint (random bf16 weights, ~1 GB safetensors
shards as on the hub) is generated, then these steps are measured:

- floor: read every tensor with ``safetensors`` and write the same bytes to one file; no
  converter can move the data faster than this with the same libraries;
- ours HF -> MCA: ``mcore-adapter convert SRC DST --tp 2 --pp 2``;
- ours MCA -> HF: ``mcore-adapter convert MCA_DIR HF_OUT``;
- naive HF -> MCA: load every shard whole, convert and split the whole model in memory, then
  ``torch.save`` each rank's state dict (what a converter that loads the model first does).

Each step runs as its own process and is timed as a whole, imports included, because that is
what a user waits for: a converter whose startup dominates a 1 GB conversion is slow, however
fast its inner loop. Peak RSS is the step's ``ru_maxrss`` from ``os.wait4`` (the kernel's
high-water mark of resident memory, which counts mmapped file pages as well; measured through
a small runner process, see ``_RUNNER``); the anonymous
part (``RssAnon``, sampled from ``/proc``) is printed beside it to tell the two apart. The
floor runs once before the measured runs so that every step reads from a warm page cache,
and dirty pages are flushed (``os.sync``) before each step.

Children get a private bytecode cache (``PYTHONPYCACHEPREFIX`` under the workdir, filled
before measuring) unless ``--cold-imports``: an installation whose ``__pycache__`` cannot be
written would otherwise recompile torch and transformers in every process.

Goals (from the issue): >= 0.8x the floor's throughput, peak RSS <= 2x the largest tensor
+ 1 GiB and flat as the checkpoint grows, >= 3x faster and >= 5x less memory than naive,
output size equal to the tensor bytes.

Usage: ``python tools/bench_convert.py [--size-gb 1 2] [--repeat N] [--keep]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

GB = 10**9  # throughput and checkpoint sizes: decimal, as disks and the hub count
GIB = 1024**3  # memory
MAX_SHARD_BYTES = 10**9  # transformers' max_shard_size="1GB"
LAYOUT = {"tp": 2, "pp": 2}
CONVERTER = Path(sys.executable).parent / "mcore-adapter"

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "hidden_size": 2048,
    "intermediate_size": 5632,
    "num_attention_heads": 16,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "vocab_size": 32000,
    "tie_word_embeddings": False,
    "rms_norm_eps": 1e-5,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "attention_dropout": 0.0,
    "rope_theta": 10000.0,
    "attention_bias": False,
    "mlp_bias": False,
}

GOAL_FLOOR_RATIO = 0.8
GOAL_NAIVE_SPEEDUP = 3.0
GOAL_NAIVE_MEMORY = 5.0


# ---------------------------------------------------------------------- synthetic checkpoint
def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    """Shapes of one decoder layer's tensors, layer-relative names."""
    h, ffn, d = cfg["hidden_size"], cfg["intermediate_size"], cfg["head_dim"]
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


def config_for_size(size_bytes: float, itemsize: int, pp: int) -> dict:
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

    layout = ParallelLayout(**LAYOUT)
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


# Runs a step and reports its peak memory. Each step is started from this small process rather
# than from the benchmark itself: Linux carries a parent's RSS high-water mark into a forked
# child's ru_maxrss (the mm is copied at fork and its peak kept across exec), so children of a
# process that generated a 2 GB checkpoint would all report at least its size.
_RUNNER = r"""
import json, os, subprocess, sys, threading
out, cmd = sys.argv[1], sys.argv[2:]
proc = subprocess.Popen(cmd)
peak, stop = [0], threading.Event()

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
_, status, usage = os.wait4(proc.pid, 0)
stop.set()
with open(out, "w") as f:
    json.dump({"maxrss": usage.ru_maxrss * 1024, "anon": peak[0], "exit": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(cmd: list[str], log: Path) -> Measure:
    """Run ``cmd`` as a process; its wall time and peak memory. Fails loudly on error."""
    os.sync()  # earlier steps' dirty pages are not this step's to write back
    report = log.with_suffix(".rss.json")
    with open(log, "wb") as out:
        start = time.perf_counter()
        subprocess.run(
            [sys.executable, "-c", _RUNNER, str(report), *map(str, cmd)],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=True,
        )
        seconds = time.perf_counter() - start
    result = json.loads(report.read_text())
    if result["exit"] != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"step failed (exit {result['exit']}): {' '.join(map(str, cmd))}\n{tail}")
    return Measure(seconds, result["maxrss"], result["anon"])


# ---------------------------------------------------------------------- checks and sizes
def tensor_bytes(hf_dir: Path) -> tuple[int, str, int]:
    """Total tensor bytes of an HF dir, and its largest tensor's name and bytes."""
    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    sizes = {n: t.numel() * t.element_size() for n, t in HFCheckpoint(hf_dir).tensors(meta=True)}
    largest = max(sizes, key=sizes.__getitem__)
    return sum(sizes.values()), largest, sizes[largest]


def files_bytes(root: Path, pattern: str) -> int:
    return sum(p.stat().st_size for p in root.rglob(pattern))


def check_round_trip(src: Path, out: Path, num_layers: int) -> int:
    """Compare the embedding, output layer, final norm and the first and last layers bit by bit."""
    import torch

    from mcore_adapter.models.converter.hf_io import HFCheckpoint

    a, b = HFCheckpoint(src), HFCheckpoint(out)
    if set(a.weight_map) != set(b.weight_map):
        raise SystemExit(
            f"round trip changed the tensor names: {sorted(set(a.weight_map) ^ set(b.weight_map))[:10]}"
        )
    prefixes = ("model.embed_tokens.", "lm_head.", "model.norm.", "model.layers.0.")
    prefixes += (f"model.layers.{num_layers - 1}.",)
    names = [n for n in a.weight_map if n.startswith(prefixes)]
    for name in names:  # one by one: the two checkpoints need not be sharded alike
        (_, x), (_, y) = next(a.tensors([name])), next(b.tensors([name]))
        if x.dtype != y.dtype or not torch.equal(x, y):
            raise SystemExit(
                f"round trip changed {name}: {x.dtype}{tuple(x.shape)} vs {y.dtype}{tuple(y.shape)}"
            )
    return len(names)


def check_same_ranks(ours: Path, naive: Path) -> int:
    """The naive converter must have written the same rank files (names, shapes, values)."""
    import torch

    files = sorted(p.relative_to(ours) for p in ours.rglob("model_optim_rng.pt"))
    for rel in files:
        x = torch.load(ours / rel, mmap=True, weights_only=True)["model"]
        y = torch.load(naive / rel, mmap=True, weights_only=True)["model"]
        if set(x) != set(y):
            raise SystemExit(f"{rel}: ours and naive hold different tensors: {sorted(set(x) ^ set(y))[:10]}")
        for name in x:
            if not torch.equal(x[name], y[name]):
                raise SystemExit(f"{rel}: {name} differs between ours and naive")
    return len(files)


# ---------------------------------------------------------------------- one size
STEPS = ("floor", "ours HF->MCA", "ours MCA->HF", "naive HF->MCA")


@dataclass
class SizeResult:
    requested_gb: float
    layers: int
    shards: int
    total: int
    largest_name: str
    largest: int
    steps: dict[str, Measure]
    out_bytes: dict[str, int]

    @property
    def rss_bound(self) -> int:
        return 2 * self.largest + GIB


def step_commands(src: Path, work: Path) -> dict[str, tuple[list[str], Path]]:
    """Each step's command line and output path."""
    me = [sys.executable, str(Path(__file__).resolve())]
    layout = ["--tp", str(LAYOUT["tp"]), "--pp", str(LAYOUT["pp"])]
    mca, hf_out = work / "mca", work / "hf_out"
    return {
        "floor": ([*me, "--_floor", str(src), str(work / "floor.bin")], work / "floor.bin"),
        "ours HF->MCA": ([str(CONVERTER), "convert", str(src), str(mca), *layout], mca),
        "ours MCA->HF": ([str(CONVERTER), "convert", str(mca), str(hf_out)], hf_out),
        "naive HF->MCA": ([*me, "--_naive", str(src), str(work / "naive")], work / "naive"),
    }


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def bench_size(size_gb: float, work: Path, dtype_name: str, repeat: int) -> SizeResult:
    import torch

    cfg = config_for_size(size_gb * GB, getattr(torch, dtype_name).itemsize, LAYOUT["pp"])
    src = work / "hf"
    started = time.perf_counter()
    generate_checkpoint(src, cfg, dtype_name)
    total, largest_name, largest = tensor_bytes(src)
    shards = len(list(src.glob("*.safetensors")))
    print(
        f"\n## {size_gb:g} GB requested: llama hidden {cfg['hidden_size']}, "
        f"{cfg['num_hidden_layers']} layers, {dtype_name}, {total / GB:.3f} GB of tensors "
        f"in {shards} shard(s) (generated in {time.perf_counter() - started:.1f} s)",
        flush=True,
    )
    commands = step_commands(src, work)
    cmd, out = commands["floor"]
    measure(cmd, work / "warmup.log")  # warm the page cache, not measured
    remove(out)

    best: dict[str, Measure] = {}
    out_bytes: dict[str, int] = {}
    for run in range(repeat):
        for step in STEPS:
            cmd, out = commands[step]
            remove(out)
            m = measure(cmd, work / f"{step.replace(' ', '_').replace('>', '')}.log")
            print(f"  run {run + 1}/{repeat} {step:<14} {m.seconds:7.2f} s", flush=True)
            if step not in best or m.seconds < best[step].seconds:
                best[step] = m
            out_bytes[step] = out.stat().st_size if out.is_file() else _dir_weight_bytes(out)
        if run == 0:
            checked = check_round_trip(src, commands["ours MCA->HF"][1], cfg["num_hidden_layers"])
            ranks = check_same_ranks(commands["ours HF->MCA"][1], commands["naive HF->MCA"][1])
            print(
                f"  checks: {checked} tensors bit-exact after HF->MCA->HF; "
                f"{ranks} rank files identical between ours and naive",
                flush=True,
            )
        for step in STEPS:
            if step != "ours HF->MCA":  # MCA->HF of the next run reads it
                remove(commands[step][1])
    return SizeResult(
        size_gb, cfg["num_hidden_layers"], shards, total, largest_name, largest, best, out_bytes
    )


def _dir_weight_bytes(path: Path) -> int:
    return files_bytes(path, "model_optim_rng.pt") + files_bytes(path, "*.safetensors")


# ---------------------------------------------------------------------- reporting
def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def print_size_table(r: SizeResult, repeat: int, startup: dict[str, float]) -> None:
    print(f"\n### {r.total / GB:.3f} GB checkpoint ({r.layers} layers), best of {repeat}")
    print(f"largest tensor: {r.largest_name} = {r.largest / 2**20:.1f} MiB")
    head = f"{'step':<16}{'seconds':>9}{'GB/s':>8}{'peak RSS GiB':>14}{'anon RSS GiB':>14}"
    head += f"{'out/tensor bytes':>18}{'GB/s excl. startup':>20}"
    print(head)
    print("-" * len(head))
    for step in STEPS:
        m = r.steps[step]
        work = m.seconds - startup["floor" if step == "floor" else "ours"]
        print(
            f"{step:<16}{m.seconds:>9.2f}{r.total / GB / m.seconds:>8.3f}{m.maxrss / GIB:>14.3f}"
            f"{m.anon / GIB:>14.3f}{r.out_bytes[step] / r.total:>18.5f}"
            f"{r.total / GB / work if work > 0 else math.inf:>20.3f}"
        )
    floor, to_mca, to_hf, naive = (r.steps[s] for s in STEPS)
    print("ratios:")
    print(
        f"  ours HF->MCA throughput / floor: {floor.seconds / to_mca.seconds:.2f}x "
        f"(goal >= {GOAL_FLOOR_RATIO}) {verdict(floor.seconds / to_mca.seconds >= GOAL_FLOOR_RATIO)}"
    )
    print(
        f"  ours MCA->HF throughput / floor: {floor.seconds / to_hf.seconds:.2f}x "
        f"(goal >= {GOAL_FLOOR_RATIO}) {verdict(floor.seconds / to_hf.seconds >= GOAL_FLOOR_RATIO)}"
    )
    speedup, memory = naive.seconds / to_mca.seconds, naive.maxrss / to_mca.maxrss
    print(
        f"  naive time / ours time (HF->MCA): {speedup:.2f}x (goal >= {GOAL_NAIVE_SPEEDUP}) "
        f"{verdict(speedup >= GOAL_NAIVE_SPEEDUP)}"
    )
    print(
        f"  naive RSS / ours RSS (HF->MCA): {memory:.2f}x (goal >= {GOAL_NAIVE_MEMORY}) "
        f"{verdict(memory >= GOAL_NAIVE_MEMORY)}"
    )
    print(f"  RSS bound 2 x largest tensor + 1 GiB = {r.rss_bound / GIB:.3f} GiB:")
    for step in ("ours HF->MCA", "ours MCA->HF"):
        rss = r.steps[step].maxrss
        print(f"    {step}: {rss / GIB:.3f} GiB {verdict(rss <= r.rss_bound)}")


def print_flatness(results: list[SizeResult]) -> None:
    if len(results) < 2:
        return
    print("\n### RSS as the checkpoint grows (ours)")
    for step in ("ours HF->MCA", "ours MCA->HF"):
        values = ", ".join(f"{r.total / GB:.2f} GB: {r.steps[step].maxrss / GIB:.3f} GiB" for r in results)
        growth = results[-1].steps[step].maxrss / results[0].steps[step].maxrss
        size_growth = results[-1].total / results[0].total
        print(f"  {step}: {values} -> x{growth:.2f} for x{size_growth:.2f} the size")


def print_markdown(results: list[SizeResult]) -> None:
    print("\n### Summary (markdown)\n")
    print(
        "| checkpoint | floor GB/s | ours HF->MCA GB/s (x floor) | ours MCA->HF GB/s (x floor) "
        "| naive HF->MCA GB/s | naive/ours time | peak RSS GiB ours HF->MCA / MCA->HF / naive "
        "| RSS bound GiB | naive/ours RSS | out/tensor bytes MCA / HF |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        floor, to_mca, to_hf, naive = (r.steps[s] for s in STEPS)

        def gbs(m: Measure, r: SizeResult = r) -> float:
            return r.total / GB / m.seconds

        print(
            f"| {r.total / GB:.2f} GB ({r.layers} layers) | {gbs(floor):.3f} "
            f"| {gbs(to_mca):.3f} ({floor.seconds / to_mca.seconds:.2f}x) "
            f"| {gbs(to_hf):.3f} ({floor.seconds / to_hf.seconds:.2f}x) "
            f"| {gbs(naive):.3f} | {naive.seconds / to_mca.seconds:.2f}x "
            f"| {to_mca.maxrss / GIB:.2f} / {to_hf.maxrss / GIB:.2f} / {naive.maxrss / GIB:.2f} "
            f"| {r.rss_bound / GIB:.2f} | {naive.maxrss / to_mca.maxrss:.2f}x "
            f"| {r.out_bytes['ours HF->MCA'] / r.total:.4f} / {r.out_bytes['ours MCA->HF'] / r.total:.4f} |"
        )
    print(
        f"\nGoals: >= {GOAL_FLOOR_RATIO}x floor throughput; peak RSS <= 2 x largest tensor + 1 GiB and flat; "
        f">= {GOAL_NAIVE_SPEEDUP}x faster and >= {GOAL_NAIVE_MEMORY}x less memory than naive; "
        "output bytes = tensor bytes. Each step is a whole process (imports included), warm page cache."
    )


def measure_startup(work: Path) -> dict[str, float]:
    """What the processes pay before touching a tensor: the imports each step needs (the
    converter's include transformers, for the HF config; the naive one imports the same)."""
    floor = [sys.executable, "-c", "import torch, safetensors.torch"]
    ours = [
        sys.executable,
        "-c",
        "import mcore_adapter.cli, mcore_adapter.models.converter.convert; "
        "from mcore_adapter.models.converter.template import get_template; "
        f"get_template('llama').convert_hf_to_mca_config({LLAMA_CONFIG | {'num_hidden_layers': 2}!r})",
    ]
    for cmd in (floor, ours):  # the first run fills the bytecode cache (see child_environment)
        measure(cmd, work / "startup_warmup.log")
    a, b = measure(floor, work / "startup_floor.log"), measure(ours, work / "startup_ours.log")
    print(
        f"process startup (imports only): floor (torch + safetensors) {a.seconds:.2f} s, "
        f"{a.maxrss / GIB:.3f} GiB; ours (converter + HF config normalization) {b.seconds:.2f} s, "
        f"{b.maxrss / GIB:.3f} GiB"
    )
    return {"floor": a.seconds, "ours": b.seconds}


# ---------------------------------------------------------------------- main
def child_environment(root: Path, cold_imports: bool) -> str:
    """Set the environment every measured process inherits; returns a note on imports.

    Without a bytecode cache (``PYTHONDONTWRITEBYTECODE`` on an installation that has no
    ``__pycache__``, as in some sandboxes) every process compiles torch and transformers from
    source, several seconds that no user with a normal installation pays. The children write
    and reuse a private cache under the workdir instead, filled before anything is measured.
    """
    os.environ["TQDM_DISABLE"] = "1"
    if cold_imports:
        setting = os.environ.get("PYTHONDONTWRITEBYTECODE")
        return f"imports as the environment has them (PYTHONDONTWRITEBYTECODE={setting})"
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
    return f"bytecode cache {root / 'pycache'} (warmed before measuring)"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--size-gb", type=float, nargs="+", action="extend", help="checkpoint size(s) in GB (default 2)"
    )
    parser.add_argument("--workdir", type=Path, help="where to write the checkpoints (default: a /tmp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the checkpoints written")
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="synthetic weights")
    parser.add_argument("--repeat", type=int, default=1, help="measured runs per step (the best is kept)")
    parser.add_argument(
        "--cold-imports",
        action="store_true",
        help="do not give the children a bytecode cache (measure imports as the environment has them)",
    )
    parser.add_argument("--_floor", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    parser.add_argument("--_naive", nargs=2, type=Path, metavar=("SRC", "DST"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args._floor:
        run_floor(*args._floor)
        return 0
    if args._naive:
        run_naive(*args._naive)
        return 0
    dtype_name = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
    root = args.workdir or Path(tempfile.mkdtemp(prefix="bench_convert-", dir="/tmp"))
    root.mkdir(parents=True, exist_ok=True)
    imports = child_environment(root, args.cold_imports)
    print(
        f"workdir {root}; converter {CONVERTER}; layout tp{LAYOUT['tp']} pp{LAYOUT['pp']}; "
        f"{os.cpu_count()} CPUs; {imports}"
    )
    results = []
    try:
        startup = measure_startup(root)
        for i, size in enumerate(args.size_gb or [2.0]):
            work = root / f"size{i}_{size:g}GB"
            results.append(bench_size(size, work, dtype_name, max(args.repeat, 1)))
            print_size_table(results[-1], max(args.repeat, 1), startup)
            if not args.keep:
                shutil.rmtree(work)
    finally:
        if not args.keep and args.workdir is None:
            shutil.rmtree(root, ignore_errors=True)
    print_flatness(results)
    print_markdown(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
