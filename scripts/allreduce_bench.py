"""One decode step's all-reduces alone: N small all-reduces (Qwen3-32B: 128 a token, 5,120 bf16 values = 10 KiB
each) captured in one CUDA graph, per all-reduce microseconds, for each way of summing.

    torchrun --standalone --nproc-per-node 2 scripts/allreduce_bench.py [--numel 5120] [--ops 128] [--out F]

Ways (--ways):
  nccl        dist.all_reduce in place: NCCL, as the eager step calls it (its env knobs, e.g. NCCL_PROTO=LL, apply
              to the whole launch: run once per setting)
  symm        minqwen3::all_reduce: torch's one-shot kernel through symmetric memory, the copy in inside the
              kernel (parallel.symm_all_reduce; the plan's default before session 7)
  symm-inbuf  torch.ops.symm_mem.one_shot_all_reduce on data already in the symmetric buffer (no copy in)
  flags       minqwen3::all_reduce_flags, the plan's default on GPUs: one-shot with one barrier instead of two
              (minqwen3/flag_all_reduce.py)
  flags-res   the same with a residual added in the kernel (the decoder layer's add after its all-reduce),
              checked against NCCL's sum rounded, then added: the same bits expected
With --matmul each all-reduce follows a matrix-vector product of one TP=2 o_proj's size ((5120, 4096) bf16, four
such weights in turn, 160 MiB, so that L2 holds none of them) and the table adds the products alone: the exposed
cost of an all-reduce is (both - products alone) / N. NVLink multicast stays off (parallel.init sets it so).
Every way's sum is first checked against NCCL's, eager. --device cpu runs the nccl way on gloo without graphs (a dry
run of the script).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from minqwen3 import parallel  # noqa: E402
from minqwen3.bench import _time, one_line  # noqa: E402


def ways(group, residual: torch.Tensor) -> dict:
    """name -> (prepare(x) -> input, reduce(input) -> sum): the input as each way wants it (symm-inbuf: a view of
    the symmetric buffer), then the sum (flags-res: residual + the sum)."""
    name = parallel.symm_group(group)

    def nccl(x):
        dist.all_reduce(x, group=group)  # in place: the sum is x
        return x

    def inbuf(x):
        buf = parallel._symm_buffer(name, x.device)
        if not isinstance(buf, torch.Tensor):
            raise RuntimeError(buf)
        mine = buf[-x.numel() * x.element_size():].view(x.dtype).view(x.shape)  # the buffer's end: not symm's part
        mine.copy_(x)
        return mine

    return {"nccl": (torch.clone, nccl),
            "symm": (lambda x: x, lambda x: torch.ops.minqwen3.all_reduce(x, name)),
            "flags": (lambda x: x, lambda x: torch.ops.minqwen3.all_reduce_flags(x, name)),
            "flags-res": (lambda x: x, lambda x: torch.ops.minqwen3.all_reduce_flags(x, name, residual)),
            "symm-inbuf": (inbuf, lambda x: torch.ops.symm_mem.one_shot_all_reduce(x, "sum", name))}


def timed(fn, cuda: bool, replays: int) -> float:
    """Seconds per call of fn: captured as one CUDA graph and replayed (eager on CPUs)."""
    if cuda:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture (NCCL's first call sets up its channels)
            fn()
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
        graph.replay()
        torch.cuda.synchronize()
        dist.barrier()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) / 1e3 / replays
    fn()
    return _time(lambda: [fn() for _ in range(replays)], torch.device("cpu")) / replays


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--numel", type=int, default=5120, help="values per all-reduce (Qwen3-32B's hidden size)")
    ap.add_argument("--ops", type=int, default=128, help="all-reduces in one graph (Qwen3-32B: 2 x 64 layers)")
    ap.add_argument("--replays", type=int, default=50)
    ap.add_argument("--ways", nargs="+", default=["nccl", "symm", "symm-inbuf", "flags"])
    ap.add_argument("--matmul", action="store_true", help="a product of one o_proj's size before each all-reduce")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", help="append one JSON line per way")
    args = ap.parse_args()
    for name, v in (("numel", args.numel), ("ops", args.ops), ("replays", args.replays)):
        if v < 1:
            raise SystemExit(f"--{name} = {v}: must be at least 1")
    plan, device = parallel.init(args.device)
    cuda = device.startswith("cuda")
    group, dtype = dist.group.WORLD, torch.bfloat16 if cuda else torch.float32
    g = torch.Generator().manual_seed(plan.rank)
    x = torch.randn(1, 1, args.numel, generator=g).to(device, dtype)
    want = x.float().clone()
    dist.all_reduce(want, group=group)  # the oracle: NCCL's (or gloo's) sum, in float32
    env = " ".join(f"{k}={v}" for k, v in sorted(os.environ.items())
                   if k.startswith("NCCL_") and k != "NCCL_NVLS_ENABLE")  # the knobs this launch was given
    print(f"# {torch.cuda.get_device_name(device) if cuda else 'CPU'} x{plan.world}, torch {torch.__version__}, NCCL "
          f"{'.'.join(map(str, torch.cuda.nccl.version())) if cuda else '-'}; {args.ops} all-reduces of {args.numel} "
          f"{str(dtype).removeprefix('torch.')} ({args.numel * x.element_size() / 1024:g} KiB) in one "
          f"{'CUDA graph' if cuda else 'loop'}, best of 3 x {args.replays} replays; env: {env or '-'}", flush=True)
    if args.matmul:
        k = args.numel * 4 // 5  # Qwen3-32B: 64 heads x 128 = 8192 inputs to o_proj, 4096 on each of 2 ranks
        ws = [torch.randn(args.numel, k, device=device, dtype=dtype) * 0.02 for _ in range(4)]
        h = torch.randn(1, 1, k, device=device, dtype=dtype)
    extra = " with matmul µs | matmul alone µs | exposed µs |" if args.matmul else ""
    print(f"| way | µs per all-reduce | max error vs NCCL (fp32) | same on every rank |{extra}\n|---|---:|---:|---|"
          + ("---:|---:|---:|" if args.matmul else ""), flush=True)
    # the residual stream is the same on every rank (as in a split model): drawn alike, not from the rank's seed
    residual = torch.randn(x.shape, generator=torch.Generator().manual_seed(1234)).to(device, dtype)
    table = ways(group, residual)
    for way in args.ways:
        if way not in table:
            raise SystemExit(f"--ways: {way!r} is none of {', '.join(table)}")
        if not cuda and way != "nccl":
            continue
        prepare, reduce = table[way]
        row = dict(way=way, env=env)
        try:
            got = reduce(prepare(x)).float()
            # flags-res: the unfused steps' roundings, the sum to the dtype, then the add
            oracle = (residual.float() + want.to(dtype).float()).to(dtype).float() if way == "flags-res" else want
            row["err"] = (got - oracle).abs().max().item()
            every = [torch.empty_like(got) for _ in range(plan.world)]
            dist.all_gather(every, got, group=group)  # the ranks must agree to the bit (they sample from it)
            row["same"] = all(torch.equal(e, every[0]) for e in every)
            inp = prepare(x)
            row["us"] = 1e6 / args.ops * min(timed(lambda: [reduce(inp) for _ in range(args.ops)], cuda, args.replays)
                                             for _ in range(3))
            if args.matmul:
                def both():
                    for i in range(args.ops):
                        reduce(prepare(h @ ws[i % 4].T) if way == "symm-inbuf" else h @ ws[i % 4].T)
                def alone():
                    for i in range(args.ops):
                        h @ ws[i % 4].T
                row["both_us"] = 1e6 / args.ops * min(timed(both, cuda, args.replays) for _ in range(3))
                row["mm_us"] = 1e6 / args.ops * min(timed(alone, cuda, args.replays) for _ in range(3))
            line = f"| {way} | {row['us']:.2f} | {row['err']:.1e} | {'yes' if row['same'] else 'NO'} |"
            if args.matmul:
                line += f" {row['both_us']:.2f} | {row['mm_us']:.2f} | {row['both_us'] - row['mm_us']:.2f} |"
        except Exception as e:  # noqa: BLE001 (the same on every rank: report it, go on)
            row["error"] = one_line(e)
            line = f"| {way} | failed: {row['error']} |"
        print(line, flush=True)
        if args.out and plan.rank == 0:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")
    backend = "-"
    if cuda:
        import torch.distributed._symmetric_memory as symm_mem
        backend = getattr(symm_mem, "get_backend", lambda d: "?")(device)
    print(f"# symmetric memory: {parallel.symm_state() or '-'}, backend {backend}", flush=True)
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
