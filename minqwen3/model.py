"""The Qwen3 decoder: token ids -> logits. Dense or MoE per layer; the KV cache is an argument."""
import torch
from torch import nn

from .attention import Attention
from .config import Qwen3Config
from .mlp import MLP
from .moe import SparseMoE
from .rmsnorm import RMSNorm
from .rope import RotaryEmbedding


class DecoderLayer(nn.Module):
    def __init__(self, config: Qwen3Config, layer_idx: int):
        super().__init__()
        self.is_moe = config.is_moe_layer(layer_idx)
        self.input_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.self_attn = Attention(config, layer_idx)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)

    def forward(self, x, cos, sin, mask=None, cache=None, input_pos=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, input_pos)  # pre-norm residual
        y = self.mlp(self.post_attention_layernorm(x))
        y, router_logits = y if self.is_moe else (y, None)
        return x + y, router_logits


class Qwen3Model(nn.Module):
    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config.head_dim, config.rope_theta, config.rope_scaling,
                                          config.max_position_embeddings)


class Qwen3(nn.Module):
    """Qwen3 causal LM; parameter names are the checkpoint keys (model.layers.0.self_attn.q_proj.weight, ...)."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.model = Qwen3Model(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.apply(self._init_weights)

    def _init_weights(self, m: nn.Module):
        std = self.config.initializer_range
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        for p in m.parameters(recurse=False):  # stacked expert weights
            if p.dim() == 3:
                nn.init.normal_(p, std=std)

    def forward(self, input_ids: torch.Tensor, cache=None, input_pos: torch.Tensor | None = None,
                pad: torch.Tensor | None = None, return_router_logits: bool = False):
        """input_ids (B, T) -> logits (B, T, V) in float32.

        cache: a KVCache; the tokens are written at slots input_pos (T,), default 0..T-1.
        pad: (B,) count of left-padding tokens per row; those slots are never attended to and
             RoPE positions start at 0 after them, so a padded row computes what it would alone.
        return_router_logits: also return the per-MoE-layer router logits (for the balancing loss).
        """
        h, router_logits = self.hidden_states(input_ids, cache, input_pos, pad)
        logits = self.lm_head(h).float()
        return (logits, router_logits) if return_router_logits else logits

    def hidden_states(self, input_ids: torch.Tensor, cache=None, input_pos: torch.Tensor | None = None,
                      pad: torch.Tensor | None = None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """forward() without the LM head: final normed hidden states (B, T, C) and router logits (B*T, E) per MoE
        layer. Training applies the head only where the loss needs it: most of a 151,936-way softmax's memory."""
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        ctx = self.config.context_length  # checked on shapes only: the host knows them without a sync
        if T > ctx or (cache is not None and T > cache.max_len):
            raise ValueError(f"input_ids has {T} positions; the model's context is {ctx} tokens"
                             + ("" if cache is None else f" and the cache holds {cache.max_len}"))
        if input_pos is None:
            input_pos = torch.arange(T, device=input_ids.device)
        pos = input_pos[None, :] if pad is None else (input_pos[None, :] - pad[:, None]).clamp(min=0)  # (B|1, T)
        x = self.model.embed_tokens(input_ids)  # (B, T, C)
        cos, sin = self.model.rotary_emb(pos, x.dtype)
        mask = self._mask(input_pos, cache, pad)
        router_logits = []
        for layer in self.model.layers:
            x, r = layer(x, cos, sin, mask, cache, input_pos)
            if r is not None:
                router_logits.append(r)
        return self.model.norm(x), router_logits

    @staticmethod
    def _mask(input_pos, cache, pad):
        """Boolean attention mask (B|1, 1, T, S), True = may attend; None = plain causal (SDPA's fast path)."""
        if cache is None and pad is None:
            return None
        kv_pos = input_pos if cache is None else torch.arange(cache.max_len, device=input_pos.device)  # (S,)
        mask = kv_pos[None, :] <= input_pos[:, None]  # (T, S) causal, and hides slots not yet written
        if pad is not None:
            # hide left padding; a padding query still sees itself, so no row is all -inf (NaN in SDPA)
            mask = (mask & (kv_pos[None, None, :] >= pad[:, None, None])) | (kv_pos[None, :] == input_pos[:, None])
            return mask[:, None]  # (B, 1, T, S)
        return mask[None, None]  # (1, 1, T, S)
