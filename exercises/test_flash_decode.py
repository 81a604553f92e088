"""Exercise 10 · Split-K decode attention, against torch's scaled_dot_product_attention and log-sum-exps written
out in float64. (exercises/test_mutants_flash_decode.py checks that these tests catch plausible wrong answers.)"""
import math

import pytest
import torch
import torch.nn.functional as F

B, D = 3, 16


def qkv(H, H_kv, S, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, 1, D, generator=g).to(dtype), torch.randn(B, H_kv, S, D, generator=g).to(dtype),
            torch.randn(B, H_kv, S, D, generator=g).to(dtype))


def oracle(q, k, v, mask):
    """(out, lse) in float64: SDPA for the output; the log-sum-exp with each key/value head copied to its G query
    heads (head h reads head h // G). A row with no allowed slot: lse -inf (its SDPA output is NaN)."""
    q, k, v = q.double(), k.double(), v.double()
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    G = q.shape[1] // k.shape[1]
    scores = q @ k.repeat_interleave(G, 1).transpose(2, 3) / math.sqrt(q.shape[-1])  # (B, H, 1, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf)
    return out, scores.logsumexp(-1)  # (B, H, 1, D), (B, H, 1)


def test_split_attention_matches_sdpa(impl):
    """Grouped (G = 4), multi-head and multi-query; a random mask and no mask."""
    for H, H_kv in [(8, 2), (8, 8), (8, 1)]:
        q, k, v = qkv(H, H_kv, 13)
        mask = torch.rand(B, 1, 1, 13, generator=torch.Generator().manual_seed(1)) < 0.5
        mask[..., 5] = True  # every row may attend somewhere
        for m in (mask, None):
            out, lse = impl.split_attention(q, k, v, m)
            assert out.shape == (B, H, 1, D) and lse.shape == (B, H, 1), (out.shape, lse.shape)
            assert out.dtype == lse.dtype == torch.float32
            want_out, want_lse = oracle(q, k, v, m)
            torch.testing.assert_close(out, want_out.float(), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(lse, want_lse.float(), rtol=1e-5, atol=1e-5)


def test_a_split_with_no_allowed_slot(impl):
    """Row 1 may attend nowhere in this split (its slots are left padding, or not written yet): it weighs
    nothing, lse -inf, out 0, and no NaN. Rows 0 and 2 are unaffected."""
    q, k, v = qkv(8, 2, 6)
    mask = torch.ones(B, 1, 1, 6, dtype=torch.bool)
    mask[1] = False
    mask[2, ..., :4] = False
    out, lse = impl.split_attention(q, k, v, mask)
    assert not out.isnan().any() and not lse.isnan().any(), "NaN from a split with no allowed slot"
    assert (lse[1] == -math.inf).all(), f"lse of a split with no allowed slot: {lse[1].flatten().tolist()}"
    assert (out[1] == 0).all()
    want_out, want_lse = oracle(q, k, v, mask)
    torch.testing.assert_close(out[0::2], want_out[0::2].float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse[0::2], want_lse[0::2].float(), rtol=1e-5, atol=1e-5)


def test_merge_is_exact(impl):
    """Uneven splits of 20 slots, their (out, lse) from the oracle; merged, they are attention over all 20.
    Split 1 is all masked for row 2: lse -inf, and its out (garbage here) must not count."""
    q, k, v = qkv(8, 2, 20)
    mask = torch.rand(B, 1, 1, 20, generator=torch.Generator().manual_seed(2)) < 0.7
    mask[..., 0] = True
    mask[2, ..., 3:10] = False
    outs, lses = [], []
    for a, b in [(0, 3), (3, 10), (10, 11), (11, 20)]:
        out, lse = oracle(q, k[:, :, a:b], v[:, :, a:b], mask[..., a:b])
        outs.append(torch.nan_to_num(out, nan=7.0).float())  # SDPA's NaN where nothing is allowed: garbage
        lses.append(lse.float())
    got = impl.merge_splits(torch.stack(outs), torch.stack(lses))
    assert got.shape == (B, 8, 1, D) and got.dtype == torch.float32
    torch.testing.assert_close(got, oracle(q, k, v, mask)[0].float(), rtol=1e-5, atol=1e-5)


def test_large_scores_do_not_overflow(impl):
    """Scores of a few hundred (exp(89) is already past float32's range): both the split and the merge must
    subtract a maximum before exponentiating."""
    q, k, v = qkv(8, 2, 12)
    q = q * 100  # scores ~ N(0, 100²)
    mask = torch.ones(1, 1, 1, 12, dtype=torch.bool)
    out, lse = impl.split_attention(q, k, v, mask)
    want_out, want_lse = oracle(q, k, v, mask)
    assert lse.max() > 100 and out.isfinite().all(), "split_attention overflows on large scores"
    torch.testing.assert_close(out, want_out.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(lse, want_lse.float(), rtol=1e-5, atol=1e-4)
    outs = torch.randn(4, B, 8, 1, D, generator=torch.Generator().manual_seed(3))
    lses = torch.tensor([800.0, 801.5, -math.inf, 799.0]).view(4, 1, 1, 1).expand(4, B, 8, 1)
    w = torch.tensor([800.0, 801.5, -math.inf, 799.0], dtype=torch.float64).softmax(0).view(4, 1, 1, 1, 1)
    got = impl.merge_splits(outs, lses)
    assert got.isfinite().all(), "merge_splits overflows on large lses"
    torch.testing.assert_close(got, (w * outs.double()).sum(0).float(), rtol=1e-5, atol=1e-5)


def test_bf16_inputs_accumulate_in_fp32(impl):
    """bf16 cache, 300 slots: scores, softmax and sums in float32 stay within float32 rounding of the float64
    answer for the same bf16 numbers; computed in bf16, lse alone is off by ~1e-2."""
    q, k, v = qkv(8, 2, 300, dtype=torch.bfloat16)
    out, lse = impl.split_attention(q, k, v, None)
    assert out.dtype == lse.dtype == torch.float32
    want_out, want_lse = oracle(q, k, v, None)
    torch.testing.assert_close(out, want_out.float(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(lse, want_lse.float(), rtol=1e-5, atol=1e-5)


def decode_case(dtype=torch.float32):
    """8 query heads on 2 key/value heads, 23 slots. Row b starts after 7b slots of left padding; the new token
    goes to slot 21; slot 22 is not written yet. The caches hold random junk everywhere, slot 21 included."""
    S, pos = 23, torch.tensor([21])
    q, k_cache, v_cache = qkv(8, 2, S, seed=4, dtype=dtype)
    _, k, v = qkv(8, 2, 1, seed=5, dtype=dtype)
    slots = torch.arange(S)
    mask = ((slots <= pos) & (slots >= 7 * torch.arange(B)[:, None]))[:, None, None]  # (B, 1, 1, S)
    return q, k, v, k_cache, v_cache, pos, mask


def test_split_decode_matches_sdpa(impl):
    """Splits of 1, 3 (row 2's first four are all padding), 5, 8 (the last one shorter), the whole cache and more
    than it: each the same as SDPA over the cache with the new token written at slot 21."""
    for split in [1, 3, 5, 8, 23, 40]:
        q, k, v, k_cache, v_cache, pos, mask = decode_case()
        want_k, want_v = k_cache.clone().index_copy_(2, pos, k), v_cache.clone().index_copy_(2, pos, v)
        got = impl.split_decode(q, k, v, k_cache, v_cache, pos, mask, split)
        assert got.shape == q.shape and got.dtype == q.dtype, (got.shape, got.dtype)
        torch.testing.assert_close(got, oracle(q, want_k, want_v, mask)[0].float(), rtol=1e-5, atol=1e-5,
                                   msg=lambda m: f"split={split}: {m}")


def test_split_decode_writes_the_cache(impl):
    """The new k, v land in slot pos of every row and head, in place; no other slot changes."""
    q, k, v, k_cache, v_cache, pos, mask = decode_case()
    before_k, before_v = k_cache.clone(), v_cache.clone()
    impl.split_decode(q, k, v, k_cache, v_cache, pos, mask, 5)
    assert torch.equal(k_cache[:, :, 21:22], k) and torch.equal(v_cache[:, :, 21:22], v), "slot 21 not written"
    others = torch.arange(23) != 21
    assert torch.equal(k_cache[:, :, others], before_k[:, :, others]), "a key slot other than pos changed"
    assert torch.equal(v_cache[:, :, others], before_v[:, :, others]), "a value slot other than pos changed"


def test_split_decode_bf16_and_bad_split(impl):
    q, k, v, k_cache, v_cache, pos, mask = decode_case(torch.bfloat16)
    want_k, want_v = k_cache.clone().index_copy_(2, pos, k), v_cache.clone().index_copy_(2, pos, v)
    got = impl.split_decode(q, k, v, k_cache, v_cache, pos, mask, 4)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got, oracle(q, want_k, want_v, mask)[0].to(torch.bfloat16))  # within bf16 rounding
    with pytest.raises(ValueError, match="split"):
        impl.split_decode(q, k, v, k_cache, v_cache, pos, mask, 0)


def test_merge_rows_at_different_scales(impl):
    """Each row and head takes the largest of its own log-sum-exps: one maximum over all of them makes a row whose
    lses sit ~800 below another's underflow to 0 / 0."""
    outs = torch.randn(2, 2, 1, 1, D, generator=torch.Generator().manual_seed(9))
    lses = torch.tensor([[800.0, 0.0], [799.0, 1.0]]).view(2, 2, 1, 1)
    w = lses.double().softmax(0)[..., None]
    # atol 1e-4: a running log-sum-exp carried in float32 resolves ~6e-5 at 800, exact in math; the one-maximum
    # answer this test is after gives NaN
    torch.testing.assert_close(impl.merge_splits(outs, lses), (w * outs.double()).sum(0).float(), rtol=1e-5, atol=1e-4)
