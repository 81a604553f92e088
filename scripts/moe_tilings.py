"""Time moe_decode.py's two kernels on their own, at an MoE model's shapes, over more tilings than the autotuners
time (an experiment log, not a test).

    PYTHONPATH=. python scripts/moe_tilings.py --model Qwen3-30B-A3B --batch 8 1

Random bf16 experts for --layers layers (more bytes than the L2 holds, so each launch reads its weights from
memory, as a decode step does), each layer with its own routing (every token k distinct experts, at random). A
tiling is timed as the mean of --reps rounds over all layers. Kernel 1 (gate|up): rows a program (BLOCK_I),
columns a step (BLOCK_K), pipeline stages, warps. Kernel 2 (down + sum): the same, and the splits of the experts
(moe_decode._splits' count, then twice and four times it). TB/s: the distinct experts' bytes over the time.
--budget-s stops the sweep (it prints as it goes). Batch 1 gives kernel 2 the count, as moe.Experts' batch-1 path
does.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import time

import torch

from minqwen3 import Qwen3Config, moe_decode
from minqwen3.bench import copy_bandwidth


def routing(N: int, k: int, E: int, g: torch.Generator) -> torch.Tensor:
    return torch.stack([torch.randperm(E, generator=g)[:k] for _ in range(N)])  # (N, k)


def timed(launch, layers: int, reps: int) -> float:
    """Mean µs of one layer's launch(l), over `reps` rounds of all layers (after one round to compile)."""
    for layer in range(layers):
        launch(layer)
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        for layer in range(layers):
            launch(layer)
    end.record()
    torch.cuda.synchronize()
    return 1e3 * start.elapsed_time(end) / (reps * layers)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="Qwen3-30B-A3B")
    p.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=60.0)
    args = p.parse_args()
    import triton  # after the arguments: --help works without it
    for name, value in (("--layers", args.layers), ("--reps", args.reps)):
        if value < 1:
            raise SystemExit(f"{name} must be at least 1, got {value}")
    dev = torch.device("cuda")
    cfg = Qwen3Config.from_name(args.model)
    E, H, I, k = cfg.num_experts, cfg.hidden_size, cfg.moe_intermediate_size, cfg.num_experts_per_tok
    if not E:
        raise SystemExit(f"--model {args.model} has no experts")
    bw = copy_bandwidth(dev)
    print(f"# {args.model}: E={E} H={H} I={I} k={k}; {torch.cuda.get_device_name(dev)}, copy {bw / 1e12:.2f} TB/s, "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)
    g = torch.Generator().manual_seed(0)
    gate = [0.02 * torch.randn(E, I, H, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
    up = [0.02 * torch.randn(E, I, H, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
    down = [0.02 * torch.randn(E, H, I, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
    t0 = time.perf_counter()
    rows = []
    k1 = [(bi, bk, st, 4) for bi in (16, 32, 64) for bk, st in ((128, 4), (128, 6), (256, 3), (256, 4), (512, 2))]
    k1 += [(64, 256, 3, 8), (128, 128, 4, 8), (128, 256, 3, 8)]
    k2 = [(bi, bk, st, 4) for bi in (16, 32, 64) for bk, st in ((128, 4), (128, 6), (256, 3), (256, 4))]
    for N in args.batch:
        NK, NP = N * k, max(16, triton.next_power_of_2(N))
        JP = max(16, triton.next_power_of_2(NK))
        idx = [routing(N, k, E, g).to(dev) for _ in range(args.layers)]
        x = [torch.randn(N, H, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
        w = [torch.rand(N, k, device=dev).softmax(-1).to(torch.bfloat16) for _ in range(args.layers)]
        distinct = sum(i.unique().numel() for i in idx) / args.layers
        gu_bytes, d_bytes = distinct * 2 * I * H * 2, distinct * H * I * 2
        hid = [torch.empty(NK, N, I, device=dev, dtype=torch.bfloat16) for _ in range(args.layers)]
        experts = [torch.empty(NK, device=dev, dtype=idx[0].dtype) for _ in range(args.layers)]
        count = [torch.empty(1, device=dev, dtype=torch.int32) for _ in range(args.layers)]
        print(f"\n## batch {N}: {distinct:.1f} distinct experts a layer; gate|up {gu_bytes / 1e6:.1f} MB, down "
              f"{d_bytes / 1e6:.1f} MB", flush=True)
        for bi, bk, st, wp in k1:
            if time.perf_counter() - t0 > args.budget_s:
                break

            def gate_up(layer, bi=bi, bk=bk, st=st, wp=wp):
                moe_decode._gate_up_kernel[(triton.cdiv(I, bi), NK)](
                    x[layer], idx[layer], w[layer], gate[layer], up[layer], hid[layer], experts[layer], count[layer],
                    N, NK, H, K=k, H=H, I=I, NP=NP, JP=JP, BLOCK_I=bi, BLOCK_K=bk, IEEE=False, num_warps=wp,
                    num_stages=st, PDL=False)
            try:
                us = timed(gate_up, args.layers, args.reps)
            except Exception as e:  # a tiling that does not fit (shared memory) must not stop the sweep
                print(f"  gate|up {bi}x{bk} s{st} w{wp}: {type(e).__name__}", flush=True)
                continue
            rows.append((N, "gate|up", f"{bi} rows x {bk}, {st} stages, {wp} warps", "", us, gu_bytes / us / 1e6))
            print(f"  gate|up {bi}x{bk} s{st} w{wp}: {us:.1f} us, {gu_bytes / us / 1e6:.2f} TB/s", flush=True)
        base = moe_decode._splits(dev, NK, H)
        for (bi, bk, st, wp), mult in itertools.product(k2, (1, 2, 4)):
            if time.perf_counter() - t0 > args.budget_s:
                break
            S = min(NK, base * mult)
            part = torch.empty(S, N, H, device=dev)

            def down_sum(layer, bi=bi, bk=bk, st=st, wp=wp, S=S, part=part):
                moe_decode._down_kernel[(triton.cdiv(H, bi), S)](
                    hid[layer], experts[layer], count[layer], down[layer], part, N, S, H=H, I=I, NP=NP,
                    COUNT=NK if N == 1 else 0, BLOCK_I=bi, BLOCK_K=bk, IEEE=False, num_warps=wp, num_stages=st,
                    PDL=False)
            try:
                us = timed(down_sum, args.layers, args.reps)
            except Exception as e:
                print(f"  down {bi}x{bk} s{st} w{wp} splits {S}: {type(e).__name__}", flush=True)
                continue
            rows.append((N, "down", f"{bi} rows x {bk}, {st} stages, {wp} warps", S, us, d_bytes / us / 1e6))
            print(f"  down {bi}x{bk} s{st} w{wp} splits {S}: {us:.1f} us, {d_bytes / us / 1e6:.2f} TB/s", flush=True)
    print("\n| batch | kernel | tiling | splits | us a layer | TB/s |")
    print("|---:|---|---|---:|---:|---:|")
    for N, kern, tiling, S, us, tbs in sorted(rows, key=lambda r: (r[0], r[1], r[4])):
        print(f"| {N} | {kern} | {tiling} | {S} | {us:.1f} | {tbs:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
