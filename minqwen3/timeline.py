"""Decode steps as a timeline of GPU kernels: per step, how many kernels ran, how long the GPU was busy, how long it
sat idle between them, and the totals per kernel name, so that two runs (one GPU and two) can be set side by side
line by line. `record` takes the timeline with torch.profiler (CUDA only); `summarize` is plain arithmetic on
(name, start, end) triples, checkable anywhere.
"""
from __future__ import annotations

import re
from collections.abc import Callable

import torch

# kernel name -> kind, first match wins. Inductor's Triton kernels are named triton_{poi,red,per}_fused_ and the
# ops they hold, which can name a collective whose output they read: they go by their prefix first.
KINDS = [("triton reduction", r"^triton_(red|per)_"),
         ("triton pointwise", r"^triton_poi_"),
         ("all-reduce", r"all_reduce|allreduce|AllReduce|one_shot"),
         ("all-gather", r"all_gather|allgather|AllGather"),
         ("nccl, other", r"nccl"),
         ("attention", r"flash|attention|attn"),
         ("copy, memset", r"Memcpy|Memset|memcpy|memset|copy_kernel|CatArrayBatched"),
         ("library matmul", r"gemv|gemm|sm90|sm100|cutlass|nvjet|cublas|splitK")]


def kind(name: str) -> str:
    return next((k for k, pattern in KINDS if re.search(pattern, name)), "other")


def record(fn: Callable[[], None]) -> list[tuple[str, float, float]]:
    """(name, start µs, end µs) of every GPU kernel, copy and memset fn() ran on this process's GPU, by start."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    out = [(e.name, float(e.time_range.start), float(e.time_range.end)) for e in prof.events()
           if e.device_type == DeviceType.CUDA and e.time_range.end > e.time_range.start]
    return sorted(out, key=lambda k: k[1])


def after_first_step(kernels: list[tuple[str, float, float]], steps: int) -> list[tuple[str, float, float]]:
    """The kernels of the last `steps` of steps + 1 recorded steps (captured graphs: each step the same kernels).

    The ranks of a split model start recording at different host times (the profiler's own start-up); the first
    collective of the window absorbs that offset, up to milliseconds, into one rank's all-reduce. From the second
    step on the collectives hold the ranks in step. Kernels that do not divide evenly into the steps: all of them."""
    per, rest = divmod(len(kernels), steps + 1)
    return kernels[per:] if rest == 0 and per > 0 else kernels


def summarize(kernels: list[tuple[str, float, float]], steps: int, top: int | None = None) -> dict:
    """Per-step figures of `steps` steps' kernels (name, start µs, end µs), sorted by start:

    kernels_per_step; busy_us (the kernels' durations, summed), busy_union_us (time with at least one kernel
    running: less than busy_us where kernels overlap), idle_us (time between the first start and the last end with
    none running), span_us (busy_union_us + idle_us); by_name: name -> (calls, µs, idle µs just before its calls),
    longest first (top of them); by_kind likewise; step: one middle step's kernels in order, (name, µs, idle µs
    before), when the kernels divide evenly among the steps."""
    if steps < 1:
        raise ValueError(f"steps = {steps}: need at least one")
    if not kernels:
        return dict(kernels_per_step=0.0, busy_us=0.0, busy_union_us=0.0, idle_us=0.0, span_us=0.0, by_name=[],
                    by_kind=[], step=None)
    busy = idle = 0.0
    reach = kernels[0][1]  # the latest end so far
    names: dict[str, list[float]] = {}
    gaps = []
    for name, start, end in kernels:
        gap = max(0.0, start - reach)
        gaps.append(gap)
        idle += gap
        reach = max(reach, end)
        busy += end - start
        n = names.setdefault(name, [0, 0.0, 0.0])
        n[0] += 1
        n[1] += end - start
        n[2] += gap
    span = reach - kernels[0][1]
    by_name = sorted(((k, c / steps, t / steps, g / steps) for k, (c, t, g) in names.items()), key=lambda r: -r[2])
    kinds: dict[str, list[float]] = {}
    for k, c, t, g in by_name:
        s = kinds.setdefault(kind(k), [0.0, 0.0, 0.0])
        s[0] += c
        s[1] += t
        s[2] += g
    step = None
    if len(kernels) % steps == 0:
        per = len(kernels) // steps
        i = per * (steps // 2)
        step = [(name, end - start, gap) for (name, start, end), gap in zip(kernels[i:i + per], gaps[i:i + per])]
    return dict(kernels_per_step=len(kernels) / steps, busy_us=busy / steps, busy_union_us=(span - idle) / steps,
                idle_us=idle / steps, span_us=span / steps, by_name=by_name[:top],
                by_kind=sorted(((k, *v) for k, v in kinds.items()), key=lambda r: -r[2]), step=step)


def lines(summary: dict, top: int = 20) -> list[str]:
    """summary as printable lines: the per-step totals, the kinds, the `top` longest kernel names."""
    s = summary
    out = [f"{s['kernels_per_step']:.1f} kernels, busy {s['busy_us'] / 1e3:.3f} ms (union "
           f"{s['busy_union_us'] / 1e3:.3f}), idle between kernels {s['idle_us'] / 1e3:.3f} ms, span "
           f"{s['span_us'] / 1e3:.3f} ms per step",
           "     us/step  calls/step   idle-before us  kind"]
    out += [f"  {t:10.1f}  {c:10.1f}  {g:14.1f}  {k}" for k, c, t, g in s["by_kind"]]
    out.append("     us/step  calls/step   idle-before us  kernel")
    out += [f"  {t:10.1f}  {c:10.1f}  {g:14.1f}  {k[:110]}" for k, c, t, g in s["by_name"][:top]]
    return out
