"""Tensor and expert parallelism on torch.distributed: one model, split across N processes by its weights' names.

Tensor parallelism (Megatron-style, Shoeybi et al. 2019). A block's first matrices are split by output, its last by
input, so each rank computes a slice of the block's inner activations and a partial sum of its output:

    attention: q, k, v split by heads (rows) -> each rank attends with its own heads -> o split by input (columns)
    MLP:       gate, up split by rows        -> silu(gate) * up is elementwise, stays local -> down split by columns

The partial outputs add up to the whole, so one all-reduce (sum) per block, two per layer, is all the talking.
QK-Norm normalises each head on its own (its weight, shared by all heads, is replicated), RoPE too. Heads must
divide among the ranks; key/value heads too, or where ranks outnumber them, the ranks of one group of query heads
each hold a copy of that group's key/value head (Qwen3-32B: 64 query, 8 KV heads; 16 ranks would hold each KV head
twice). The LM head is split by vocabulary rows and the logits all-gathered (every rank then samples the same
token from the same numbers); the embedding is replicated: a token reads one row of it, so splitting it would save
memory only, at the price of one more all-reduce per step.

Expert parallelism (MoE layers, "ep"): each rank holds E/N whole experts; the router is replicated, so every rank
routes every token the same way, runs the tokens' choices that are its own experts (others get weight 0), and the
same all-reduce that ends a tensor-parallel block sums the experts' partial outputs. Attention stays
tensor-parallel. Plain all-reduce is right for decode (a few tokens); large batches would move tokens with an
all-to-all instead (not done here).

The plan is applied to the unchanged model (model.py, attention.py, mlp.py, moe.py) by parameter name:
`shard(model, plan)` replaces each parameter by its slice (on the meta device, before loading: nothing is
allocated), sets the attention modules' head counts, and adds the collectives: each decoder layer's `reduce`
(its blocks' partial outputs summed over the ranks, the residual added), the LM head's all-gather as a forward
hook. On GPUs the all-reduce is, by default, a one-shot kernel through symmetric memory with one barrier
(`flag_all_reduce`, a custom op that torch.compile keeps whole and a CUDA graph captures; a decode step's 10 KiB
sums are latency-bound, and this is one kernel where NCCL's is a protocol; flag_all_reduce.py; it adds the residual
in the same kernel), or torch's own one-shot kernel
(`symm_all_reduce`); otherwise NCCL's (gloo's on CPUs): in place when eager (a CUDA graph captures NCCL's kernels
as they are), functional under torch.compile, which traces it into its graph. `from_pretrained`
then reads only each rank's slice of every tensor from the safetensors files.

Run with torchrun (one process per GPU, or per CPU "rank" with gloo):
    torchrun --nproc-per-node 2 -m minqwen3 generate --device cuda "The capital of France is"
"""
from __future__ import annotations

import datetime
import math
import multiprocessing as mp
import os
import queue as queue_mod
import re
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils._pytree import tree_map

from .bench import one_line
from .config import Qwen3Config
from .model import Qwen3

MODES = ("tp", "ep")  # how MoE layers' experts are split; attention and dense MLPs are always tensor-parallel
# one-shot through symmetric memory (on GPUs, else as nccl): torch's kernel (symm) or minqwen3's with one barrier
# (flags, flag_all_reduce.py); or the group's own (nccl)
ALL_REDUCES = ("symm", "flags", "nccl")
# NVLink multicast (NVLS) must stay off on shared machines (the device notes): set before NCCL starts
NO_MULTICAST = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclass(frozen=True)
class Plan:
    """Where this process stands: rank of world; experts: "tp" (every expert split like an MLP) or "ep" (whole
    experts divided among the ranks); group: the process group (None = the default one); all_reduce: "flags" (the
    one-shot all-reduce through symmetric memory with one barrier: flag_all_reduce.py, on GPUs where Triton is,
    else as symm), "symm" (torch's one-shot kernel, two barriers, where torch has it, else the group's own) or
    "nccl" (the group's own: NCCL, gloo on CPUs)."""
    rank: int
    world: int
    experts: str = "tp"
    group: object = None
    all_reduce: str = "flags"

    def __post_init__(self):
        if not 0 <= self.rank < self.world:
            raise ValueError(f"rank {self.rank} is not in 0..{self.world - 1}")
        if self.experts not in MODES:
            raise ValueError(f"experts = {self.experts!r}: choose 'tp' or 'ep'")
        if self.all_reduce not in ALL_REDUCES:
            raise ValueError(f"all_reduce = {self.all_reduce!r}: choose one of {', '.join(ALL_REDUCES)}")


