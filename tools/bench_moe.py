"""The mixture-of-experts case of the converter benchmark (``bench_convert.py --moe`` runs it).

Two synthetic Qwen3-MoE-shaped HF checkpoints of about the same size (``--size-gb``, 2 by
default) and different expert counts (``--experts``, 32 and 128 by default: 4x the experts,
a quarter of the layers) are measured, each step as its own process, timed whole:

- floor: read every tensor with ``safetensors`` and write the same bytes to one file;
- HF -> MCA at ``--ep 2`` (``mcore-adapter convert SRC DST --ep 2``), rate against the floor;
- the export iterator: a built model (world size 1, bf16) yields its HF weights
  (``export_hf_weights``, 256 MiB buckets); its peak anonymous memory above the built model's is
  compared with one layer's experts (what an export that fused per layer would hold) plus one
  bucket.

Peak memory must stay flat as the expert count grows: the converter streams one expert at a
time. Usage: ``python tools/bench_moe.py [--size-gb 2] [--experts 32 128] [--repeat 2]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_convert import GB, GIB, MAX_SHARD_BYTES, drop_page_cache, measure, median

BASE = {
    "architectures": ["Qwen3MoeForCausalLM"],
    "model_type": "qwen3_moe",
    "hidden_size": 1024,
    "num_attention_heads": 16,
    "num_key_value_heads": 4,
    "head_dim": 128,
    "intermediate_size": 3072,
    "moe_intermediate_size": 384,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
    "vocab_size": 32000,
    "rms_norm_eps": 1e-6,
    "max_position_embeddings": 4096,
    "hidden_act": "silu",
    "rope_theta": 1000000.0,
    "tie_word_embeddings": False,
    "bos_token_id": 1,
    "eos_token_id": 2,
}
BUCKET = 256 * 1024**2


def layer_shapes(cfg: dict) -> dict[str, tuple[int, ...]]:
    h, i, d = cfg["hidden_size"], cfg["moe_intermediate_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    shapes = {
        "input_layernorm.weight": (h,),
        "self_attn.q_proj.weight": (q, h),
        "self_attn.k_proj.weight": (kv, h),
        "self_attn.v_proj.weight": (kv, h),
        "self_attn.o_proj.weight": (h, q),
        "self_attn.q_norm.weight": (d,),
        "self_attn.k_norm.weight": (d,),
        "post_attention_layernorm.weight": (h,),
        "mlp.gate.weight": (cfg["num_experts"], h),
    }
    for e in range(cfg["num_experts"]):
        shapes |= {
            f"mlp.experts.{e}.gate_proj.weight": (i, h),
            f"mlp.experts.{e}.up_proj.weight": (i, h),
            f"mlp.experts.{e}.down_proj.weight": (h, i),
        }
    return shapes


def config_for(size_bytes: float, experts: int) -> dict:
    cfg = {**BASE, "num_experts": experts}
    per_layer = sum(math.prod(s) for s in layer_shapes(cfg).values()) * 2
    fixed = 2 * cfg["vocab_size"] * cfg["hidden_size"] * 2
    cfg["num_hidden_layers"] = max(2, round((size_bytes - fixed) / per_layer))
    return cfg


def generate(path: Path, cfg: dict) -> None:
    import torch

    from mcore_adapter.models.converter.hf_io import SafetensorsWriter

    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({**cfg, "torch_dtype": "bfloat16"}, indent=2) + "\n")
    h, v = cfg["hidden_size"], cfg["vocab_size"]
    shapes = {"model.embed_tokens.weight": (v, h)}
    for layer in range(cfg["num_hidden_layers"]):
        shapes |= {f"model.layers.{layer}.{k}": s for k, s in layer_shapes(cfg).items()}
    shapes |= {"model.norm.weight": (h,), "lm_head.weight": (v, h)}
    writer = SafetensorsWriter(path, {n: (s, torch.bfloat16) for n, s in shapes.items()}, MAX_SHARD_BYTES)
    generator = torch.Generator().manual_seed(0)
    for name, shape in shapes.items():
        tensor = torch.randn(shape, generator=generator).mul_(0.02).to(torch.bfloat16)
        writer.write(name, tensor)
    writer.close()


def run_export(src: Path, out: Path) -> None:
    """Build the model (bf16, no random init) and drain ``export_hf_weights``; write the peak
    anonymous memory above the built model's."""
    import torch

    from mcore_adapter import AutoModel

    model = AutoModel.from_pretrained(src, dtype=torch.bfloat16, perform_initialization=False)
    base, peak, stop = _anon(), [0], threading.Event()

    def sample() -> None:
        while not stop.wait(0.01):
            peak[0] = max(peak[0], _anon())

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    total = 0
    for _, tensor in model.export_hf_weights(bucket_bytes=BUCKET):
        total += tensor.numel() * tensor.element_size()
    stop.set()
    thread.join()
    out.write_text(json.dumps({"above_model": max(peak[0] - base, 0), "bytes": total}))


