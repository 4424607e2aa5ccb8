"""vLLM integration: the plugin entry point (``plugin.register``), out-of-tree architecture
registration, the CPU weight-transfer backend ``roll_shm`` and a client for an offline
``vllm.LLM``. Importing this package does not import vLLM."""

from .plugin import RegistrationError, register, register_architecture

__all__ = ["RegistrationError", "register", "register_architecture"]
