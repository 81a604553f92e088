"""Check minqwen3 against transformers on a real checkpoint: same logits, same greedy tokens."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from .checkpoint import from_pretrained
from .generation import STOP_IDS, generate

PROMPTS = ["The capital of France is", "def fibonacci(n):", "量子力学是", "<|im_start|>user\n2+2=?<|im_end|>\n"]
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 0.5, torch.float16: 0.25}  # max |logit difference|
DTYPES = {str(d).removeprefix("torch."): d for d in TOLERANCE}  # verify's dtype names: the ones with a tolerance


def _until_stop(ids: list[int], stops: set[int]) -> list[int]:
    """The tokens up to and including the first stop token: where both generators end a reply."""
    return next((ids[: i + 1] for i, t in enumerate(ids) if t in stops), ids)


def _near_tie(ours, theirs, prefix: list[int], a: list[int], b: list[int], i: int, tol: float) -> float | None:
    """Where the greedy tokens part at position i: how far apart the two choices a[i], b[i] are in each model's
    logits after the common prefix, the larger of the two gaps, if it is within tol (else None). In bf16 two
    faithful models may take different sides of such a tie; a wider gap means a real difference."""
    if i >= len(a) or i >= len(b):  # one side stopped: no tie to speak of
        return None
    x = torch.tensor([prefix], device=next(ours.parameters()).device)
    with torch.no_grad():
        la, lb = ours(x)[0, -1].float(), theirs(x).logits[0, -1].float()
    gap = max(abs(la[a[i]] - la[b[i]]).item(), abs(lb[a[i]] - lb[b[i]]).item())
    return gap if gap <= tol else None


def verify(path: str | Path, device: str = "cpu", dtype: str = "float32", new_tokens: int = 20) -> int:
    """Print the max logit difference and greedy agreement per prompt; return 0 if all agree, else 1.

    Both sides generate the same way: greedy, stopping at the first end-of-turn or end-of-text token (a NaN or Inf
    weight is refused when the checkpoint loads). The greedy tokens must agree, but where they part at a near-tie
    (the two choices within the logit tolerance of each other in both models: bf16 rounding picks a side) the
    prompt still passes, and the line says so."""
    # checked before two models load: a wrong name or count would otherwise fail deep inside transformers
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 1:
        raise ValueError(f"new_tokens must be an int >= 1 (greedy tokens to compare per prompt), got {new_tokens!r}")
    try:
        import transformers
    except ImportError:
        print("error: verify compares against transformers: pip install transformers", file=sys.stderr)
        return 1
    path, dt = Path(path), DTYPES[dtype]
    ours = from_pretrained(path, device=device, dtype=dt)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dt).to(device).eval()
    V, eos = ours.config.vocab_size, ours.config.eos_token_id
    stops = sorted(i for i in {*STOP_IDS, *(eos if isinstance(eos, list) else [eos])} if i is not None and i < V)
    if (path / "tokenizer.json").is_file():
        from .tokenizer import Tokenizer
        tok = Tokenizer.from_pretrained(path)  # refuses a tokenizer that does not fit the model
        prompts = [tok.encode(p) for p in PROMPTS]
    else:  # no tokenizer: fixed token ids still compare the two models
        prompts = [[(i * 7919 + j * 104729) % V for j in range(8 + i)] for i in range(4)]
    ok = True
    print(f"{'prompt':<40}{'max |dlogit|':>14}{'greedy tokens agree':>22}")
    for text, ids in zip(PROMPTS, prompts):
        x = torch.tensor([ids], device=device)
        with torch.no_grad():
            diff = (ours(x) - theirs(x).logits.float()).abs().max().item()
            a = generate(ours, x, new_tokens, stop_ids=tuple(stops), fast=False)[0, len(ids):]  # the plain model code
            b = theirs.generate(x, max_new_tokens=new_tokens, do_sample=False, eos_token_id=stops or None,
                                pad_token_id=stops[0] if stops else 0, attention_mask=torch.ones_like(x))[0, len(ids):]
        a, b = _until_stop(a.tolist(), set(stops)), _until_stop(b.tolist(), set(stops))
        agree = next((i for i, (s, t) in enumerate(zip(a, b)) if s != t), min(len(a), len(b)))
        tie = (_near_tie(ours, theirs, ids + a[:agree], a, b, agree, TOLERANCE[dt])
               if a != b and diff <= TOLERANCE[dt] else None)  # a gap, 0.0 included, or None
        good = diff <= TOLERANCE[dt] and (a == b or tie is not None)  # NaN compares false: a failure
        ok &= good
        note = f"  (then a near-tie: {tie:.2e} apart)" if tie is not None else "" if good else "  <- disagree"
        print(f"{text[:38]!r:<40}{diff:>14.2e}{f'{agree}/{len(b)}':>22}{note}")
    print("OK: minqwen3 and transformers agree" if ok else "FAIL: minqwen3 and transformers disagree")
    return 0 if ok else 1
