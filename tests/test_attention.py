"""Grouped-query attention with QK-Norm: against attention written out by hand, with and without a cache."""
import math

import pytest
import torch
import torch.nn.functional as F

from minqwen3 import KVCache, Qwen3Config
from minqwen3.attention import Attention, decode_attention
from minqwen3.rope import RotaryEmbedding, apply_rope

CFG = Qwen3Config(hidden_size=48, num_attention_heads=6, num_key_value_heads=2, head_dim=16, num_hidden_layers=1)


def reference(attn, x, cos, sin):
    """Repeat each key/value head for its group of query heads, then softmax(q k^T / sqrt(D)) v, causally."""
    B, T, _ = x.shape
    q = attn.q_norm(attn.q_proj(x).view(B, T, 6, 16)).transpose(1, 2)
    k = attn.k_norm(attn.k_proj(x).view(B, T, 2, 16)).transpose(1, 2)
    v = attn.v_proj(x).view(B, T, 2, 16).transpose(1, 2)
    q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
    k, v = k.repeat_interleave(3, dim=1), v.repeat_interleave(3, dim=1)
    s = q @ k.transpose(-1, -2) / math.sqrt(16)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    return attn.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 96))


def test_attention_with_and_without_cache_matches_reference():
    torch.manual_seed(0)
    attn = Attention(CFG)
    for norm in (attn.q_norm, attn.k_norm):
        torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(2, 9, 48)
    cos, sin = RotaryEmbedding(16, 1e6)(torch.arange(9)[None], torch.float32)
    want = reference(attn, x, cos, sin)
    torch.testing.assert_close(attn(x, cos, sin), want, rtol=1e-5, atol=1e-5)
    # the same through a cache: a 5-token prefill then 4 single steps, mask hiding unwritten slots
    cache = KVCache(CFG, 2, 16, dtype=torch.float32)
    outs = []
    for a, b in [(0, 5), (5, 6), (6, 7), (7, 8), (8, 9)]:
        pos = torch.arange(a, b)
        mask = (torch.arange(16)[None, :] <= pos[:, None])[None, None]
        outs.append(attn(x[:, a:b], cos[:, :, a:b], sin[:, :, a:b], mask, cache, pos))
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=1e-5, atol=1e-5)


def test_without_a_mask_a_prompt_is_causal_and_one_token_sees_every_slot():
    """mask=None means: a prompt attends causally (to the slots up to its own), a single token to every slot of
    the cache it is given, as a decode step into a full cache would."""
    torch.manual_seed(1)
    attn = Attention(CFG)
    x = torch.randn(1, 4, 48)
    cos, sin = RotaryEmbedding(16, 1e6)(torch.arange(4)[None], torch.float32)
    want = reference(attn, x, cos, sin)
    cache = KVCache(CFG, 1, 4, dtype=torch.float32)
    first = attn(x[:, :3], cos[:, :, :3], sin[:, :, :3], None, cache, torch.arange(3))  # slot 3 not yet written
    last = attn(x[:, 3:], cos[:, :, 3:], sin[:, :, 3:], None, cache, torch.tensor([3]))
    torch.testing.assert_close(torch.cat([first, last], 1), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("heads", [(4, 2), (6, 6), (8, 1)])
def test_decode_attention_matches_sdpa(heads):
    H, H_kv = heads
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, h, t, 16, generator=g) for h, t in ((H, 1), (H_kv, 9), (H_kv, 9)))
    mask = torch.rand(2, 1, 1, 9, generator=g) > 0.3
    mask[..., 0] = True  # every row sees something
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(H // H_kv, 1), v.repeat_interleave(H // H_kv, 1),
                                         attn_mask=mask)
    torch.testing.assert_close(decode_attention(q, k, v, mask), ref, rtol=1e-5, atol=1e-6)
