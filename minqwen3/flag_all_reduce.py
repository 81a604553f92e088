"""A one-shot all-reduce with one barrier, in Triton: the sum of a small tensor over the ranks of a group, through a
buffer every rank has mapped (symmetric memory, over NVLink).

torch's one-shot kernel (symm_mem.one_shot_all_reduce_copy) meets the other ranks twice: once after copying its
input into the shared buffer (so the peers may read it), and once more at the end (so that no rank overwrites its
buffer while a peer still reads it). A decode step's sums are 10 KiB: each meeting, a flag written over NVLink and
waited for, is a good part of the kernel's time. Here the second meeting goes:

- The buffer has two halves; call n of the buffer uses half n % 2. A rank writes half n % 2 at call n only after
  every peer has arrived at call n - 1, and a peer arrives there only after its call n - 2, the last reader of
  that half, has finished (a stream runs its kernels in order). So the one barrier per call also guards reuse.
- The barrier is a flag per (program, rank) holding a count: program b of call n on rank r raises its flag at every
  peer to n (n counts this program's calls on this rank, kept on the GPU, so a replayed CUDA graph goes on
  counting) and waits until each peer has raised its flag on it to n. Counts only grow (int32, compared so that
  they may wrap around): nothing to reset.
- Every rank adds the ranks' values in rank order, in float32: all ranks get the same bits (they then sample the
  same token from the same logits).

- With a residual it returns residual + the sum: the decoder layer's add after its all-reduce, in the same kernel
  (two launches a layer fewer).

Program b handles elements b * BLOCK ... (b + 1) * BLOCK - 1 and meets only the peers' programs b. Sums of up to
MAX_BLOCKS * BLOCK values in bf16 or float32, up to 8 ranks; parallel.flag_all_reduce takes the others elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from . import pdl

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: parallel's all-reduce uses the process group's own
    triton = None

BLOCK = 1024  # values per program
MAX_BLOCKS = 64  # programs at most: sums of up to 65,536 values (a batch of 12 rows of Qwen3-32B's 5,120)
MAX_WORLD = 8
FLAG_BYTES = MAX_BLOCKS * MAX_WORLD * 4  # int32 flags at the buffer's start, (program, rank)
HALF_BYTES = MAX_BLOCKS * BLOCK * 4  # one half of the data: the largest sum in float32
BYTES = FLAG_BYTES + 2 * HALF_BYTES


@dataclass
class State:
    """One group's buffer on one device: the buffer itself (kept alive), every rank's base address of it (on the
    device), this rank's call counts per program, its rank and the world size."""
    buffer: torch.Tensor
    bases: torch.Tensor  # (world,) int64
    counts: torch.Tensor  # (MAX_BLOCKS,) int32
    rank: int
    world: int


def fits(x: torch.Tensor, state: State) -> bool:
    """Whether this kernel takes x (contiguous): its dtype, its size, the group's size."""
    return (triton is not None and x.is_cuda and x.dtype in (torch.bfloat16, torch.float32)
            and 0 < x.numel() <= MAX_BLOCKS * BLOCK and state.world <= MAX_WORLD)


def make_state(group, group_name: str, device: torch.device) -> State:
    """Allocate and rendezvous the buffer (a collective: every rank of the group calls it at the same point), zero
    its flags, and wait until every rank has, so no flag is raised before its owner cleared it."""
    import torch.distributed as dist
    import torch.distributed._symmetric_memory as symm_mem
    if triton is None:
        raise RuntimeError("Triton is not installed")
    buf = symm_mem.empty(BYTES, dtype=torch.uint8, device=device)
    hdl = symm_mem.rendezvous(buf, group_name)
    if hdl.world_size > MAX_WORLD:
        raise RuntimeError(f"{hdl.world_size} ranks: this kernel takes up to {MAX_WORLD}")
    buf.zero_()
    torch.cuda.synchronize(device)
    dist.barrier(group=group)
    bases = torch.tensor([hdl.get_buffer(r, (BYTES,), torch.uint8).data_ptr() for r in range(hdl.world_size)],
                         dtype=torch.int64, device=device)
    return State(buf, bases, torch.zeros(MAX_BLOCKS, dtype=torch.int32, device=device), hdl.rank, hdl.world_size)


