"""Peak memory of one distillation loss forward + backward: the plain form (the student's logits for every token at
once) against minqwen3.distill.divergence_chunked (chunk rows at a time, recomputed in the backward pass).

    python scripts/distill_memory.py                  # CPU: peak resident memory, each case in a fresh process
    python scripts/distill_memory.py --device cuda    # GPU: torch.cuda.max_memory_allocated

Shapes are the demo models' (hidden 128, Qwen3's 151,936-way vocabulary); the teacher is given as stored top-k
targets (off-policy) or as its hidden states and head (on-policy).
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from minqwen3.distill import TopK, divergence, divergence_chunked  # noqa: E402


def rss_bytes() -> int:
    return int(open("/proc/self/statm").read().split()[1]) * resource.getpagesize()


def case(form: str, teacher: str, n: int, C: int, V: int, chunk: int, device: str) -> dict:
    """One measurement (in this process): the extra peak memory of the loss's forward + backward, in bytes."""
    g = torch.Generator(device).manual_seed(0)
    h = torch.randn(n, C, device=device, generator=g, requires_grad=True)
    W = (torch.randn(V, C, device=device, generator=g) * 0.05).requires_grad_(True)
    th, tW = torch.randn(n, C, device=device, generator=g), torch.randn(V, C, device=device, generator=g) * 0.05
    lp = torch.log_softmax(th[:64] @ tW.T, -1).topk(20, -1)  # 64 rows of real targets, repeated
    target = TopK(lp.indices.repeat(n // 64, 1), lp.values.repeat(n // 64, 1))
    t = target if teacher == "top-20" else (th, tW)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = rss_bytes()
    t0 = time.perf_counter()
    if form == "plain":
        logits = h @ W.T  # (N, V)
        d = divergence(logits, target if teacher == "top-20" else th @ tW.T)
    else:
        d = divergence_chunked(h, W, t, chunk=chunk)
    d.backward()
    if device == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    return {"form": form, "teacher": teacher, "tokens": n, "peak_MB": round(peak / 2 ** 20, 1),
            "seconds": round(time.perf_counter() - t0, 3), "loss": round(float(d), 6)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", type=int, default=1024)
    ap.add_argument("--chunk", type=int, default=128)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--vocab", type=int, default=151936)
    ap.add_argument("--one", help=argparse.SUPPRESS)  # internal: run one case as JSON form,teacher
    a = ap.parse_args(argv)
    if a.one:
        form, teacher = a.one.split(",")
        print(json.dumps(case(form, teacher, a.tokens, a.hidden, a.vocab, a.chunk, a.device)))
        return 0
    rows = []
    for teacher in ("top-20", "hidden"):
        for form in ("plain", "chunked"):
            if a.device == "cuda":
                rows.append(case(form, teacher, a.tokens, a.hidden, a.vocab, a.chunk, a.device))
            else:  # a fresh process each: the peak resident size only grows within a process
                out = subprocess.run([sys.executable, __file__, "--one", f"{form},{teacher}", *sys.argv[1:]],
                                     capture_output=True, text=True, check=True).stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
    V = a.vocab
    print(f"device {a.device}, {a.tokens} tokens, vocabulary {V}, hidden {a.hidden}, chunk {a.chunk}; "
          f"one (tokens, V) fp32 tensor is {a.tokens * V * 4 / 2 ** 20:.0f} MB")
    print(f"| teacher | form | peak MB | vs plain | seconds | loss |\n|---|---|---|---|---|---|")
    for r in rows:
        plain = next(x for x in rows if x["teacher"] == r["teacher"] and x["form"] == "plain")
        print(f"| {r['teacher']} | {r['form']} | {r['peak_MB']:.0f} | {r['peak_MB'] / plain['peak_MB']:.3f} | "
              f"{r['seconds']:.2f} | {r['loss']:.6f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
