"""Grouped-query attention with QK-Norm, RoPE and an optional KV cache (this layer's own)."""
import torch
import torch.nn.functional as F
from torch import nn

from . import flash_decode, matvec, stack
from .rmsnorm import RMSNorm
from .rope import apply_rope


class Attention(nn.Module):
    def __init__(self, config):
        super().__init__()
        c = config
        self.n_heads, self.n_kv, self.head_dim = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, c.num_attention_heads * c.head_dim, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, c.num_key_value_heads * c.head_dim, bias=c.attention_bias)
        self.o_proj = nn.Linear(c.num_attention_heads * c.head_dim, c.hidden_size, bias=c.attention_bias)
        # QK-Norm: normalising each head's q and k keeps attention logits bounded (Qwen3 dropped QKV bias for it)
        self.q_norm = RMSNorm(c.head_dim, c.rms_norm_eps)
        self.k_norm = RMSNorm(c.head_dim, c.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None, input_pos=None, norm=None):
        """norm: the layer's RMSNorm, applied to x first (in the decode step on a GPU: on the way into q|k|v)."""
        B, T, _ = x.shape
        w = stack.stacked(self)  # q|k|v as one weight, inside a Decoder's step (stack.py), else None
        if w is None:
            x = x if norm is None else norm(x)
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
        else:  # decoding on a GPU: one kernel norms x and projects (matvec.py), q, k, v are views of its output
            q, k, v = matvec.normed_linear(x, w, norm).split([self.n_heads * self.head_dim, self.n_kv * self.head_dim,
                                                              self.n_kv * self.head_dim], -1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = k.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        v = v.view(B, T, self.n_kv, self.head_dim).transpose(1, 2)  # (B, H_kv, T, D)
        fused = T == 1 and cache is not None and flash_decode.available(q, mask)  # decode on a GPU
        # QK-Norm: normalising each head's q and k keeps attention logits bounded (Qwen3 dropped QKV bias for it)
        q, k = apply_rope(self.q_norm(q), cos, sin), apply_rope(self.k_norm(k), cos, sin)
        if fused:  # one kernel writes k, v into the cache and attends (flash_decode.py)
            y = flash_decode.flash_decode(q, k, v, cache.k, cache.v, input_pos, mask)  # (B, H, 1, D)
        else:
            if cache is not None:
                k, v = cache.update(input_pos, k, v)  # (B, H_kv, S, D)
            if T == 1 and cache is not None and q.device.type != "cpu":
                y = decode_attention(q, k, v, mask)  # (B, H, 1, D)
            else:  # each group of n_heads / n_kv query heads shares one key/value head (on a CPU, also to decode:
                # one call where decode_attention's three parallel ones each wait for a thread)
                causal = False  # SDPA takes a plain bool: branching on a compiled prompt's symbolic T guards on it
                if mask is None and T > 1:
                    causal = True
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                                   enable_gqa=self.n_heads != self.n_kv)  # (B, H, T, D)
        # decoding on a GPU, o_proj is matvec.py's kernel (the same settings on every rank of a split model)
        return matvec.linear(self.o_proj, y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One new query per row against the cache: q (B, H, 1, D), k, v (B, H_kv, S, D), mask (B|1, 1, 1, S).

    The G = H / H_kv query heads that share a key/value head become G rows of one small matmul, so
    K and V are read once and never repeated; SDPA's masked GQA path may copy them out per query head.
    """
    B, H, _, D = q.shape
    H_kv = k.shape[1]
    scores = (q.view(B, H_kv, H // H_kv, D) @ k.transpose(2, 3)).float() * D ** -0.5  # (B, H_kv, G, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))  # mask (B|1, 1, 1, S) broadcasts over heads
    return (scores.softmax(-1).to(v.dtype) @ v).view(B, H, 1, D)
