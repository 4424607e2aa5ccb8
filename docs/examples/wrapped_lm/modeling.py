"""The HF side: Qwen3's decoder, nested one level deeper (``model.language_model.*``)."""

from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model, Qwen3PreTrainedModel


class WrappedLMConfig(Qwen3Config):
    model_type = "wrapped_lm"


class WrappedLMModel(Qwen3PreTrainedModel):
    config_class = WrappedLMConfig

    def __init__(self, config):
        super().__init__(config)
        self.language_model = Qwen3Model(config)
        self.post_init()

    def get_input_embeddings(self):
        return self.language_model.embed_tokens

    def set_input_embeddings(self, value):
        self.language_model.embed_tokens = value

    def forward(self, **kwargs):
        return self.language_model(**kwargs)


class WrappedLMForCausalLM(Qwen3ForCausalLM):
    config_class = WrappedLMConfig
    _tied_weights_keys = {"lm_head.weight": "model.language_model.embed_tokens.weight"}

    def __init__(self, config):
        super().__init__(config)
        self.model = WrappedLMModel(config)  # only the nesting differs from Qwen3
        self.post_init()