def _anon() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    return 0


def bench(cfg: dict, work: Path, repeat: int, drop: bool) -> dict:
    src, mca = work / "hf", work / "mca"
    generate(src, cfg)
    nbytes = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    cli = [sys.executable, "-m", "mcore_adapter.cli"]
    floor, ours = [], []
    for _ in range(repeat):
        for name, runs, cmd in (
            (
                "floor",
                floor,
                [
                    sys.executable,
                    str(Path(__file__).parent / "bench_convert.py"),
                    "--_floor",
                    src,
                    work / "floor.bin",
                ],
            ),
            ("ours", ours, [*cli, "convert", src, mca, "--ep", "2", "--force"]),
        ):
            if drop:
                drop_page_cache(src)
            runs.append(measure(cmd, work / f"{name}.log"))
            (work / "floor.bin").unlink(missing_ok=True)
    shutil.rmtree(mca, ignore_errors=True)
    export_json = work / "export-memory.json"  # measure() writes its own report to export.json
    export = measure([sys.executable, __file__, "--_export", src, export_json], work / "export.log")
    return {
        "experts": cfg["num_experts"],
        "layers": cfg["num_hidden_layers"],
        "gb": nbytes / GB,
        "floor": median(floor),
        "ours": median(ours),
        "export": export,
        "export_above_model": json.loads(export_json.read_text())["above_model"],
        "layer_experts": 3 * cfg["num_experts"] * cfg["moe_intermediate_size"] * cfg["hidden_size"] * 2,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-gb", type=float, default=2.0, help="checkpoint size (default 2)")
    parser.add_argument("--experts", type=int, nargs="+", default=[32, 128], help="expert counts")
    parser.add_argument("--repeat", type=int, default=2, help="runs per step, the median kept")
    parser.add_argument(
        "--drop-caches", action="store_true", help="start each step with only its input cached"
    )
    parser.add_argument("--_export", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._export:
        run_export(*args._export)
        return 0
    os.environ["TQDM_DISABLE"] = "1"
    root = Path(tempfile.mkdtemp(prefix="bench_moe-", dir="/tmp"))
    results = []
    try:
        for experts in args.experts:
            work = root / f"e{experts}"
            results.append(bench(config_for(args.size_gb * GB, experts), work, args.repeat, args.drop_caches))
            shutil.rmtree(work)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{os.cpu_count()} CPUs; HF -> MCA at --ep 2; export: export_hf_weights, {BUCKET // 1024**2} MiB buckets"
    )
    print(
        "experts layers    GB | floor s  ours s  ratio | convert RSS anon | export s  above model  1 layer's experts + bucket"
    )
    for r in results:
        f, o, e = r["floor"], r["ours"], r["export"]
        bound = r["layer_experts"] + BUCKET
        print(
            f"{r['experts']:7d} {r['layers']:6d} {r['gb']:5.2f} | {f.seconds:7.1f} {o.seconds:7.1f} "
            f"{f.seconds / o.seconds:5.2f}x | {o.maxrss / GIB:5.2f} {o.anon / GIB:5.2f} GiB | {e.seconds:7.1f} "
            f"{r['export_above_model'] / GIB:8.2f} GiB  {bound / GIB:8.2f} GiB"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
