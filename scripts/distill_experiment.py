"""Strong-to-weak distillation at equal compute, on the arithmetic task: does a 2-layer student learn more from the
4-layer demo teacher's distributions than from the task's own data?

    python scripts/distill_experiment.py --work out/distill            # all stages; re-run to resume
    python scripts/distill_experiment.py --work out/distill --report out/distill/report   # table + plot (.md, .png)

Arms, each from the same student initialisation (per seed), each given the same FLOPs (teacher passes included):
  (a) ce:        next-token training on the task's own samples (scripts/arithmetic.py, ground-truth traces);
  (b) off:       off-policy distillation: forward KL to the teacher's stored top-20 log-probs on its own sampled
                 replies (/think and /no_think prompts), wrong replies filtered out (see docs/distill.md);
  (c) off+on:    half the budget as (b), then on-policy: the student samples (both modes, per-mode defaults), the
                 teacher scores the same tokens in one forward, reverse KL step.
Evaluated per mode (/think, /no_think) on held-out problems: greedy accuracy, pass@k of sampled replies, and the
forward KL to the teacher on the teacher's sampled held-out replies.

Stages are resumable: the teacher's data are stored (safetensors), and each (arm, seed) appends one row to
results.jsonl when done; a re-run skips what is there. Both record the arguments they were made with and the teacher's
SHA-256: a re-run with other values is refused, naming the argument. --deadline stops starting new runs after that
many seconds.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import arithmetic  # noqa: E402

import minqwen3  # noqa: E402
from minqwen3.chat_template import apply_chat_template, parse_reply  # noqa: E402
from minqwen3.checkpoint import CheckpointError, atomic_write, checkpoint_files, read_metadata  # noqa: E402
from minqwen3.cli import number  # noqa: E402
from minqwen3.config import count_params  # noqa: E402
from minqwen3.distill import (DistillConfig, data_batch, divergence_chunked,  # noqa: E402
                              offpolicy_step, onpolicy_step, sample_replies, teacher_data)
from minqwen3.tokenizer import ENDOFTEXT, Tokenizer  # noqa: E402
from minqwen3.train import Balance, TrainConfig, collate, lr_at, make_optimizer, train_step  # noqa: E402

ARMS = ("ce", "off", "off+on")
MODES = {"think": " /think", "no_think": " /no_think"}
KS = (1, 2, 4, 8)
# eager decoding: compiling the fast path (~30 s per model) costs more than these short runs save


# ---------------------------------------------------------------- compute accounting
class Meter:
    """FLOPs (2 per multiply-add; a backward pass costs twice the forward) and device seconds."""

    def __init__(self):
        self.flops, self.seconds = 0.0, 0.0

    @staticmethod
    def forward(model, tokens: int, head_tokens: int) -> float:
        c = model.config
        body = count_params(c)[1] - c.vocab_size * c.hidden_size * (1 if c.tie_word_embeddings else 2)
        return 2.0 * body * tokens + 2.0 * c.vocab_size * c.hidden_size * head_tokens


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------- prompts, replies, grading
def prompt(tok_encode, p: arithmetic.Problem, mode: str) -> list[int]:
    return tok_encode(apply_chat_template([{"role": "user", "content": p.question + MODES[mode]}],
                                          add_generation_prompt=True))


def grade(tok: Tokenizer, p: arithmetic.Problem, reply: list[int]) -> bool:
    text = tok.decode([t for t in reply if t not in (tok.im_end_id, tok.endoftext_id)])
    return arithmetic.check(p, parse_reply(text)[1])


def problems(seed: int, n: int, held_out: bool) -> list[arithmetic.Problem]:
    rng = random.Random(seed)
    return [arithmetic.make_problem(rng, held_out=held_out) for _ in range(n)]


def gen_flops(model, prompts: list[list[int]], replies: list[list[int]], thinking: list[bool]) -> float:
    """Compute of batched generation as run: each mode's batch, padded to its longest prompt and reply."""
    total = 0.0
    for mode in (True, False):
        rows = [(p, r) for p, r, t in zip(prompts, replies, thinking) if t == mode]
        if rows:
            n = len(rows) * (max(len(p) for p, _ in rows) + max(len(r) for _, r in rows))
            total += Meter.forward(model, n, n)
    return total


