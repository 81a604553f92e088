"""Where a short prompt's first token goes: generate(prompt, 1) with the prompt compiled and replayed as a CUDA graph
(the Decoder's default on a GPU), compiled and launched from Python (MINQWEN3_PREFILL=direct), and eager
(MINQWEN3_PREFILL=eager), one Decoder each, in one process (an experiment log, not a test).

    PYTHONPATH=. python scripts/first_token.py --model Qwen3-0.6B Qwen3-8B Qwen3-30B-A3B --batch 1 8

Per row: the call's time (median of 15, the GPU drained before and after), of it the host's time to return (the
rest is the wait for the GPU), and the GPU kernels of one call with their summed time: where the host time exceeds
the GPU's, launching is the bottleneck. Random weights in the official shapes, bf16, a 128-token prompt.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from minqwen3 import Qwen3Config, generation
from minqwen3.generation import Decoder, generate
from minqwen3.model import random_model

MODES = {"graphs": True, "direct": True, "eager": False}  # mode -> Decoder(compile_prefill=)


def timings(fn, n: int = 15) -> tuple[float, float]:
    """Median ms of fn() from the start to its return on the host, and to the GPU's end."""
    host, total = [], []
    for _ in range(n):
        torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        host.append(time.perf_counter() - t)
        torch.cuda.synchronize()
        total.append(time.perf_counter() - t)
    return 1e3 * statistics.median(host), 1e3 * statistics.median(total)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", nargs="+", default=["Qwen3-0.6B"])
    ap.add_argument("--batch", type=int, nargs="+", default=[1])
    ap.add_argument("--prompt", type=int, default=128)
    args = ap.parse_args()
    print(f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, bf16, a {args.prompt}-token prompt, "
          f"generate(prompt, 1)")
    print("| model | batch | prompt | ms | host ms | GPU kernels | GPU busy ms | first call s |")
    print("|---|---:|---|---:|---:|---:|---:|---:|")
    for name in args.model:
        model = random_model(Qwen3Config.from_name(name), "cuda", torch.bfloat16)
        for B in args.batch:
            ids = torch.randint(0, model.config.vocab_size, (B, args.prompt), device="cuda")
            for mode, compiled in MODES.items():
                generation.PROMPT_GRAPHS = mode != "direct"  # read when the Decoder allocates, at its first call
                dec = Decoder(model, max_len=max(512, args.prompt + 1), compile_prefill=compiled)
                call = lambda: generate(model, ids, 1, stop_ids=(), decoder=dec)  # noqa: E731
                t = time.perf_counter()
                call()
                torch.cuda.synchronize()
                first = time.perf_counter() - t
                for _ in range(3):
                    call()
                host, total = timings(call)
                with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
                    call()
                    torch.cuda.synchronize()
                kernels = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
                busy = sum(e.device_time for e in kernels) / 1e3
                print(f"| {name} | {B} | {mode} | {total:.2f} | {host:.2f} | {len(kernels)} | {busy:.2f} | "
                      f"{first:.1f} |", flush=True)
                del dec
        del model
        torch.cuda.empty_cache()
    generation.PROMPT_GRAPHS = True


if __name__ == "__main__":
    with torch.no_grad():
        main()
