"""Registration of ROLL models with vLLM and SGLang, and the Megatron -> inference-engine
weight sync. Engines are imported lazily, so this package imports on machines without them.
"""

__version__ = "0.1.0"
