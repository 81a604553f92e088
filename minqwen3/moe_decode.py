"""The experts of a decode step as two GPU kernels (Triton): every chosen expert's weights read once, for all tokens.

At decode a step has a few tokens (N <= 16: the rows of a batch) and N*k (token, expert) pairs. moe.Experts' other
paths gather the chosen weights pair by pair (batch 1: a batched matrix-vector product per projection; an expert
two tokens chose is read twice) or sort the pairs into a grouped GEMM (made for many tokens per expert). Here:

- Kernel 1, program (block of intermediate rows, t): t-th distinct expert any token chose (programs past the
  number of distinct experts exit at once). It reads its gate and up rows once, multiplies them with all N tokens
  (one small tl.dot, the tokens padded to 16 columns) and writes h[t, :, n] = w[n, e] * silu(gate x_n) * (up x_n):
  the routing weight folded in, 0 for a token that did not choose e. Every program finds the distinct experts
  itself, from the (N, k) choices (no sort, no list made by another kernel, nothing read back by the host).
- Kernel 2, program (block of output rows, split of the distinct experts): loops over its share of the experts
  and sums down_e h[t] for all N tokens: the sum over experts and slots folded into one accumulator. The splits
  (a few, to give every SM work at batch 1, where only 8 experts are live) write partial sums that the caller
  adds in a fixed order: deterministic, no atomics.

So a step reads each chosen expert once, whatever the batch. Used by moe.Experts on CUDA without gradients (the
kernels have no backward) for up to MAX_TOKENS tokens with more than Experts.gather_max (token, expert) pairs: on
an H200, 30B-A3B's batch-8 step took 10.75 ms against 13.01 ms with the grouped GEMM (docs/benchmarks.md, run 7),
and 9.26 ms against 10.61 once each kernel also timed 32- and 64-row tilings (session 7): the tilings (rows a
program, columns a step, pipeline stages) are timed at the first call of a shape. Session 8 added 128 columns in 6
stages (and 64 rows to kernel 2) and twice kernel 2's splits, from scripts/moe_tilings.py's sweep. At batch 1 (8
pairs) Inductor's fused gathered gate|up products were faster than kernel 1 (run 7), so one token takes those, and
kernel 2 alone (`moe_down`, the count of experts known) for the down projections and their sum: 3.40 against
3.63 ms a step. Training and prefills keep moe.py's paths. `reference` and `reference_down` (at the end) are the
same arithmetic in plain torch, for reading and for CPUs.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from . import pdl
from .flash_decode import _sms  # the GPU's SMs (8 under Triton's interpreter, which runs kernels on CPU tensors)

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs: moe.Experts keeps its torch paths
    triton = None

MAX_TOKENS = 16  # tokens per call: the columns of the kernels' small dots
BLOCK_ROWS = 16  # the fewest weight rows per program (tl.dot's smallest tile side); _configs times more
SPLIT_PROGRAMS = 9  # kernel 2's programs per SM, counted in blocks of BLOCK_ROWS rows (see _splits)
# MINQWEN3_MOE_DECODE=0 switches the kernels off (the benchmark's peer: moe.Experts' gathered and grouped paths)
enabled = os.environ.get("MINQWEN3_MOE_DECODE", "1") != "0"
# one token (batch 1): moe.Experts' gathered gate|up products (fused by Inductor), then kernel 2 (moe_down) for the
# down projections and the sum over the k experts; False: the gathered down products too (before session 7)
down_at_batch_1 = True


def available(x: torch.Tensor, idx: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether the kernels can take these experts: Triton, an Ampere or newer GPU, at most MAX_TOKENS tokens, the
    weights in x's dtype, and no gradient wanted (no backward). get_device_properties, unlike
    get_device_capability, is a constant to torch.compile."""
    return (enabled and triton is not None and x.is_cuda and idx.shape[0] <= MAX_TOKENS
            and x.dtype == weight.dtype and x.dtype in (torch.bfloat16, torch.float16, torch.float32)
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
            and torch.cuda.get_device_properties(x.device).major >= 8)