# ---------------------------------------------------------------- models
def make_student(teacher, layers: tuple[int, ...], device) -> minqwen3.Qwen3:
    """The teacher with only `layers` kept (same embeddings, head and final norm): every arm starts here."""
    import dataclasses
    cfg = dataclasses.replace(teacher.config, num_hidden_layers=len(layers), max_window_layers=len(layers))
    student = minqwen3.Qwen3(cfg)
    sd = {}
    for k, v in teacher.state_dict().items():
        if k.startswith("model.layers."):
            i, rest = k.split(".", 3)[2:]
            if int(i) in layers:
                sd[f"model.layers.{layers.index(int(i))}.{rest}"] = v
        else:
            sd[k] = v
    student.load_state_dict(sd)
    return student.float().to(device).train()


# ---------------------------------------------------------------- evaluation
def greedy_replies(model, ps: list[list[int]], max_new: int, dc: DistillConfig) -> list[list[int]]:
    """Each prompt's greedy reply, eagerly decoded, up to and including its stop token."""
    ids = minqwen3.generate(model, ps, max_new, stop_ids=dc.stop_ids, pad_id=dc.pad_id, fast=False,
                            vocab_limit=dc.vocab_limit)
    T = max(map(len, ps))
    return [row[:next((j + 1 for j, t in enumerate(row) if t in dc.stop_ids), len(row))] for row in ids[:, T:].tolist()]


def pass_at_k(correct: list[int], n: int, ks) -> dict[int, float]:
    """The unbiased pass@k (k <= n) over problems, from the number of right replies of n sampled per problem."""
    return {k: sum(1 - math.comb(n - c, k) / math.comb(n, k) for c in correct) / len(correct) for k in ks if k <= n}


@torch.no_grad()
def evaluate(model, tok, enc, items: list[arithmetic.Problem], heldout: dict, teacher, dc: DistillConfig,
             n_samples: int, max_new: dict, seed: int) -> dict:
    model.eval()
    out = {}
    for mode in MODES:
        ps = [prompt(enc, p, mode) for p in items]
        think = [mode == "think"] * len(ps)
        d = DistillConfig(**{**dc.__dict__, "max_new_tokens": max_new[mode]})
        greedy = greedy_replies(model, ps, max_new[mode], dc)
        acc = [grade(tok, p, r) for p, r in zip(items, greedy)]
        # n_samples sampled replies per problem, all in one batch (each row draws its own tokens)
        d.rollout_batch = len(ps) * n_samples
        sampled = sample_replies(model, ps * n_samples, think * n_samples, d, seed=seed)
        correct = [sum(grade(tok, items[j], sampled[s * len(ps) + j]) for s in range(n_samples))
                   for j in range(len(ps))]
        passk = pass_at_k(correct, n_samples, KS)
        # the forward KL to the teacher on its own sampled held-out replies of this mode
        sel = [i for i in range(len(heldout["lengths"])) if bool(heldout["thinking"][i]) == (mode == "think")]
        kls, n = 0.0, 0
        for j in range(0, len(sel), 64):
            (x, mask, _), _ = data_batch(heldout, sel[j:j + 64], dc.pad_id)
            x, m = x.to(next(model.parameters()).device), mask[:, 1:].to(next(model.parameters()).device)
            with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=x.device.type == "cuda"):
                h, _ = model.hidden_states(x)
                th, _ = teacher.hidden_states(x)
                rows = int(m.sum())
                kls += float(divergence_chunked(h[:, :-1][m], model.lm_head.weight,
                                                (th[:, :-1][m], teacher.lm_head.weight), chunk=2048)) * rows
            n += rows
        out[mode] = {"accuracy": sum(acc) / len(acc), "correct": sum(acc), "n": len(acc),
                     "pass@k": passk, "kl_to_teacher": kls / max(n, 1),
                     "reply_tokens": sum(map(len, greedy)) / len(greedy)}
    model.train()
    return out