def heads(config: Qwen3Config, plan: Plan) -> tuple[int, int, int, int]:
    """(first query head, query heads, first key/value head, key/value heads) of this rank.

    Query heads split evenly. Key/value heads split evenly too when the ranks divide them; when the ranks are more
    (and a multiple), every world/KV ranks share one KV head, each holding a copy: rank r's query heads all belong
    to KV head r // (world / KV)."""
    H, K, N = config.num_attention_heads, config.num_key_value_heads, plan.world
    if H % N:
        raise ValueError(f"num_attention_heads = {H} does not divide among {N} ranks: {_ways(H)}")
    if K % N and N % K:
        raise ValueError(f"num_key_value_heads = {K} and {N} ranks: one must divide the other "
                         f"({_ways(H, lambda n: K % n == 0 or n % K == 0)})")
    hq = H // N
    kv = K // N if K % N == 0 else 1
    return plan.rank * hq, hq, plan.rank * hq // (H // K), kv


def _ways(n: int, also=lambda k: True) -> str:
    """The process counts that split n (and pass `also`), for an error message."""
    counts = [k for k in range(1, n + 1) if n % k == 0 and also(k)]
    return f"it splits among {', '.join(map(str, counts[:8]))}{', ...' if len(counts) > 8 else ''} processes"


def _split(n: int, plan: Plan, what: str) -> slice:
    if n % plan.world:
        other = {"num_experts": "; or --experts tp, which splits each expert instead",
                 "moe_intermediate_size": "; or --experts ep, which gives each rank whole experts"}.get(what, "")
        raise ValueError(f"{what} = {n} does not divide among {plan.world} ranks: {_ways(n)}{other}")
    k = n // plan.world
    return slice(plan.rank * k, (plan.rank + 1) * k)


def vocab_split(config: Qwen3Config, plan: Plan) -> bool:
    """Whether the LM head is split by vocabulary (it is, when the ranks divide the rows; else replicated)."""
    return plan.world > 1 and config.vocab_size % plan.world == 0


def slices(name: str, shape: tuple[int, ...], config: Qwen3Config, plan: Plan) -> tuple[slice, ...]:
    """This rank's part of parameter `name` (full shape `shape`): one slice per dimension. The whole plan."""
    c, full = config, tuple(slice(None) for _ in shape)
    if plan.world == 1:
        return full
    q0, hq, k0, hk = heads(c, plan)
    D = c.head_dim
    q, kv = slice(q0 * D, (q0 + hq) * D), slice(k0 * D, (k0 + hk) * D)
    inner = lambda: _split(c.intermediate_size, plan, "intermediate_size")  # noqa: E731
    expert_inner = lambda: _split(c.moe_intermediate_size, plan, "moe_intermediate_size")  # noqa: E731
    if plan.experts == "ep":  # whole experts: rows of the stacked (E, out, in) tensors
        experts = [(r".*mlp\.experts\.(gate|up|down)_proj", 0, lambda: _split(c.num_experts, plan, "num_experts"))]
    else:  # every expert cut like an MLP
        experts = [(r".*mlp\.experts\.(gate|up)_proj", 1, expert_inner),
                   (r".*mlp\.experts\.down_proj", 2, expert_inner)]
    rules = [  # (pattern, dimension cut, this rank's slice of it)
        (r".*self_attn\.q_proj\.(weight|bias)", 0, lambda: q),  # by output: this rank's query heads
        (r".*self_attn\.[kv]_proj\.(weight|bias)", 0, lambda: kv),  # its key/value heads
        (r".*self_attn\.o_proj\.weight", 1, lambda: q),  # by input: the same heads
        (r".*mlp\.(gate|up)_proj\.weight", 0, inner),  # dense MLP: by output
        (r".*mlp\.down_proj\.weight", 1, inner),  # by input
        *experts,
        (r"lm_head\.weight", 0, lambda: _split(c.vocab_size, plan, "vocab_size") if vocab_split(c, plan)
         else slice(None)),
    ]
    for pattern, dim, part in rules:
        if re.fullmatch(pattern, name):
            return full[:dim] + (part(),) + full[dim + 1:]
    return full  # norms, router, embedding: replicated


