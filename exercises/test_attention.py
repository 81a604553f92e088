"""Exercise 3 · GQA attention with QK-Norm, against transformers' Qwen3Attention (eager) and torch's SDPA."""
import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")
from transformers.models.qwen3.modeling_qwen3 import Qwen3Attention, Qwen3RotaryEmbedding  # noqa: E402

from minqwen3.cache import KVCache  # noqa: E402  (infrastructure, not under test: one layer's slots, written in place)


def setup(impl, n_heads=4, n_kv=2, seed=0):
    """A tiny config (head_dim 32 x 4 heads = 128 != hidden 64, as in Qwen3-0.6B), the oracle, and yours with its
    weights. Returns (config, yours, theirs, rope)."""
    cfg = transformers.Qwen3Config(hidden_size=64, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                                   head_dim=32, num_hidden_layers=1, rope_theta=1e6, max_position_embeddings=512,
                                   attn_implementation="eager")
    torch.manual_seed(seed)
    theirs = Qwen3Attention(cfg, 0).eval()
    with torch.no_grad():
        theirs.q_norm.weight.uniform_(0.5, 1.5)  # QK-Norm gains of ones would hide a missing or swapped norm
        theirs.k_norm.weight.uniform_(0.5, 1.5)
    ours = impl.Attention(cfg)
    ours.load_state_dict(theirs.state_dict())  # strict: q_proj, k_proj, v_proj, o_proj, q_norm, k_norm, no biases
    return cfg, ours, theirs, Qwen3RotaryEmbedding(cfg)


def additive(mask_bool):
    return torch.zeros(mask_bool.shape).masked_fill(~mask_bool, float("-inf"))


@pytest.mark.parametrize("n_heads,n_kv", [(4, 2), (4, 4), (4, 1)], ids=["gqa", "mha", "mqa"])
def test_matches_transformers(impl, n_heads, n_kv):
    _, ours, theirs, rope = setup(impl, n_heads, n_kv)
    x = torch.randn(2, 9, 64)
    cos, sin = rope(x, torch.arange(9)[None].expand(2, 9))  # (B, T, D)
    causal = torch.ones(9, 9, dtype=torch.bool).tril()[None, None]
    want = theirs(x, (cos, sin), additive(causal))[0]
    with torch.no_grad():
        torch.testing.assert_close(ours(x, cos[:, None], sin[:, None]), want, rtol=1e-5, atol=1e-5)
        # an explicit boolean mask (True = may attend) gives the same
        torch.testing.assert_close(ours(x, cos[:, None], sin[:, None], causal), want, rtol=1e-5, atol=1e-5)


def test_left_padding_mask(impl):
    """Row 0 has 3 padding tokens on the left: its real tokens must not attend to them."""
    _, ours, theirs, rope = setup(impl)
    x = torch.randn(2, 8, 64)
    pad = torch.tensor([3, 0])
    pos = (torch.arange(8)[None] - pad[:, None]).clamp(min=0)
    cos, sin = rope(x, pos)
    j = torch.arange(8)
    mask = (j[None, :] <= j[:, None])[None] & (j[None, None, :] >= pad[:, None, None])
    mask = (mask | torch.eye(8, dtype=torch.bool))[:, None]  # a padding query sees itself: no all -inf row
    want = theirs(x, (cos, sin), additive(mask))[0]
    with torch.no_grad():
        torch.testing.assert_close(ours(x, cos[:, None], sin[:, None], mask)[0, 3:], want[0, 3:],
                                   rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours(x, cos[:, None], sin[:, None], mask)[1], want[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunks", [[(0, 5), (5, 6), (6, 7), (7, 8), (8, 9)], [(0, 4), (4, 7), (7, 9)]],
                         ids=["prefill-then-decode", "chunked-prefill"])
def test_prefill_then_decode_with_cache(impl, chunks):
    """Chunks fed through a KV cache, the same as attending to it all at once: a 5-token prefill then one token at a
    time, and chunks of several tokens past slot 0 (which must follow the mask they are given: a top-left
    tril(T, S) is right only for the first chunk)."""
    cfg, ours, theirs, rope = setup(impl)
    x = torch.randn(2, 9, 64)
    cos, sin = rope(x, torch.arange(9)[None].expand(2, 9))
    want = theirs(x, (cos, sin), additive(torch.ones(9, 9, dtype=torch.bool).tril()[None, None]))[0]
    cache = KVCache(cfg, batch_size=2, max_len=16, dtype=torch.float32)
    outs = []
    with torch.no_grad():
        for a, b in chunks:
            pos = torch.arange(a, b)
            mask = (torch.arange(16)[None, :] <= pos[:, None])[None, None]  # (1, 1, T, 16): hides unwritten slots
            outs.append(ours(x[:, a:b], cos[:, None, a:b], sin[:, None, a:b], mask, cache, pos))
    torch.testing.assert_close(torch.cat(outs, 1), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_heads,n_kv", [(8, 2), (8, 8), (8, 1)], ids=["gqa", "mha", "mqa"])
def test_decode_attention_matches_sdpa(impl, n_heads, n_kv):
    torch.manual_seed(0)
    B, S, D = 3, 11, 16
    q, k, v = torch.randn(B, n_heads, 1, D), torch.randn(B, n_kv, S, D), torch.randn(B, n_kv, S, D)
    mask = torch.rand(B, 1, 1, S) < 0.6
    mask[..., 0] = True  # every row may attend somewhere
    got = impl.decode_attention(q, k, v, mask)
    assert got.shape == (B, n_heads, 1, D)
    torch.testing.assert_close(got, F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True))
    torch.testing.assert_close(impl.decode_attention(q, k, v, None),
                               F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