# ---------------------------------------------------------------- the arms
def run_arm(arm: str, seed: int, teacher, pool: dict, enc, a, device) -> tuple[minqwen3.Qwen3, dict]:
    torch.manual_seed(seed)
    student = make_student(teacher, a.layers, device)
    tc = TrainConfig(steps=1000, lr=a.lr, min_lr=a.lr / 10, warmup=50, balance="none")  # step = 1000 · progress
    opt = make_optimizer(student, tc)
    meter = Meter()
    budget = a.budget_tflops * 1e12
    dc_off = DistillConfig(kind="forward", top_k=pool["topk_ids"].shape[1], pad_id=a.pad_id)
    dc_on = DistillConfig(kind="reverse", max_new_tokens=a.max_think, pad_id=a.pad_id, vocab_limit=a.vocab_limit)
    rng = random.Random(seed)
    order = list(range(len(pool["lengths"])))
    rng.shuffle(order)
    cost = pool["cost"]  # per stored sample: the teacher's FLOPs and seconds to make it
    encode_batch = arithmetic.load_encoder()
    log, step, used = [], 0, 0
    phase = "ce" if arm == "ce" else "off"
    t_start = time.perf_counter()
    while meter.flops < budget:
        progress = meter.flops / budget
        if arm == "off+on" and progress >= 0.5:
            phase = "on"
        sync(device)
        t0 = time.perf_counter()
        if phase == "ce":
            samples = arithmetic.make_samples(seed * 100003 + step, a.batch, encode_batch)
            ids, mask, valid = collate(samples, a.pad_id)
            for g in opt.param_groups:
                g["lr"] = lr_at(int(1000 * progress), tc)
            stats = train_step(student, opt, [(ids, mask, valid)], tc, Balance("none"), autocast=device.type == "cuda")
            stats = {"loss": float(stats["loss"])}
            meter.flops += 3 * Meter.forward(student, ids.numel(), int(mask[:, 1:].sum()))
        elif phase == "off":
            if used % len(order) + a.batch > len(order):  # another pass over the pool, in a new order
                rng.shuffle(order)
                used += len(order) - used % len(order)
            idx = order[used % len(order):used % len(order) + a.batch]
            used += a.batch
            stats = offpolicy_step(student, opt, pool, idx, dc_off, tc, int(1000 * progress))
            n_tok, shape = stats.pop("tokens"), stats.pop("batch_tokens")
            meter.flops += 3 * Meter.forward(student, shape, n_tok)
            meter.flops += float(cost[idx, 0].sum())
            meter.seconds += float(cost[idx, 1].sum())
        else:
            items = problems(seed * 7919 + step, a.on_batch, held_out=False)
            think = [i % 2 == 0 for i in range(a.on_batch)]
            ps = [prompt(enc, p, "think" if t else "no_think") for p, t in zip(items, think)]
            stats = onpolicy_step(student, teacher, opt, ps, think, dc_on, tc, int(1000 * progress), seed=step)
            n_tok, shape = stats.pop("tokens"), stats.pop("batch_tokens")
            # the rollout's batch is about the collated batch (prompt + longest reply per row); the teacher's
            # scoring pass and the student's step run on that batch, the heads only at the reply tokens
            meter.flops += Meter.forward(student, shape, shape)
            meter.flops += Meter.forward(teacher, shape, n_tok) + 3 * Meter.forward(student, shape, n_tok)
        sync(device)
        meter.seconds += time.perf_counter() - t0
        step += 1
        if step % a.log_every == 0 or meter.flops >= budget:
            row = {"step": step, "phase": phase, "tflops": round(meter.flops / 1e12, 2),
                   "seconds": round(meter.seconds, 2), **{k: round(float(v), 4) for k, v in stats.items()}}
            log.append(row)
            print(f"  {arm} seed {seed}: {row}", flush=True)
    return student, {"arm": arm, "seed": seed, "steps": step, "tflops": meter.flops / 1e12,
                     "device_seconds": meter.seconds, "wall_seconds": time.perf_counter() - t_start,
                     "teacher_samples_used": used, "log": log}