def _shape(shape: tuple[int, ...], sl: tuple[slice, ...]) -> tuple[int, ...]:
    return tuple(len(range(n)[s]) for n, s in zip(shape, sl))


# ---------------------------------------------------------------- a one-shot all-reduce through symmetric memory
# A decode step's all-reduce is 10 KiB (Qwen3-32B): its cost is latency, not bandwidth. NCCL's all-reduce goes
# through its protocol (chunks, flags, a ring of steps); the one-shot one is a single kernel: each rank copies its
# partial sum into a buffer that every rank has mapped (symmetric memory, over NVLink), all meet at a barrier of
# flags, and each reads every peer's buffer and adds. Peer-to-peer loads only: no NVLink multicast (NO_MULTICAST).
# The buffer is allocated once per group and device, before any graph is captured (a graph replays its address).
SYMM_BYTES = 4 << 20  # sums larger than this (long prefills) take the process group's all-reduce
_symm: dict = {}  # (group name, device index) -> the rendezvoused buffer, or why there is none (a str)
_groups: dict = {}  # group name -> process group, for the fallback


def _symm_buffer(name: str, device: torch.device):
    """This group's symmetric buffer on device, made at the first call (a collective: every rank calls it at the
    same point of the same forward), or the reason it cannot be (then every later call falls back, on every rank)."""
    key = (name, device.index)
    if key not in _symm:
        try:
            if device.type != "cuda" or not hasattr(torch.ops.symm_mem, "one_shot_all_reduce"):
                raise RuntimeError(f"no one-shot all-reduce for device {device} in torch {torch.__version__}")
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("first used inside a CUDA graph capture, where nothing can be allocated")
            import warnings

            import torch.distributed._symmetric_memory as symm_mem
            with warnings.catch_warnings():  # needed up to torch ~2.9, deprecated (a no-op) since
                warnings.simplefilter("ignore", FutureWarning)
                getattr(symm_mem, "enable_symm_mem_for_group", lambda n: None)(name)
            if not os.environ.get("TORCH_SYMMMEM"):  # the CUDA driver's peer mappings, unless the user chose
                try:
                    symm_mem.set_backend("CUDA")
                except Exception:  # noqa: BLE001 (older torch, or a backend already in use: keep it)
                    pass
            buf = symm_mem.empty(SYMM_BYTES, dtype=torch.uint8, device=device)
            symm_mem.rendezvous(buf, name)
            _symm[key] = buf
        except Exception as e:  # noqa: BLE001 (reported: symm_state, and the benchmark's rows)
            _symm[key] = one_line(e)  # why the one-shot all-reduce is not used
    return _symm[key]


def _flag_state(name: str, device: torch.device):
    """flag_all_reduce's state for this group and device, made at the first call (a collective, as above), or the
    reason it cannot be."""
    key = (name, device.index, "flags")
    if key not in _symm:
        try:
            from . import flag_all_reduce
            if torch.cuda.is_current_stream_capturing():
                raise RuntimeError("first used inside a CUDA graph capture, where nothing can be allocated")
            _symm_buffer(name, device)  # the group enabled for symmetric memory, the backend chosen
            _symm[key] = flag_all_reduce.make_state(_groups[name], name, device)
        except Exception as e:  # noqa: BLE001 (reported: symm_state, and the benchmark's rows)
            _symm[key] = one_line(e)  # why the one-shot all-reduce is not used
    return _symm[key]


def symm_state() -> dict:
    """(group name, device index[, "flags"]) -> "ok" or why that one-shot all-reduce is not used there."""
    return {k: v if isinstance(v, str) else "ok" for k, v in _symm.items()}


def symm_group(group) -> str:
    """The name by which symm_all_reduce knows process group `group` (an op takes strings, not groups)."""
    _groups[group.group_name] = group
    return group.group_name


