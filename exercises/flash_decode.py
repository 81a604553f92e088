"""Exercise 10 · Split-K decode attention (flash-decoding).  Read notebooks/09_fast_inference.ipynb first (part 3,
"Attention in one kernel"), and notebook 03's decode_attention.

Check your work:  pytest exercises/test_flash_decode.py --impl student

At batch 1 a decode step has one query per head and a long KV cache: too little work to fill a GPU if one
program reads the whole cache. minqwen3/flash_decode.py cuts the cache's slots into splits, attends within each
split on its own, and merges the splits' results exactly. This is that math in torch (the kernel is Triton and
needs a GPU; the reference here is minqwen3.flash_decode's plain-torch version of it).

Shapes: B rows, H query heads, H_kv key/value heads (G = H / H_kv query heads share one), S cache slots, D head
size. Masks are boolean, True = may attend.
"""
import torch


def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: q (B, H, 1, D) over the slots of k, v (B, H_kv, s, D) that mask (B|1, 1, 1, s) allows
    (None: all of them). Query head h reads key/value head h // G.

    Returns (out, lse), both float32 whatever the input dtype:
      out (B, H, 1, D): softmax(q·k / sqrt(D)) · v over this split's allowed slots alone (normalised here);
      lse (B, H, 1):    the log-sum-exp of those scaled scores, log sum_j exp(q·k_j / sqrt(D)).
    A split with no allowed slot gives out 0 and lse -inf (and no NaN anywhere). Scores can be large: do not
    take exp of a score before subtracting the largest.
    """
    raise NotImplementedError("exercise 10: split_attention")


def merge_splits(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """n splits' results stacked, outs (n, B, H, 1, D) and lses (n, B, H, 1), -> the attention over all their
    slots at once (B, H, 1, D), float32. Exact, not an approximation; lses may be large, or -inf for a split
    with no allowed slot (as long as some split of each row has one)."""
    raise NotImplementedError("exercise 10: merge_splits")


def split_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 pos: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
    """One decode step, as minqwen3.flash_decode.flash_decode does it on a GPU.

    First write the new token's k, v (B, H_kv, 1, D) into the caches k_cache, v_cache (B, H_kv, S, D), in place,
    at slot pos (a (1,) tensor, the same slot for every row); then attend from q (B, H, 1, D) over the slots the
    mask (B|1, 1, 1, S) allows, in splits of `split` consecutive slots (0..split-1, split..2·split-1, ...; the
    last may be shorter), merged. Returns (B, H, 1, D) in q's dtype. split < 1: ValueError naming split.
    """
    raise NotImplementedError("exercise 10: split_decode")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# split_attention:
#     scores = (q viewed (B, H_kv, G, D), in float32) @ k^T in float32, times D ** -0.5        -> (B, H_kv, G, s)
#     (the view puts query heads g*G .. g*G+G-1 on key/value head g; k.repeat(...) would pair them wrongly:
#      repeat_interleave is the one that matches, if you prefer to copy)
#     masked slots -> -inf;  lse = scores.logsumexp(-1, keepdim=True)   (it subtracts the max for you)
#     p = exp(scores - lse), but where lse is -inf use 0 instead of lse: -inf - (-inf) is NaN, exp(-inf - 0) is 0
#     out = p @ v (float32), viewed back to (B, H, 1, D); lse viewed (B, H, 1)
# merge_splits: split i holds exp(lse_i) of the softmax's denominator, and its out is normalised by exactly that,
# so the whole is sum_i exp(lse_i) out_i / sum_i exp(lse_i). Subtract m = the max lse over the splits first
# (exp(lse_i - m) <= 1 never overflows; the m cancels). Again, where m would be -inf use 0.
# split_decode: k_cache.index_copy_(2, pos, k) (and v), BEFORE attending; then for s in range(0, S, split):
# split_attention over k_cache[:, :, s:s + split], ... and mask[..., s:s + split]; torch.stack the outs and
# lses, merge_splits, .to(q.dtype).