# ---------------------------------------------------------------- the stored teacher data
def build_pool(teacher, tok, enc, n: int, seed: int, held_out: bool, a, keep_wrong: bool) -> dict:
    """The teacher's sampled replies in both modes, top-k log-probs stored; wrong ones dropped unless keep_wrong.
    Adds per-sample cost (FLOPs, seconds) of making it, the prompts' modes and the kept fraction per mode."""
    items = problems(seed, n, held_out)
    think = [i % 2 == 0 for i in range(n)]
    ps = [prompt(enc, p, "think" if t else "no_think") for p, t in zip(items, think)]
    dc = DistillConfig(kind="forward", top_k=a.top_k, max_new_tokens=a.max_think, pad_id=a.pad_id,
                       rollout_batch=1024 if next(teacher.parameters()).is_cuda else 64, vocab_limit=a.vocab_limit)
    device = next(teacher.parameters()).device
    sync(device)
    t0 = time.perf_counter()
    got: dict[int, list[int]] = {}

    def keep(i, r):
        got[i] = r
        return keep_wrong or grade(tok, items[i], r)
    data = teacher_data(teacher, ps, think, dc, seed=seed, keep=keep, batch=64)
    sync(device)
    seconds = time.perf_counter() - t0
    replies = [got.get(i, []) for i in range(n)]
    scored = int((data["lengths"] - data["prompt_lengths"]).sum())  # the head only at the reply tokens
    flops = gen_flops(teacher, ps, replies, think) + Meter.forward(teacher, int(data["lengths"].sum()), scored)
    kept = [i for i in range(n) if i in got and (keep_wrong or grade(tok, items[i], got[i]))]
    if not kept:  # nothing to learn from (and each kept sample's share of the cost would be x / 0)
        raise SystemExit(f"no teacher reply was kept (0 of {n}): " + (
            "every reply was empty" if keep_wrong else f"the teacher answered every problem wrongly within "
            f"{a.max_think} tokens: check the teacher, raise --max-think, or keep wrong replies (distill_experiment.py "
            "--keep-wrong)"))
    # every generated sample costs; the kept ones carry the cost of the dropped ones too
    per = torch.tensor([[flops / len(kept), seconds / len(kept)]], dtype=torch.float64).repeat(len(kept), 1)
    data["cost"] = per
    data["thinking"] = torch.tensor([think[i] for i in kept])
    for mode, flag in (("think", True), ("no_think", False)):
        tried = sum(t == flag for t in think)
        data[f"kept_{mode}"] = torch.tensor(sum(think[i] == flag for i in kept) / max(tried, 1))
    return data


positive = number(int, 1, strict=False)  # an argparse type: an integer >= 1


