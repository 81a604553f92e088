"""SwiGLU's product silu(gate) * up as one GPU kernel (Triton), which torch.compile cannot inline.

Why a kernel for one elementwise product: decoding one token, Inductor turns the MLP's down projection into a
reduction and inlines silu(gate) * up into it, so every program of that reduction recomputes the product of the
whole intermediate vector (and reads gate and up) for its few output rows: the down projection then ran at half
the speed of the same reduction over a stored product (docs/benchmarks.md, runs 4 and session 7). A custom op is
opaque to Inductor: the product is computed once, stored, and the down projection reads it like any weight-side
input. Used by mlp.MLP on CUDA without gradients (the kernel has no backward); elsewhere MLP spells it in torch.
"""
from __future__ import annotations

import os

import torch

from .flash_decode import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _swiglu(Gate, Up, Out, n, BLOCK: tl.constexpr):
        i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)  # 64-bit: a long batched prefill
        g = tl.load(Gate + i, mask=i < n).to(tl.float32)  # float32 inside, rounded once on the way out
        u = tl.load(Up + i, mask=i < n).to(tl.float32)
        tl.store(Out + i, (g * tl.sigmoid(g) * u).to(Out.dtype.element_ty), mask=i < n)


BLOCK = 1024  # elements per program
# MINQWEN3_SWIGLU=0 switches the kernel off (the benchmarks' peer: torch's spelling, which Inductor inlines)
enabled = os.environ.get("MINQWEN3_SWIGLU", "1") != "0"


def available(gate: torch.Tensor) -> bool:
    """Whether the kernel can take this product: Triton, a CUDA tensor, no gradient wanted."""
    return enabled and triton is not None and gate.is_cuda and not gate.requires_grad


@torch.library.custom_op("minqwen3::swiglu", mutates_args=())
def swiglu(gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up, elementwise, for two tensors of one shape and dtype on a CUDA device."""
    # the kernel reads up at gate's offsets: anything else would read past up's end, or mix dtypes silently
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"swiglu: gate {tuple(gate.shape)} {gate.dtype} on {gate.device} and up {tuple(up.shape)} "
                         f"{up.dtype} on {up.device} must have one shape, dtype and device")
    if triton is None or not gate.is_cuda:
        raise ValueError(f"swiglu: gate on {gate.device}: the kernel needs a CUDA tensor and Triton "
                         "(swiglu.available says where it can run)")
    gate, up = gate.contiguous(), up.contiguous()
    out = torch.empty_like(gate)
    _swiglu[(triton.cdiv(gate.numel(), BLOCK),)](gate, up, out, gate.numel(), BLOCK=BLOCK)
    return out


@swiglu.register_fake
def _(gate, up):
    return torch.empty_like(gate, memory_format=torch.contiguous_format)
