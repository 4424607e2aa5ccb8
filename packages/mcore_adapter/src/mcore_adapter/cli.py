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


def _layout(args: argparse.Namespace):
    from .models.converter.layout import LayoutError, ParallelLayout

    if args.ep != 1:
        raise LayoutError(
            f"--ep {args.ep}: expert parallelism needs a model with experts; no MoE template is registered yet"
        )
    return ParallelLayout(
        tp=args.tp or 1,
        pp=args.pp or 1,
        vpp=args.vpp,
        num_layers_in_first_pipeline_stage=args.num_layers_in_first_pipeline_stage,
        num_layers_in_last_pipeline_stage=args.num_layers_in_last_pipeline_stage,
    )


def _layout_given(args: argparse.Namespace) -> bool:
    flags = (
        args.tp,
        args.pp,
        args.vpp,
        args.num_layers_in_first_pipeline_stage,
        args.num_layers_in_last_pipeline_stage,
    )
    return any(flag is not None for flag in flags)


def cmd_convert(args: argparse.Namespace) -> int:
    """HF -> MCA, MCA -> HF, or MCA -> MCA (an MCA source with a layout or --format given)."""
    from .models.converter import convert
    from .models.converter.mca_io import McaCheckpointMeta

    src, dst = Path(args.src), Path(args.dst)
    if not src.is_dir():
        raise CheckpointError(f"{src} is not a directory")
    layout = _layout(args)
    src_format = McaCheckpointMeta.load(src).checkpoint_format if is_mca_dir(src) else "hf"
    to_mca = src_format == "hf" or _layout_given(args) or args.format is not None
    out_format = (args.format or "torch") if to_mca else "hf"
    kw = {"dtype": args.dtype, "force": args.force}
    if src_format != "torch_dist" and out_format != "torch_dist":  # offline, torch + safetensors only
        if out_format == "hf":
            convert.convert_mca_to_hf(src, dst, **kw)
        elif src_format == "hf":
            convert.convert_hf_to_mca(src, dst, layout, **kw)
        else:
            convert.reshard_mca(src, dst, layout, **kw)
    else:  # torch_dist is megatron-core's dist_checkpointing: read and written by a built model
        _convert_through_model(src, dst, out_format, layout, args)
    print(
        f"{src_format} -> {out_format}{f' ({layout.describe()})' if out_format == 'torch' else ''}: {src} -> {dst}"
    )
    return 0


def _convert_through_model(src: Path, dst: Path, out_format: str, layout, args: argparse.Namespace) -> None:
    """Conversions from or to ``torch_dist``, in one process: the model is built whole
    (world size 1) and written in the requested form. ``torch_dist`` itself is layout-free."""
    from . import AutoModel
    from .models.converter.convert import dtype_name, parse_dtype, save_mca_torch
    from .models.model_io import ModelSource

    dtype = parse_dtype(args.dtype)
    if out_format == "hf":
        overrides = {"hf_weight_dtype": dtype_name(dtype)} if dtype else {}
        AutoModel.from_pretrained(src, **overrides).save_pretrained_as_hf(dst, force=args.force)
        return
    model = AutoModel.from_pretrained(src, **({"dtype": dtype} if dtype else {}))
    if out_format == "torch_dist":
        model.save_pretrained(dst, force=args.force)
    else:
        save_mca_torch(ModelSource([model]), dst, layout, dtype, args.force, side_files_from=src)


def cmd_verify(args: argparse.Namespace) -> int:
    from .verify import verify

    if args.ep != 1:
        print(
            "error: --ep > 1 needs a model with experts; no MoE template is registered yet", file=sys.stderr
        )
        return 2
    from .models.converter.hf_io import read_json
    from .models.converter.template import get_template

    layout = _layout(args)
    hf_config = read_json(Path(args.hf_dir) / "config.json")
    if args.image and "vision_config" not in hf_config:
        raise ConversionError(
            f"--image needs a vision-language checkpoint; {args.hf_dir} ({hf_config.get('model_type')}) has no vision_config"
        )
    if layout.tp * layout.pp > 1:  # fail before launching ranks when the layout cannot work
        layout.validate(get_template(hf_config.get("model_type")).convert_hf_to_mca_config(hf_config))
    layout_kwargs = {
        "tp": layout.tp,
        "pp": layout.pp,
        "vpp": layout.vpp,
        "num_layers_in_first_pipeline_stage": layout.num_layers_in_first_pipeline_stage,
        "num_layers_in_last_pipeline_stage": layout.num_layers_in_last_pipeline_stage,
    }
    diff = verify(Path(args.hf_dir), layout_kwargs, args.batch_size, args.seq_len, image=args.image)
    print(f"layout={layout.describe()}")
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
        from .verify import verify

        diff = verify(hf_dir, {"tp": 1, "pp": 1})
        print(f"max_abs_diff={diff:.6g}")
        return 0 if not problems and diff <= args.tol else 1


def _add_layout_args(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("parallel layout", what)
    group.add_argument("--tp", type=int, default=None, help="tensor-parallel size")
    group.add_argument("--pp", type=int, default=None, help="pipeline-parallel size")
    group.add_argument("--vpp", type=int, default=None, help="virtual pipeline stages per pipeline rank")
    group.add_argument("--num-layers-in-first-pipeline-stage", type=int, default=None)
    group.add_argument("--num-layers-in-last-pipeline-stage", type=int, default=None)
    group.add_argument("--ep", type=int, default=1, help="expert-parallel size (models with experts)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mcore-adapter", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    convert = sub.add_parser(
        "convert",
        help="HF -> MCA, MCA -> HF, MCA -> MCA (an MCA dir holds mca_config.json; with an MCA "
        "source, layout flags or --format ask for MCA output)",
    )
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
        default=None,
        help="MCA weight format to write (default: torch); with an MCA source it asks for MCA output",
    )
    _add_layout_args(convert, "layout of the MCA output (with an MCA source: reshard to it)")
    convert.add_argument("--force", action="store_true", help="replace DST if it exists")
    convert.set_defaults(func=cmd_convert)

    verify = sub.add_parser("verify", help="compare Megatron and HF logits for an HF checkpoint")
    verify.add_argument("hf_dir")
    _add_layout_args(verify, "layout to build the Megatron model in; more than one rank is launched locally")
    verify.add_argument("--tol", type=float, default=1e-4)
    verify.add_argument("--batch-size", type=int, default=2)
    verify.add_argument("--seq-len", type=int, default=16)
    verify.add_argument(
        "--image",
        action="store_true",
        help="vision-language models: a prompt with one synthetic image (default: text)",
    )
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