def common_args(doc: str, work: str, layers: str, samples: int) -> argparse.ArgumentParser:
    """The arguments this experiment shares with scripts/rl_experiment.py (defaults differ where given)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=work, help="stored teacher data and results.jsonl go here")
    ap.add_argument("--results", help="results.jsonl elsewhere than in --work")
    ap.add_argument("--teacher", default=str(Path(__file__).resolve().parents[1] / "weights" / "demo-dense"))
    ap.add_argument("--layers", default=layers, help="the teacher's layers the student starts from")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--seeds", type=positive, default=3)
    ap.add_argument("--n-eval", type=positive, default=300, help="held-out problems per mode")
    ap.add_argument("--samples", type=positive, default=samples, help="sampled replies per problem for pass@k")
    ap.add_argument("--max-think", type=positive, default=256)
    ap.add_argument("--max-direct", type=positive, default=48)
    ap.add_argument("--deadline", type=number(float, 0), default=None, help="seconds: start no new run after this")
    ap.add_argument("--report", help="write <report>.md and <report>.png from results.jsonl, run nothing")
    return ap


def parse(ap: argparse.ArgumentParser, argv: list[str] | None):
    """-> (args, the work folder (made), the results file)."""
    a = ap.parse_args(argv)
    a.layers = tuple(int(x) for x in a.layers.split(","))
    a.pad_id = ENDOFTEXT
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    return a, work, Path(a.results) if a.results else work / "results.jsonl"


def teacher_sha256(path: str) -> str:
    """The SHA-256 of the teacher's weights (model.safetensors, or its shards in the index's order: the files a load
    reads, checkpoint_files): what stored data and results are tied to. A folder without weights fails here, before
    any work."""
    try:
        files = checkpoint_files(Path(path))
    except (FileNotFoundError, CheckpointError) as e:
        raise SystemExit(f"--teacher {path}: {e}") from None
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 24), b""):
                h.update(block)
    return h.hexdigest()


def settings(a, names: tuple[str, ...]) -> dict[str, str]:
    """The teacher's SHA-256 and the arguments `names` of a, as strings (all safetensors metadata holds): what a
    stored file or a result row was made with."""
    def text(v):
        return ",".join(map(str, v)) if isinstance(v, tuple) else str(v)
    return {"teacher_sha256": a.teacher_sha256} | {n: text(getattr(a, n)) for n in names}


def check_settings(what: str, have: dict | None, want: dict[str, str]) -> None:
    """Refuse to reuse `what` made with other arguments or another teacher: the error names the argument and both
    values. (Made before they were recorded: refused too, as it may be either.)"""
    have = have or {}
    for k, v in want.items():
        if have.get(k) != v:
            name = {"teacher_sha256": "the teacher's sha256", "vocab_limit": "vocab_limit (the tokenizer's size)"}.get(
                k, "--" + k.replace("_", "-"))
            raise SystemExit(f"{what} was made with {name} {have.get(k, '(not recorded)')}; this run has {v}: run with "
                             "the same value, or use a fresh --work (and --results)")


def stored(f: Path, want: dict[str, str], make) -> dict[str, torch.Tensor]:
    """The tensors in f, if it was made with the settings `want`; else make() them and store them in f (their
    settings in its metadata, written whole or not at all)."""
    if f.is_file():
        check_settings(str(f), read_metadata(f), want)
        return load_file(f)
    t = time.perf_counter()
    d = make()
    atomic_write(f, lambda tmp: save_file({k: v.contiguous() for k, v in d.items()}, str(tmp), metadata=want))
    print(f"{f.stem}: {len(d['lengths'])} samples in {time.perf_counter() - t:.1f} s", flush=True)
    return d


def read_rows(path: Path, drop_torn: bool = False) -> list[dict]:
    """The JSON rows of a results file ([] when there is none). A last line cut short (a run stopped while appending
    it) is skipped with a warning, and with drop_torn cut off the file, so that the next row gets a line of its own;
    a bad line before the last is an error naming it."""
    if not path.is_file():
        return []
    lines = path.read_bytes().split(b"\n")
    last = max((i for i, x in enumerate(lines) if x.strip()), default=-1)
    rows = []
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
            if i < last:
                raise SystemExit(f"{path}, line {i + 1}: not a JSON row ({e}): mend or remove that line") from None
            print(f"warning: {path}, line {i + 1} (the last) is cut short, as by a run stopped while writing it: "
                  + ("removed" if drop_torn else "skipped"), file=sys.stderr, flush=True)
            if drop_torn:
                with open(path, "rb+") as f:
                    f.truncate(sum(len(x) + 1 for x in lines[:i]))
    return rows


def append_row(path: Path, row: dict) -> None:
    """Append one JSON row in one write, flushed to disk: a run stopped midway leaves at most a last line cut short
    (read_rows skips it). A last row left without its newline gets one first."""
    with open(path, "ab+") as f:
        f.seek(0, os.SEEK_END)
        lead = b""
        if f.tell():
            f.seek(-1, os.SEEK_END)
            lead = b"" if f.read(1) == b"\n" else b"\n"
        f.write(lead + json.dumps(row).encode() + b"\n")
        f.flush()
        os.fsync(f.fileno())


def check_rows(results: Path, rows: list[dict], want: dict[str, str]) -> None:
    """Every row of results must have been made with the settings `want` (else: refused, naming the argument)."""
    for n, r in enumerate(rows, 1):
        check_settings(f"{results} (row {n}: {r.get('arm')} seed {r.get('seed', 0)})", r.get("settings"), want)


def setup(a):
    """-> (device, tokenizer, its encode, the frozen teacher: bf16 on a GPU). Sets a.teacher_sha256 and
    a.vocab_limit (the tokenizer's size: the embedding's rows past it are padding, no token)."""
    device = torch.device(a.device)
    a.teacher_sha256 = teacher_sha256(a.teacher)  # before any work: a wrong --teacher fails now
    tok = Tokenizer.default()  # the bundled copy of the official tokenizer: teacher and student share it
    a.vocab_limit = len(tok)
    torch.manual_seed(0)
    teacher = minqwen3.from_pretrained(a.teacher, device=device,
                                       dtype=torch.bfloat16 if device.type == "cuda" else torch.float32)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return device, tok, tok.encode, teacher


# the arguments (besides the teacher) that each stored file, and every result row, depends on
POOL_ARGS = ("pool", "top_k", "max_think", "keep_wrong", "vocab_limit")
HELDOUT_ARGS = ("n_eval", "top_k", "max_think", "vocab_limit")
RUN_ARGS = ("layers", "budget_tflops", "batch", "on_batch", "lr", "pool", "top_k", "keep_wrong", "max_think",
            "max_direct", "n_eval", "samples", "vocab_limit")


def parser() -> argparse.ArgumentParser:
    ap = common_args(__doc__, work="out/distill", layers="0,3", samples=4)
    ap.add_argument("--budget-tflops", type=number(float, 0), default=60.0, help="compute per arm and seed")
    ap.add_argument("--batch", type=positive, default=128, help="samples per step (next-token and off-policy)")
    ap.add_argument("--on-batch", type=positive, default=256,
                    help="rollouts per on-policy step (decoding is latency-bound)")
    ap.add_argument("--lr", type=number(float, 0), default=1e-3)
    ap.add_argument("--pool", type=positive, default=6144, help="teacher replies generated for off-policy data")
    ap.add_argument("--top-k", type=positive, default=20)
    ap.add_argument("--keep-wrong", action="store_true", help="keep the teacher's wrong replies in the data")
    ap.add_argument("--log-every", type=positive, default=10)
    return ap


def main(argv: list[str] | None = None) -> int:
    a, work, results = parse(parser(), argv)
    if a.report:
        return report(results, a.report)
    t_begin = time.perf_counter()
    device, tok, enc, teacher = setup(a)
    run = settings(a, RUN_ARGS)
    rows = read_rows(results, drop_torn=True)
    check_rows(results, rows, run)  # all before any work
    done = {(r["arm"], r["seed"]) for r in rows}
    pool = stored(work / "teacher_pool.safetensors", settings(a, POOL_ARGS),
                  lambda: build_pool(teacher, tok, enc, a.pool, 1, False, a, a.keep_wrong))
    heldout = stored(work / "teacher_heldout.safetensors", settings(a, HELDOUT_ARGS),
                     lambda: build_pool(teacher, tok, enc, 2 * min(a.n_eval, 256), 2, True, a, keep_wrong=True))
    items = [p for _, p in arithmetic.eval_problems(-(-a.n_eval // 5))][:a.n_eval]
    dc = DistillConfig(pad_id=a.pad_id, vocab_limit=a.vocab_limit)
    max_new = {"think": a.max_think, "no_think": a.max_direct}
    print(f"teacher pool: kept {float(pool['kept_think']):.1%} of /think, {float(pool['kept_no_think']):.1%} of "
          f"/no_think replies; {len(pool['lengths'])} samples", flush=True)

    def append(row):
        append_row(results, row | {"settings": run})
    if ("teacher", 0) not in done:
        t = time.perf_counter()
        ev = evaluate(teacher, tok, enc, items, heldout, teacher, dc, a.samples, max_new, seed=0)
        append({"arm": "teacher", "seed": 0, "eval": ev, "eval_seconds": time.perf_counter() - t,
                "sha256": a.teacher_sha256[:16],
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu", "args": {
                    k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, tuple))},
                "kept": {m: float(pool[f"kept_{m}"]) for m in MODES}})
        print(f"teacher: {json.dumps(ev)}", flush=True)
    if ("init", 0) not in done:
        ev = evaluate(make_student(teacher, a.layers, device), tok, enc, items, heldout, teacher, dc, a.samples,
                      max_new, seed=0)
        append({"arm": "init", "seed": 0, "eval": ev})
        print(f"student init: {json.dumps(ev)}", flush=True)
    for seed in range(a.seeds):
        for arm in ARMS:
            if (arm, seed) in done:
                continue
            if a.deadline is not None and time.perf_counter() - t_begin > a.deadline:
                print(f"deadline: stopping before {arm} seed {seed}", flush=True)
                return 0
            student, row = run_arm(arm, seed, teacher, pool, enc, a, device)
            t = time.perf_counter()
            row["eval"] = evaluate(student, tok, enc, items, heldout, teacher, dc, a.samples, max_new, seed=seed + 1)
            row["eval_seconds"] = time.perf_counter() - t
            append(row)
            print(f"{arm} seed {seed}: " + ", ".join(f"{m} acc {row['eval'][m]['accuracy']:.3f} "
                  f"KL {row['eval'][m]['kl_to_teacher']:.3f}" for m in MODES)
                  + f" ({row['tflops']:.3g} TFLOP, {row['device_seconds']:.1f} s)", flush=True)
    return 0


# ---------------------------------------------------------------- the report
def t975(df: int) -> float:
    """Student's t 97.5% quantile: a table for df 1-4, then the Cornish-Fisher expansion around the normal's 1.960
    to its fourth term (within 0.001 from df 5: 2.571, 2.447, ... 2.042 at 30)."""
    if df < 5:
        return {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776}[df]
    z = 1.959964
    return (z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * df ** 3)
            + (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / (92160 * df ** 4))


def _mean_ci(xs: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a 95% t-interval over seeds (0 with one seed)."""
    n = len(xs)
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    t = t975(n - 1)
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (n - 1))
    return m, t * sd / math.sqrt(n)


