"""A probe (session 16, issue 16; measured no): one row's matrix-vector product with the weight's tiles brought in by
TMA (Hopper's tensor-memory copies: Triton tensor descriptors, pipelined into shared memory over STAGES), against
matvec.py's kernel (its table or rule), cuBLAS and Inductor's tuned reduction (what a compiled Decoder runs at one
row); with --experts also a MoE layer's 8 chosen experts' gate|up at batch 1, against Inductor's gathered product.
GPU only (Hopper); prints a table per shape. docs/benchmarks.md, session 16, has what it measured.

    PYTHONPATH=. python scripts/tma_matvec.py [--experts] [--shapes 4096x4096 ...] [--budget SECONDS_A_SHAPE]

The weight cycles through copies that together exceed L2, and each timing is a CUDA graph of back-to-back calls
(matvec_bench.timed). Every candidate is checked against torch's product in float32 first.
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import triton  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.tools.tensor_descriptor import TensorDescriptor  # noqa: E402

from matvec_bench import timed  # noqa: E402
from minqwen3 import matvec, pdl  # noqa: E402
from minqwen3.flash_decode import _sms  # noqa: E402


@triton.jit
def _mv_tma(Wd, X, Y, Part, Count, N, K, k_split, splits, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
            STAGES: tl.constexpr, WAIT_IN_LOOP: tl.constexpr, PDL: tl.constexpr):
    # matvec.py's one-row walk (program: BLOCK_N rows x a slice of K; splits merged by the last program of a block),
    # the weight's tiles copied by TMA into STAGES buffers of shared memory ahead of their use
    nb, s = tl.program_id(0), tl.program_id(1)
    n0 = nb * BLOCK_N
    k0 = s * k_split
    k1 = tl.minimum(k0 + k_split, K)
    if not WAIT_IN_LOOP:
        pdl.wait(PDL)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k in tl.range(k0, k1, BLOCK_K, num_stages=STAGES):
        if WAIT_IN_LOOP:  # the pipeline's first copies (weights: constants) go out before the wait for x
            pdl.wait(PDL)
        c = k + tl.arange(0, BLOCK_K)
        x = tl.load(X + c, mask=c < K, other=0.0).to(tl.float32)
        w = Wd.load([n0, k])
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1)
    cols = n0 + tl.arange(0, BLOCK_N)
    live = cols < N
    if splits == 1:
        tl.store(Y + cols, y.to(Y.dtype.element_ty), mask=live)
    else:
        tl.store(Part + s * N + cols, y, mask=live)
        tl.debug_barrier()
        done = tl.atomic_add(Count + nb, 1, sem="acq_rel")
        if done == splits - 1:
            total = tl.zeros((BLOCK_N,), tl.float32)
            for t in range(splits):
                total += tl.load(Part + t * N + cols, mask=live, other=0.0, cache_modifier=".cg")
            tl.store(Y + cols, total.to(Y.dtype.element_ty), mask=live)
            tl.atomic_xchg(Count + nb, 0)


@triton.jit
def _experts_tma(Wd, X, Idx, Y, N, K, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, STAGES: tl.constexpr,
                 PDL: tl.constexpr):
    nb, j = tl.program_id(0), tl.program_id(1)  # block of rows, chosen expert slot
    n0 = nb * BLOCK_N
    e = tl.load(Idx + j).to(tl.int32)  # the routing is a constant here (a probe)
    acc = tl.zeros((BLOCK_N, BLOCK_K), tl.float32)
    for k in tl.range(0, K, BLOCK_K, num_stages=STAGES):
        w = Wd.load([e, n0, k]).reshape(BLOCK_N, BLOCK_K)
        c = k + tl.arange(0, BLOCK_K)
        x = tl.load(X + c).to(tl.float32)
        acc += w.to(tl.float32) * x[None, :]
    y = tl.sum(acc, 1)
    cols = n0 + tl.arange(0, BLOCK_N)
    tl.store(Y + j * N + cols, y.to(Y.dtype.element_ty))


_counts = {}
def mv_tma(x: torch.Tensor, w: torch.Tensor, desc: TensorDescriptor, bn: int, bk: int, splits: int, warps: int,
           stages: int, wait_in_loop: int, use_pdl: bool) -> torch.Tensor:
    """x (K,) @ w (N, K).T through _mv_tma with these settings; desc: w's descriptor of (bn, bk) tiles."""
    N, K = w.shape
    per, splits = matvec.slice_k(K, splits, bk)
    y = torch.empty(N, device=x.device, dtype=x.dtype)
    nb = -(-N // bn)
    part = torch.empty(splits, N, device=x.device, dtype=torch.float32) if splits > 1 else y
    key = nb
    if key not in _counts:
        _counts[key] = torch.zeros(nb, device=x.device, dtype=torch.int32)
    kw = {"PDL": True, "launch_pdl": True} if use_pdl else {"PDL": False}
    _mv_tma[(nb, splits)](desc, x, y, part, _counts[key], N, K, per, splits, BLOCK_N=bn, BLOCK_K=bk, STAGES=stages,
                          WAIT_IN_LOOP=wait_in_loop, num_warps=warps, num_stages=1, **kw)
    return y


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    """The largest difference, relative to the largest value wanted: every candidate must stay under 1e-2."""
    return ((got - want).abs().max() / want.abs().max()).item()


def dense(shapes: list[str], budget: float) -> None:
    """One table row per NxK shape: the settings are timed for at most `budget` seconds a shape."""
    dev = torch.device("cuda"); sms = _sms(dev)
    gen = torch.Generator(dev).manual_seed(0)
    print("| N x K | MB | matvec table/rule µs | TB/s | cuBLAS | Inductor "
          "| TMA best (bn, bk, splits, warps, stages, wait) | µs | TB/s | +PDL µs |")
    print("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|")
    for shape in shapes:
        t_end = time.time() + budget
        N, K = (int(v) for v in shape.split("x"))
        mb = N * K * 2 / 1e6
        copies = max(2, -(-256 // max(1, int(mb))))
        ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(copies)]
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16, generator=gen)
        want = F.linear(x.float(), ws[0].float())[0]
        calls = max(20, copies)
        tb = lambda us: N * K * 2 / us / 1e6
        c = matvec.config(1, N, K, dev)
        t_mv = timed(lambda i: matvec.launch(x, ws[i % copies], c), calls)
        t_blas = timed(lambda i: F.linear(x, ws[i % copies]), calls)
        comp = torch.compile(lambda a, b: F.linear(a, b), fullgraph=True,
                             options={"coordinate_descent_tuning": True}, dynamic=False)
        try:
            t_ind = timed(lambda i: comp(x, ws[i % copies]), calls)
        except Exception as e:
            t_ind = float("nan"); print("  inductor failed", str(e)[:200])
        res = {}
        for bn in (8, 16, 32, 64):
            for bk in (128, 256):
                descs = [TensorDescriptor.from_tensor(w, [bn, bk]) for w in ws]
                nblk = -(-N // bn)
                for per_sm in (1, 2, 4):
                    splits = matvec.splits_for(nblk, K, bk, per_sm * sms)
                    for warps in (4, 8):
                        for stages in (3, 4, 6):
                            if bn * bk * 2 * (stages - 1) > 160_000 or time.time() > t_end:
                                continue
                            cfg = (bn, bk, splits, warps, stages, 0)
                            if cfg in res:
                                continue
                            try:
                                got = mv_tma(x[0], ws[0], descs[0], *cfg, False).float()
                                err = rel_err(got, want)
                                if err > 1e-2:
                                    print("  wrong", cfg, err)
                                    continue
                                res[cfg] = timed(lambda i: mv_tma(x[0], ws[i % copies], descs[i % copies], *cfg,
                                                                  False), calls)
                            except Exception as e:
                                print("  failed", cfg, str(e)[:300])
        if not res:
            print(f"| {N} x {K} | no TMA setting timed within --budget {budget} s |", flush=True)
            continue
        ranked = sorted(res.items(), key=lambda kv: kv[1])
        best, tbest = ranked[0]
        bn, bk = best[0], best[1]
        descs = [TensorDescriptor.from_tensor(w, [bn, bk]) for w in ws]
        with pdl.scope(True):
            for wait_in_loop in (0, 1):  # the PDL forms checked as the others were
                got = mv_tma(x[0], ws[0], descs[0], *best[:5], wait_in_loop, True).float()
                err = rel_err(got, want)
                if err > 1e-2:
                    raise SystemExit(f"{N} x {K}: the PDL form (wait in loop {wait_in_loop}) is wrong: {err:.2e}")
            t_pdl = timed(lambda i: mv_tma(x[0], ws[i % copies], descs[i % copies], *best[:5], 0, True), calls)
            t_pdl1 = timed(lambda i: mv_tma(x[0], ws[i % copies], descs[i % copies], *best[:5], 1, True), calls)
            t_mvp = timed(lambda i: matvec.launch(x, ws[i % copies], c), calls)
        print(f"| {N} x {K} | {mb:.1f} | {t_mv:.2f} ({tuple(c)}) | {tb(t_mv):.2f} | {t_blas:.2f} | {t_ind:.2f} "
              f"| {best} | {tbest:.2f} | {tb(tbest):.2f} | {t_pdl:.2f} / in-loop {t_pdl1:.2f} "
              f"(matvec+PDL {t_mvp:.2f}) |", flush=True)
        print("  next: " + "; ".join(f"{c} {t:.2f}" for c, t in ranked[1:8]), flush=True)


def experts(budget: float) -> None:
    """30B-A3B's 8 chosen experts' gate|up at one token: TMA settings (for at most `budget` seconds) against
    Inductor's gathered product."""
    dev = torch.device("cuda")
    gen = torch.Generator(dev).manual_seed(0)
    E, N, K = 128, 1536, 2048  # 30B-A3B: gate|up of one expert, stacked
    copies = 2
    ws = [torch.randn(E, N, K, device=dev, dtype=torch.bfloat16, generator=gen) * 0.02 for _ in range(copies)]
    x = torch.randn(K, device=dev, dtype=torch.bfloat16, generator=gen)
    idxs = [torch.randperm(E, device=dev, generator=gen)[:8] for _ in range(16)]
    want = torch.einsum("k,jnk->jn", x.float(), ws[0][idxs[0]].float())
    calls = 16
    mb = 8 * N * K * 2 / 1e6
    tb = lambda us: mb / us
    comp = torch.compile(lambda a, w, i: torch.einsum("k,jnk->jn", a, w[i]), fullgraph=True,
                         options={"coordinate_descent_tuning": True}, dynamic=False)
    t_ind = timed(lambda i: comp(x, ws[i % copies], idxs[i]), calls)
    res, t_end = {}, time.time() + budget
    for bn in (8, 16, 32, 64):
        for bk in (128, 256):
            descs = [TensorDescriptor(w, [E, N, K], [N * K, K, 1], [1, bn, bk]) for w in ws]
            for warps in (4, 8):
                for stages in (3, 4, 6):
                    cfg = (bn, bk, warps, stages)
                    if time.time() > t_end:
                        continue
                    y = torch.empty(8, N, device=dev, dtype=torch.bfloat16)
                    def f(i, cfg=cfg, descs=descs, y=y):
                        _experts_tma[(N // cfg[0], 8)](descs[i % copies], x, idxs[i], y, N, K, BLOCK_N=cfg[0],
                                                       BLOCK_K=cfg[1], STAGES=cfg[3], num_warps=cfg[2],
                                                       num_stages=1, PDL=False)
                        return y
                    try:
                        got = f(0).float()
                        err = rel_err(got, want)
                        if err > 1e-2:
                            print("  wrong", cfg, err)
                            continue
                        res[cfg] = timed(f, calls)
                    except Exception as e:
                        print("  failed", cfg, str(e)[:300])
    if not res:
        print(f"experts: no TMA setting timed within --budget {budget} s; Inductor gathered {t_ind:.2f} µs")
        return
    ranked = sorted(res.items(), key=lambda kv: kv[1])
    best, t_best = ranked[0]
    print(f"experts 8 x {N} x {K} ({mb:.1f} MB): Inductor gathered {t_ind:.2f} µs ({tb(t_ind):.2f} TB/s); "
          f"TMA best {best} {t_best:.2f} µs ({tb(t_best):.2f} TB/s)")
    print("  next: " + "; ".join(f"{c} {t:.2f}" for c, t in ranked[1:8]), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["4096x4096", "6144x4096", "4096x12288", "24576x4096", "5120x2048",
                                                    "2048x4096", "151936x4096"])
    ap.add_argument("--budget", type=float, default=200)
    ap.add_argument("--experts", action="store_true")
    a = ap.parse_args()
    torch.set_grad_enabled(False)
    print("#", torch.cuda.get_device_name(), torch.__version__, triton.__version__, flush=True)
    if a.experts:
        experts(a.budget)
    dense(a.shapes, a.budget)
