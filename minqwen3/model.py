"""The Qwen3 decoder: token ids -> logits. Dense or MoE per layer; the KV cache (one per layer) is an argument."""
import torch
from torch import nn

from .attention import Attention
from .cache import KVCache
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
        self.self_attn = Attention(config)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mlp = SparseMoE(config) if self.is_moe else MLP(config.hidden_size, config.intermediate_size)
        # parallel.shard: (a block's partial output, the residual) -> the residual + its sum over the ranks
        self.reduce = None

    def forward(self, x, cos, sin, mask=None, cache=None, input_pos=None):
        # pre-norm residual; attention and the dense MLP apply the norm themselves (decoding on a GPU, on the way
        # into their products: matvec.normed_linear); the MoE's router and experts both take the normed x. In a
        # split model the blocks' outputs are partial sums: reduce adds them up and the residual (on GPUs in one
        # kernel, flag_all_reduce.py)
        add = (lambda out, residual: residual + out) if self.reduce is None else self.reduce
        x = add(self.self_attn(x, cos, sin, mask, cache, input_pos, norm=self.input_layernorm), x)
        if self.is_moe:
            y, router_logits = self.mlp(self.post_attention_layernorm(x))
        else:
            y, router_logits = self.mlp(x, norm=self.post_attention_layernorm), None
        return add(y, x), router_logits


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

    def forward(self, input_ids: torch.Tensor, cache: list[KVCache] | None = None,
                input_pos: torch.Tensor | None = None, pad: torch.Tensor | None = None,
                return_router_logits: bool = False):
        """input_ids (B, T) -> logits (B, T, V) in float32.

        cache: one KVCache per layer (cache.make_cache); the tokens are written at slots input_pos (T,), default
             0..T-1.
        pad: (B,) count of left-padding tokens per row; those slots are never attended to and
             RoPE positions start at 0 after them, so a padded row computes what it would alone.
        return_router_logits: also return the per-MoE-layer router logits (for the balancing loss).
        """
        h, router_logits = self.hidden_states(input_ids, cache, input_pos, pad)
        logits = self.lm_head(h).float()
        return (logits, router_logits) if return_router_logits else logits

    def hidden_states(self, input_ids: torch.Tensor, cache: list[KVCache] | None = None,
                      input_pos: torch.Tensor | None = None, pad: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """forward() without the LM head: final normed hidden states (B, T, C) and router logits (B*T, E) per MoE
        layer. Training applies the head only where the loss needs it: most of a 151,936-way softmax's memory."""
        if input_ids.dtype not in (torch.long, torch.int32):
            raise TypeError(f"input_ids must hold integer token ids, got a {input_ids.dtype} tensor")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, time), got shape {tuple(input_ids.shape)}")
        B, T = input_ids.shape
        ctx = self.config.context_length  # checked on shapes only: the host knows them without a sync
        if T > ctx or (cache is not None and T > cache[0].max_len):
            raise ValueError(f"input_ids has {T} positions; the model's context is {ctx} tokens"
                             + ("" if cache is None else f" and the cache holds {cache[0].max_len}"))
        if input_pos is None:
            input_pos = torch.arange(input_ids.shape[1], device=input_ids.device)
        x, cos, sin, mask = self.inputs(input_ids, input_pos, cache, pad)
        router_logits = []
        for layer, layer_cache in zip(self.model.layers, cache or [None] * len(self.model.layers)):
            x, r = layer(x, cos, sin, mask, layer_cache, input_pos)
            if r is not None:
                router_logits.append(r)
        return self.model.norm(x), router_logits

    def inputs(self, input_ids: torch.Tensor, input_pos: torch.Tensor, cache: list[KVCache] | None = None,
               pad: torch.Tensor | None = None):
        """What every layer takes: embeddings (B, T, C), the RoPE tables cos, sin (B|1, 1, T, D) of slots
        input_pos (T,), shifted past each row's left padding, and the attention mask (see attention_mask)."""
        pos = input_pos[None, :] if pad is None else (input_pos[None, :] - pad[:, None]).clamp(min=0)  # (B|1, T)
        x = self.model.embed_tokens(input_ids)
        return (x, *self.model.rotary_emb(pos, x.dtype), self.attention_mask(input_pos, cache, pad))

    def head(self, x: torch.Tensor) -> torch.Tensor:
        """Float logits (B, V) of the last position of the last layer's output x (B, T, C): the final norm and the
        LM head on that position only (for a 4096-token prompt the others would be 2.5 GB of logits)."""
        return self.lm_head(self.model.norm(x[:, -1])).float()

    @staticmethod
    def attention_mask(input_pos: torch.Tensor, cache: list[KVCache] | None = None,
                       pad: torch.Tensor | None = None) -> torch.Tensor | None:
        """Boolean mask (B|1, 1, T, S) over the cache's S slots, True = may attend; None = plain causal (SDPA's
        fast path), right without padding when the T tokens are all the slots there are (no cache, or a prompt
        fed into a cache of its own length)."""
        T = input_pos.shape[0]
        if pad is None and (cache is None or cache[0].max_len == T):
            return None
        kv_pos = input_pos if cache is None else torch.arange(cache[0].max_len, device=input_pos.device)  # (S,)
        mask = kv_pos[None, :] <= input_pos[:, None]  # (T, S) causal, and hides slots not yet written
        if pad is not None:
            # hide left padding; a padding query still sees itself, so no row is all -inf (NaN in SDPA)
            mask = (mask & (kv_pos[None, None, :] >= pad[:, None, None])) | (kv_pos[None, :] == input_pos[:, None])
            return mask[:, None]  # (B, 1, T, S)
        return mask[None, None]  # (1, 1, T, S)


def random_model(config: Qwen3Config, device="cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> Qwen3:
    """Random weights in config's shapes, for inference: built directly on the device in dtype (no float32 copy
    on the host), in eval mode, without gradients."""
    torch.manual_seed(seed)
    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen3(config)
    finally:
        torch.set_default_dtype(before)
    return model.to(device).eval().requires_grad_(False)