def _wilson(c: int, n: int) -> tuple[float, float]:
    z = 1.96
    p = c / n
    mid = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, mid - half), min(1.0, mid + half)


def plot_pass_at_k(ax, by: dict, mode: str, arms, dashed=(), label=None, color=None) -> None:
    """pass@k against k per arm (mean and 95% t-interval over its seeds' rows by[arm]), log2 x axis."""
    for arm in arms:
        rs = by.get(arm)
        if not rs or "pass@k" not in rs[0]["eval"][mode]:
            continue
        ks = sorted(int(k) for k in rs[0]["eval"][mode]["pass@k"])
        ys = [_mean_ci([r["eval"][mode]["pass@k"][str(k)] for r in rs]) for k in ks]
        ax.errorbar(ks, [y[0] for y in ys], yerr=[0 if math.isnan(y[1]) else y[1] for y in ys], marker="o",
                    capsize=3, label=(label or {}).get(arm, arm), linestyle="--" if arm in dashed else "-",
                    color=(color or {}).get(arm))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k")
    ax.set_ylabel("pass@k")
    ax.grid(alpha=0.3)


def cell(rs: list[dict], f, pct: bool = True) -> str:
    """f(row) over the seeds' rows: the mean ± the 95% t-interval's half-width (the mean alone for one row)."""
    m, h = _mean_ci([f(r) for r in rs])
    s = 100 if pct else 1
    if len(rs) == 1:
        return f"{m * s:.1f}" if pct else f"{m:.3f}"
    return f"{m * s:.1f} ± {h * s:.1f}" if pct else f"{m:.3f} ± {h:.3f}"


