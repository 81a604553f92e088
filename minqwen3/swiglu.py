"""SwiGLU's product silu(gate) * up as one GPU kernel (Triton), which torch.compile cannot inline.

Why a kernel for one elementwise product: decoding one token, Inductor turns the MLP's down projection into a
reduction and inlines silu(gate) * up into it, so every program of that reduction recomputes the product of the
whole intermediate vector (and reads gate and up) for its few output rows: the down projection then ran at half
the speed of the same reduction over a stored product (docs/benchmarks.md, runs 4 and session 7). A custom op is
opaque to Inductor: the product is computed once, stored, and the down projection reads it like any weight-side
input. Used by mlp.MLP on CUDA without gradients (the kernel has no backward), but for a compiled prompt (Inductor
fuses torch's spelling there); elsewhere MLP spells it in torch.
"""
from __future__ import annotations

import os

import torch

from . import pdl
from .flash_decode import triton

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _swiglu(Gate, Up, Out, cols, sg, su, BLOCK: tl.constexpr, PDL: tl.constexpr):
        pdl.wait(PDL)
        # program (row, block of columns): gate and up may be rows of wider tensors (a stacked projection's halves)
        r = tl.program_id(0).to(tl.int64)  # 64-bit offsets: a long batched prefill
        c = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        g = tl.load(Gate + r * sg + c, mask=c < cols).to(tl.float32)  # float32 inside, rounded once on the way out
        u = tl.load(Up + r * su + c, mask=c < cols).to(tl.float32)
        tl.store(Out + r * cols + c, (g * tl.sigmoid(g) * u).to(Out.dtype.element_ty), mask=c < cols)


BLOCK = 1024  # columns per program
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
    out = torch.empty(gate.shape, device=gate.device, dtype=gate.dtype)
    if gate.numel() == 0:
        return out
    # rows of any stride (gate and up may be the halves of one stacked projection), the last dim contiguous
    cols = gate.shape[-1] if gate.dim() else 1
    g2, u2 = (t.reshape(-1, cols) for t in (gate, up))  # a view where the rows allow it, else a copy
    g2, u2 = (t if t.stride(1) == 1 else t.contiguous() for t in (g2, u2))
    _swiglu[(g2.shape[0], triton.cdiv(cols, BLOCK))](g2, u2, out, cols, g2.stride(0), u2.stride(0), BLOCK=BLOCK,
                                                     **pdl.launch(gate.device))
    return out


@swiglu.register_fake
def _(gate, up):
    return gate.new_empty(gate.shape)
