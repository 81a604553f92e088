"""Time matvec.py's kernel over a small set of settings for the decode step's o_proj and down_proj shapes, beside
torch's product (cuBLAS), on one GPU; write the fastest settings per shape as matvec.TABLE's JSON.

    PYTHONPATH=. python scripts/matvec_bench.py [--rows 1 8] [--shapes 5120x4096 ...] [--out table.json]

Each timing is a CUDA graph of back-to-back calls (as the decode step replays them), the weight cycling through
copies that together exceed L2 (else a 34 MB matrix would be read from cache), best of 5 replays. Every candidate's
result is checked against torch's product in float32 first. Shapes are (N, K) of weight (N, K): by default
Qwen3-32B's o_proj and down_proj on one GPU and on each of two, and Qwen3-8B's. Prints one line per shape: the
fastest settings, the rule's (matvec.rule, for shapes without a table entry) and cuBLAS, in µs and TB/s.

--norm times the kernel with the RMSNorm on the way in (matvec.normed_linear) instead, by default over the stacked
q|k|v and gate|up of Qwen3-0.6B, Qwen3-8B, Qwen3-32B on each of two GPUs and on one (NORM_SHAPES), checked against
rmsnorm-then-product; its peer "cuBLAS" is then the norm (torch's, eager) and torch's product.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from minqwen3 import matvec  # noqa: E402
from minqwen3.bench import one_line  # noqa: E402
from minqwen3.flash_decode import _sms  # noqa: E402
from minqwen3.rmsnorm import RMSNorm  # noqa: E402

SHAPES = ["5120x8192", "5120x25600", "5120x4096", "5120x12800", "4096x4096", "4096x12288"]
NORM_SHAPES = ["4096x1024", "6144x1024", "6144x4096", "24576x4096", "5120x5120", "25600x5120", "10240x5120",
               "51200x5120"]
# (BLOCK_N, BLOCK_K, warps, stages): elementwise (one or two rows), and through tl.dot (any rows)
ELEMENTWISE = [(8, 512, 4, 1), (16, 256, 4, 1), (16, 256, 4, 3), (32, 256, 8, 1), (4, 1024, 4, 1),
               (8, 512, 4, 2), (4, 1024, 4, 2), (8, 1024, 8, 1), (2, 2048, 4, 1)]  # the last four from session 10
DOT = [(16, 256, 4, 3), (32, 128, 4, 4), (64, 128, 4, 3), (32, 256, 4, 3),
       (64, 128, 8, 3), (64, 256, 4, 3), (128, 128, 4, 3)]  # the last three from session 10
PROGRAMS_PER_SM = [1, 2, 4, 8]


def timed(fn, calls: int, replays: int = 5) -> float:
    """µs per call: fn(i) for i < calls captured as one CUDA graph, best of `replays` replays."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for i in range(2):
            fn(i)
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fn(i)
    best = float("inf")
    for _ in range(replays):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        g.replay()
        b.record()
        b.synchronize()
        best = min(best, a.elapsed_time(b) * 1e3 / calls)
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--shapes", nargs="+", help="NxK of the weight (default: SHAPES, with --norm NORM_SHAPES)")
    ap.add_argument("--norm", action="store_true", help="the kernel with the RMSNorm on the way in")
    ap.add_argument("--out", help="write the fastest settings per (rows, N, K) here (the JSON that "
                    "MINQWEN3_MATVEC_TABLE reads)")
    args = ap.parse_args()
    args.shapes = args.shapes or (NORM_SHAPES if args.norm else SHAPES)
    torch.set_grad_enabled(False)
    dev = torch.device("cuda")
    sms = _sms(dev)
    what = ", RMSNorm on the way in" if args.norm else ""
    print(f"# {torch.cuda.get_device_name(dev)} ({sms} SMs), torch {torch.__version__}, bf16{what}", flush=True)
    print("| rows | N x K | MB | fastest (BLOCK_N, BLOCK_K, splits, warps, stages, dot) | µs | TB/s | rule's | µs "
          "| cuBLAS µs | TB/s | fastest vs cuBLAS |\n|---:|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
          flush=True)
    table, g = {}, torch.Generator(dev).manual_seed(0)
    for M in args.rows:
        for shape in args.shapes:
            N, K = (int(v) for v in shape.split("x"))
            mb = N * K * 2 / 1e6
            copies = max(2, -(-256 // max(1, int(mb))))  # > 5x L2 together
            ws = [torch.randn(N, K, device=dev, dtype=torch.bfloat16, generator=g) * 0.02 for _ in range(copies)]
            x = torch.randn(M, K, device=dev, dtype=torch.bfloat16, generator=g)
            norm = RMSNorm(K).to(dev, torch.bfloat16) if args.norm else None
            if norm is not None:
                norm.weight.data.uniform_(0.5, 1.5, generator=g)
            g_w, eps = (None, 0.0) if norm is None else (norm.weight.data, norm.eps)
            want = F.linear((x if norm is None else norm(x)).float(), ws[0].float())
            calls = max(20, copies)
            cands = []
            for dot, tiles in ((False, ELEMENTWISE if M <= 2 else []), (True, DOT)):
                for bn, bk, warps, stages in tiles:
                    n_blocks = -(-N // bn)
                    splits = sorted({matvec.splits_for(n_blocks, K, bk, p * sms) for p in PROGRAMS_PER_SM})
                    cands += [matvec.Config(bn, bk, s, warps, stages, dot) for s in splits]
            rule = matvec.rule(M, N, K, sms)
            if rule not in cands:
                cands.append(rule)
            times = {}
            for c in cands:
                try:
                    got = matvec.launch(x, ws[0], c, g_w, eps).float()
                    err = ((got - want).abs().max() / want.abs().max()).item()
                    if err > 1e-2:
                        print(f"  {M} {shape} {tuple(c)}: wrong, max error {err:.2e} of the largest",
                              flush=True)
                        continue
                    times[c] = timed(lambda i, c=c: matvec.launch(x, ws[i % copies], c, g_w, eps), calls)
                except Exception as e:  # noqa: BLE001 (a setting that does not compile: report, go on)
                    print(f"  {M} {shape} {tuple(c)}: failed: {one_line(e, 160)}",
                          flush=True)
            blas = timed(lambda i: F.linear(x if norm is None else norm(x), ws[i % copies]), calls)
            best = min(times, key=times.get)
            tb = lambda us: N * K * 2 / us / 1e6  # noqa: E731
            table[f"{M},{N},{K}"] = list(best)
            r = times.get(rule, float("nan"))
            print(f"| {M} | {N} x {K} | {mb:.1f} | {tuple(best)} | {times[best]:.2f} | {tb(times[best]):.2f} | "
                  f"{tuple(rule)} | {r:.2f} | {blas:.2f} | {tb(blas):.2f} | {blas / times[best]:.2f}x |", flush=True)
            ranked = sorted(times.items(), key=lambda kv: kv[1])
            print("  next: " + "; ".join(f"{tuple(c)} {t:.2f}" for c, t in ranked[1:6]), flush=True)
            del ws
            if args.out:  # after every shape: a run cut short keeps what it timed
                Path(args.out).write_text(json.dumps(table, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
