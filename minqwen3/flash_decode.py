"""Decode attention as one GPU kernel (flash-decoding, in Triton): one new token per row against the KV cache.

attention.decode_attention spells decode attention as three library calls (q·k, softmax, p·v). At batch 1 each
reads almost nothing and costs a launch; and under torch.compile the cache, once written, reached them only
through a copy of the whole cache prefix (functionalised, the written cache is a new tensor). Here one kernel
writes the new key and value into the cache and attends, reading each cached key and value once:

- Program (b, g, s) takes the G query heads that share key/value head g (GQA) as the rows of one small matrix,
  and a slice of the cache slots (a "split"). There are as many splits as it takes to give every SM a program
  (one sequence has only 4-8 key/value heads), so even a short cache is read by the whole GPU at once. (Not
  splitting short caches, which saves the merge, measured slower: 10.7 against 6.5 us a layer, 256 slots.)
- Within its split it walks blocks of slots with an online softmax (running max m, running sum l), as flash
  attention does, and writes its slice's normalised output and log-sum-exp lse = m + log l. It stops at the new
  token's slot: the slots after it are not written yet (a decode step reads a cache prefix longer than what it
  holds). The keys are loaded before the mask is known (a dead slot's score is then set to -inf), so no load
  waits for another; the values only where the mask allows, a stale slot could hold anything. The new token's
  slot is taken from the new k and v, not from the cache, so the program that stores them races no reader.
- The splits of (b, g) are merged by whichever program finishes last (it counts finished splits with an atomic
  and resets the counter for the next step): out = sum_s exp(lse_s - max lse) * o_s / sum_s exp(lse_s - max lse).
  No second kernel, and the counters being reset by the kernel itself lets a CUDA graph replay it.
- QK-Norm and RoPE stay outside, a kernel of their own between the projections and this one. Doing them here (q
  once per program, k before the cache write) was measured in session 8 and saved nothing: each program's added
  work cost what the kernel it replaced did (docs/benchmarks.md, s8-dense; the code is in git, flash_decode_qk).

Used by attention.Attention on CUDA when Triton is installed; the math it must match is decode_attention's.
split_attention, merge_splits and split_decode (at the end) are the same split-and-merge in plain torch, for
reading and for CPUs; exercises/flash_decode.py rebuilds them.
"""
from __future__ import annotations

import torch

from . import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: attention.decode_attention keeps its matmul form
    triton = None

BLOCK = 64  # cache slots per step of the online softmax
MIN_SPLIT = 64  # the fewest slots a split takes (a multiple of BLOCK)
NUM_WARPS, NUM_STAGES = 4, 2  # the kernel's launch settings


