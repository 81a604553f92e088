"""Command line: python -m minqwen3 {demo,verify,download,...}. Each subcommand is one small function."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from .config import PRESETS, Qwen3Config, count_params

WEIGHTS = Path("weights")


def _fmt(n: float) -> str:
    return f"{n / 1e9:.2f}B" if n >= 1e9 else f"{n / 1e6:.0f}M"


def presets_table() -> str:
    rows = [f"{'model':<17}{'layers':>7}{'heads q/kv':>11}{'experts':>9}{'total':>9}{'active':>9}{'context':>9}"]
    for name in PRESETS:
        c = Qwen3Config.from_name(name)
        total, active = count_params(c)
        experts = f"{c.num_experts_per_tok}/{c.num_experts}" if c.is_moe else "-"
        rows.append(f"{name:<17}{c.num_hidden_layers:>7}{f'{c.num_attention_heads}/{c.num_key_value_heads}':>11}"
                    f"{experts:>9}{_fmt(total):>9}{_fmt(active):>9}{c.max_position_embeddings:>9,}")
    return "\n".join(rows)


def cmd_demo(args) -> int:
    from .model import Qwen3
    print("The eight official Qwen3 models (from the presets; total/active parameters computed):\n")
    print(presets_table())
    cfg = Qwen3Config(vocab_size=1000, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    torch.manual_seed(0)
    model = Qwen3(cfg).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 12))
    t = time.perf_counter()
    with torch.no_grad():
        logits = model(ids)
    print(f"\nA tiny random Qwen3 ({_fmt(sum(p.numel() for p in model.parameters()))} params): "
          f"ids {tuple(ids.shape)} -> logits {tuple(logits.shape)} in {1e3 * (time.perf_counter() - t):.1f} ms")
    print("For the real thing: python -m minqwen3 download Qwen/Qwen3-0.6B")
    return 0


def cmd_download(args) -> int:
    from huggingface_hub import snapshot_download
    name = args.name if "/" in args.name else f"Qwen/{args.name}"
    dest = Path(args.dir) if args.dir else WEIGHTS / name.split("/")[-1]
    try:  # resumable: files already complete are skipped, partial ones continue; tqdm shows progress
        snapshot_download(name, local_dir=dest, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.jinja"])
    except Exception as e:  # the hub library raises many kinds; all mean the same to a user
        print(f"error: could not download {name} into {dest}: {type(e).__name__}: {e}\n"
              "Is this machine online, and is the name right? (e.g. Qwen/Qwen3-0.6B)", file=sys.stderr)
        return 1
    print(f"downloaded {name} into {dest}")
    return 0


def cmd_verify(args) -> int:
    """Load a checkpoint in minqwen3 and in transformers; compare logits and greedy tokens."""
    from .verify import verify
    return verify(args.model, device=args.device, dtype=args.dtype, new_tokens=args.tokens)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minqwen3", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("demo", help="the main job: show the models, run the demo")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("download", help="download official weights (needs the network)")
    s.add_argument("name", help="e.g. Qwen/Qwen3-0.6B")
    s.add_argument("--dir", help="destination (default weights/<name>)")
    s.set_defaults(fn=cmd_download)
    s = sub.add_parser("verify", help="compare a checkpoint in minqwen3 against transformers")
    s.add_argument("model", help="checkpoint folder")
    s.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    s.add_argument("--tokens", type=int, default=20, help="greedy tokens to compare per prompt")
    s.set_defaults(fn=cmd_verify)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except (FileNotFoundError, ValueError) as e:  # errors a user can act on: say it, no traceback
        print(f"error: {e}", file=sys.stderr)
        return 1
