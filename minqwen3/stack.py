"""Stacked projections for decoding: each attention's q|k|v and each dense MLP's gate|up as one weight, in place.

Why: a decode step reads every weight once, and at 2 rows or more each projection is a library GEMM that costs a
launch and a few microseconds whatever its size; one over the stacked rows costs less than three (two)
(docs/benchmarks.md, session 8: Qwen3-0.6B at batch 8, a step -16%). At one row Inductor already reads x once for
q, k, v in one reduction, and a stack's slices cost a copy each: the Decoder neither stacks nor reads the stacks
for one row, unless matvec.py's kernel norms and projects them there (Decoder._normed_one_row: its output's slices
are views). Stacked *in place* it costs no memory: each Linear keeps its own parameter (names, checkpoint keys
and state_dict unchanged), whose data becomes a slice of one stacked tensor, kept as the module's plain attribute
`stacked` (not a buffer: state_dict never sees it).

The hazard: whatever replaces a parameter's data (model.to(dtype), .half(), load_state_dict(assign=True),
parallel.shard) leaves the stack holding the old values. So the stack is read only where it was checked: inside
a Decoder's step (using()), and a Decoder runs stack() at a start whose steps read the stacks
(Decoder._reads_stacks) whenever a parameter's data, or a module, changed since it last did (Decoder.stacks_for),
which keeps a stack only if it still aliases the live parameters (aliases(): one data pointer per weight) and
stacks the weights again otherwise.
Everywhere else (training, the model's own forward, an eager prefill) the modules project one weight at a time; a
compiled prompt (generation.Decoder, compile_prefill) reads the stacks where the step does.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch
from torch import nn

# MINQWEN3_STACK=0 switches stacking off (the benchmarks' peer: one projection per weight, as before session 8)
enabled = os.environ.get("MINQWEN3_STACK", "1") != "0"
_active = False  # True only inside a Decoder's step, after stack() checked every stack


def groups(model) -> Iterator[tuple[nn.Module, tuple[nn.Linear, ...]]]:
    """(module, its Linears in stacking order): each attention's q, k, v; each dense MLP's gate, up."""
    for layer in model.model.layers:
        a = layer.self_attn
        yield a, (a.q_proj, a.k_proj, a.v_proj)
        if isinstance(getattr(layer.mlp, "gate_proj", None), nn.Linear):  # a dense MLP (experts come stacked)
            yield layer.mlp, (layer.mlp.gate_proj, layer.mlp.up_proj)


def aliases(w: torch.Tensor | None, linears: tuple[nn.Linear, ...]) -> bool:
    """Whether w's rows are the linears' weights, in order, in the same memory (their data pointers)."""
    if w is None or w.dim() != 2 or not w.is_contiguous():
        return False
    row = w.shape[1] * w.element_size()
    at = w.data_ptr()
    for lin in linears:
        p = lin.weight
        if (p.dtype != w.dtype or p.device != w.device or p.dim() != 2 or p.shape[1] != w.shape[1]
                or not p.is_contiguous() or p.data_ptr() != at):
            return False
        at += p.shape[0] * row
    return at == w.data_ptr() + w.shape[0] * row


def stack(model) -> bool:
    """Make each group's weights slices of one stacked tensor (module.stacked), unless they already are; a group
    with biases, or weights of mixed dtypes or devices, is left unstacked (module.stacked = None). Returns
    whether any weight moved (its data pointer changed). Memory: one group's weights twice, for a moment."""
    moved = False
    for mod, linears in groups(model):
        w = getattr(mod, "stacked", None)
        if aliases(w, linears):
            continue
        ps = [lin.weight for lin in linears]
        if any(lin.bias is not None for lin in linears) or len({(p.dtype, p.device, p.shape[1]) for p in ps}) > 1:
            mod.stacked = None
            continue
        mod.stacked = None  # the stale stack goes before the new one is made
        w = torch.cat([p.detach() for p in ps])  # (sum of out_features, in_features)
        row = 0
        for p in ps:
            p.data = w[row:row + p.shape[0]]  # the same Parameter object: optimizers and hooks keep it
            row += p.shape[0]
        mod.stacked = w
        moved = True
    return moved


def stacked(mod: nn.Module) -> torch.Tensor | None:
    """The module's stacked weight where a Decoder checked it (inside its step), else None (one per Linear)."""
    return getattr(mod, "stacked", None) if _active else None


@contextlib.contextmanager
def using(on: bool):
    """Within: modules project with their checked stacks (on), or one weight at a time (off)."""
    global _active
    saved, _active = _active, on
    try:
        yield
    finally:
        _active = saved
