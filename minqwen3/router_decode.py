"""The router's top-k and softmax at decode as one GPU kernel (Triton): the k chosen experts and their weights.

At decode the router's choice is two or three small kernels a layer around a library top-k (`gatherTopK`, a radix
select made for long rows: 4.9 µs of the router's 7.9 µs a layer on an H200 at 30B-A3B batch 1, docs/benchmarks.md
session 7). For a few rows of at most 256 logits one program per row does it all: logit i's rank is the number
of logits that beat it, r_i = #{j : v_j > v_i, or v_j = v_i and j < i}; the k with r_i < k are chosen, slot r_i
holds expert i (so the slots come sorted, largest first), and the weights are the softmax over the chosen k
(norm_topk_prob, as Qwen3-MoE routes). The rank compares all E × E pairs at once, rather than k rounds of max one
after the other. (Without norm_topk_prob torch picks the top-k of the softmax's probabilities, which rounding can
tie where the logits differ: moe.SparseMoE keeps torch's path there.)

Ties go to the lower expert id, as torch.topk's CUDA kernel breaks them for rows this short (it takes every value
above the k-th, then the values equal to it in index order); the tests check the choice against torch.topk on
random logits with ties. NaN logits are not handled (torch.topk ranks NaN highest; here a NaN's rank is
arbitrary), nor -0.0 against +0.0 (equal here; topk's radix order puts +0.0 first).

Used by moe.SparseMoE on CUDA without gradients for up to MAX_ROWS rows (the decode step); training, prefills and
CPUs keep torch's topk and softmax, and the load-balancing loss reads the logits, which this leaves alone.
`reference` (at the end) is the same rule in plain torch.
"""
from __future__ import annotations

import os

import torch

from . import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: moe.SparseMoE keeps torch's topk
    triton = None

MAX_ROWS = 16  # tokens a call: decode steps (the batch), not prefills
MAX_EXPERTS = 256  # logits a row: the E x E comparisons live in one program's registers
# MINQWEN3_ROUTER_DECODE=0 switches the kernel off (the benchmark's peer: torch's topk and softmax)
enabled = os.environ.get("MINQWEN3_ROUTER_DECODE", "1") != "0"


def available(logits: torch.Tensor, k: int) -> bool:
    """Whether the kernel can route these logits (N, E): Triton, a CUDA tensor, at most MAX_ROWS rows and
    MAX_EXPERTS experts, 1 <= k <= E, and no gradient wanted (the kernel has no backward)."""
    return (enabled and triton is not None and logits.is_cuda and logits.dim() == 2
            and logits.shape[0] <= MAX_ROWS and 1 <= k <= logits.shape[1] <= MAX_EXPERTS
            and logits.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and not (torch.is_grad_enabled() and logits.requires_grad))


if triton is not None:
    @triton.jit
    def _route_kernel(Logits, W, Idx, stride, E: tl.constexpr, EP: tl.constexpr, K: tl.constexpr,
                      PDL: tl.constexpr):
        pdl.wait(PDL)
        n = tl.program_id(0)  # one row (token) a program
        i = tl.arange(0, EP)
        v = tl.load(Logits + n * stride + i, mask=i < E, other=float("-inf")).to(tl.float32)  # (EP,)
        # (EP, EP): [a, b] = logit b ranks before logit a (larger, or equal with a lower id); the padding's -inf
        # sits past E, so it ranks after any real logit, -inf ones included
        before = (v[None, :] > v[:, None]) | ((v[None, :] == v[:, None]) & (i[None, :] < i[:, None]))
        rank = tl.sum(before.to(tl.int32), 1)  # (EP,)
        chosen = rank < K
        top = tl.max(v, 0)
        p = tl.where(chosen, tl.exp(v - top), 0.0)  # the softmax over the k chosen
        w = p / tl.sum(p, 0)
        tl.store(W + n * K + rank, w, mask=chosen)
        tl.store(Idx + n * K + rank, i.to(tl.int64), mask=chosen)


@torch.library.custom_op("minqwen3::route_decode", mutates_args=())
def route_decode(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Router logits (N, E) -> weights (N, k) float32, the softmax over the k largest logits (norm_topk_prob),
    and their expert ids (N, k) int64, slot 0 the largest."""
    N, E = logits.shape
    logits = logits.contiguous()
    w = torch.empty(N, k, device=logits.device, dtype=torch.float32)
    idx = torch.empty(N, k, device=logits.device, dtype=torch.int64)
    EP = max(16, triton.next_power_of_2(E))
    _route_kernel[(N,)](logits, w, idx, E, E=E, EP=EP, K=k, num_warps=4 if EP <= 128 else 8,
                        **pdl.launch(logits.device))
    return w, idx


@route_decode.register_fake
def _(logits, k):
    N = logits.shape[0]
    return (logits.new_empty(N, k, dtype=torch.float32), logits.new_empty(N, k, dtype=torch.int64))


def reference(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernel's rule in plain torch, for reading and for CPUs: (N, E) -> weights (N, k) float32, ids (N, k)."""
    v = logits.float()
    E = v.shape[-1]
    ids = torch.arange(E, device=v.device)
    before = (v[:, None, :] > v[:, :, None]) | ((v[:, None, :] == v[:, :, None]) & (ids[None, :] < ids[:, None]))
    rank = before.sum(-1)  # (N, E)
    idx = rank.argsort(-1)[:, :k]  # ranks are a permutation of 0..E-1: slot r holds the logit of rank r
    return v.gather(-1, idx).softmax(-1), idx
