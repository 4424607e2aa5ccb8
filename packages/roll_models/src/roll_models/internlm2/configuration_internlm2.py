"""InternLM2's config, as its hub checkpoints write it (``model_type`` "internlm2")."""

from __future__ import annotations

from huggingface_hub.dataclasses import strict
from transformers.configuration_utils import PreTrainedConfig
from transformers.modeling_rope_utils import RopeParameters


@strict
class InternLM2Config(PreTrainedConfig):
    r"""InternLM2 (``internlm/internlm2-*``): a llama-like decoder whose attention projects
    q/k/v with one grouped ``wqkv`` and whose hub config names the attention/output bias
    ``bias``. Rope scaling: ``rope_scaling={"type": "linear" | "dynamic", "factor": f}`` on the
    hub, folded into ``rope_parameters`` as for every transformers 5 model."""

    model_type = "internlm2"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 103168
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    use_cache: bool = True
    pad_token_id: int | None = 0
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    tie_word_embeddings: bool = False
    bias: bool = True
    attention_dropout: float = 0.0
    rope_parameters: RopeParameters | dict | None = None

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        super().__post_init__(**kwargs)
