"""``mcore-adapter``: convert checkpoints, verify a conversion against HF, run the tiny demo.

The offline converter imports neither megatron.core nor transformers' modeling code, so
``convert`` is bound by I/O; ``verify``, ``demo`` and the ``torch_dist`` format build models
and import both. This module imports nothing heavy itself: ``--help`` and argument errors
answer without importing torch.

Every error about the input (a path, a layout, a checkpoint that does not match its config)
is one ``error:`` line on stderr and exit status 2, whichever command and rank hit it; the
user's files are left as they were.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .models.converter.atomic import Interrupted, check_output_dir
from .models.converter.errors import CheckpointError, UserError
from .models.converter.untrusted import check_regular

LAYOUT_FLAGS = (
    "tp",
    "pp",
    "vpp",
    "num_layers_in_first_pipeline_stage",
    "num_layers_in_last_pipeline_stage",
    "ep",
    "etp",
)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _layout(args: argparse.Namespace):
    from .models.converter.layout import ParallelLayout

    return ParallelLayout.of({name: getattr(args, name) for name in LAYOUT_FLAGS})


def _layout_given(args: argparse.Namespace) -> list[str]:
    return [_flag(name) for name in LAYOUT_FLAGS if getattr(args, name) is not None]


def _source_kind(src: Path) -> str:
    """ "hf" or "mca", from the files; anything else is an error that says what was found."""
    if not src.exists():
        raise CheckpointError(f"{src} does not exist; give the directory of an HF or MCA checkpoint")
    if not src.is_dir():
        raise CheckpointError(f"{src} is a file; give the directory of an HF or MCA checkpoint")
    for name, kind in (("mca_config.json", "mca"), ("config.json", "hf")):
        if (src / name).exists():
            check_regular(src / name)  # a FIFO would block the reader
            return kind
    found = sorted(p.name for p in src.iterdir())[:8]
    raise CheckpointError(
        f"{src} holds neither config.json (an HF checkpoint) nor mca_config.json (an MCA "
        f"checkpoint); found {found}"
    )


def cmd_convert(args: argparse.Namespace) -> int:
    """HF -> MCA, MCA -> HF, or MCA -> MCA (an MCA source with a layout or --format given)."""
    src, dst = Path(args.src), Path(args.dst)
    check_output_dir(dst, args.force, [src])  # before reading anything
    kind = _source_kind(src)
    layout_flags = _layout_given(args)
    if args.format == "torch_dist" and layout_flags:
        raise UserError(
            f"{', '.join(layout_flags)} {'describes' if len(layout_flags) == 1 else 'describe'} the layout "
            "of a 'torch' checkpoint; 'torch_dist' is "
            "layout-free (Megatron reshards it on load): drop them, or write --format torch"
        )
    if args.format == "torch_dist" and args.moe_grouped_gemm is not None:
        raise UserError(
            "--moe-grouped-gemm names the experts in 'torch' rank files; 'torch_dist' stores them as the "
            "built model names them: drop it, or write --format torch"
        )
    if kind == "hf" and args.hf_config:
        raise UserError(
            f"--hf-config supplies the HF config of an MCA checkpoint that lacks one; {src} is an HF "
            "checkpoint with its own config.json: drop --hf-config"
        )
    layout = _layout(args)

    from .models.converter import convert
    from .models.converter.buffers import keep_freed_memory
    from .models.converter.hf_io import read_json
    from .models.converter.mca_io import McaCheckpointMeta

    hf_config = read_json(Path(args.hf_config)) if args.hf_config else None
    src_format = McaCheckpointMeta.load(src, hf_config).checkpoint_format if kind == "mca" else "hf"
    to_mca = src_format == "hf" or bool(layout_flags) or args.format is not None
    to_mca = to_mca or args.moe_grouped_gemm is not None
    out_format = (args.format or "torch") if to_mca else "hf"
    if args.drop_mtp and (kind != "hf" or out_format != "torch"):
        raise UserError(
            "--drop-mtp leaves the multi-token-prediction layers out of an HF checkpoint converted to "
            f"the 'torch' format; this conversion is {src_format} -> {out_format}: drop --drop-mtp"
        )
    kw = {"dtype": args.dtype, "force": args.force}
    if src_format != "torch_dist" and out_format != "torch_dist":  # offline, torch + safetensors only
        keep_freed_memory()
        if out_format == "hf":
            convert.convert_mca_to_hf(src, dst, hf_config=hf_config, **kw)
        elif src_format == "hf":
            report = convert.convert_hf_to_mca(
                src, dst, layout, moe_grouped_gemm=args.moe_grouped_gemm, drop_mtp=args.drop_mtp, **kw
            )
            if report.dropped_mtp_layers:
                print(f"dropped {report.dropped_mtp_layers} multi-token-prediction layer(s) (--drop-mtp)")
        else:
            convert.reshard_mca(
                src, dst, layout, hf_config=hf_config, moe_grouped_gemm=args.moe_grouped_gemm, **kw
            )
    else:  # torch_dist is megatron-core's dist_checkpointing: read and written by a built model
        _convert_through_model(src, dst, out_format, layout, args, hf_config)
    where = f" ({layout.describe()})" if out_format == "torch" else ""
    print(f"{src_format} -> {out_format}{where}: {src} -> {dst}")
    return 0


def _convert_through_model(
    src: Path, dst: Path, out_format: str, layout, args: argparse.Namespace, hf_config
) -> None:
    """Conversions from or to ``torch_dist``, in one process: the model is built whole
    (world size 1) and written in the requested form. ``torch_dist`` itself is layout-free."""
    from . import AutoModel
    from .models.converter.convert import dtype_name, parse_dtype, save_mca_torch
    from .models.model_source import ModelSource

    dtype = parse_dtype(args.dtype)
    overrides = {"hf_config": hf_config} if hf_config is not None else {}
    if out_format == "hf":
        if dtype:
            overrides["hf_weight_dtype"] = dtype_name(dtype)
        AutoModel.from_pretrained(src, **overrides).save_pretrained_as_hf(dst, force=args.force)
        return
    model = AutoModel.from_pretrained(src, **overrides, **({"dtype": dtype} if dtype else {}))
    if out_format == "torch_dist":
        model.save_pretrained(dst, force=args.force)
    else:
        save_mca_torch(
            ModelSource([model]),
            dst,
            layout,
            dtype,
            args.force,
            side_files_from=src,
            moe_grouped_gemm=args.moe_grouped_gemm,
            desc="torch_dist -> MCA",
        )


def cmd_verify(args: argparse.Namespace) -> int:
    hf_dir = Path(args.hf_dir)
    kind = _source_kind(hf_dir)
    if kind == "mca":
        raise UserError(
            f"verify compares against transformers, which reads HF checkpoints; {hf_dir} is an MCA "
            f"checkpoint: export it first (mcore-adapter convert {hf_dir} HF_DIR) and verify HF_DIR"
        )
    layout = _layout(args)

    from .models.converter.convert import HFSource

    source = HFSource(hf_dir)
    if args.image and "vision_config" not in source.ckpt.config:
        raise UserError(
            f"--image needs a vision-language checkpoint; {hf_dir} ({source.template.hf_model_type}) "
            "has no vision_config: drop --image"
        )
    layout.validate(source.mca_kwargs)  # before any rank starts
    for _ in source.weights(meta=True):  # every header against the config, before any rank starts
        pass

    from .verify import describe_tokens, verify

    diff = verify(hf_dir, layout, args.batch_size, args.seq_len, image=args.image)
    tokens = describe_tokens(source.ckpt.config, args.batch_size, args.seq_len, args.image)
    return 0 if _report_parity(hf_dir, layout, [tokens], diff, args) else 1


def _report_parity(hf_dir: Path, layout, inputs: list[str], diff, args: argparse.Namespace) -> bool:
    """Print what verify compared and what it found, the last line for machines:
    ``PASS|FAIL max_abs_diff=<g> max_rel_diff=<g> top1_agreement=<g>|n/a rtol=<g> [atol=<g>]
    layout=<layout> dtype=fp32``. Whether it passed (``--tol``, ``--atol``)."""
    from .models.converter.hf_io import HF_CONFIG_NAME, read_json
    from .parity import FP32_RTOL
    from .verify import hf_model_class, megatron_model_class, output_name

    rtol, atol = FP32_RTOL if args.tol is None else args.tol, args.atol
    config = read_json(hf_dir / HF_CONFIG_NAME)
    out = output_name(config)
    passed = diff.passed(rtol) and (atol is None or diff.max_abs <= atol)
    print(
        f"models: transformers {hf_model_class(hf_dir)} (eager attention) vs Megatron-Core "
        f"{megatron_model_class(config['model_type'])} at {layout.describe()}, both float32"
    )
    for text in inputs:
        print(f"tokens: {text}")
    print(f"max |diff|: {diff.max_abs:.3g}")
    print(f"max |diff| / max |{out}|: {diff.relative:.3g} (max |{out}| {diff.scale:.3g})")
    if diff.top1_agreement is None:
        print(f"top-1 agreement: n/a (one {out} per {'sequence' if out == 'score' else 'token'})")
    else:
        print(f"top-1 agreement: {diff.top1_agreement:.1%} of {diff.positions} positions")
    bound = f"{rtol:g} of max |{out}| (--tol)" + ("" if atol is None else f" and {atol:g} absolute (--atol)")
    print(f"tolerance: {bound}")
    top1 = "n/a" if diff.top1_agreement is None else f"{diff.top1_agreement:.6g}"
    print(
        f"{'PASS' if passed else 'FAIL'} max_abs_diff={diff.max_abs:.6g} max_rel_diff={diff.relative:.6g} "
        f"top1_agreement={top1} rtol={rtol:g}{'' if atol is None else f' atol={atol:g}'} "
        f"layout={layout.describe()} dtype=fp32"
    )
    return passed


HEAD_KINDS = {"value": "token classification", "reward": "sequence classification"}


def cmd_demo(args: argparse.Namespace) -> int:
    """A complete tiny checkpoint of a built-in model (with tokenizer), HF -> MCA -> HF, then
    Megatron vs HF logits."""
    import tempfile

    from . import platform
    from .testing.tiny_models import TINY_MODELS, TINY_VL_MODELS

    tiny = sorted({*TINY_MODELS, *TINY_VL_MODELS})
    if args.model_type not in tiny:
        raise UserError(
            f"--model-type {str(args.model_type)[:40]!r} has no built-in tiny model; choose one of "
            f"{', '.join(tiny)}"
        )
    keep = Path(args.keep) if args.keep else None
    if keep is not None and keep.exists() and (not keep.is_dir() or any(keep.iterdir())):
        what = "a directory that is not empty" if keep.is_dir() else "not a directory"
        raise UserError(f"--keep {keep} is {what}; give a new or empty directory (nothing is overwritten)")
    platform.quiet_cpu_noise()
    from .testing.tiny_models import head_model_types

    if args.head and args.model_type not in head_model_types():
        raise UserError(
            f"--head {args.head}: transformers has no {HEAD_KINDS[args.head]} model of {args.model_type}; "
            f"choose a --model-type of {', '.join(head_model_types())}"
        )
    if keep is None:
        with tempfile.TemporaryDirectory(prefix="mcore-adapter-demo-") as work:
            print(f"files: {work} (temporary: --keep DIR keeps them)")
            return _demo(args, Path(work))
    keep.mkdir(parents=True, exist_ok=True)
    return _demo(args, keep)


def _demo(args: argparse.Namespace, work: Path) -> int:
    import functools

    from .models.converter.convert import convert_hf_to_mca, convert_mca_to_hf
    from .models.converter.hf_io import HF_CONFIG_NAME, read_json
    from .models.converter.layout import ParallelLayout
    from .testing import make_tiny_demo_checkpoint
    from .testing.compare import compare_hf_dirs
    from .verify import describe_tokens, verify

    hf_dir = make_tiny_demo_checkpoint(args.model_type, work / "hf", head=args.head)
    what = f"{args.head} model on the tiny {args.model_type}" if args.head else f"tiny {args.model_type}"
    print(f"{what}: {hf_dir} ({', '.join(sorted(p.name for p in hf_dir.iterdir()))})")
    report = convert_hf_to_mca(hf_dir, work / "mca", progress=False)
    tensors = f"{len(report.consumed)} tensors -> {len(report.produced)} Megatron tensors"
    print(f"HF -> MCA: {work / 'mca'} (tp1pp1): {tensors}")
    convert_mca_to_hf(work / "mca", work / "hf_back", progress=False)
    problems = compare_hf_dirs(hf_dir, work / "hf_back")
    print(f"MCA -> HF: {work / 'hf_back'}:", "bit-exact" if not problems else f"MISMATCH {problems}")
    config = read_json(hf_dir / HF_CONFIG_NAME)
    prompts = [False, True] if "vision_config" in config else [False]
    diffs = [verify(hf_dir, image=image) for image in prompts]
    diff = functools.reduce(lambda a, b: a.merge(b), diffs)
    tokens = [describe_tokens(config, 2, 16, image) for image in prompts]
    passed = _report_parity(hf_dir, ParallelLayout(), tokens, diff, args)
    return 0 if passed and not problems else 1


def cmd_list(args: argparse.Namespace) -> int:
    """The supported model types, from the registries (every plugin loaded) and the generated
    support matrix."""
    import json

    from . import plugins
    from .supported import format_table, supported_models

    rows = supported_models()
    for extension in plugins.extensions():
        if extension.error:
            print(f"warning: {extension.error}", file=sys.stderr)
    print(json.dumps(rows, indent=1) if args.json else format_table(rows))
    return 0


# ---------------------------------------------------------------------- arguments
class _Parser(argparse.ArgumentParser):
    """argparse, with its errors in the form of every other user error: one ``error:`` line
    (usage stays one ``--help`` away), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {self.prog}: {message} (see {self.prog} --help)\n")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _add_layout_args(parser: argparse.ArgumentParser, what: str) -> None:
    group = parser.add_argument_group("parallel layout", what)
    group.add_argument(
        "--tp", type=_positive, metavar="N", help="tensor-parallel size: heads split over N ranks (default 1)"
    )
    group.add_argument(
        "--pp",
        type=_positive,
        metavar="N",
        help="pipeline-parallel size: layers split over N stages (default 1)",
    )
    group.add_argument(
        "--vpp",
        type=_positive,
        metavar="N",
        help="virtual pipeline stages per pipeline rank, for Megatron's interleaved schedule (needs "
        "--pp >= 2; default: none)",
    )
    group.add_argument(
        "--num-layers-in-first-pipeline-stage",
        type=_positive,
        metavar="N",
        help="uneven pipeline: layers of the first stage (Megatron's option); the rest split evenly",
    )
    group.add_argument(
        "--num-layers-in-last-pipeline-stage",
        type=_positive,
        metavar="N",
        help="uneven pipeline: layers of the last stage (Megatron's option)",
    )
    group.add_argument(
        "--ep",
        type=_positive,
        metavar="N",
        help="expert-parallel size: a mixture-of-experts model's experts split over N ranks (default 1)",
    )
    group.add_argument(
        "--etp",
        type=_positive,
        metavar="N",
        help="expert-tensor-parallel size: each expert's weights split over N ranks, independently "
        "of --tp (default: as --tp)",
    )