@torch.library.custom_op("minqwen3::all_reduce", mutates_args=())
def symm_all_reduce(x: torch.Tensor, group_name: str) -> torch.Tensor:
    """The sum of x over the ranks of group `group_name`, out of place: one-shot through the group's symmetric
    buffer where it can be (a CUDA tensor in bf16 or float32, up to SYMM_BYTES), else the group's own all-reduce.
    A custom op: torch.compile(fullgraph) keeps it as one call (its shape: symm_all_reduce's fake below), a CUDA
    graph captures the kernel it launches."""
    x = x.contiguous()
    n = x.numel() * x.element_size()
    buf = _symm_buffer(group_name, x.device) if x.is_cuda else "not CUDA"
    if isinstance(buf, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float32) and 0 < n <= buf.numel() \
            and n % 16 == 0:  # the kernel's vector loads want 16-byte sizes (hidden sizes are)
        mine = buf[:n].view(x.dtype).view(x.shape)
        if hasattr(torch.ops.symm_mem, "one_shot_all_reduce_copy"):  # the copy in, inside the same kernel
            return torch.ops.symm_mem.one_shot_all_reduce_copy(mine, x, "sum", group_name)
        mine.copy_(x)
        return torch.ops.symm_mem.one_shot_all_reduce(mine, "sum", group_name)
    out = x.clone()
    dist.all_reduce(out, group=_groups[group_name])
    return out


@symm_all_reduce.register_fake
def _(x: torch.Tensor, group_name: str) -> torch.Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real one returns


@torch.library.custom_op("minqwen3::all_reduce_flags", mutates_args=())
def flag_all_reduce(x: torch.Tensor, group_name: str, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    """symm_all_reduce with one barrier instead of two (flag_all_reduce.py: a double buffer and counting flags)
    where it can be (a CUDA tensor in bf16 or float32 of up to 65,536 values, up to 8 ranks, Triton), else
    symm_all_reduce itself. With residual (x's shape and dtype): residual + the sum, the add inside the kernel
    where it runs (rounded as the two steps round)."""
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or residual.device != x.device):
        raise ValueError(f"all_reduce_flags: residual {tuple(residual.shape)} {residual.dtype} on {residual.device} "
                         f"must be as x, {tuple(x.shape)} {x.dtype} on {x.device}")
    x = x.contiguous()
    if x.is_cuda:
        from . import flag_all_reduce as fa
        state = _flag_state(group_name, x.device)
        if not isinstance(state, str) and fa.fits(x, state):
            return fa.all_reduce(x, state, None if residual is None else residual.contiguous())
    out = symm_all_reduce(x, group_name)
    return out if residual is None else residual + out


@flag_all_reduce.register_fake
def _(x: torch.Tensor, group_name: str, residual: Optional[torch.Tensor] = None) -> torch.Tensor:
    return x.new_empty(x.shape)


# the flags all-reduce adds the decoder layer's residual in its kernel: Qwen3-32B on two GPUs 11.03 -> 10.40 ms a
# token, 128 add kernels a step fewer (session 10); MINQWEN3_FUSED=0: a step of its own, as before (bench_parallel's
# :nofused)
add_in_kernel = os.environ.get("MINQWEN3_FUSED", "1") != "0"


# ---------------------------------------------------------------- the collectives the plan adds
def _all_reduce(t: torch.Tensor, group, symm: str | None = None, way: str = "symm",
                residual: torch.Tensor | None = None) -> torch.Tensor:
    """The sum over the group (residual + it, given one): on a CUDA tensor with symm (the group's name) one of the
    one-shot ops above (way: "symm" or "flags", which adds the residual in its kernel, unless add_in_kernel is
    off); else the group's own all-reduce (NCCL, or gloo on CPUs)."""
    if symm is not None and t.is_cuda and way == "flags":
        if add_in_kernel:
            return torch.ops.minqwen3.all_reduce_flags(t, symm, residual)
        s = torch.ops.minqwen3.all_reduce_flags(t, symm)  # the add a step of its own (the benchmarks' peer)
    elif symm is not None and t.is_cuda:
        s = torch.ops.minqwen3.all_reduce(t, symm)
    elif torch.compiler.is_compiling():  # the functional form, which torch.compile traces into its graph
        from torch.distributed import _functional_collectives as funcol
        s = funcol.all_reduce(t, "sum", group)
    else:
        dist.all_reduce(t, group=group)  # eager: in place on a fresh output (a CUDA graph captures it as it is)
        s = t
    return s if residual is None else residual + s


