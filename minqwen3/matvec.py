"""y = x @ W.T for a few rows x (decode) as one GPU kernel (Triton), split along K, the same settings on every GPU.

Decoding reads every weight once per step: a matrix-vector product is a stream of the weight through the GPU, and
its speed is how many bytes are in flight at once. torch.compile turns one such product into a reduction with
settings it tunes by timing on each machine: on two GPUs each rank tuned its own (one rank's q_proj 3 us slower,
the other waiting at the all-reduce), and the half-size products of a split model streamed slower per byte than the
whole ones (down_proj 3.4 against 4.0 TB/s; docs/benchmarks.md, session 7, s7-tp). Here:

- Program (n, s) takes BLOCK_N output columns (weight rows) and the s-th of `splits` equal slices of K: a narrow
  matrix (few rows, long K) still gives every SM several programs. Inside, it walks its slice BLOCK_K columns at a
  time; the products accumulate elementwise in float32 and are summed once at the end, or go through tl.dot (the
  rows padded to 16): the rule's choice for more than two rows, the table's where it timed faster.
- The splits of one block of columns are combined by whichever program finishes last (an atomic count per block,
  reset by that program, so a CUDA graph can replay the kernel): it adds the float32 partial sums in split order.
  No float atomics: the same bits on every run and every GPU.
- The settings (BLOCK_N, BLOCK_K, splits, warps, stages) come from a table by shape (rows, N, K), filled from
  scripts/matvec_bench.py's timings, else from a rule of the shape and the number of SMs: never from timing at run
  time, so both ranks of a split model (and every machine of one kind) run the same kernel.

- With the layer's RMSNorm on the way in (NORM, normed_linear() below): y = rmsnorm(x; g, eps) @ W.T in the same
  launch. Each program multiplies W by x * g and sums x * x beside it over its slice of K; the slices of one block
  of columns cover all of K, so the program that finishes the block adds their sums of squares too (in split order)
  and scales the row by 1 / sqrt(mean + eps) once, at the end. No statistics kernel of its own, and no settings
  tuned by timing (Inductor's reductions for the normed products were tuned apart per compile and per rank).

Used by attention.Attention for o_proj and mlp.MLP for down_proj (linear() below) on CUDA without gradients, for
2 to MAX_ROWS rows (one row too on a split dense model, or with MINQWEN3_MATVEC=all; 0 switches it off): their
inputs come from custom ops already (flash_decode, swiglu), so Inductor has nothing to fuse into them. And for
the stacked q|k|v and gate|up (stack.py) inside a Decoder's step, 1 to MAX_ROWS rows, with the norm on the way in
(normed_linear; MINQWEN3_NORMED=0 leaves the norm and the products to Inductor, as before session 9).
"""
from __future__ import annotations

import json
import math
import os
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from . import pdl
from .flash_decode import _sms, triton

MAX_ROWS = 8  # rows (tokens) per call: batch <= 8 at decode
DTYPES = (torch.bfloat16, torch.float16, torch.float32)
# MINQWEN3_MATVEC: 1 (default) for 2..MAX_ROWS rows, "all" for one row too, 0 never (the benchmarks' peer). One row
# is left to Inductor by default: its tuned reductions were as fast or faster there and fuse the residual add into
# down_proj, which this kernel cannot (docs/benchmarks.md, session 8, s8-gemv); at 8 rows the kernel replaces
# cuBLAS's split-K products and their reduce kernels, and was faster.
_MODE = os.environ.get("MINQWEN3_MATVEC", "1")
enabled = _MODE != "0"
min_rows = 1 if _MODE == "all" else 2
# MINQWEN3_NORMED=0: the RMSNorm before q|k|v and gate|up stays a step of its own (the benchmarks' peer), where the
# kernel otherwise applies it on the way into the stacked product (normed_linear). Where, as measured
# (docs/benchmarks.md, session 9, s9-norm): at 2 to MAX_ROWS rows for weights of NORMED_MIN_BYTES or more (tl.dot's
# tiles lost to cuBLAS's product plus the norm's kernel on Qwen3-0.6B's 8 and 13 MB and Qwen3-8B's 50 MB q|k|v, and
# won on 8B's 201 MB gate|up); at one row where the Decoder reads the stacks for it (generation.Decoder: small
# models, where launches dominate, and split ones, whose ranks then run one kernel; "all": every model).
_NORMED = os.environ.get("MINQWEN3_NORMED", "1")
normed = _NORMED != "0"
normed_one_row_always = _NORMED == "all"
NORMED_MIN_BYTES = 100_000_000


