"""Train a demo checkpoint (dense or MoE) on the arithmetic chat task and export it in the official layout.

    python scripts/train_demo.py --model dense --out weights/demo-dense     # see STEPS, docs/demo.md for times
    python scripts/train_demo.py --model moe --out weights/demo-moe
    python scripts/train_demo.py --model dense --out /tmp/smoke --steps 3 --batch 8 --micro 2   # CPU smoke test

The shipped checkpoints are stage 1 (the two commands above, from scratch) followed by stage 2, which continues from
stage 1's weights with a fresh optimizer on the stage-2 mix (arithmetic.MIXES: more word problems, in more
sentences, and more multiplications); docs/demo.md gives its commands:

    python scripts/train_demo.py --model dense --init weights/demo-dense --mix stage2 --seed 1 --steps 392 \\
        --lr 1e-3 --warmup 60 --micro 8 --out weights/demo-dense

Data comes from scripts/arithmetic.py, seeded by step, so a run (or a resumed one) sees the same batches: --resume
takes the run's flags that decide them (RUN) from its checkpoint and refuses one given with another value. The export
is bf16 with the official tokenizer files and generation_config.json, loadable by minqwen3 and transformers.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arithmetic  # noqa: E402

import minqwen3  # noqa: E402
from minqwen3.checkpoint import atomic_write  # noqa: E402
from minqwen3.cli import number  # noqa: E402
from minqwen3.generation import STOP_IDS, THINKING_DEFAULTS  # noqa: E402
from minqwen3.tokenizer import ENDOFTEXT  # noqa: E402
from minqwen3.train import (TrainConfig, collate, load_checkpoint, make_optimizer, read_trainer_state,  # noqa: E402
                            train)

ASSETS = Path(minqwen3.__file__).parent / "assets"
# Small Qwen3s: the official vocabulary (151,936 rows, tied to the head) holds most of the parameters. rope_theta is
# 10^4 rather than Qwen3's 10^6: with head_dim 32 and a context of a few hundred tokens, a large base would leave
# almost no rotary frequencies that tell nearby positions apart, and digit lookup needs exactly that.
BASE = dict(vocab_size=151936, hidden_size=128, intermediate_size=768, num_hidden_layers=4, num_attention_heads=8,
            num_key_value_heads=4, head_dim=32, rope_theta=10000.0, max_position_embeddings=1024,
            tie_word_embeddings=True, torch_dtype="bfloat16", max_window_layers=4)  # as official: = num layers
CONFIGS = {
    "dense": BASE,
    "moe": {**BASE, "num_experts": 8, "num_experts_per_tok": 2, "moe_intermediate_size": 256,
            "norm_topk_prob": True, "router_aux_loss_coef": 0.01},
}
# the steps of the shipped checkpoints' stage 1: what --steps 5000 --minutes 5.4 (dense) and 2.8 (MoE) fitted on one
# H200, at 207 and 233 ms/step; stage 2 (--init) takes --steps explicitly: 392 (dense) and 442 (MoE), docs/demo.md
STEPS = {"dense": 1530, "moe": 704}
# the flags that define a run, and their defaults (--steps: STEPS[--model]); kept in its checkpoint, so that --resume
# continues that run, the same model, schedule and batches, and refuses a flag given with another value
RUN = {"model": "dense", "steps": None, "batch": 512, "micro": 4, "lr": 2e-3, "warmup": 100, "balance": "global",
       "seed": 0, "mix": "stage1"}
# Qwen3's published generation_config.json (thinking-mode sampling)
GENERATION_CONFIG = {"bos_token_id": ENDOFTEXT, "do_sample": True, "eos_token_id": list(STOP_IDS),
                     "pad_token_id": ENDOFTEXT, **{k: THINKING_DEFAULTS[k] for k in ("temperature", "top_k", "top_p")}}


class StepBatches(torch.utils.data.Dataset):
    """Item `step` is that step's micro-batches: `batch` fresh samples sorted by length and cut into `micro` groups
    (similar lengths share a micro-batch, so little is padding). Made in DataLoader workers, in parallel."""

    def __init__(self, seed: int, batch: int, micro: int, mix: str = "stage1"):
        self.seed, self.batch, self.micro, self.mix = seed, batch, micro, arithmetic.MIXES[mix]
        self.encode = None  # made in each worker

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, step: int) -> list:
        if self.encode is None:
            self.encode = arithmetic.load_encoder()
        samples = arithmetic.make_samples(self.seed * 1_000_003 + step, self.batch, self.encode, self.mix)
        samples.sort(key=lambda s: len(s[0]))
        n = -(-len(samples) // self.micro)
        return [collate(samples[i:i + n]) for i in range(0, len(samples), n)]


def export(model: minqwen3.Qwen3, out: Path) -> None:
    """bf16 weights, config.json, generation_config.json and the official tokenizer files, each written atomically
    (a stopped export leaves every file whole, old or new)."""
    minqwen3.save_pretrained(model, out, dtype=torch.bfloat16)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        atomic_write(out / name, lambda tmp: shutil.copyfile(ASSETS / name, tmp))
    text = json.dumps(GENERATION_CONFIG, indent=2) + "\n"
    atomic_write(out / "generation_config.json", lambda tmp: Path(tmp).write_text(text))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=CONFIGS, help=f"default: {RUN['model']}")
    p.add_argument("--out", required=True, help="where the exported checkpoint goes, e.g. weights/demo-dense")
    p.add_argument("--work", help="training checkpoints and log.jsonl (default: <out>-train)")
    p.add_argument("--steps", type=number(int, 0), help=f"optimizer steps (default: as shipped, {STEPS})")
    p.add_argument("--minutes", type=number(float, 0), help="fit the run in this time: fewer steps if needed (logged); "
                   "the shipped runs: --steps 5000 --minutes 5.4 (dense), 2.8 (MoE). With --resume: the steps left "
                   "of the run's own schedule (kept in its checkpoint) in this many minutes from now")
    p.add_argument("--batch", type=number(int, 0), help=f"samples per optimizer step (default: {RUN['batch']})")
    p.add_argument("--micro", type=number(int, 0),
                   help=f"micro-batches per step, gradient accumulation (default: {RUN['micro']})")
    p.add_argument("--lr", type=number(float, 0), help=f"default: {RUN['lr']}")
    p.add_argument("--warmup", type=number(int, 0, strict=False), help=f"default: {RUN['warmup']}")
    p.add_argument("--balance", choices=("global", "micro", "none"), help=f"default: {RUN['balance']}")
    p.add_argument("--seed", type=int, help=f"default: {RUN['seed']}")
    p.add_argument("--workers", type=number(int, 0, strict=False), default=min(12, max(1, (os.cpu_count() or 2) - 2)))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--resume", action="store_true", help="continue from <work>/checkpoint, with the run's own "
                   f"{', '.join('--' + k for k in RUN)} (kept there): give one only with the same value")
    p.add_argument("--init", help="start from these weights (a checkpoint folder, e.g. weights/demo-dense) with a "
                   "fresh optimizer and schedule: stage 2")
    p.add_argument("--mix", choices=arithmetic.MIXES,
                   help=f"what the samples are, arithmetic.MIXES (default: {RUN['mix']})")
    p.add_argument("--save-every", type=number(int, 0, strict=False), default=250,
                   help="a training checkpoint every N steps, for --resume (0: at the end only; default: %(default)s)")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    if args.resume and args.init:
        p.error("--resume continues a run and --init starts one: give one of them")
    if args.init and args.steps is None:
        p.error("--init starts a new stage: give its length with --steps (docs/demo.md has the shipped ones)")
    out = Path(args.out)
    work = Path(args.work or f"{out}-train")
    given = {k: getattr(args, k) for k in RUN if getattr(args, k) is not None}
    run = {**RUN, **given}
    if args.resume:  # before anything is loaded: the run's flags, from its trainer state
        saved = read_trainer_state(work / "checkpoint").get("run")
        if saved is None:
            p.error(f"--resume: {work / 'checkpoint'} keeps no run flags (not written by train_demo.py): nothing to "
                    "continue it with")
        for k, v in given.items():
            if k in saved and v != saved[k]:
                p.error(f"--resume: --{k} {v} differs from the run's --{k} {saved[k]} (kept in {work / 'checkpoint'}); "
                        f"leave --{k} out to continue that run, or give another --work to start a new one")
        run = {**RUN, **saved, **given}
    run["steps"] = run["steps"] or STEPS[run["model"]]
    vars(args).update(run)
    if args.micro > args.batch:  # each micro-batch would hold one sample, and there would be --batch of them
        p.error(f"--micro {args.micro} is more than --batch {args.batch}: a micro-batch needs at least one sample")

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the DataLoader workers are the parallelism
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
    tc = TrainConfig(steps=args.steps, lr=args.lr, min_lr=args.lr / 10, warmup=args.warmup, balance=args.balance,
                     out=str(work), log_every=10, save_every=args.save_every, run=run)
    start = 0
    if args.resume:
        model, state = load_checkpoint(work / "checkpoint", device=device)
        opt = make_optimizer(model, tc)
        opt.load_state_dict(state["optimizer"])
        start = state["step"]
        # the run's own schedule, its steps as --minutes fitted them: the rest of the same curve (--minutes again
        # fits what is left into that many minutes from now, never more steps)
        tc = replace(tc, **state.get("schedule", {}))
    elif args.init:  # weights only: the optimizer and the schedule start afresh
        model = minqwen3.from_pretrained(args.init, device=device, dtype=torch.float32).train()
        if model.config.is_moe != (args.model == "moe"):
            raise ValueError(f"--init {args.init} is {'an MoE' if model.config.is_moe else 'a dense'} checkpoint, "
                             f"but --model is {args.model}")
        for param in model.parameters():
            param.requires_grad_(True)
        opt = make_optimizer(model, tc)
    else:
        torch.manual_seed(args.seed)
        model = minqwen3.Qwen3(minqwen3.Qwen3Config(**CONFIGS[args.model])).to(device)
        opt = make_optimizer(model, tc)
    total, active = minqwen3.count_params(model.config)
    print(f"{args.model}: {total / 1e6:.1f}M parameters ({active / 1e6:.1f}M active), {args.batch} samples/step in "
          f"{args.micro} micro-batches, steps {start}..{tc.steps}, {args.mix} from "
          f"{args.init or 'scratch' if not args.resume else work / 'checkpoint'}, on {device}")

    data = StepBatches(args.seed, args.batch, args.micro, args.mix)
    loader = torch.utils.data.DataLoader(data, batch_size=None, sampler=range(start, 10**9),
                                         num_workers=args.workers, pin_memory=device.type == "cuda",
                                         prefetch_factor=4 if args.workers else None,
                                         persistent_workers=False)
    t = time.perf_counter()
    train(model, loader, tc, start_step=start, opt=opt, progress=not args.no_progress,
          time_budget=None if args.minutes is None else 60 * args.minutes)
    seconds = time.perf_counter() - t
    export(model, out)
    print(f"trained {tc.steps - start} steps in {seconds:.0f} s; exported {out}")
    with open(work / "log.jsonl", "a") as f:
        f.write(json.dumps({"trained_steps": tc.steps - start, "train_seconds": round(seconds, 1), "init": args.init,
                            "mix": args.mix,
                            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