def _all_gather_last(t: torch.Tensor, group) -> torch.Tensor:
    """(..., V/N) on each rank -> (..., V), the ranks' slices in rank order. They stack along dimension 0, so the
    vocabulary goes there and back."""
    x = t.movedim(-1, 0).contiguous()
    if torch.compiler.is_compiling():
        from torch.distributed import _functional_collectives as funcol
        gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor  # the newer name, or older
        return gather(x, 0, group).movedim(0, -1)
    out = x.new_empty((x.shape[0] * dist.get_world_size(group), *x.shape[1:]))
    (getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor)(out, x, group=group)  # newer name
    return out.movedim(0, -1)


def _remap_experts(first: int, n_local: int):
    """Pre-hook of an expert-parallel Experts module: global expert ids -> this rank's rows; choices that are
    another rank's experts get weight 0 (and point at a local row, which then adds nothing)."""
    def hook(module, args):
        x, idx, w = args
        local = idx - first
        mine = (local >= 0) & (local < n_local)
        return x, local.clamp(0, n_local - 1), w * mine.to(w.dtype)
    return hook


def shard(model: Qwen3, plan: Plan) -> Qwen3:
    """Apply the plan to model in place: every parameter becomes this rank's slice (a meta model stays on meta,
    a real one keeps only its slice), head counts follow, the collectives are added (each layer's reduce, the LM
    head's all-gather as a hook). Returns the model."""
    c = model.config
    if plan.world == 1:
        return model
    if c.attention_bias:
        raise ValueError("attention_bias = true: the bias of o_proj would be added once per rank; "
                         "tensor parallelism supports Qwen3's bias-free attention only")
    group = plan.group or dist.group.WORLD
    if vocab_split(c, plan) and c.tie_word_embeddings:  # the head gets its own slice of the shared table
        model.lm_head.weight = nn.Parameter(model.model.embed_tokens.weight, requires_grad=False)
    for name, p in list(model.named_parameters()):
        sl = slices(name, tuple(p.shape), c, plan)
        if all(s == slice(None) for s in sl):
            continue
        mod_name, _, attr = name.rpartition(".")
        part = p.detach()[sl].clone() if not p.is_meta else torch.empty(_shape(p.shape, sl), dtype=p.dtype,
                                                                         device="meta")
        model.get_submodule(mod_name)._parameters[attr] = nn.Parameter(part, requires_grad=False)
    _, hq, _, hk = heads(c, plan)
    # no process group (a meta model sharded to plan memory, never run): nothing to name
    symm = symm_group(group) if plan.all_reduce != "nccl" and group is not None else None
    way = plan.all_reduce
    for layer in model.model.layers:
        layer.self_attn.n_heads, layer.self_attn.n_kv = hq, hk
        # attention's and the MLP's outputs are partial sums: the layer sums them and adds the residual through this
        layer.reduce = lambda out, residual: _all_reduce(out, group, symm, way, residual)
        if layer.is_moe:
            if plan.experts == "ep":
                rows = _split(c.num_experts, plan, "num_experts")
                layer.mlp.experts.register_forward_pre_hook(_remap_experts(rows.start, rows.stop - rows.start))
        else:
            # products split by input feed the all-reduce: matvec.py's kernel takes them from one row (matvec.linear;
            # measured on dense Qwen3-32B, so dense layers only)
            layer.self_attn.o_proj.split_input = layer.mlp.down_proj.split_input = True
    if vocab_split(c, plan):
        model.lm_head.register_forward_hook(lambda m, a, out: _all_gather_last(out, group))
    model.plan = plan
    return model


# ---------------------------------------------------------------- building and loading
def random_model(config: Qwen3Config, plan: Plan, device="cpu", dtype: torch.dtype = torch.bfloat16,
                 seed: int = 0) -> Qwen3:
    """Random weights in config's shapes, only this rank's slices kept, made on the device (benchmarks: the full
    model never exists anywhere). Every parameter is drawn whole from one generator and then sliced, so any plan,
    one process included, holds slices of the same weights (the draws differ from model.random_model's)."""
    with torch.device("meta"):
        model = Qwen3(config)
    full = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    shard(model, plan)
    g = torch.Generator(device).manual_seed(seed)
    for name, p in list(model.named_parameters()):
        if name.endswith("norm.weight"):
            t = torch.ones(p.shape, device=device, dtype=dtype)
        elif name == "lm_head.weight" and config.tie_word_embeddings:  # split from the (replicated) embedding
            t = model.model.embed_tokens.weight[slices(name, full[name], config, plan)].clone()
        else:  # drawn whole, in the same order on every rank, then cut: one full tensor at a time in memory
            t = torch.empty(full[name], device=device, dtype=dtype).normal_(0, config.initializer_range, generator=g)
            t = t[slices(name, full[name], config, plan)].clone()
        mod_name, _, attr = name.rpartition(".")
        model.get_submodule(mod_name)._parameters[attr] = nn.Parameter(t, requires_grad=False)
    if config.tie_word_embeddings and not vocab_split(config, plan):
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device).eval()