class _Versions(argparse.Action):
    """``--version``: this package's version and its main dependencies', from the installed
    distributions' metadata (nothing is imported)."""

    def __init__(self, option_strings: list[str], dest: str, help: str | None = None) -> None:
        super().__init__(
            option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, nargs=0, help=help
        )

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from .supported import versions

        print(versions())
        parser.exit(0)


def _add_import_arg(parser: argparse.ArgumentParser, dest: str) -> None:
    parser.add_argument(
        "--import",
        dest=dest,
        action="append",
        default=[],
        metavar="MODULE[:FUNCTION]",
        help="import MODULE (from the import path, e.g. PYTHONPATH) before the command runs, then call "
        "FUNCTION if given: a module of yours that calls register_template, register_model or "
        "registers an HF model with transformers. Repeatable; the ranks a command launches import "
        "it too",
    )


def _add_tolerance_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tol",
        type=_positive_float,
        default=None,  # parity.FP32_RTOL, read when the command runs (parity imports torch)
        metavar="RTOL",
        help="largest max |logits diff| relative to max |logit| that passes (default 1e-4, the fp32 "
        "tolerance: fp32 rounding differs between CPUs and layouts in proportion to the logits' scale)",
    )
    parser.add_argument(
        "--atol",
        type=_positive_float,
        default=None,
        help="also require max |logits diff| <= ATOL (absolute; default: none)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="mcore-adapter",
        description="Convert checkpoints between Hugging Face and Megatron-Core, check a conversion "
        "against transformers, or run the built-in tiny demo.",
        epilog="Model types beyond the built-in ones come from installed packages that declare an "
        "'mcore_adapter.plugins' entry point (roll_models does, for internlm2), loaded when needed, "
        "or from --import MODULE (before or after the command).",
    )
    parser.add_argument(
        "--version",
        action=_Versions,
        help="print the versions of mcore-adapter, megatron-core, transformers and torch",
    )
    _add_import_arg(parser, "imports")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    convert = sub.add_parser(
        "convert",
        help="HF -> MCA, MCA -> HF, MCA -> MCA",
        description="Convert a checkpoint. The direction follows SRC: an HF directory (config.json + "
        "safetensors) becomes an MCA directory; an MCA directory (mca_config.json) becomes an HF "
        "directory, or, with layout flags or --format, an MCA directory in another layout or format. "
        "DST is written whole or not at all: it appears when the conversion is complete.",
    )
    convert.add_argument("src", metavar="SRC", help="the checkpoint directory to read (HF or MCA)")
    convert.add_argument(
        "dst",
        metavar="DST",
        help="the directory to write; must not exist (see --force), nor be, contain or lie inside SRC",
    )
    convert.add_argument(
        "--dtype",
        choices=["fp32", "bf16", "fp16"],
        default=None,
        help="weight dtype of the output. Default: keep the source's; MCA -> HF writes the dtype the HF "
        "checkpoint had (recorded in mca_config.json)",
    )
    convert.add_argument(
        "--format",
        choices=["torch", "torch_dist"],
        default=None,
        help="MCA weight format to write: torch = Megatron-LM's per-rank files for one layout (default, "
        "written with torch alone); torch_dist = megatron-core's dist_checkpointing, layout-free. With "
        "an MCA source it asks for MCA output",
    )
    convert.add_argument(
        "--hf-config",
        metavar="PATH",
        default=None,
        help="MCA sources: the model's HF config.json, for a checkpoint that keeps none and whose HF "
        "config cannot be rebuilt from its Megatron config alone (checked against it)",
    )
    _add_layout_args(convert, "the layout of the MCA output (with an MCA source: reshard to it)")
    convert.add_argument(
        "--moe-grouped-gemm",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="'torch' output of a model with experts: name the experts as Megatron's grouped GEMM "
        "(experts.linear_fc1.weight<i>) or, with --no-moe-grouped-gemm, as its SequentialMLP "
        "(experts.local_experts.<i>.linear_fc1.weight; the default for HF sources). Both are read",
    )
    convert.add_argument(
        "--drop-mtp",
        action="store_true",
        help="HF sources: leave out the multi-token-prediction layers (DeepSeek-V3, GLM-4.5), which "
        "only training with the MTP loss uses; without it they are converted",
    )
    convert.add_argument(
        "--force",
        action="store_true",
        help="replace DST if it holds an earlier checkpoint (never the source, never a directory of other files)",
    )
    convert.set_defaults(func=cmd_convert)

    verify = sub.add_parser(
        "verify",
        help="compare Megatron and HF logits for an HF checkpoint",
        description="Build the Megatron model from an HF checkpoint, run it and the transformers model "
        "(both float32, eager attention) on the same tokens and report the models, the tokens, the max "
        "|logits diff|, that diff relative to max |logit|, top-1 agreement and the tolerance. The last "
        "line is 'PASS|FAIL max_abs_diff=<float> max_rel_diff=<float> top1_agreement=<float>|n/a "
        "rtol=<float> [atol=<float>] layout=<layout> dtype=fp32'; exit status 1 on FAIL. A value or "
        "reward model (token / sequence classification) compares its values or scores. With more than "
        "one rank the ranks are launched here (gloo on CPU).",
    )
    verify.add_argument(
        "hf_dir",
        metavar="HF_DIR",
        help="an HF checkpoint directory (config.json + safetensors); an MCA checkpoint must be "
        "exported to HF first",
    )
    _add_layout_args(verify, "the layout to build the Megatron model in; tp x pp ranks are launched locally")
    _add_tolerance_args(verify)
    verify.add_argument("--batch-size", type=_positive, default=2, help="random token sequences (default 2)")
    verify.add_argument("--seq-len", type=_positive, default=16, help="tokens per sequence (default 16)")
    verify.add_argument(
        "--image",
        action="store_true",
        help="vision-language models: a prompt with one synthetic image (default: text tokens)",
    )
    verify.set_defaults(func=cmd_verify)

    demo = sub.add_parser(
        "demo",
        help="a tiny model to try things on: round trip and parity (no downloads)",
        description="Write a complete tiny random HF checkpoint of a built-in model (config, weights, "
        "a small tokenizer, generation config; an image processor for vision-language models), "
        "convert it HF -> MCA -> HF (bit-exact check), then verify it. With --keep DIR the "
        "checkpoints stay: DIR/hf, DIR/mca (Megatron, tp1pp1) and DIR/hf_back.",
    )
    demo.add_argument("--model-type", default="llama", help="which built-in tiny model (default llama)")
    demo.add_argument(
        "--head",
        choices=["value", "reward"],
        default=None,
        help="a value (per-token) or reward (per-sequence) model on the tiny LM: transformers' token / "
        "sequence classification with one label (default: the language model)",
    )
    demo.add_argument(
        "--keep",
        "--workdir",  # its old name, deprecated
        dest="keep",
        metavar="DIR",
        default=None,
        help="keep the checkpoints in DIR (new or empty; --workdir is its deprecated name) instead "
        "of a temporary directory",
    )
    _add_tolerance_args(demo)
    demo.set_defaults(func=cmd_demo)

    listing = sub.add_parser(
        "list",
        help="the supported model types: HF architecture, providers, tested layouts",
        description="Every model type with a conversion template (built in, or registered by a plugin "
        "or --import): the HF architecture it converts, the package that provides the template and "
        "the one that provides the HF model, and the parallel layouts at which the parity tests "
        "compared Megatron's logits with transformers'.",
    )
    listing.add_argument("--json", action="store_true", help="print a JSON list, one object per model type")
    listing.set_defaults(func=cmd_list)
    for command in sub.choices.values():  # --import is accepted after the command as well
        _add_import_arg(command, "command_imports")
    return parser


class _StderrHandler(logging.Handler):
    """Log lines to whatever ``sys.stderr`` is when they are emitted."""

    def emit(self, record: logging.LogRecord) -> None:
        print(record.getMessage(), file=sys.stderr)


def _configure_output() -> None:
    """Stage lines of the converter (``logging``) to stderr, without logging's decorations."""
    logger = logging.getLogger("mcore_adapter")
    if any(isinstance(h, _StderrHandler) for h in logger.handlers):
        return
    logger.addHandler(_StderrHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or an argument error (2), already printed
        return e.code if isinstance(e.code, int) else 0
    _configure_output()
    try:
        from .plugins import import_modules

        import_modules([*args.imports, *args.command_imports])
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except (Interrupted, KeyboardInterrupt) as e:
        what = e if isinstance(e, Interrupted) else "interrupted (SIGINT)"
        print(f"error: {what}; the partial output was removed, the source is untouched", file=sys.stderr)
        return 128 + (e.signum if isinstance(e, Interrupted) else 2)
    except OSError as e:  # disk full, permission denied...: the system's words are the message
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
