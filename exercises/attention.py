"""Exercise 3 · Grouped-query attention with QK-Norm.  Read notebooks/03_attention.ipynb first.

Check your work:  pytest exercises/test_attention.py --impl student

This builds on exercises 1 and 2. If you skipped them, import the package's pieces instead:
    from minqwen3.rmsnorm import RMSNorm
    from minqwen3.rope import apply_rope
"""
import torch
import torch.nn.functional as F
from torch import nn

from .rmsnorm import RMSNorm
from .rope import apply_rope


class Attention(nn.Module):
    """Causal self-attention: n_heads query heads share n_kv key/value heads (GQA); q and k get an RMSNorm per head.

    config: anything with hidden_size, num_attention_heads, num_key_value_heads, head_dim, rms_norm_eps and
    attention_bias (a minqwen3.Qwen3Config or a transformers.Qwen3Config).
    """

    def __init__(self, config):
        """The parameters, with exactly these names (they are the checkpoint's): q_proj (hidden_size ->
        num_attention_heads * head_dim), k_proj and v_proj (hidden_size -> num_key_value_heads * head_dim), o_proj
        (num_attention_heads * head_dim -> hidden_size), all with bias=config.attention_bias; q_norm and k_norm,
        RMSNorms over one head (head_dim), eps rms_norm_eps. head_dim is its own setting (Qwen3-0.6B: hidden 1024,
        16 heads x 128 = 2048)."""
        super().__init__()
        raise NotImplementedError("exercise 3: Attention.__init__")

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, mask: torch.Tensor | None = None,
                cache=None, input_pos: torch.Tensor | None = None) -> torch.Tensor:
        """x (B, T, hidden) -> (B, T, hidden).

        cos, sin: (B|1, 1, T, head_dim) from RotaryEmbedding. mask: None (plain causal) or boolean
        (B|1, 1, T, S), True = may attend. cache: None, or this layer's minqwen3.KVCache; input_pos (T,) are
        the slots this call's tokens go to; then attend over everything cache.update returns.

        QK-Norm comes before RoPE; a decode step (T == 1 with a cache) goes through decode_attention.
        """
        raise NotImplementedError("exercise 3: Attention.forward")


def decode_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """One new query per row against the whole cache, without copying K and V per query head.

    q (B, H, 1, D); k, v (B, H_kv, S, D); mask None or boolean (B|1, 1, 1, S), True = may attend.
    Returns (B, H, 1, D).

    The G = H / H_kv query heads of a group share one key/value head: read each key/value head once.
    """
    raise NotImplementedError("exercise 3: decode_attention")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# Attention.forward, step by step:
# 1. q = q_proj(x) viewed (B, T, n_heads, head_dim); k, v likewise with n_kv heads.
# 2. QK-Norm: q = q_norm(q), k = k_norm(k) (over head_dim), BEFORE RoPE. Then move heads to dim 1:
#    (B, heads, T, head_dim).
# 3. q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin).
# 4. if cache is not None: k, v = cache.update(input_pos, k, v).
# 5. if T == 1 and there is a cache: y = decode_attention(q, k, v, mask); otherwise
#    F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=(mask is None and T > 1),
#    enable_gqa=True)   (or write it out: repeat k and v for each group, softmax(q k^T / sqrt(D)) v).
# 6. back to (B, T, n_heads * head_dim), then o_proj.
# decode_attention: G = H / H_kv query heads of a group share one key/value head, so view q as (B, H_kv, G, D):
# the G queries become G rows of one matmul with that head's keys.
#     scores = (q viewed (B, H_kv, G, D)) @ k^T, in float32, times D ** -0.5      -> (B, H_kv, G, S)
#     masked slots -> -inf (the mask (B|1, 1, 1, S) broadcasts over heads and rows)
#     softmax over S, cast to v's dtype, @ v, view back to (B, H, 1, D)