def accuracy_cell(rs: list[dict], mode: str) -> str:
    """The greedy accuracy in %: over seeds as cell(), or one row's value with its 95% Wilson interval."""
    c = cell(rs, lambda r: r["eval"][mode]["accuracy"])
    if len(rs) == 1:
        lo, hi = _wilson(rs[0]["eval"][mode]["correct"], rs[0]["eval"][mode]["n"])
        c += f" [{lo * 100:.1f}, {hi * 100:.1f}]"
    return c


def report(results: Path, out: str) -> int:
    rows = read_rows(results)
    by = {}
    for r in rows:
        by.setdefault(r["arm"], []).append(r)
    pk = max(int(k) for r in rows for k in r["eval"]["think"]["pass@k"])
    lines = [f"| arm | seeds | TFLOP | device s | /think acc % | /no_think acc % | /think pass@{pk} % "
             f"| /no_think pass@{pk} % | KL /think | KL /no_think |", "|---|---|---|---|---|---|---|---|---|---|"]

    for arm in ("teacher", "init", *ARMS):
        rs = by.get(arm)
        if not rs:
            continue
        tfl = f"{sum(r.get('tflops', 0) for r in rs) / len(rs):.3g}" if arm in ARMS else "-"
        sec = f"{sum(r.get('device_seconds', 0) for r in rs) / len(rs):.1f}" if arm in ARMS else "-"
        accs = [accuracy_cell(rs, m) for m in MODES]
        lines.append(f"| {arm} | {len(rs)} | {tfl} | {sec} | {accs[0]} | {accs[1]} | "
                     + " | ".join(cell(rs, lambda r: r["eval"][m]["pass@k"][str(pk)]) for m in MODES) + " | "
                     + " | ".join(cell(rs, lambda r: r["eval"][m]["kl_to_teacher"], pct=False) for m in MODES) + " |")
    table = "\n".join(lines)
    Path(out + ".md").write_text(table + "\n")
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    arms = [x for x in ("init", *ARMS) if x in by]
    for j, m in enumerate(MODES):  # the KL to the teacher on its held-out replies, mean and interval over seeds
        ys = [_mean_ci([r["eval"][m]["kl_to_teacher"] for r in by[x]]) for x in arms]
        axes[2].bar([i + 0.4 * j for i in range(len(arms))], [y[0] for y in ys], width=0.4, label=f"/{m}",
                    yerr=[0 if math.isnan(y[1]) else y[1] for y in ys], capsize=3)
    axes[2].set_xticks([i + 0.2 for i in range(len(arms))], arms)
    axes[2].set_ylabel("forward KL to the teacher (nats/token)")
    axes[2].set_title("KL on the teacher's held-out replies")
    axes[2].legend(fontsize=8)
    for ax, m in zip(axes, MODES):
        plot_pass_at_k(ax, by, m, ("teacher", "init", *ARMS), dashed=("teacher", "init"))
        ax.set_title(f"/{m} (held-out problems)")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=110)
    return 0


if __name__ == "__main__":
    sys.exit(main())
