"""Batch-1 decode speed with tensor and expert parallelism, against one GPU, in one run (random weights).

    torchrun --nproc-per-node 2 scripts/bench_parallel.py [--runs 32B:1 32B:2 30B-A3B:2:tp 30B-A3B:2:ep] [--out F]

Each run is MODEL:RANKS[:EXPERTS][:compile][:combo][:nograph][:nomatvec][:nonormed][:nofused][:nopdl]
[:flags|:symm|:nccl]
(MODEL: an official name or a config.json; flags, symm or nccl: the all-reduce, --allreduce's unless named:
parallel.Plan.all_reduce; nomatvec: o_proj and down_proj as torch's products, which Inductor compiles, instead of
matvec.py's kernel, which takes batch 1 only with MINQWEN3_MATVEC=all; nonormed: the RMSNorms before q|k|v and
gate|up as steps of their own, not on the way into matvec.py's kernel: MINQWEN3_NORMED=0; nofused: the residual
adds after the all-reduces as steps of their own, not inside the all-reduce's kernel: MINQWEN3_FUSED=0; nopdl: no
kernel launched with programmatic dependent launch, pdl.py: MINQWEN3_PDL=0). A one-rank run uses rank 0 alone
(the others wait), so every ratio is against a peer measured in the same process and on the same machine (a 2-GPU
run against the last 1-GPU run of its model before it). Weights are random in the official
shapes, drawn whole and sliced (parallel.random_model), so every layout holds the same weights and the greedy tokens
can be compared: in bf16 the split changes the rounding, so the count of agreeing tokens is reported, not asserted.
Decode runs the eager step captured as a CUDA graph (compile adds torch.compile). The limit is the bandwidth one:
weight bytes one token reads (active parameters, embedding row aside) / (ranks x measured copy bandwidth).
Each run's row is printed (and appended to --out as a JSON line) as soon as it is measured; with --profile N,
also each rank's GPU kernels per decode step (minqwen3/timeline.py: count, busy and idle time, per kind and per
kernel name; where the two-GPU step's time goes, beside one GPU's; --profile-dir keeps every name and one step).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from minqwen3 import matvec, parallel, pdl, timeline  # noqa: E402
from minqwen3.bench import _time, copy_bandwidth, decode_bytes, one_line, release  # noqa: E402
from minqwen3.config import Qwen3Config  # noqa: E402
from minqwen3.generation import Decoder, generate  # noqa: E402
from minqwen3.moe import Experts  # noqa: E402
from minqwen3.tokenizer import ENDOFTEXT  # noqa: E402


def decode_steps(dec: Decoder, prompt: torch.Tensor, new: int, steps: int):
    """generate(model, prompt, new, stop_ids=(), decoder=dec)'s decode steps alone, as a function: the prefill and
    the first token happen here (with generate()'s own settings, so its captured graphs are the ones replayed),
    the returned function runs the first `steps` of its new - 1 steps, nothing else (no host sync: generate() has
    none without stop ids or on_token)."""
    dec.start(prompt, None, new, (None, 0.0, 0, 1.0, 0.0, 0.0), (), ENDOFTEXT, None, None)
    return lambda: [dec.step(i) for i in range(steps)]


def run(name: str, cfg, plan, device, args, compiled: bool, graphs: bool, bws: list, ref, combo=None) -> dict:
    """One layout: build, warm up (capture, compile), time; this rank's row."""
    cuda = device.startswith("cuda")
    t0 = time.perf_counter()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    model = parallel.random_model(cfg, plan, device, torch.bfloat16)
    wbytes = parallel.weight_bytes(model)
    g = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, cfg.vocab_size, (1, args.prompt), generator=g).to(device)
    dec = Decoder(model, max_len=args.prompt + args.new, compile=compiled, cuda_graphs=graphs, combo_kernels=combo)
    gen = lambda k: generate(model, prompt, k, stop_ids=(), decoder=dec)  # noqa: E731
    tokens = gen(args.new)[0, args.prompt:].cpu()  # warm-up: capture (and compile)
    setup = time.perf_counter() - t0
    dev = torch.device(device)  # each timing drains the device before and after; the best of the repeats counts
    t_new = min(_time(lambda: gen(args.new), dev) for _ in range(args.repeats))
    t_one = min(_time(lambda: gen(1), dev) for _ in range(args.repeats))
    ms = 1e3 * (t_new - t_one) / (args.new - 1)
    # this rank's GPU kernels per decode step: the steps alone, replayed as generate() replays them
    # (one step more is recorded and dropped: it absorbs the ranks' different starts, timeline.after_first_step)
    steps = min(args.profile_steps, args.new - 2)
    prof = (timeline.summarize(timeline.after_first_step(
        timeline.record(decode_steps(dec, prompt, args.new, steps + 1)), steps), steps)
        if args.profile and cuda else None)
    n = plan.world
    limit_ms = 1e3 * decode_bytes(cfg, torch.bfloat16) / (n * min(bws[:n]))
    agree = "-" if ref[1] is None or n == 1 else f"{int((tokens == ref[1]).cumprod(0).sum())}/{args.new}"
    state = parallel.symm_state()  # whether the one-shot all-reduce ran, or why not (then the group's ran)
    how = "-" if n == 1 else plan.all_reduce if plan.all_reduce == "nccl" or state and all(
        v == "ok" for v in state.values()) else f"nccl ({plan.all_reduce}: {'; '.join(state.values()) or 'not called'})"
    return dict(model=name, gpus=n, experts=plan.experts if cfg.is_moe else "-", all_reduce=how, compiled=compiled,
                graphs=graphs, tok_s=args.new / t_new, ms_token=ms, limit_tok_s=1e3 / limit_ms,
                of_limit=limit_ms / ms, vs_one=None if ref[0] is None or n == 1 else ref[0] / ms,
                weights_gib=wbytes / 2**30, peak_gib=torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0,
                setup_s=setup, agree=agree, tokens=tokens, profile=prof)


