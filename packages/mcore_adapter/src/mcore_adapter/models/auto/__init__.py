from .config_auto import AutoConfig, register_config
from .modeling_auto import AutoModel, register_model

__all__ = ["AutoConfig", "AutoModel", "register_config", "register_model"]
