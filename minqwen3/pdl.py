"""Programmatic dependent launch (PDL, Hopper and newer): a kernel starts while the one before it finishes.

A GPU runs a stream's kernels one after another: the next kernel's programs are placed on the SMs only once the last
program of the one before has exited, and then each ramps up (reads its arguments, computes its offsets, waits for
its first loads from memory). Decoding a small model, a step is ~8 kernels a layer of 2-7 us each, and that gap and
ramp are a good part of each. With PDL the next kernel is launched early, as soon as every program of the one before
has said it may be (gdc_launch_dependents), and its programs run until they need what the one before writes
(gdc_wait, which returns once that kernel has finished and its writes are visible). So a kernel:

- waits (gdc_wait) before it reads or writes anything an earlier kernel of the stream may still write or read: the
  activations, the KV cache, the counters a kernel keeps between calls. Only constants (a model's weights) may be
  read before the wait.
- lets the next one launch (gdc_launch_dependents) right after its wait: by then all of its own programs are on the
  SMs, so the next kernel's programs take no place its own would need.

Inductor writes the same two calls into its kernels (its option triton.enable_pdl; generation.Decoder turns it on
where this module's kernels use PDL). By itself it lets a kernel load and store before its wait wherever the kernel
just before writes nothing it touches, judged by buffer names. A name does not show memory Inductor reuses (a
kernel storing into what the kernel before still reads under another name), and a kernel that loads nothing never
waits at all, leaving the one after it unguarded. Decoding a batch of 8 on Qwen3-0.6B with Inductor's rule gave
other tokens from one run of the same graph to the next (docs/benchmarks.md, session 11). inductor_waits_first()
makes each of its kernels wait before its first access, as ours do. A kernel that waits before it touches memory
has waited for the kernel before it, which had itself waited for the one before it: the chain keeps the stream's
order, and a CUDA graph keeps the launches' dependencies.

Kernels launch with PDL only inside scope(True): a compiled Decoder's step (generation.Decoder), where every kernel
takes part. Ours launched with it among kernels that do not (Inductor's without its option, eager torch's) measured
slower than none at all (Qwen3-0.6B at batch 1: 1.074 against 0.996 ms a step, the same Inductor kernels in both;
docs/benchmarks.md, session 11), so elsewhere they launch as before.

MINQWEN3_PDL=0 switches it off (the benchmarks' peer); MINQWEN3_PDL=ours leaves Inductor's kernels without it.
"""
from __future__ import annotations

import contextlib
import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:
    triton = None
# whether this Triton has the two calls (tl.extra.cuda.gdc_wait, gdc_launch_dependents)
HAS_GDC = triton is not None and hasattr(getattr(getattr(tl, "extra", None), "cuda", None), "gdc_wait")

_MODE = os.environ.get("MINQWEN3_PDL", "1")
enabled = _MODE != "0"
inductor = _MODE != "ours"  # and Inductor's kernels too (generation.Decoder)
_active = False  # inside scope(True)


@contextlib.contextmanager
def scope(active: bool):
    """Within it, launch() asks for PDL where on() (active) or not at all (not active); scopes nest."""
    global _active
    before, _active = _active, active
    try:
        yield
    finally:
        _active = before


def on(device: torch.device) -> bool:
    """Whether kernels on this device launch with PDL: enabled, Triton with the calls, an NVIDIA GPU of compute
    capability 9 or newer (the launch attribute and griddepcontrol are Hopper's; ROCm's devices report their own
    major numbers). Not under Triton's interpreter."""
    return (enabled and HAS_GDC and device.type == "cuda" and torch.version.hip is None
            and os.environ.get("TRITON_INTERPRET") != "1"
            and torch.cuda.get_device_properties(device).major >= 9)


def launch(device: torch.device) -> dict:
    """The keyword arguments a kernel of ours takes at launch: its PDL constexpr (whether to call gdc_wait and
    gdc_launch_dependents) and, inside scope(True) where on(), Triton's launch_pdl."""
    return {"PDL": True, "launch_pdl": True} if _active and on(device) else {"PDL": False}


def decoder_plan(device: torch.device) -> tuple[bool, bool]:
    """What a compiled Decoder on this device launches with PDL: (our kernels, Inductor's). Inductor's where on()
    and its option and inductor_waits_first() are there (unless MINQWEN3_PDL=ours); ours only with them, or where
    MINQWEN3_PDL=ours asks for ours alone (see the docstring above)."""
    if not on(device):
        return False, False
    inductors = inductor and hasattr(torch._inductor.config.triton, "enable_pdl") and inductor_waits_first()
    return inductors or not inductor, inductors


def inductor_waits_first() -> bool:
    """Have every Triton kernel Inductor writes with triton.enable_pdl wait (gdc_wait) before its first load or store,
    where it would wait only if the kernel just before it wrote (or read) what it touches (see the docstring above).
    Installed once per process; False where this torch has no such step (a Decoder then uses no PDL at all)."""
    try:
        from torch._inductor.codegen.triton import TritonKernel
        from torch._inductor.virtualized import V
    except ImportError:
        return False
    decide = getattr(TritonKernel, "_handle_pdl_before_access", None)
    if decide is None:
        return False
    if getattr(decide, "waits_first", False):
        return True

    def waits_first(self, *args, **kwargs):
        # Inductor waits unconditionally where there is no kernel before (the graph's first): say there is none
        scheduler = V.graph.scheduler
        before = getattr(scheduler, "previous_node", None)
        if scheduler is not None:
            scheduler.previous_node = None
        try:
            return decide(self, *args, **kwargs)
        finally:
            if scheduler is not None:
                scheduler.previous_node = before

    waits_first.waits_first, waits_first.inductors_rule = True, decide
    TritonKernel._handle_pdl_before_access = waits_first
    return True


if triton is not None:
    @triton.jit
    def wait(PDL: tl.constexpr):
        """Wait for the kernel before this one to finish (its writes visible), then let the next one launch."""
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