def main() -> None:
    ap = argparse.ArgumentParser()
    # default: the compiled step, one GPU and two (the 2026-11-30 run in docs/benchmarks.md named its --runs)
    ap.add_argument("--runs", nargs="+", default=["Qwen3-32B:1:compile", "Qwen3-32B:2:compile",
                                                  "Qwen3-30B-A3B:1:compile", "Qwen3-30B-A3B:2:tp:compile",
                                                  "Qwen3-30B-A3B:2:ep:compile"])
    ap.add_argument("--prompt", type=int, default=128)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--budget-s", type=float, default=1e9, help="start no run after this many seconds")
    ap.add_argument("--out", help="append one JSON line per run")
    ap.add_argument("--allreduce", choices=parallel.ALL_REDUCES, default="flags",
                    help="the all-reduce of runs that name none (flags, symm: one-shot through symmetric memory, "
                         "with one barrier or torch's two)")
    ap.add_argument("--profile", type=int, default=0, metavar="N",
                    help="also profile each run's decode steps on every rank (minqwen3/timeline.py) and print rank "
                         "0's per-step totals, kinds of kernel and N longest kernels, and the other ranks' kinds")
    ap.add_argument("--profile-steps", type=int, default=32, help="decode steps profiled (at most --new - 2)")
    ap.add_argument("--profile-dir", help="write each rank's whole profile summary here, one JSON file per run and "
                                          "rank (every kernel name, one middle step's kernels in order)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu for a dry run of the script (gloo, no graphs)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    plan, device = parallel.init(args.device)
    cuda = device.startswith("cuda")
    ctl = dist.new_group(backend="gloo")  # host-side agreement (waiting, deciding) without touching the GPUs
    world, rank = plan.world, plan.rank
    bw = copy_bandwidth(torch.device(device))
    bws = [None] * world
    dist.all_gather_object(bws, bw, group=ctl)
    print(f"# {torch.cuda.get_device_name(device) if cuda else 'CPU'} x{world}, torch {torch.__version__}, NCCL "
          f"{'.'.join(map(str, torch.cuda.nccl.version())) if cuda else '-'}; copy bandwidth per GPU "
          f"{', '.join(f'{b / 1e12:.2f}' for b in bws)} TB/s (read + write); bf16, batch 1, {args.new} new tokens "
          f"after {args.prompt}", flush=True)
    print("| model | GPUs | experts | all-reduce | decode | tok/s | ms/token | limit tok/s | of limit | vs 1 GPU "
          "| weights/GPU GiB | peak/GPU GiB | setup s | same tokens as 1 GPU |\n|---|---:|---|---|---|---:|---:|---:"
          "|---:|---:|---:|---:|---:|---:|", flush=True)
    # one-GPU runs: (model, compiled) -> (ms/token,), a ratio only between like modes; model -> greedy tokens
    single = {}
    # the switches as the environment set them (MINQWEN3_MATVEC, _NORMED, _FUSED, _PDL); a run's :no... turns one off
    switches = matvec.enabled, matvec.normed, parallel.add_in_kernel, pdl.enabled
    for i, spec in enumerate(args.runs):
        name, n, *rest = spec.split(":")
        n = int(n)
        experts = next((r for r in rest if r in parallel.MODES), "tp")
        how = next((r for r in rest if r in parallel.ALL_REDUCES), args.allreduce)
        compiled, graphs = "compile" in rest, cuda and "nograph" not in rest
        combo = True if "combo" in rest else None  # Inductor's combo kernels (Decoder's default: off at 32B)
        # eager MoE takes the grouped-GEMM path even for one token: the gather path copies the chosen experts out
        # first, which only torch.compile fuses away (an EP rank then reads each of its chosen experts once)
        Experts.gather_max = 16 if compiled else 0
        matvec.enabled, matvec.normed, parallel.add_in_kernel, pdl.enabled = (
            on and off not in rest for on, off in zip(switches, ("nomatvec", "nonormed", "nofused", "nopdl")))
        go = [time.perf_counter() - t_start < args.budget_s]
        dist.broadcast_object_list(go, src=0, group=ctl)
        if not go[0]:
            print(f"| {name} | {n} | skipped: past --budget-s |", flush=True)
            continue
        cfg = Qwen3Config.from_pretrained(name) if name.endswith(".json") else Qwen3Config.from_name(name)
        row = None
        if rank < n:
            assert n in (1, world), "a run uses one GPU or all of them"
            try:
                row = run(name, cfg, parallel.Plan(rank, n, experts, all_reduce=how), device, args, compiled, graphs,
                          bws,
                          (single.get((name, compiled), (None,))[0], single.get(name)), combo)
            except Exception as e:  # on every rank alike (same code, same shapes): report it, go on to the next
                row = dict(error=one_line(e, 160))
            release()
            if args.profile_dir and row.get("profile"):
                Path(args.profile_dir).mkdir(parents=True, exist_ok=True)
                tag = "_".join([f"run{i}", Path(name).stem, f"{n}gpu", *rest, f"rank{rank}"])
                with open(Path(args.profile_dir) / f"profile_{tag}.json", "w") as f:
                    json.dump(dict(spec=spec, rank=rank, ms_token=row["ms_token"], **row["profile"]), f)
            if n == 1 and "tokens" in row:
                single[name, compiled], single[name] = (row["ms_token"],), row["tokens"]
            row.pop("tokens", None)
        rows = [None] * world
        dist.all_gather_object(rows, row, group=ctl)  # also: the others wait here while rank 0 runs alone
        r = rows[0]
        if rank == 0 and "error" in r:
            print(f"| {name} | {n} | {experts} | failed: {r['error']} |", flush=True)
        elif rank == 0:
            peak = max(x["peak_gib"] for x in rows if x)
            vs = "-" if r["vs_one"] is None else f"{r['vs_one']:.2f}x"
            mode = ("compiled" if compiled else "eager") + (" + CUDA graph" if graphs else "")
            print(f"| {r['model']} | {n} | {r['experts']} | {r['all_reduce']} | {mode} "
                  f"| {r['tok_s']:.1f} | {r['ms_token']:.2f} | {r['limit_tok_s']:.0f} | {r['of_limit']:.0%} | "
                  f"{vs} | {r['weights_gib']:.1f} | {peak:.1f} | "
                  f"{r['setup_s']:.0f} | {r['agree']} |", flush=True)
            if r.get("profile"):  # printed after the table's row; the rows that follow continue the table
                print(f"\n{spec}, rank 0, per decode step ({r['ms_token']:.3f} ms/token unprofiled):", flush=True)
                print("\n".join(timeline.lines(r["profile"], args.profile)), flush=True)
                for k, x in enumerate(rows[1:n], 1):
                    print(f"{spec}, rank {k}:", "\n".join(timeline.lines(x["profile"], 0)), sep="\n", flush=True)
                print(flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps({**r, "peak_gib_max": peak, "bw": bws}) + "\n")
    dist.barrier(group=ctl)
    dist.destroy_process_group()


if __name__ == "__main__":
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    main()