if triton is not None:
    def _configs(rows=(16, 32, 64), tiles=((128, 4), (128, 6), (256, 3))) -> list:
        """Tilings timed at the first call of a shape (the Decoder's warm-up, before it captures a graph): row blocks
        of `rows` weight rows per program, `tiles` = (columns per step, pipeline stages). Row blocks that would
        leave SMs idle are dropped before timing (_prune_*)."""
        if os.environ.get("TRITON_INTERPRET") == "1":  # on a CPU: one configuration, nothing to time
            return [triton.Config({"BLOCK_I": BLOCK_ROWS, "BLOCK_K": 128}, num_warps=4, num_stages=1)]
        return [triton.Config({"BLOCK_I": r, "BLOCK_K": bk}, num_warps=4, num_stages=s) for r in rows
                for bk, s in tiles]

    def _keep_busy(configs: list, programs, device: torch.device) -> list:
        """The configs whose grid, programs(BLOCK_I), still has two programs per SM (always the smallest row
        block): batch 1 reaches only 8 experts, where 64-row blocks would leave most SMs idle."""
        keep = [c for c in configs if programs(c.kwargs["BLOCK_I"]) >= 2 * _sms(device)]
        return keep or [min(configs, key=lambda c: c.kwargs["BLOCK_I"])]

    def _prune_gate_up(configs, nargs, **kw):
        return _keep_busy(configs, lambda r: nargs["NK"] * triton.cdiv(kw["I"], r), nargs["X"].device)

    def _prune_down(configs, nargs, **kw):
        return _keep_busy(configs, lambda r: nargs["Part"].shape[0] * triton.cdiv(kw["H"], r), nargs["Part"].device)

    @triton.jit
    def _distinct(Idx, NK, JP: tl.constexpr):
        """The (token, expert) pairs' experts (JP,), which pairs are an expert's first (JP,), each first pair's
        rank among them (JP,), and how many distinct experts there are."""
        j = tl.arange(0, JP)
        flat = tl.load(Idx + j, mask=j < NK, other=-1)
        seen = tl.zeros((JP,), tl.int32)  # earlier pairs with the same expert, 16 pairs at a time
        for c in range(0, NK, 16):
            jc = c + tl.arange(0, 16)
            fc = tl.load(Idx + jc, mask=jc < NK, other=-2)
            seen += tl.sum(((fc[None, :] == flat[:, None]) & (jc[None, :] < j[:, None])).to(tl.int32), 1)
        first = (seen == 0) & (j < NK)
        rank = tl.cumsum(first.to(tl.int32), 0) - 1
        return flat, first, rank, tl.sum(first.to(tl.int32), 0)

    @triton.jit
    def _gate_up_kernel(X, Idx, W, Gate, Up, Hid, Experts, Count, N, NK, sx,
                        K: tl.constexpr, H: tl.constexpr, I: tl.constexpr, NP: tl.constexpr, JP: tl.constexpr,
                        BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr, PDL: tl.constexpr):
        pdl.wait(PDL)
        # block of intermediate rows, distinct expert: the programs of experts past the count come last, so
        # the empty ones run after the work (a block's programs start in the order of their ids)
        ib, t = tl.program_id(0), tl.program_id(1)
        flat, first, rank, count = _distinct(Idx, NK, JP)
        if t < count:
            e = tl.sum(tl.where(first & (rank == t), flat, 0), 0)
            j, n = tl.arange(0, JP), tl.arange(0, NP)
            # token n's routing weight for e: its slot that chose e (0 if none; two slots would add up)
            wj = tl.load(W + j, mask=j < NK, other=0.0).to(tl.float32)
            gate_w = tl.sum(tl.where((flat == e)[None, :] & ((j // K)[None, :] == n[:, None]), wj[None, :], 0.0), 1)
            rows = ib * BLOCK_I + tl.arange(0, BLOCK_I)
            at = e * I * H + rows[:, None] * H  # (BLOCK_I, 1) offsets of the rows in (E, I, H)
            g = tl.zeros((BLOCK_I, NP), tl.float32)
            u = tl.zeros((BLOCK_I, NP), tl.float32)
            for k0 in range(0, H, BLOCK_K):
                c = k0 + tl.arange(0, BLOCK_K)
                xt = tl.load(X + n[None, :] * sx + c[:, None], mask=(n[None, :] < N) & (c[:, None] < H),
                             other=0.0)  # (BLOCK_K, NP): the tokens as columns
                live = (rows[:, None] < I) & (c[None, :] < H)
                wg = tl.load(Gate + at + c[None, :], mask=live, other=0.0)  # (BLOCK_I, BLOCK_K)
                wu = tl.load(Up + at + c[None, :], mask=live, other=0.0)
                if IEEE:  # float32 in, float32 products: what the eager matmuls give with TF32 off
                    g += tl.dot(wg, xt, input_precision="ieee")
                    u += tl.dot(wu, xt, input_precision="ieee")
                else:
                    g += tl.dot(wg, xt)
                    u += tl.dot(wu, xt)
            h = g * tl.sigmoid(g) * u * gate_w[None, :]  # (BLOCK_I, NP)
            tl.store(Hid + (t * N + n[None, :]) * I + rows[:, None], h.to(Hid.dtype.element_ty),
                     mask=(rows[:, None] < I) & (n[None, :] < N))
            if ib == 0:  # the list of distinct experts, for kernel 2
                tl.store(Experts + t, e)
                if t == 0:
                    tl.store(Count, count)

    @triton.jit
    def _down_kernel(Hid, Experts, Count, Down, Part, N, S, H: tl.constexpr, I: tl.constexpr, NP: tl.constexpr,
                     COUNT: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_K: tl.constexpr, IEEE: tl.constexpr,
                     PDL: tl.constexpr):
        pdl.wait(PDL)
        rb, s = tl.program_id(0), tl.program_id(1)  # block of output rows (BLOCK_I of them), split of the experts
        if COUNT > 0:  # the caller knows how many experts (down_sum: every pair its own)
            count = COUNT
        else:  # kernel 1 found them
            count = tl.load(Count)
        per = tl.cdiv(count, S)  # S = the splits = tl.num_programs(1), an argument to key the autotuner
        t0 = s * per
        t1 = tl.minimum(t0 + per, count)
        rows = rb * BLOCK_I + tl.arange(0, BLOCK_I)
        n = tl.arange(0, NP)
        steps = tl.cdiv(I, BLOCK_K)
        acc = tl.zeros((BLOCK_I, NP), tl.float32)
        for q in range(t0 * steps, t1 * steps):  # (expert, block of I) in one loop, so that it is pipelined
            t = q // steps
            c = (q % steps) * BLOCK_K + tl.arange(0, BLOCK_K)
            e = tl.load(Experts + t)
            wd = tl.load(Down + e * H * I + rows[:, None] * I + c[None, :],
                         mask=(rows[:, None] < H) & (c[None, :] < I), other=0.0)  # (BLOCK_I, BLOCK_K)
            h = tl.load(Hid + (t * N + n[None, :]) * I + c[:, None], mask=(c[:, None] < I) & (n[None, :] < N),
                        other=0.0)  # (BLOCK_K, NP): only the N real tokens' columns are read
            if IEEE:
                acc += tl.dot(wd, h, input_precision="ieee")
            else:
                acc += tl.dot(wd, h)
        tl.store(Part + (s * N + n[None, :]) * H + rows[:, None], acc, mask=(n[None, :] < N) & (rows[:, None] < H))

    _gate_up = triton.autotune(_configs(), key=["N", "K", "H", "I"],
                               prune_configs_by={"early_config_prune": _prune_gate_up})(_gate_up_kernel)
    _down = triton.autotune(_configs(), key=["N", "S", "H", "I", "COUNT"],
                            prune_configs_by={"early_config_prune": _prune_down})(_down_kernel)


def _splits(device: torch.device, pairs: int, hidden: int) -> int:
    """Splits of the experts in kernel 2: enough programs for ~SPLIT_PROGRAMS per SM at 16 rows a program, never
    more splits than pairs, and none left without an expert when every pair is one (8 pairs in 5 splits would be
    2, 2, 2, 2, 0: 4 splits). At 30B-A3B (hidden 2048, 132 SMs): batch 8, 10 splits (5 before session 8: kernel 2
    49.4 against 42.3 µs a layer in scripts/moe_tilings.py, session 7); batch 1, 8 splits of one expert each."""
    s = max(1, min(pairs, triton.cdiv(SPLIT_PROGRAMS * _sms(device), triton.cdiv(hidden, BLOCK_ROWS))))
    return triton.cdiv(pairs, triton.cdiv(pairs, s))


def _down_sums(hid: torch.Tensor, experts: torch.Tensor, count: torch.Tensor, down_proj: torch.Tensor, pairs: int,
               known: int) -> torch.Tensor:
    """Kernel 2 on hid (T, N, I): partial outputs (S, N, H), float32, S = _splits(pairs) splits of the experts
    (the grid's second side, and the S its autotuner keys on). known: the count of experts (T), or 0 for the
    count kernel 1 wrote into count."""
    N, (H, I) = hid.shape[1], down_proj.shape[1:]
    S = _splits(hid.device, pairs, H)
    part = torch.empty(S, N, H, device=hid.device, dtype=torch.float32)
    _down[lambda meta: (triton.cdiv(H, meta["BLOCK_I"]), S)](
        hid, experts, count, down_proj, part, N, S, H=H, I=I, NP=max(16, triton.next_power_of_2(N)), COUNT=known,
        IEEE=hid.dtype == torch.float32, **pdl.launch(hid.device))
    return part


@torch.library.custom_op("minqwen3::moe_decode", mutates_args=())
def moe_decode(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
               down_proj: torch.Tensor) -> torch.Tensor:
    """Tokens x (N, H), their chosen experts idx (N, k) and weights w (N, k), experts stacked as in moe.Experts
    (gate and up (E, I, H), down (E, H, I)) -> partial outputs (S, N, H), float32: their sum over S is the
    experts' weighted sum for each token."""
    N, k = idx.shape
    E, I, H = gate_proj.shape
    x, idx, w = x.contiguous(), idx.contiguous(), w.contiguous()
    gate_proj, up_proj, down_proj = gate_proj.contiguous(), up_proj.contiguous(), down_proj.contiguous()
    NK = N * k
    NP = max(16, triton.next_power_of_2(N))
    hid = torch.empty(NK, N, I, device=x.device, dtype=x.dtype)  # h of the t-th distinct expert, for each token
    experts = torch.empty(NK, device=x.device, dtype=idx.dtype)
    count = torch.empty(1, device=x.device, dtype=torch.int32)
    _gate_up[lambda meta: (triton.cdiv(I, meta["BLOCK_I"]), NK)](
        x, idx, w, gate_proj, up_proj, hid, experts, count, N, NK, x.stride(0),
        K=k, H=H, I=I, NP=NP, JP=max(16, triton.next_power_of_2(NK)), IEEE=x.dtype == torch.float32,
        **pdl.launch(x.device))
    return _down_sums(hid, experts, count, down_proj, NK, 0)


@moe_decode.register_fake
def _(x, idx, w, gate_proj, up_proj, down_proj):
    N, k = idx.shape
    H = gate_proj.shape[2]
    return x.new_empty(_splits(x.device, N * k, H), N, H, dtype=torch.float32)


def experts_decode(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_proj: torch.Tensor,
                   up_proj: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """moe_decode's partial outputs added up, in x's dtype: (N, H). Under torch.compile the sum fuses into what
    follows (the residual add)."""
    return moe_decode(x, idx, w, gate_proj, up_proj, down_proj).sum(0).to(x.dtype)


@torch.library.custom_op("minqwen3::moe_down", mutates_args=())
def moe_down(h: torch.Tensor, experts: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """Kernel 2 alone, for products made elsewhere: h (T, N, I) with the routing weights folded in (0 for a token
    that did not choose experts[t]), experts (T,) (repeats allowed: each entry is read), down (E, H, I) ->
    partial outputs (S, N, H), float32, whose sum over S is sum_t down_{experts[t]} h[t]."""
    h, experts, down_proj = h.contiguous(), experts.contiguous(), down_proj.contiguous()
    return _down_sums(h, experts, experts, down_proj, h.shape[0], h.shape[0])  # experts as count: not read


@moe_down.register_fake
def _(h, experts, down_proj):
    T, N, _ = h.shape
    H = down_proj.shape[1]
    return h.new_empty(_splits(h.device, T, H), N, H, dtype=torch.float32)


def down_sum(h: torch.Tensor, experts: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """moe_down's partial outputs added up, in h's dtype: (N, H)."""
    return moe_down(h, experts, down_proj).sum(0).to(h.dtype)


# The kernels' arithmetic in plain torch, for reading and for CPUs: each distinct expert once, for every token.

def reference(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, gate_proj: torch.Tensor, up_proj: torch.Tensor,
              down_proj: torch.Tensor) -> torch.Tensor:
    """x (N, H), idx and w (N, k), experts (E, I, H) and (E, H, I) -> (N, H) in x's dtype, computed in float32."""
    N, E = x.shape[0], gate_proj.shape[0]
    gates = torch.zeros(N, E, device=x.device).scatter_add_(1, idx, w.float())  # (N, E): 0 where not chosen
    chosen = idx.reshape(-1).unique()  # the distinct experts (the kernels find them without the host)
    xf = x.float()
    g = torch.einsum("nh,eih->eni", xf, gate_proj[chosen].float())  # (e, N, I)
    u = torch.einsum("nh,eih->eni", xf, up_proj[chosen].float())
    h = F.silu(g) * u * gates[:, chosen].T[..., None]  # routing weight folded in
    return torch.einsum("eni,ehi->nh", h, down_proj[chosen].float()).to(x.dtype)  # sum over experts folded in


def reference_down(h: torch.Tensor, experts: torch.Tensor, down_proj: torch.Tensor) -> torch.Tensor:
    """down_sum's arithmetic: h (T, N, I), experts (T,), down (E, H, I) -> (N, H) in h's dtype, in float32."""
    return torch.einsum("thi,tni->nh", down_proj[experts].float(), h.float()).to(h.dtype)