class Config(NamedTuple):
    """A launch: BLOCK_N output columns and BLOCK_K inputs per step of a program, K cut into `splits` slices, and
    whether the rows go through tl.dot."""
    block_n: int
    block_k: int
    splits: int
    warps: int
    stages: int
    dot: bool


# (rows, N, K) -> Config, the fastest of scripts/matvec_bench.py's candidates on an H200 (132 SMs), session 8: o_proj
# and down_proj of Qwen3-32B on one GPU and on each of two, and of Qwen3-8B; other shapes take rule(). (One table
# serves products with the norm and without: a shape can be both, 5120 x 5120 is 32B's q|k|v on each of two GPUs and
# 14B's o_proj, timed with the norm only.)
# MINQWEN3_MATVEC_TABLE=FILE[:FILE...] adds (or replaces) entries from the JSON that script writes.
TABLE: dict[tuple[int, int, int], Config] = {
    (1, 5120, 8192): Config(8, 512, 1, 4, 1, False), (1, 5120, 25600): Config(64, 128, 4, 4, 3, True),
    (1, 5120, 4096): Config(8, 512, 1, 4, 1, False), (1, 5120, 12800): Config(64, 128, 4, 4, 3, True),
    (1, 4096, 4096): Config(8, 512, 1, 4, 1, False), (1, 4096, 12288): Config(64, 128, 5, 4, 3, True),
    (8, 4096, 4096): Config(32, 256, 2, 4, 3, True), (8, 4096, 12288): Config(32, 128, 3, 4, 4, True),
    # session 9, the norm on the way in (matvec_bench.py --norm): stacked q|k|v and gate|up of Qwen3-0.6B, Qwen3-8B,
    # Qwen3-32B on each of two GPUs and on one
    (1, 4096, 1024): Config(8, 512, 1, 4, 1, False), (1, 6144, 1024): Config(8, 512, 1, 4, 1, False),
    (1, 6144, 4096): Config(8, 512, 1, 4, 1, False), (1, 24576, 4096): Config(64, 128, 1, 4, 3, True),
    (1, 5120, 5120): Config(4, 1024, 1, 4, 1, False), (1, 25600, 5120): Config(4, 1024, 1, 4, 1, False),
    (1, 10240, 5120): Config(4, 1024, 1, 4, 1, False), (1, 51200, 5120): Config(8, 512, 1, 4, 1, False),
    (8, 4096, 1024): Config(64, 128, 4, 4, 3, True), (8, 6144, 1024): Config(64, 128, 3, 4, 3, True),
    (8, 6144, 4096): Config(64, 128, 3, 4, 3, True), (8, 24576, 4096): Config(64, 128, 1, 4, 3, True),
    (8, 5120, 5120): Config(64, 128, 4, 8, 3, True), (8, 25600, 5120): Config(128, 128, 1, 4, 3, True),
    (8, 10240, 5120): Config(64, 128, 2, 4, 3, True), (8, 51200, 5120): Config(64, 128, 1, 4, 3, True),
    # session 10: o_proj and down_proj at 8 rows of Qwen3-0.6B, -1.7B, -4B and Qwen3-30B-A3B's o_proj; at one row
    # Qwen3-0.6B's (with MINQWEN3_MATVEC=all); Qwen3-30B-A3B's q|k|v with the norm (MINQWEN3_NORMED=all). The two
    # 32B half shapes at 8 rows above took session 10's new candidates (8 warps; 128 columns): 18.50 and 72.30
    # against 20.09 and 82.59 us
    (8, 1024, 2048): Config(64, 256, 4, 4, 3, True), (8, 1024, 3072): Config(64, 256, 6, 4, 3, True),
    (8, 2048, 2048): Config(64, 256, 4, 4, 3, True), (8, 2048, 6144): Config(64, 128, 8, 4, 3, True),
    (8, 2048, 4096): Config(64, 256, 4, 4, 3, True), (8, 2560, 4096): Config(32, 128, 4, 4, 4, True),
    (8, 2560, 9728): Config(32, 256, 4, 4, 3, True), (1, 1024, 2048): Config(2, 2048, 1, 4, 1, False),
    (1, 1024, 3072): Config(2, 2048, 1, 4, 1, False), (1, 5120, 2048): Config(4, 1024, 1, 4, 1, False),
    (8, 5120, 2048): Config(64, 128, 4, 8, 3, True),
}


