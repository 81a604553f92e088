"""Greedy tokens of the trained demo models in bfloat16, split over 2 and 4 gloo processes on the CPU, against one
process: how many of 64 agree before the first difference, per prompt (the split changes bf16 rounding).

    python scripts/parallel_agreement.py
"""
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import minqwen3  # noqa: E402
from minqwen3 import parallel  # noqa: E402
from minqwen3.tokenizer import Tokenizer  # noqa: E402

QUESTIONS = ["What is 4821 + 3967?", "What is 352 * 7?", "What is 90 - 47?", "What is 1234 + 8766?"]
NEW = 64

if __name__ == "__main__":
    tok = Tokenizer.from_pretrained(ROOT / "weights" / "demo-dense")
    prompts = [tok.encode_messages([{"role": "user", "content": q}], add_generation_prompt=True) for q in QUESTIONS]
    print(f"| model | experts | processes | greedy tokens agreeing with one process (of {NEW}, per prompt) |")
    print("|---|---|---:|---|")
    for name in ("demo-dense", "demo-moe"):
        path = ROOT / "weights" / name
        model = minqwen3.from_pretrained(path, dtype=torch.bfloat16)
        want = minqwen3.generate(model, prompts, NEW, stop_ids=(), pad_id=0)[:, -NEW:]
        for experts in ("tp", "ep") if model.config.is_moe else ("tp",):
            for world in (2, 4):
                got = parallel.spawn(parallel.sharded_forward, world, str(path), prompts, NEW, experts, 0,
                                     torch.bfloat16)[0]["tokens"][:, -NEW:]
                agree = [int((g == w).cumprod(0).sum()) for g, w in zip(got, want)]
                print(f"| {name} | {experts if model.config.is_moe else '-'} | {world} | {agree} |", flush=True)
