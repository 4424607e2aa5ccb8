"""vLLM integration: the plugin entry point (``plugin.register``), out-of-tree architecture
registration, the CPU weight-transfer backend ``roll_shm``, a client for an offline
``vllm.LLM`` and the engine arguments a CPU-only machine needs (``cpu_engine_args``). Importing
this package does not import vLLM."""

from .cpu import cpu_engine_args
from .plugin import RegistrationError, register, register_architecture

__all__ = ["RegistrationError", "cpu_engine_args", "register", "register_architecture"]