def all_reduce(x: torch.Tensor, state: State, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The sum of x (contiguous, fits) over the group's ranks, out of place; the same bits on every rank. With
    residual (x's shape and dtype, contiguous): residual + the sum, in the same kernel (the decoder layer's residual
    add after its all-reduce), rounded as the two steps round: the sum to x's dtype, then the add."""
    out = torch.empty_like(x)
    n = x.numel()
    _all_reduce[(triton.cdiv(n, BLOCK),)](x, out, state.bases, state.counts, x if residual is None else residual, n,
                                          FLAG_BYTES // x.element_size(), HALF_BYTES // x.element_size(),
                                          RANK=state.rank, WORLD=state.world, BLOCK=BLOCK, RES=residual is not None,
                                          num_warps=4, **pdl.launch(x.device))
    return out


if triton is not None:
    @triton.jit
    def _all_reduce(X, Out, Bases, Counts, Res, numel, data0, half, RANK: tl.constexpr, WORLD: tl.constexpr,
                    BLOCK: tl.constexpr, RES: tl.constexpr, PDL: tl.constexpr):
        b = tl.program_id(0)
        pdl.wait(PDL)  # Counts, X, Res: the kernels before write them
        offs = b * BLOCK + tl.arange(0, BLOCK)
        m = offs < numel
        n = tl.load(Counts + b) + 1  # this program's call number
        tl.debug_barrier()  # every warp has read the count before it is raised (else a late warp reads n + 1)
        tl.store(Counts + b, n)
        at = data0 + (n & 1) * half + offs  # this call's half of every rank's buffer (elements from its base)
        x = tl.load(X + offs, mask=m)
        if RES:  # read before the barrier's wait below, which then hides its latency
            res = tl.load(Res + offs, mask=m).to(tl.float32)
        mine = tl.multiple_of(tl.load(Bases + RANK).to(tl.pointer_type(X.dtype.element_ty)), 16)  # 16-byte loads
        tl.store(mine + at, x, mask=m)
        # every thread's store is visible system-wide before the flag that announces it
        tl.inline_asm_elementwise("fence.acq_rel.sys;\n mov.u32 $0, 0;", "=r", [], dtype=tl.int32, is_pure=False,
                                  pack=1)
        tl.debug_barrier()
        flags = tl.load(Bases + RANK).to(tl.pointer_type(tl.int32))  # this rank's flags: (program, rank)
        for r in tl.static_range(WORLD):
            if r != RANK:
                peer_flags = tl.load(Bases + r).to(tl.pointer_type(tl.int32))
                tl.atomic_xchg(peer_flags + b * WORLD + RANK, n, sem="release", scope="sys")
        for r in tl.static_range(WORLD):
            if r != RANK:
                seen = tl.atomic_add(flags + b * WORLD + r, 0, sem="acquire", scope="sys")
                while seen - n < 0:  # not "seen < n": the count wraps around after 2**31 calls (~2 days of decode)
                    seen = tl.atomic_add(flags + b * WORLD + r, 0, sem="acquire", scope="sys")
        tl.debug_barrier()
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for r in tl.static_range(WORLD):  # in rank order on every rank: the same rounding everywhere
            if r == RANK:
                acc += x.to(tl.float32)
            else:
                peer = tl.multiple_of(tl.load(Bases + r).to(tl.pointer_type(X.dtype.element_ty)), 16)
                acc += tl.load(peer + at, mask=m, other=0.0, volatile=True).to(tl.float32)
        y = acc.to(Out.dtype.element_ty)
        if RES:  # the residual stream plus the layer's output, both rounded to the dtype first, as x + all_reduce(o)
            y = (res + y.to(tl.float32)).to(Out.dtype.element_ty)
        tl.store(Out + offs, y, mask=m)