def from_pretrained(path: str | os.PathLike, plan: Plan, device=None, dtype: torch.dtype | None = None) -> Qwen3:
    """Load this rank's slices of a checkpoint folder: each tensor's slice is read from the file (safetensors'
    get_slice), so a rank holds about 1/N of the weights (plus the replicated norms, router and embedding)."""
    from safetensors import safe_open

    from .checkpoint import CheckpointError, DTYPES, _finite, check_config, check_tensors, checkpoint_files, \
        read_tables
    path = Path(path)
    checkpoint_files(path)
    config = Qwen3Config.from_pretrained(path)
    tables = read_tables(path)
    check_config(config, tables)
    with torch.device("meta"):
        model = Qwen3(config)
    # names, shapes, dtypes checked as the one-process load checks them; key -> (parameter, expert row, shape)
    targets = check_tensors(model, path, tables, strict=True, dtype=dtype)
    full = {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}
    where = {k: f for f, (header, _) in tables.items() for k in header}
    shard(model, plan)
    params = dict(model.named_parameters())  # a tied head split by vocabulary is now a parameter of its own
    reads = [(key, name, row) for key, (name, row, _) in targets.items()]
    if config.tie_word_embeddings and "lm_head.weight" in params:  # the embedding's key as stored (the head's, alone)
        reads.append((next(k for k, (n, _, _) in targets.items() if n == "model.embed_tokens.weight"),
                      "lm_head.weight", None))
    device = torch.device(device or "cpu")
    handles, new, bad = {}, {}, []
    for key, name, row in reads:
        sl = slices(name, full[name], config, plan)
        if row is not None:  # one expert's row of a stacked tensor: read only if it is in this rank's rows
            rows = range(full[name][0])[sl[0]]
            if row not in rows:
                continue
            sl = sl[1:]
        if name not in new:
            new[name] = torch.empty(params[name].shape, device=device,
                                    dtype=dtype or DTYPES[tables[where[key]][0][key]["dtype"]])
        f = where[key]
        if f not in handles:
            handles[f] = safe_open(f, framework="pt")
        t = handles[f].get_slice(key)[sl]  # reads only this rank's rows or columns
        if not _finite(t):
            bad.append(key)
        (new[name] if row is None else new[name][rows.index(row)]).copy_(t)
    for name, t in new.items():
        mod_name, _, attr = name.rpartition(".")
        model.get_submodule(mod_name)._parameters[attr] = nn.Parameter(t, requires_grad=False)
    if bad:
        raise CheckpointError(f"checkpoint {path} has NaN or Inf values in {bad[:10]}")
    if config.tie_word_embeddings and not vocab_split(config, plan):
        model.lm_head.weight = model.model.embed_tokens.weight
    return model.to(device).eval()


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the parameters this process holds (a tied table once)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


# ---------------------------------------------------------------- processes
def collective_timeout() -> float:
    """Seconds a collective waits for the other processes before it fails: MINQWEN3_TIMEOUT_S, default 600 (a
    first call may compile for minutes on one rank while another waits at its first all-reduce)."""
    text = os.environ.get("MINQWEN3_TIMEOUT_S", "600")
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"MINQWEN3_TIMEOUT_S={text!r}: give the seconds a process waits for the others, a number > 0")
    return value


def init(device: str = "auto", experts: str = "tp", timeout_s: float | None = None,
         all_reduce: str = "flags") -> tuple[Plan, str]:
    """Join the process group torchrun set up (env RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one
    GPU per process, or gloo on CPUs. Ranks other than 0 print nothing (stdout and stderr go to /dev/null).
    Returns the plan and this rank's device. timeout_s: how long a collective waits for the others (default: the
    collective_timeout(): MINQWEN3_TIMEOUT_S or 600)."""
    for k, v in NO_MULTICAST.items():
        os.environ.setdefault(k, v)
    rank, world, local = (int(os.environ.get(k, d)) for k, d in (("RANK", 0), ("WORLD_SIZE", 1), ("LOCAL_RANK", 0)))
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if local >= torch.cuda.device_count():
            raise ValueError(f"local rank {local} has no GPU: this machine has {torch.cuda.device_count()}")
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    else:
        device = "cpu"
    if not dist.is_initialized():
        dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=timeout_s or collective_timeout()),
                                **({"device_id": torch.device(device)} if cuda else {}))
    if rank:  # one voice: the others' output would repeat rank 0's (their errors still reach sys.__stderr__)
        sys.stdout = sys.stderr = open(os.devnull, "w")
    return Plan(rank, world, experts, all_reduce=all_reduce), device


