"""Logits parity between a converted model and its reference (transformers): the difference
relative to the reference's scale, and the one tolerance every fp32 parity check uses.

Why relative: two correct fp32 implementations of the same model differ by rounding, and how
much depends on the CPU (its GEMM blocking and vector width change the summation order), the
parallel layout (tensor parallelism splits the reductions) and the size of the logits. An
absolute bound either fails correct conversions on some machines or lets wrong ones through
on models with larger logits.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

FP32_RTOL = 1e-4
"""The largest ``max |actual - reference| / max |reference|`` an fp32 comparison passes.

Grounded in both directions, on the tiny models of every family (logits up to ~3.5, 2-6
layers) and on every parallel layout the tests run:
- the noise of correct conversions is at most ~2e-5 of the scale (Gated DeltaNet's chunked
  recurrence at TP2, on the CPUs seen so far; dense and MoE decoders stay under 1e-6), so the
  tolerance leaves a factor of 5 for other machines;
- the controls, conversions wrong in one detail (`tests/mcore_adapter/test_models.py`: gate and
  up swapped, q/k/v not grouped, Llama-3 rope scaling's original length ignored, sliding
  window dropped), are at least 3e-3 of the scale, 30 times the tolerance.
"""

CONTROL_RTOL = 30 * FP32_RTOL
"""What the tests' controls (conversions wrong in one detail) must move the logits by, at least,
relative to their scale: the margin the tolerance keeps from a wrong conversion."""


def logprob_tolerance(logits_scale: float, rtol: float = FP32_RTOL) -> float:
    """The fp32 tolerance of log-probabilities computed from logits that reach ``logits_scale``:
    a log-softmax moves by at most twice the largest change of its logits (the logit itself and
    the log-sum-exp, each by at most that change), so ``FP32_RTOL`` carries over as this."""
    return 2 * rtol * logits_scale


@dataclass(frozen=True)
class LogitsDiff:
    """How ``actual`` logits differ from ``reference`` ones (over every position compared)."""

    max_abs: float
    scale: float  # max |reference|
    top1_agreement: float | None  # share of positions with the same argmax; None for one output
    positions: int

    @property
    def relative(self) -> float:
        if self.max_abs == 0:
            return 0.0
        return self.max_abs / self.scale if self.scale > 0 else math.inf

    def passed(self, rtol: float = FP32_RTOL) -> bool:
        return self.relative <= rtol

    def merge(self, other: LogitsDiff) -> LogitsDiff:
        """The comparison over both sets of positions (several prompts)."""
        positions = self.positions + other.positions
        if self.top1_agreement is None or other.top1_agreement is None:
            top1 = None
        else:
            agree = self.top1_agreement * self.positions + other.top1_agreement * other.positions
            top1 = agree / positions if positions else 1.0
        return LogitsDiff(max(self.max_abs, other.max_abs), max(self.scale, other.scale), top1, positions)

    def describe(self) -> str:
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.1%}"
        return (
            f"max |diff| {self.max_abs:.3g} = {self.relative:.3g} of the logits' scale "
            f"(max |logit| {self.scale:.3g}){top1}, over {self.positions} positions"
        )


def compare_logits(actual: torch.Tensor, reference: torch.Tensor) -> LogitsDiff:
    """Compare two logits tensors of the same shape (``[..., vocab]``), in float32."""
    if actual.shape != reference.shape:
        raise ValueError(f"logits of shape {tuple(actual.shape)} vs {tuple(reference.shape)}")
    actual, reference = actual.detach().float(), reference.detach().float()
    positions = reference[..., 0].numel()
    top1 = None
    if reference.shape[-1] > 1:
        top1 = (actual.argmax(-1) == reference.argmax(-1)).float().mean().item() if positions else 1.0
    return LogitsDiff(
        max_abs=(actual - reference).abs().max().item() if positions else 0.0,
        scale=reference.abs().max().item() if positions else 0.0,
        top1_agreement=top1,
        positions=positions,
    )


def assert_logits_close(actual: torch.Tensor, reference: torch.Tensor, rtol: float = FP32_RTOL) -> LogitsDiff:
    """``compare_logits``, raising ``AssertionError`` (with the comparison) beyond ``rtol``."""
    diff = compare_logits(actual, reference)
    assert diff.passed(rtol), f"logits differ beyond {rtol:g} of their scale: {diff.describe()}"
    return diff