def available(q: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Whether flash_decode can take this decode step: Triton, an Ampere or newer GPU (bf16 tensor-core dots),
    one query per row, a head size tl.dot takes (a power of 2, 16 or more), and no gradient wanted (the kernel
    has no backward). Otherwise decode_attention does. get_device_properties, unlike get_device_capability, is a
    constant to torch.compile."""
    D = q.shape[-1]
    return (triton is not None and q.is_cuda and mask is not None and q.shape[2] == 1 and not q.requires_grad
            and D >= 16 and D & (D - 1) == 0 and q.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and torch.cuda.get_device_properties(q.device).major >= 8)


if triton is not None:
    @triton.jit
    def _flash_decode(Q, Kn, Vn, K, V, Pos, Mask, Out, Part, Lse, Count, sqb, sqh, sknb, sknh, svnb, svnh,
                      skb, skh, sks, svb, svh, svs, smb, H_kv, S, n_splits, split, scale,
                      G: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BLOCK: tl.constexpr,
                      NSP: tl.constexpr, GM: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
        bg, s = tl.program_id(0), tl.program_id(1)  # (row, key/value head), split
        pdl.wait(PDL)
        b, g = bg // H_kv, bg % H_kv
        pos = tl.load(Pos)  # the new token's slot: the last one any row attends to
        rows = tl.arange(0, GP)  # the G query heads of this key/value head, padded to a dot-friendly size
        dims = tl.arange(0, D)
        heads = g * G + rows
        q = tl.load(Q + b * sqb + heads[:, None] * sqh + dims[None, :], mask=rows[:, None] < G, other=0.0)  # (GP, D)
        kn = tl.load(Kn + b * sknb + g * sknh + dims)  # the new token's key and value (D,)
        vn = tl.load(Vn + b * svnb + g * svnh + dims)
        k_row, v_row = K + b * skb + g * skh, V + b * svb + g * svh
        lo = s * split
        if (pos >= lo) & (pos < lo + split):  # one program stores them in the cache
            tl.store(k_row + pos * sks + dims, kn)
            tl.store(v_row + pos * svs + dims, vn)
        m = tl.full((GP,), -1e30, tl.float32)
        l = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, D), tl.float32)
        for start in range(lo, tl.minimum(lo + split, pos + 1), BLOCK):  # nothing after pos is written yet
            slots = start + tl.arange(0, BLOCK)
            inside = slots < S  # the last block may pass the cache's end
            live = tl.load(Mask + b * smb + slots, mask=inside, other=0).to(tl.int1)  # (BLOCK,)
            new = (slots == pos)[:, None]
            k = tl.load(k_row + slots[:, None] * sks + dims[None, :], mask=inside[:, None], other=0.0)
            k = tl.where(new, kn[None, :], k)  # (BLOCK, D)
            if IEEE:  # float32 in, float32 products: what the eager matmuls give with TF32 off
                scores = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                scores = tl.dot(q, tl.trans(k))
            scores = tl.where(live[None, :], scores * scale, float("-inf"))  # (GP, BLOCK)
            m_new = tl.maximum(m, tl.max(scores, 1))
            p = tl.exp(scores - m_new[:, None])
            alpha = tl.exp(m - m_new)
            l = l * alpha + tl.sum(p, 1)
            v = tl.load(v_row + slots[:, None] * svs + dims[None, :], mask=live[:, None], other=0.0)
            v = tl.where(new, vn[None, :], v)
            if IEEE:
                pv = tl.dot(p, v, input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            m = m_new
        out_rows = Out + (b * H_kv * G + heads[:, None]) * D + dims[None, :]
        if n_splits == 1:  # the whole sequence was this program's: done
            tl.store(out_rows, (acc / l[:, None]).to(Out.dtype.element_ty), mask=rows[:, None] < G)
        else:
            # this split's normalised output and log-sum-exp; a split with no live slot has l = 0: lse -inf
            part = (bg * n_splits + s) * GP
            tl.store(Part + (part + rows[:, None]) * D + dims[None, :], acc / tl.maximum(l, 1e-30)[:, None])
            tl.store(Lse + part + rows, tl.where(l > 0, m + tl.log(l), float("-inf")))
            tl.debug_barrier()  # every thread's stores are issued before the count is raised
            done = tl.atomic_add(Count + bg, 1, sem="acq_rel")  # release: they are visible to whoever sees it
            if done == n_splits - 1:  # the last split of (b, g) to finish merges them all, all heads at once
                i = tl.arange(0, NSP * GM)  # (split, head) pairs, flattened
                sp, r = i // GM, i % GM
                at = (bg * n_splits + sp) * GP + r
                ok = (sp < n_splits) & (r < G)
                # .cg: read through L2, where the other programs' stores are, never a stale L1 line
                lse = tl.load(Lse + at, mask=ok, other=float("-inf"), cache_modifier=".cg")
                lse = tl.reshape(tl.where(r < G, lse, 0.0), (NSP, GM))  # padding heads: finite, never stored
                o = tl.load(Part + at[:, None] * D + dims[None, :], mask=ok[:, None], other=0.0,
                            cache_modifier=".cg")  # (NSP * GM, D)
                w = tl.exp(lse - tl.max(lse, 0)[None, :])  # (NSP, GM)
                y = tl.sum(w[:, :, None] * tl.reshape(o, (NSP, GM, D)), 0) / tl.sum(w, 0)[:, None]  # (GM, D)
                hm = tl.arange(0, GM)
                tl.store(Out + (b * H_kv * G + g * G + hm[:, None]) * D + dims[None, :],
                         y.to(Out.dtype.element_ty), mask=(hm < G)[:, None])
                tl.atomic_xchg(Count + bg, 0)  # ready for the next call (and the next graph replay)


# finished-split counters per (device, B * H_kv), zero between calls: one decode stream at a time per device
_counts: dict[tuple[torch.device, int], torch.Tensor] = {}


def _sms(device: torch.device) -> int:  # 8 for Triton's interpreter, which runs the kernel on CPU tensors
    return torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 8


@torch.library.custom_op("minqwen3::flash_decode", mutates_args=("k_cache", "v_cache"))
def flash_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 pos: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Write the new token's k, v (B, H_kv, 1, D) into the caches (B, H_kv, S, D) at slot pos (1,), the same
    for every row, then attend from q (B, H, 1, D) over the slots mask (B|1, 1, 1, S) allows -> (B, H, 1, D).

    The caches may be views of longer ones (any strides but the last); mask must allow slot pos in every row
    and no slot after it (those are not read).
    """
    B, H, _, D = q.shape
    H_kv, S = k_cache.shape[1], k_cache.shape[2]
    G = H // H_kv
    assert k_cache.stride(3) == 1 and v_cache.stride(3) == 1, "flash_decode: caches need head_dim contiguous"
    assert D & (D - 1) == 0, f"flash_decode: head_dim must be a power of 2, got {D}"
    # any row and head strides (q, k, v may be slices of one stacked projection's output), head_dim contiguous
    q, k, v = (t if t.stride(3) == 1 else t.contiguous() for t in (q, k, v))
    out = torch.empty(B, H, 1, D, device=q.device, dtype=q.dtype)
    # a program for every SM, each MIN_SPLIT slots or more; whole blocks per program
    n_splits = max(1, min(S // MIN_SPLIT, triton.cdiv(_sms(q.device), B * H_kv)))
    split = triton.cdiv(triton.cdiv(S, n_splits), BLOCK) * BLOCK
    n_splits = triton.cdiv(S, split)
    GP = max(16, triton.next_power_of_2(G))
    part = torch.empty(B * H_kv * n_splits * GP, D, device=q.device, dtype=torch.float32)
    lse = torch.empty(B * H_kv * n_splits * GP, device=q.device, dtype=torch.float32)
    key = (q.device, B * H_kv)
    if key not in _counts:  # allocated once, outside any graph capture (the first call is a warm-up)
        _counts[key] = torch.zeros(B * H_kv, device=q.device, dtype=torch.int32)
    live = mask.reshape(mask.shape[0], S)
    _flash_decode[(B * H_kv, n_splits)](
        q, k, v, k_cache, v_cache, pos, live, out, part, lse, _counts[key],
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2), v_cache.stride(0), v_cache.stride(1),
        v_cache.stride(2), live.stride(0) if live.shape[0] > 1 else 0, H_kv, S, n_splits, split, D ** -0.5,
        G=G, GP=GP, D=D, BLOCK=BLOCK, NSP=max(2, triton.next_power_of_2(n_splits)),
        GM=triton.next_power_of_2(G), IEEE=q.dtype == torch.float32, num_warps=NUM_WARPS, num_stages=NUM_STAGES,
        **pdl.launch(q.device))
    return out


@flash_decode.register_fake
def _(q, k, v, k_cache, v_cache, pos, mask):
    return q.new_empty(q.shape)


# The kernel's math in plain torch, for reading and for CPUs (exercises/flash_decode.py rebuilds it): attention of
# one query per row over the cache in splits of `split` slots, each giving an output normalised over its own slots
# and their log-sum-exp, merged exactly. The kernel does the same per program, with an online softmax inside.

def split_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                    mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One split: q (B, H, 1, D) over the slots of k, v (B, H_kv, s, D) that mask (B|1, 1, 1, s) allows.

    Returns its output normalised over those slots alone (B, H, 1, D) and the log-sum-exp of their scaled scores
    (B, H, 1), both float32. A split with no allowed slot gives output 0 and lse -inf: it weighs nothing.
    """
    B, H, _, D = q.shape
    H_kv = k.shape[1]
    if H % H_kv:
        raise ValueError(f"query heads ({H}) must be a multiple of key/value heads ({H_kv})")
    # query head h reads key/value head h // G: the G heads of a group are G rows of one matmul
    scores = (q.view(B, H_kv, H // H_kv, D).float() @ k.float().transpose(2, 3)) * D ** -0.5  # (B, H_kv, G, s)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    lse = scores.logsumexp(-1, keepdim=True)  # (B, H_kv, G, 1), -inf where nothing is allowed
    p = (scores - torch.where(lse.isfinite(), lse, 0.0)).exp()  # exp(-inf - 0) = 0, never -inf - -inf = NaN
    return (p @ v.float()).view(B, H, 1, D), lse.view(B, H, 1)


def merge_splits(outs: torch.Tensor, lses: torch.Tensor) -> torch.Tensor:
    """n splits' outputs (n, B, H, 1, D) and log-sum-exps (n, B, H, 1) -> the attention over all their slots
    (B, H, 1, D), float32: each split weighs exp(lse), its share of the softmax's denominator."""
    m = lses.amax(0)  # the largest lse: exp(lses - m) <= 1 cannot overflow
    w = (lses - torch.where(m.isfinite(), m, 0.0)).exp()  # (n, B, H, 1)
    return (w[..., None] * outs.float()).sum(0) / w.sum(0)[..., None]


def split_decode(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 pos: torch.Tensor, mask: torch.Tensor, split: int) -> torch.Tensor:
    """flash_decode's contract in torch: write k, v (B, H_kv, 1, D) into the caches (B, H_kv, S, D) at slot pos
    (1,), then attend from q (B, H, 1, D) over the slots mask (B|1, 1, 1, S) allows, in splits of `split` slots
    (the last may be shorter), merged. Returns (B, H, 1, D) in q's dtype."""
    if split < 1:
        raise ValueError(f"split must be at least 1 slot, got {split}")
    k_cache.index_copy_(2, pos, k)
    v_cache.index_copy_(2, pos, v)
    parts = [split_attention(q, k_cache[:, :, s:s + split], v_cache[:, :, s:s + split], mask[..., s:s + split])
             for s in range(0, k_cache.shape[2], split)]
    outs, lses = zip(*parts)
    return merge_splits(torch.stack(outs), torch.stack(lses)).to(q.dtype)
