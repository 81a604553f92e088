"""Check minqwen3 against transformers on a real checkpoint: same logits, same greedy tokens."""
from __future__ import annotations

from pathlib import Path

import torch

from .checkpoint import from_pretrained
from .generate import generate

PROMPTS = ["The capital of France is", "def fibonacci(n):", "量子力学是", "<|im_start|>user\n2+2=?<|im_end|>\n"]
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.5, torch.float16: 0.25}  # max |logit difference|


def _greedy(hf_model, x: torch.Tensor, n: int) -> torch.Tensor:
    """n greedy tokens from transformers' forward pass alone. Not its generate(): the checkpoint's
    generation_config would stop at, or (with min_new_tokens) forbid, the end-of-turn token, which ours emits."""
    for _ in range(n):
        x = torch.cat([x, hf_model(x).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return x


def verify(path: str | Path, device: str = "cpu", dtype: str = "float32", new_tokens: int = 20) -> int:
    """Print the max logit difference and greedy agreement per prompt; return 0 if all agree, else 1."""
    try:
        import transformers
    except ImportError:
        print("error: verify compares against transformers: pip install transformers")
        return 1
    path, dt = Path(path), getattr(torch, dtype)
    ours = from_pretrained(path, device=device, dtype=dt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(device).eval()
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer
        tok = Tokenizer.from_file(str(path / "tokenizer.json"))
        prompts = [tok.encode(p, add_special_tokens=False).ids for p in PROMPTS]
    else:  # no tokenizer: fixed token ids still compare the two models
        prompts = [[(i * 7919 + j * 104729) % ours.config.vocab_size for j in range(8 + i)] for i in range(4)]
    ok = True
    print(f"{'prompt':<40}{'max |dlogit|':>14}{'greedy tokens agree':>22}")
    for text, ids in zip(PROMPTS, prompts):
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            diff = (ours(x) - theirs(x).logits.float()).abs().max().item()
            a = generate(ours, x, new_tokens, stop_ids=(), fast=False)[0, len(ids):]  # the plain model code
            b = _greedy(theirs, x, new_tokens)[0, len(ids):]
        agree = int((a == b.to(a.device)).cumprod(0).sum())  # tokens equal before the first difference
        good = diff <= TOLERANCE[dt] and agree == new_tokens
        ok &= good
        print(f"{text[:38]!r:<40}{diff:>14.2e}{f'{agree}/{new_tokens}':>22}{'' if good else '  <- disagree'}")
    print("OK: minqwen3 and transformers agree" if ok else "FAIL: minqwen3 and transformers disagree")
    return 0 if ok else 1
