"""Exercise 5 · The whole model: the decoder layer and Qwen3, token ids -> logits.
Read notebooks/05_model_and_weights.ipynb first.

Check your work:  pytest exercises/test_model.py --impl student

Build it from the pieces of exercises 1-4, yours or the package's:
    minqwen3.rmsnorm.RMSNorm(dim, eps)                         x (..., dim) -> (..., dim)
    minqwen3.rope.RotaryEmbedding(head_dim, theta, scaling, max_position)(pos (B, T), dtype) -> cos, sin (B, 1, T, D)
    minqwen3.attention.Attention(config)(x (B, T, C), cos, sin) -> (B, T, C), causal when given no mask
    minqwen3.mlp.MLP(hidden_size, intermediate_size)          x (..., C) -> (..., C)
    minqwen3.moe.SparseMoE(config)(x (B, T, C)) -> (y (B, T, C), router logits (B*T, E))
The tests load an official checkpoint into your model by name (load_state_dict), so keep the names below: they are
the checkpoint's keys (model.layers.0.self_attn.q_proj.weight, model.norm.weight, lm_head.weight, ...).
"""
import torch
from torch import nn


class DecoderLayer(nn.Module):
    """One layer: two pre-norm residual blocks, attention then MLP.

    Submodules: input_layernorm, self_attn, post_attention_layernorm (RMSNorms over hidden_size with
    config.rms_norm_eps, and the attention of layer `layer_idx`), and mlp: a SparseMoE where
    config.is_moe_layer(layer_idx), else a dense MLP(hidden_size, intermediate_size).
    (The package's layer also takes a mask and a KV cache, and returns the router logits for training.)
    """

    def __init__(self, config, layer_idx: int):
        super().__init__()
        raise NotImplementedError("exercise 5: DecoderLayer.__init__")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x (B, T, C), cos and sin (B|1, 1, T, head_dim) -> (B, T, C)."""
        raise NotImplementedError("exercise 5: DecoderLayer.forward")


class Qwen3Model(nn.Module):
    """The body: embed_tokens (vocab_size x hidden_size), layers (a ModuleList of config.num_hidden_layers
    DecoderLayers), norm (the final RMSNorm) and rotary_emb (a RotaryEmbedding from the config's head_dim,
    rope_theta, rope_scaling, max_position_embeddings)."""

    def __init__(self, config):
        super().__init__()
        raise NotImplementedError("exercise 5: Qwen3Model.__init__")


class Qwen3(nn.Module):
    """The causal LM: `model` (a Qwen3Model) and lm_head (hidden_size -> vocab_size, no bias).

    With config.tie_word_embeddings the head IS the embedding: one Parameter used twice (Qwen3-0.6B, 1.7B, 4B),
    not a copy of it.
    """

    def __init__(self, config):
        super().__init__()
        self.config = config
        raise NotImplementedError("exercise 5: Qwen3.__init__")

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """input_ids (B, T) -> logits (B, T, vocab_size) in float32. Positions are 0 .. T-1."""
        raise NotImplementedError("exercise 5: Qwen3.forward")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# - A layer: x = x + self_attn(input_layernorm(x), cos, sin); then x = x + mlp(post_attention_layernorm(x)).
#   SparseMoE returns a tuple (y, router_logits): add y.
# - Qwen3.forward: x = embed_tokens(ids); cos, sin = rotary_emb(torch.arange(T)[None], x.dtype); run the layers;
#   logits = lm_head(norm(x)).float().
# - Tying: after creating lm_head, `self.lm_head.weight = self.model.embed_tokens.weight`.
# - No init needed: the tests load every weight. (The package initialises like transformers: normal(0, 0.02).)
