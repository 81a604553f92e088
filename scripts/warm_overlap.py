"""Does warmstart's thread hide torch.compile's imports behind a checkpoint's loading? Timed on any machine.

python scripts/warm_overlap.py DIR [--device cpu] [--rounds 3]: in fresh processes, one after the other and in
turns, loads the checkpoint DIR (checkpoint.from_pretrained) and imports what a compiling Decoder's first call
imports (warmstart._prepare: Dynamo, Inductor, and on a GPU the libraries' first use), three ways: the loading
first, then the imports (what a first call did before warmstart); the imports first, then the loading; both at
once, warmstart's thread beside the loading (Dynamo imported before it, as warmstart.start does). Prints each
way's best round: the loading, what follows it, and the two together (the process's start and torch's import are
not in them; what comes before the loading is in the last).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

WAYS = ("loading first", "imports first", "beside the loading")


def child(path: str, device: str, way: str) -> dict:
    import torch

    from minqwen3 import warmstart
    from minqwen3.checkpoint import from_pretrained
    dev = torch.device(device)
    t0 = time.perf_counter()
    if way == "imports first":
        warmstart._prepare(dev, torch.bfloat16)
    if way == "beside the loading":  # as chat does: warmstart.start, on any device
        warmstart._start(dev, torch.bfloat16)
    t1 = time.perf_counter()
    from_pretrained(path, device=dev)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t2 = time.perf_counter()
    warmstart.wait()
    if warmstart.STATS["warm_error"]:
        raise RuntimeError(warmstart.STATS["warm_error"])
    if way == "loading first":
        warmstart._prepare(dev, torch.bfloat16)
    t3 = time.perf_counter()
    return dict(before_s=t1 - t0, load_s=t2 - t1, after_s=t3 - t2, total_s=t3 - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("path")
    p.add_argument("--device", default="cpu")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--child", choices=WAYS, help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        print("RESULT " + json.dumps(child(a.path, a.device, a.child)), flush=True)
        return
    runs = {w: [] for w in WAYS}
    for _ in range(a.rounds):
        for w in WAYS:
            out = subprocess.run([sys.executable, __file__, a.path, "--device", a.device, "--child", w],
                                 capture_output=True, text=True, check=True).stdout
            runs[w].append(json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[7:]))
    print(f"| {a.device}, best of {a.rounds} | before the loading s | loading s | after it s | all s |\n"
          "|---|---:|---:|---:|---:|")
    for w, rs in runs.items():
        best = min(rs, key=lambda r: r["total_s"])
        cells = " | ".join(f"{best[k]:.2f}" for k in ("before_s", "load_s", "after_s", "total_s"))
        print(f"| {w} | {cells} |")


if __name__ == "__main__":
    main()
