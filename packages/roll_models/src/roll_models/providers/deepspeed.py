"""``deepspeed_train`` / ``deepspeed_infer``: the transformers model of a checkpoint in a
DeepSpeed engine (ZeRO stage 0-3; ``zero.Init`` at stage 3, so no rank holds the whole model),
optionally with gradient checkpointing and LoRA adapters (peft)."""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from typing import Any

from ..model_providers import ModelArgs, ProviderError, check_model_args, load_config
from .hf import attn_implementation, auto_class, torch_dtype


def _deepspeed():
    import torch

    # Without CUDA DeepSpeed needs telling which accelerator to use (it reads this at import).
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "RANK" in os.environ and "WORLD_SIZE" in os.environ:  # a launcher's job
            deepspeed.init_distributed(dist_backend=backend)
        else:  # one process: DeepSpeed itself would look for MPI (mpi4py) to find its ranks
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    if "LOCAL_RANK" not in os.environ:  # DeepSpeed reads it; launchers set it
        if dist.get_world_size() > 1:
            raise ProviderError(
                "LOCAL_RANK is not set: start a multi-rank DeepSpeed job with torchrun or deepspeed"
            )
        os.environ["LOCAL_RANK"] = "0"
    return deepspeed


@contextlib.contextmanager
def _deepspeed_prints() -> Iterator[None]:
    """DeepSpeed ``print``s its set-up (a C++ op loaded, optimizer memory use) to stdout, which
    is the caller's; keep it in the ``roll_models`` log at debug level instead."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            yield
    finally:
        for line in out.getvalue().splitlines():
            logging.getLogger(__name__).debug("deepspeed: %s", line)


def ds_config(model_args: ModelArgs) -> dict[str, Any]:
    """The DeepSpeed config of ``model_args.deepspeed`` (checked by ``check_model_args``) with the
    defaults a single model needs."""
    config = {"train_micro_batch_size_per_gpu": 1, **(model_args.deepspeed or {})}
    config["zero_optimization"] = {"stage": 0, **config.get("zero_optimization", {})}
    dtype = str(torch_dtype(model_args.dtype)).removeprefix("torch.")
    config.setdefault("bf16", {"enabled": dtype == "bfloat16"})
    config.setdefault("fp16", {"enabled": dtype == "float16"})
    return config


def _model(model_args: ModelArgs, config: dict[str, Any], trainable: bool):
    from transformers.integrations import HfDeepSpeedConfig

    path = model_args.model_name_or_path
    # Alive during from_pretrained, this makes transformers build the model under zero.Init at
    # ZeRO-3: every rank allocates only its partition.
    hf_ds_config = HfDeepSpeedConfig(config) if config["zero_optimization"]["stage"] == 3 else None
    model = auto_class(load_config(path), model_args.head).from_pretrained(
        path,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=attn_implementation(model_args.attn_implementation),
        **({"num_labels": 1} if model_args.head != "lm" else {}),
        **model_args.extra,
    )
    del hf_ds_config
    if trainable and model_args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if model_args.lora is not None:
        model = _with_lora(model, model_args.lora)
    return model


def _with_lora(model, lora: dict[str, Any]):
    from peft import LoraConfig, get_peft_model

    try:
        return get_peft_model(model, LoraConfig(**lora))
    except ValueError as e:
        raise ProviderError(f"LoRA {lora}: {e}") from e


def deepspeed_train(model_args: ModelArgs, is_trainable: bool = True):
    """A DeepSpeed engine over the model. ``model_args.optimizer`` (a function of the trainable
    parameters) gives a torch optimizer; without it the DeepSpeed config must name one."""
    check_model_args(model_args, "hf", unused=("layout",))
    deepspeed = _deepspeed()
    config = ds_config(model_args)
    model = _model(model_args, config, trainable=True)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = model_args.optimizer(params) if model_args.optimizer is not None else None
    if optimizer is None and "optimizer" not in config:
        raise ProviderError(
            "deepspeed_train needs an optimizer: ModelArgs.optimizer (e.g. lambda p: torch.optim.AdamW(p)) "
            "or an 'optimizer' section in the DeepSpeed config"
        )
    if optimizer is not None:  # the caller's choice: DeepSpeed refuses optimizers it has not tested with ZeRO
        config.setdefault("zero_allow_untested_optimizer", True)
    with _deepspeed_prints():
        engine, *_ = deepspeed.initialize(
            model=model, model_parameters=params, optimizer=optimizer, config=config
        )
    return engine


def deepspeed_infer(model_args: ModelArgs, is_trainable: bool = False):
    """A DeepSpeed engine for inference (a reference model at ZeRO-3 holds a partition)."""
    if is_trainable:
        raise ProviderError("deepspeed_infer provides models for inference; train with deepspeed_train")
    check_model_args(model_args, "hf", unused=("layout", "optimizer", "gradient_checkpointing"))
    deepspeed = _deepspeed()
    config = ds_config(model_args)
    model = _model(model_args, config, trainable=False)
    model.eval().requires_grad_(False)
    with _deepspeed_prints():
        engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()
    return engine
