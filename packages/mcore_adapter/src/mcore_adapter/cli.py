"""``mcore-adapter``: convert checkpoints, verify a conversion against HF, run the tiny demo.

The offline converter imports neither megatron.core nor transformers' modeling code, so
``convert`` is bound by I/O; ``verify``, ``demo`` and the ``torch_dist`` format build models
and import both.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from .models.converter.atomic import OutputExistsError
from .models.converter.hf_io import CheckpointError
from .models.converter.mca_io import is_mca_dir
from .models.converter.template import ConversionError, UnsupportedModelError

USER_ERRORS = (OutputExistsError, CheckpointError, ConversionError, UnsupportedModelError, FileNotFoundError)


def cmd_convert(args: argparse.Namespace) -> int:
    from .models.converter.convert import convert_hf_to_mca, convert_mca_to_hf, dtype_name, parse_dtype
    from .models.converter.mca_io import McaCheckpointMeta

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a directory")
    to_hf = is_mca_dir(src)
    fmt = McaCheckpointMeta.load(src).checkpoint_format if to_hf else args.format
    if fmt == "torch":
        convert = convert_mca_to_hf if to_hf else convert_hf_to_mca
        convert(src, dst, dtype=args.dtype, force=args.force)
    else:  # torch_dist is megatron-core's dist_checkpointing: read and written by a built model
        from . import AutoModel

        dtype = parse_dtype(args.dtype)
        if to_hf:
            overrides = {"hf_weight_dtype": dtype_name(dtype)} if dtype else {}
            AutoModel.from_pretrained(src, **overrides).save_pretrained_as_hf(dst, force=args.force)
        else:
            overrides = {"dtype": dtype} if dtype else {}
            AutoModel.from_pretrained(src, **overrides).save_pretrained(dst, force=args.force)
    print(f"{'MCA -> HF' if to_hf else f'HF -> MCA ({fmt})'}: {src} -> {dst}")
    return 0


def compare_with_hf(hf_dir: Path, batch_size: int = 2, seq_len: int = 16, seed: int = 0) -> float:
    """Max |logits diff| between the HF model and the Megatron model built from ``hf_dir``,
    both in fp32 on the same random tokens (HF with eager attention)."""
    import torch
    from transformers import AutoModelForCausalLM

    from . import AutoModel

    model = AutoModel.from_pretrained(hf_dir, dtype=torch.float32).eval()
    hf = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager").eval()
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, hf.config.vocab_size, (batch_size, seq_len), generator=generator)
    with torch.no_grad():
        expected = hf(tokens).logits
        actual = model(tokens)
    return (actual.float() - expected.float()).abs().max().item()


def cmd_verify(args: argparse.Namespace) -> int:
    if args.tp != 1 or args.pp != 1 or args.ep != 1:
        print(
            "error: verify runs tp=pp=ep=1 in this version; multi-rank layouts are not supported yet",
            file=sys.stderr,
        )
        return 2
    diff = compare_with_hf(Path(args.hf_dir), args.batch_size, args.seq_len)
    print(f"max_abs_diff={diff:.6g}")
    return 0 if diff <= args.tol else 1


def cmd_demo(args: argparse.Namespace) -> int:
    """HF -> MCA -> HF on a built-in tiny model, then Megatron vs HF logits."""
    from .models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
    from .testing import make_tiny_hf_checkpoint
    from .testing.compare import compare_hf_dirs

    with tempfile.TemporaryDirectory(prefix="mcore-adapter-demo-") as work:
        work = Path(args.workdir or work)
        hf_dir = make_tiny_hf_checkpoint(args.model_type, work / "hf")
        print(f"tiny {args.model_type} checkpoint: {hf_dir}")
        report = convert_hf_to_mca(hf_dir, work / "mca", progress=False)
        print(f"HF -> MCA: {len(report.consumed)} tensors -> {len(report.produced)} Megatron tensors")
        convert_mca_to_hf(work / "mca", work / "hf_back", progress=False)
        problems = compare_hf_dirs(hf_dir, work / "hf_back")
        print("MCA -> HF round trip:", "bit-exact" if not problems else f"MISMATCH {problems}")
        diff = compare_with_hf(hf_dir)
        print(f"max_abs_diff={diff:.6g}")
        return 0 if not problems and diff <= args.tol else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcore-adapter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser("convert", help="HF <-> MCA (direction from SRC: MCA dirs hold mca_config.json)")
    convert.add_argument("src")
    convert.add_argument("dst")
    convert.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="weight dtype of the output (default: keep the source's)",
    )
    convert.add_argument(
        "--format",
        choices=["torch", "torch_dist"],
        default="torch",
        help="MCA weight format when writing MCA (default: torch)",
    )
    convert.add_argument("--force", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=cmd_convert)

    verify = sub.add_parser("verify", help="compare Megatron and HF logits for an HF checkpoint")
    verify.add_argument("hf_dir")
    verify.add_argument("--tp", type=int, default=1)
    verify.add_argument("--pp", type=int, default=1)
    verify.add_argument("--ep", type=int, default=1)
    verify.add_argument("--tol", type=float, default=1e-4)
    verify.add_argument("--batch-size", type=int, default=2)
    verify.add_argument("--seq-len", type=int, default=16)
    verify.set_defaults(func=cmd_verify)

    demo = sub.add_parser("demo", help="round trip and parity on a built-in tiny model (no downloads)")
    demo.add_argument("--model-type", default="llama")
    demo.add_argument("--workdir", default=None, help="keep the files here instead of a temporary dir")
    demo.add_argument("--tol", type=float, default=1e-5)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