def shared_seed(seed: int | None) -> int | None:
    """A sampling seed every rank agrees on: rank 0's, or a fresh random one from rank 0 when none is given (ranks
    drawing their own numbers would pick different tokens and then feed the model different inputs)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return seed
    box = [seed if seed is not None else int.from_bytes(os.urandom(7), "little")]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def _child(fn, rank: int, world: int, store: str, queue, args) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    if sys.platform == "linux":
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # stay on loopback: no network interface guessing
    torch.set_num_threads(1)  # N processes on a few cores
    try:
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=120))
        # tensors travel as numpy arrays, by value (torch would share them through file descriptors that die with
        # this process)
        out = tree_map(lambda t: t.detach().numpy() if isinstance(t, torch.Tensor) else t, fn(Plan(rank, world), *args))
        queue.put((rank, "ok", out))
    except BaseException as e:  # noqa: BLE001 (reported to the parent, which raises it)
        queue.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def spawn(fn, world: int, *args, timeout_s: float = 300) -> list:
    """Run fn(plan, *args) in `world` fresh CPU processes joined by gloo; return each rank's result, in rank order.
    fn must be importable (a module-level function). No ports to pick: the ranks meet through a file. A rank that
    fails or a run past timeout_s raises RuntimeError with the failing rank's traceback; every process is ended."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_child, args=(fn, r, world, os.path.join(tmp, "store"), q, args), daemon=True)
                 for r in range(world)]
        for p in procs:
            p.start()
        results, deadline = {}, time.monotonic() + timeout_s
        try:
            while len(results) < world:
                try:
                    rank, status, value = q.get(timeout=1.0)
                except queue_mod.Empty:
                    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r not in results]
                    if dead:
                        raise RuntimeError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode}") from None
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"{world} ranks did not finish in {timeout_s:.0f} s "
                                           f"(finished: {sorted(results)})") from None
                    continue
                if status == "error":  # a rank that died (killed, os._exit) leaves the others failing at the next
                    for p in procs:     # collective: name it, not the first survivor to report
                        p.join(timeout=0.5 if p.exitcode is None else 0)
                    dead = [r for r, p in enumerate(procs) if p.exitcode not in (None, 0) and r != rank]
                    if dead:
                        raise RuntimeError(f"rank {dead[0]} died with exit code {procs[dead[0]].exitcode} (rank "
                                           f"{rank} then failed: {value.splitlines()[0]})")
                    raise RuntimeError(f"rank {rank} failed: {value}")
                results[rank] = value
        finally:
            for p in procs:
                p.join(timeout=10 if len(results) == world else 0)
                if p.is_alive():
                    p.kill()
                    p.join()
    return [tree_map(lambda a: torch.from_numpy(a) if isinstance(a, np.ndarray) else a, results[r])
            for r in range(world)]


def sharded_forward(plan: Plan, path: str, prompts: list[list[int]], new: int, experts: str = "tp",
                    pad_id: int = 0, dtype: torch.dtype = torch.float32) -> dict:
    """What one rank computes for a left-padded batch (tests and notebook 10 compare it with one process): the
    checkpoint in `path` loaded sharded (in dtype), the batch's logits (B, T, V), `new` greedy tokens per row, and
    the weight bytes this rank holds."""
    from dataclasses import replace

    from .generation import as_batch, generate
    model = from_pretrained(path, replace(plan, experts=experts), dtype=dtype)
    ids, pad = as_batch(prompts, pad_id)
    with torch.no_grad():
        logits = model(ids, pad=pad)
    tokens = generate(model, prompts, new, stop_ids=(), pad_id=pad_id)
    return dict(logits=logits, tokens=tokens, weight_bytes=weight_bytes(model))