def _load_table(path: str) -> None:
    with open(path) as f:
        for key, c in json.load(f).items():
            TABLE[tuple(int(v) for v in key.split(","))] = Config(*c)


for _path in filter(None, os.environ.get("MINQWEN3_MATVEC_TABLE", "").split(os.pathsep)):
    _load_table(_path)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def slice_k(K: int, splits: int, block_k: int) -> tuple[int, int]:
    """(columns a slice, slices): K cut into about `splits` slices of whole steps of block_k, none empty."""
    per = _cdiv(_cdiv(K, max(1, splits)), block_k) * block_k
    return per, _cdiv(K, per)


def splits_for(n_blocks: int, K: int, block_k: int, programs: int) -> int:
    """Slices of K that bring n_blocks blocks of columns to about `programs` programs, each slice at least two
    steps of block_k (slice_k's count: no slice empty)."""
    return slice_k(K, max(1, min(_cdiv(programs, n_blocks), K // (2 * block_k))), block_k)[1]


def rule(M: int, N: int, K: int, sms: int) -> Config:
    """The settings for a shape the table lacks: 16 columns a program and slices of K until there are ~4 programs
    an SM; with tl.dot (more than two rows) 64 columns in 3 stages and ~2 programs an SM: within 9% of the fastest
    on every shape timed at 8 rows but one (17%), with the norm on the way in or without; with it up to 2x faster
    than session 8's 32 columns in 4 stages, without within 2% or up to 6% faster where timed (session 10)."""
    dot = M > 2
    bn, bk, stages, per_sm = (64, 128, 3, 2) if dot else (16, 256, 3, 4)
    return Config(bn, bk, splits_for(_cdiv(N, bn), K, bk, per_sm * sms), 4, stages, dot)


def config(M: int, N: int, K: int, device: torch.device) -> Config:
    return TABLE.get((M, N, K)) or rule(M, N, K, _sms(device))


def available(x: torch.Tensor, weight: torch.Tensor, norm: nn.Module | None = None, one_row: bool = False) -> bool:
    """Whether the kernel takes x @ weight.T (with norm: norm(x) @ weight.T, an RMSNorm of x's dtype): Triton,
    CUDA, min_rows (with norm or one_row: 1) to MAX_ROWS rows (with norm, more than one only for NORMED_MIN_BYTES
    of weight), one dtype of DTYPES, the weight's rows contiguous, no gradient wanted (no backward). Otherwise
    torch's product does (after the norm)."""
    K = x.shape[-1]
    ins = (x, weight) if norm is None else (x, weight, norm.weight)
    return ((enabled if norm is None else normed) and triton is not None and x.is_cuda and weight.dim() == 2
            and all(t.dtype == x.dtype for t in ins) and x.dtype in DTYPES and weight.stride(1) == 1
            and (norm is None or (norm.weight.shape == (K,) and isinstance(norm.eps, float)))
            and (1 if norm is not None or one_row else min_rows) * K <= x.numel() <= MAX_ROWS * K
            and (norm is None or x.numel() == K or weight.numel() * weight.element_size() >= NORMED_MIN_BYTES)
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in ins)))


def linear(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """layer(x), through the kernel where it can take it (a plain bias-free nn.Linear, available()); from one row
    where the layer is marked split_input (parallel.shard: o_proj and down_proj of a split dense model, whose
    outputs go to the all-reduce, so Inductor has no residual add to fuse into them, and both ranks then run one
    kernel: Qwen3-32B on two GPUs 10.31 against 10.53 ms a token with Inductor's, session 9)."""
    if type(layer) is nn.Linear and layer.bias is None and available(x, layer.weight,
                                                                     one_row=getattr(layer, "split_input", False)):
        return matvec(x, layer.weight)
    return layer(x)


def normed_linear(x: torch.Tensor, weight: torch.Tensor, norm: nn.Module | None) -> torch.Tensor:
    """norm(x) @ weight.T (x @ weight.T without a norm): one launch of the kernel, the RMSNorm on the way in, where
    available(x, weight, norm); else the norm, then torch's product."""
    if norm is not None and available(x, weight, norm):
        return matvec(x, weight, norm.weight, norm.eps)
    return F.linear(x if norm is None else norm(x), weight)


if triton is not None:
    import triton.language as tl

    @triton.jit
    def _matvec(X, W, Y, Part, Count, G, Sq, M, N, K, swn, k_split, splits, eps, MP: tl.constexpr,
                BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT: tl.constexpr, IEEE: tl.constexpr,
                NORM: tl.constexpr, PDL: tl.constexpr):
        nb, s = tl.program_id(0), tl.program_id(1)  # block of output columns, slice of K
        cols = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        rows = tl.arange(0, MP)  # the rows of x, padded
        w_at = W + cols.to(tl.int64)[:, None] * swn  # (BLOCK_N, 1): 64-bit, an LM head has 778 M weights
        k0 = s * k_split
        k1 = tl.minimum(k0 + k_split, K)
        pdl.wait(PDL)  # x, Part, Count: written or read by the kernels before
        if DOT:
            acc = tl.zeros((BLOCK_N, MP), tl.float32)
            sq = tl.zeros((BLOCK_K, MP), tl.float32)  # NORM: x * x, summed over K once, after the loop
        else:
            acc = tl.zeros((MP, BLOCK_N, BLOCK_K), tl.float32)  # summed over K once, after the loop
            sq = tl.zeros((MP, BLOCK_K), tl.float32)
        for k in range(k0, k1, BLOCK_K):
            c = k + tl.arange(0, BLOCK_K)
            w = tl.load(w_at + c[None, :], mask=(cols[:, None] < N) & (c[None, :] < K), other=0.0)
            if NORM:  # RMSNorm's weight g on the way in: x * g here, 1 / rms(x) once at the end
                g = tl.load(G + c, mask=c < K, other=0.0).to(tl.float32)
            if DOT:
                xt = tl.load(X + rows[None, :] * K + c[:, None], mask=(rows[None, :] < M) & (c[:, None] < K),
                             other=0.0)  # (BLOCK_K, MP)
                if NORM:
                    xf = xt.to(tl.float32)
                    sq += xf * xf
                    xt = (xf * g[:, None]).to(xt.dtype)  # rounded once, where the norm's own output rounds twice
                if IEEE:  # float32 in, float32 products: what torch gives with TF32 off
                    acc += tl.dot(w, xt, input_precision="ieee")
                else:
                    acc += tl.dot(w, xt)
            else:
                x = tl.load(X + rows[:, None] * K + c[None, :], mask=(rows[:, None] < M) & (c[None, :] < K),
                            other=0.0).to(tl.float32)  # (MP, BLOCK_K)
                if NORM:
                    sq += x * x
                    x = x * g[None, :]
                acc += x[:, None, :] * w.to(tl.float32)[None, :, :]
        if DOT:
            y = tl.trans(acc)  # (MP, BLOCK_N)
            ss = tl.sum(sq, 0)  # (MP,): this slice's sum of squares per row
        else:
            y = tl.sum(acc, 2)
            ss = tl.sum(sq, 1)
        at = rows[:, None] * N + cols[None, :]  # (MP, BLOCK_N) in the (M, N) output
        live = (rows[:, None] < M) & (cols[None, :] < N)
        if splits == 1:
            if NORM:
                y = y * tl.rsqrt(ss / K + eps)[:, None]
            tl.store(Y + at, y.to(Y.dtype.element_ty), mask=live)
        else:
            tl.store(Part + s * M * N + at, y, mask=live)  # this slice's float32 sums, (splits, M, N)
            if NORM:  # and its sums of squares, (blocks, splits, MP): each program its own
                tl.store(Sq + (nb * splits + s) * MP + rows, ss)
            tl.debug_barrier()  # every thread's stores are issued before the count is raised
            done = tl.atomic_add(Count + nb, 1, sem="acq_rel")  # release: visible to whoever sees the count
            if done == splits - 1:  # the last slice of this block adds them all, in slice order
                total = tl.zeros((MP, BLOCK_N), tl.float32)
                sums = tl.zeros((MP,), tl.float32)
                for t in range(splits):
                    # .cg: through L2, where the other programs' stores are, never a stale L1 line
                    total += tl.load(Part + t * M * N + at, mask=live, other=0.0, cache_modifier=".cg")
                    if NORM:
                        sums += tl.load(Sq + (nb * splits + t) * MP + rows, cache_modifier=".cg")
                if NORM:  # the slices of one block cover all of K: the whole row's mean square
                    total = total * tl.rsqrt(sums / K + eps)[:, None]
                tl.store(Y + at, total.to(Y.dtype.element_ty), mask=live)
                tl.atomic_xchg(Count + nb, 0)  # ready for the next call (and the next graph replay)


# finished-slice counters per (device, blocks of columns), zero between calls: one stream at a time per device
_counts: dict[tuple[torch.device, int], torch.Tensor] = {}


def launch(x: torch.Tensor, weight: torch.Tensor, c: Config, norm: torch.Tensor | None = None,
           eps: float = 0.0) -> torch.Tensor:
    """The kernel with settings c: x (M, K) contiguous, weight (N, K) with contiguous rows -> (M, N); with norm (K,)
    the product takes RMSNorm(x) with weight norm and eps (rmsnorm.py) instead of x."""
    M, K = x.shape
    N = weight.shape[0]
    y = torch.empty(M, N, device=x.device, dtype=x.dtype)
    n_blocks = _cdiv(N, c.block_n)
    per, splits = slice_k(K, c.splits, c.block_k)
    part = torch.empty(splits, M, N, device=x.device, dtype=torch.float32) if splits > 1 else y  # y: unused
    mp = max(16, triton.next_power_of_2(M)) if c.dot else triton.next_power_of_2(M)
    sq = (torch.empty(n_blocks * splits * mp, device=x.device, dtype=torch.float32) if norm is not None and splits > 1
          else part)  # part: unused
    key = (x.device, n_blocks)
    if key not in _counts:  # allocated once, outside any graph capture (the first call is a warm-up)
        if x.is_cuda and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("matvec: first call of this shape inside a CUDA graph capture; call it once before")
        _counts[key] = torch.zeros(n_blocks, device=x.device, dtype=torch.int32)
    _matvec[(n_blocks, splits)](x, weight, y, part, _counts[key], x if norm is None else norm, sq, M, N, K,
                                weight.stride(0), per, splits, float(eps), MP=mp, BLOCK_N=c.block_n,
                                BLOCK_K=c.block_k, DOT=c.dot, IEEE=x.dtype == torch.float32, NORM=norm is not None,
                                num_warps=c.warps, num_stages=c.stages, **pdl.launch(x.device))
    return y


@torch.library.custom_op("minqwen3::matvec", mutates_args=())
def matvec(x: torch.Tensor, weight: torch.Tensor, norm: Optional[torch.Tensor] = None, eps: float = 0.0
           ) -> torch.Tensor:
    """x (..., K) @ weight (N, K).T -> (..., N) in x's dtype, summed in float32, for at most MAX_ROWS rows of x on a
    CUDA device (matvec.available says where it can run). With norm (K,): RMSNorm(x) (weight norm, eps) @ weight.T
    in one kernel, the row's statistics gathered on the way (rmsnorm.py's, rounded once where it rounds twice)."""
    if weight.dim() != 2 or x.dim() < 1 or x.shape[-1] != weight.shape[1]:
        raise ValueError(f"matvec: x {tuple(x.shape)} and weight {tuple(weight.shape)}: weight must be (N, K) "
                         f"and x (..., K)")
    if x.dtype != weight.dtype or x.dtype not in DTYPES or x.device != weight.device:
        raise ValueError(f"matvec: x {x.dtype} on {x.device} and weight {weight.dtype} on {weight.device} must "
                         f"have one dtype of {', '.join(map(str, DTYPES))} and one device")
    if norm is not None and (norm.shape != (x.shape[-1],) or norm.dtype != x.dtype or norm.device != x.device):
        raise ValueError(f"matvec: norm {tuple(norm.shape)} {norm.dtype} on {norm.device} must be ({x.shape[-1]},) "
                         f"{x.dtype} on {x.device}, as x")
    if not (eps >= 0.0 and math.isfinite(eps)):
        raise ValueError(f"matvec: eps {eps} must be a finite number >= 0")
    if triton is None or not x.is_cuda:
        raise ValueError(f"matvec: x on {x.device}: the kernel needs a CUDA tensor and Triton")
    rows = x.numel() // max(1, x.shape[-1])
    if rows > MAX_ROWS or weight.stride(1) != 1:
        raise ValueError(f"matvec: x has {rows} rows (at most {MAX_ROWS}) and weight strides {weight.stride()} "
                         "(its rows must be contiguous)")
    K, N = weight.shape[1], weight.shape[0]
    x2 = x.reshape(rows, K).contiguous()
    if rows == 0 or K == 0:
        return x.new_zeros((*x.shape[:-1], N))
    norm = None if norm is None else norm.contiguous()
    return launch(x2, weight, config(rows, N, K, x.device), norm, eps).view(*x.shape[:-1], N)


@matvec.register_fake
def _(x, weight, norm=None, eps=0.0):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))
