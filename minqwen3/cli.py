"""Command line: python -m minqwen3 {demo,verify,download,...}. Each subcommand is one small function.

torch is imported inside the commands, so that --help answers at once. Every error is one line on stderr and a
non-zero exit status; Ctrl-C exits quietly with status 130.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path

from . import bytecode
from .config import PRESETS, Qwen3Config, count_params
from .config import NON_THINKING_DEFAULTS, THINKING_DEFAULTS

WEIGHTS = Path("weights")  # where `download` puts official weights, relative to the working directory
BUNDLED = Path(__file__).resolve().parents[1] / "weights"  # the source tree's weights/: the demo models


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


DEMO_QUESTION = "What is 4821 + 3967?"


def cmd_demo(args) -> int:
    """The presets table, then a question to the bundled demo model (offline, CPU), thinking shown, then the answer."""
    print("The eight official Qwen3 models (from the presets; total/active parameters computed):\n")
    print(presets_table())
    official = ("python -m minqwen3 download Qwen/Qwen3-0.6B   "
                "(then: python -m minqwen3 chat --model weights/Qwen3-0.6B)")
    # our own small Qwen3 trained on arithmetic (docs/demo.md); found from the working directory or the source tree
    demo = next((d for d in (WEIGHTS / "demo-dense", BUNDLED / "demo-dense") if (d / "config.json").is_file()), None)
    if demo is None:
        print(f"\nNo demo model at {WEIGHTS / 'demo-dense'} (train one: python scripts/train_demo.py --model dense "
              f"--out weights/demo-dense).\nFor official weights: {official}")
        return 0
    t = time.perf_counter()
    with leave_on_ctrl_c():
        import torch

        from .assistant import chat
        from .checkpoint import from_pretrained
        from .tokenizer import Tokenizer
        model = from_pretrained(demo, device="cpu", dtype=torch.float32)  # stored bf16; fp32 is faster on a CPU
        tok = Tokenizer.from_pretrained(demo)
    total, _ = count_params(model.config)
    print(f"\nThe demo model: {demo}, a {_fmt(total)}-parameter Qwen3 trained by this project on arithmetic "
          f"(loaded in {time.perf_counter() - t:.1f}s).\n\n> {DEMO_QUESTION}")
    printer = Printer()
    new = 512
    reply = chat(model, tok, DEMO_QUESTION, temperature=0.0, max_new_tokens=new, stream=printer)  # greedy
    printer.end()
    print(_stats(reply, None, new))
    print(f"\nAsk it your own: python -m minqwen3 chat \"What is 352 × 7?\" (add /no_think to skip the thinking)"
          f"\nFor official weights (needs the network): {official}")
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
    if args.tokens < 1:  # before loading two models
        raise ValueError(f"--tokens {args.tokens}: compare at least 1 greedy token")
    return verify(args.model, device=args.device, dtype=args.dtype, new_tokens=args.tokens)


# ---------------------------------------------------------------- chat and generate
def find_model() -> Path:
    """The default --model: official weights if downloaded (weights/Qwen3-*, the first by name), else our own demo
    model; in weights/ of the working directory, then of the source tree (where the demo models ship)."""
    roots = [WEIGHTS] + ([BUNDLED] if BUNDLED.resolve() != WEIGHTS.resolve() else [])
    found = [d for r in roots for d in sorted(r.glob("Qwen3-*"))] + [r / "demo-dense" for r in roots]
    for d in found:
        if (d / "config.json").is_file():
            return d
    raise FileNotFoundError(f"no model found: looked for {WEIGHTS / 'Qwen3-*'} and {WEIGHTS / 'demo-dense'} (also in "
                            f"{BUNDLED}). Get one with `python -m minqwen3 download Qwen/Qwen3-0.6B` (needs the "
                            "network), or pass --model DIR")


def check_device(device: str) -> str:
    """--device as torch will take it: auto = cuda if there is a GPU, else cpu; anything unusable is a named error."""
    import torch
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        d = torch.device(device)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device {device!r} is not a device: use cpu, cuda, cuda:N or auto") from None
    if d.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (use --device cpu)")
    if d.type == "cuda" and d.index is not None and d.index >= torch.cuda.device_count():
        raise ValueError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    if d.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS is not available on this machine (use --device cpu)")
    if d.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device {device}: minqwen3 runs on cpu, cuda or mps")
    return str(d)


def check_text(text: str | None, what: str) -> None:
    """A PROMPT or --system must be real text: invalid UTF-8 in argv arrives as lone surrogates."""
    bad = None if text is None else re.search("[\ud800-\udfff]", text)
    if bad:
        raw = bytes([ord(bad.group()) - 0xDC00]) if ord(bad.group()) >= 0xDC80 else None
        raise ValueError(f"{what} is not valid UTF-8 text" + (f" (byte 0x{raw[0]:02x} at character {bad.start()})"
                                                             if raw else f" (U+{ord(bad.group()):04X})"))


def load(args):
    """The model and tokenizer of args.model, with errors that say what a checkpoint folder must hold."""
    with leave_on_ctrl_c():
        return _load(args)


def _load(args):
    import torch

    from .checkpoint import FOLDER_HELP, from_pretrained
    from .tokenizer import Tokenizer
    path = Path(args.model) if args.model else find_model()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"--model {path} is a file, not a checkpoint folder: {FOLDER_HELP}")
    has_weights = (path / "model.safetensors").is_file() or (path / "model.safetensors.index.json").is_file()
    missing = [f for f, ok in (("config.json", (path / "config.json").is_file()),
                               ("model.safetensors", has_weights)) if not ok]
    if not path.is_dir() or missing:
        what = "does not exist" if not path.is_dir() else f"lacks {' and '.join(missing)}"
        raise FileNotFoundError(f"model folder {path} {what}: {FOLDER_HELP}")
    t = time.perf_counter()
    dtype = None if args.dtype == "auto" else getattr(torch, args.dtype)
    if parallel_run():  # one of several processes (torchrun): this rank's slices only
        from . import parallel
        plan, args.device = parallel.init(args.device, args.experts)
        model = parallel.from_pretrained(path, plan, device=args.device, dtype=dtype)
        args.seed = parallel.shared_seed(args.seed)  # every rank must draw the same tokens
    else:
        if not getattr(args, "eager", False):  # the fast path's imports and first GPU use, while the weights load
            from . import warmstart
            warmstart.start(args.device, dtype)
        model = from_pretrained(path, device=args.device, dtype=dtype)
    if (path / "tokenizer.json").is_file():
        tok = Tokenizer.from_pretrained(path)
    else:
        print(f"note: {path} has no tokenizer.json; using the Qwen3 tokenizer bundled with minqwen3", file=sys.stderr)
        tok = Tokenizer.default()
    p = next(model.parameters())
    where = f"{p.device}" if not parallel_run() else f"{os.environ['WORLD_SIZE']} ranks, experts {args.experts}"
    print(f"loaded {path} ({_fmt(sum(q.numel() for q in model.parameters()))} parameters"
          f"{' on this rank' if parallel_run() else ''}, {p.dtype}, {where}) in {time.perf_counter() - t:.1f}s",
          file=sys.stderr)
    return model, tok


def leave(*signal_args) -> None:
    """Ctrl-C while starting up and loading: leave at once, status 130 (nothing is being written then)."""
    if signal_args:  # called for the signal, not after main() has already said goodbye
        print(file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)  # skipping the interpreter's shutdown, which could re-raise the signal


@contextlib.contextmanager
def leave_on_ctrl_c():
    """Imports and loading run with `leave` as the SIGINT handler (python -m minqwen3 sets it from the start), and
    Ctrl-C raises KeyboardInterrupt again afterwards, to stop an answer. Raising it during an import is what goes
    wrong: library code that swallows it can leave a module half-imported that fails later in odd ways (numpy's
    linalg recursing on itself, seen when Ctrl-C came 0.3 s after the start)."""
    main_thread = threading.current_thread() is threading.main_thread()  # signal handlers belong to it
    if main_thread:
        signal.signal(signal.SIGINT, leave)
    try:
        yield
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, signal.default_int_handler)


def parallel_run() -> bool:
    """Started by torchrun as one of several processes: tensor (and expert) parallel, see minqwen3/parallel.py."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def _sampling(args) -> dict:
    from .assistant import SAMPLING
    return {k: getattr(args, k) for k in SAMPLING if getattr(args, k) is not None}


class Printer:
    """Streams a reply to a terminal: the thinking dimmed (or labelled "thinking:"), then the answer."""
    DIM, RESET = "\033[2m", "\033[0m"

    def __init__(self, out=None, color: bool | None = None):
        self.out = out or sys.stdout
        self.color = (self.out.isatty() and not os.environ.get("NO_COLOR")) if color is None else color
        self.kind, self.held, self.closed = None, "", False

    def _write(self, s: str) -> None:
        self.out.write(s)
        self.out.flush()

    def __call__(self, kind: str, piece: str) -> None:
        if kind == "reasoning":
            if self.closed:  # after </think>: the tail of the budget's early-stop text, not worth showing
                return
            self.closed = "</think>" in piece
            piece = piece.replace("<think>", "").replace("</think>", "")
        if kind != self.kind:
            if not piece.strip("\n"):  # newlines around the think block: show none of them
                return
            if self.kind == "reasoning":
                self._write((self.RESET if self.color else "") + "\n\n")
            if kind == "reasoning":
                self._write(self.DIM + "thinking: " if self.color else "thinking: ")
            self.kind, self.held, piece = kind, "", piece.lstrip("\n")
        # hold trailing newlines back: shown only if more text follows (no blank lines before the answer)
        text = self.held + piece
        self.held = text[len(text.rstrip("\n")):]
        self._write(text[:len(text) - len(self.held)])

    def end(self) -> None:
        self._write((self.RESET if self.color and self.kind == "reasoning" else "") + "\n")
        self.kind, self.held, self.closed = None, "", False


def _stats(reply, budget, max_new_tokens: int) -> str:
    parts = [f"{len(reply.ids)} tokens"]
    if reply.reasoning_tokens:
        parts.append(f"{reply.reasoning_tokens} thinking")
    if reply.budget_hit:
        parts.append(f"thinking budget of {budget} reached")
    if reply.finish_reason == "length":  # the tokens asked for, or the room left in the model's context
        parts.append("cut off at --max-new-tokens" if len(reply.ids) >= max_new_tokens
                     else "cut off: the model's context is full")
    return f"[{', '.join(parts)}; {reply.tokens_per_second:.1f} tokens/s, {reply.seconds:.1f}s]"


def number(kind: type, low: float, strict: bool = True):
    """An argparse type for the scripts' flags: a finite `kind` (int or float) above `low`, or at least `low` with
    strict=False; argparse's error then names the flag and the value, before any work."""
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(v) or v < low or (strict and v == low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low}, got {text}")
        return v
    return parse


def check_args(args) -> None:
    """The prompt, the system prompt and the sampling settings, before the seconds of loading a model."""
    from .generation import check_sampling
    check_text(args.prompt, "PROMPT")
    check_text(getattr(args, "system", None), "--system")
    if args.prompt is not None and not args.prompt.strip():
        raise ValueError("PROMPT is empty: give a question (or leave PROMPT out to start a conversation)"
                         if args.cmd == "chat" else "PROMPT is empty: generate continues a text, so give it one")
    check_sampling(**_sampling(args), seed=args.seed, max_new_tokens=args.max_new_tokens,
                   thinking_budget=getattr(args, "thinking_budget", None))


def cmd_chat(args) -> int:
    """Answer PROMPT once, or talk turn by turn (history kept the way the template expects) until /exit or EOF."""
    from .assistant import chat
    from .generation import ContextError
    check_args(args)
    if parallel_run() and args.prompt is None:
        raise ValueError("under torchrun, chat answers one PROMPT (give it); a conversation needs one process")
    model, tok = load(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    printer = Printer()

    def turn(messages):
        reply = chat(model, tok, messages, enable_thinking=not args.no_think, thinking_budget=args.thinking_budget,
                     max_new_tokens=args.max_new_tokens, seed=args.seed, stream=printer,
                     fast=False if args.eager else None, **_sampling(args))
        printer.end()
        print(_stats(reply, args.thinking_budget, args.max_new_tokens), file=sys.stderr)
        return reply

    if args.prompt is not None:
        try:
            turn(system + [{"role": "user", "content": args.prompt}])
        except BaseException:  # Ctrl-C (status 130) or an error: the colour reset and a newline, then the error line
            printer.end()
            raise
        return 0
    print("chat: /exit or Ctrl-D quits; /reset forgets the conversation; " + (
          "/think and /no_think in a message switch thinking for it" if not args.no_think else
          "thinking is off (--no-think: the template closes every think block, so /think does not open one)"),
          file=sys.stderr)
    history = list(system)
    # invalid UTF-8 on stdin arrives as surrogates, refused line by line (a decoding error would end the conversation)
    try:
        sys.stdin.reconfigure(errors="surrogateescape")
    except (AttributeError, ValueError):  # not a text file, or already read from
        pass
    refused = 0  # lines that were not text: the exit status says so at the end
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 1 if refused else 0
        try:
            check_text(line, "this line")
        except ValueError as e:
            print(f"error: {e}; type it again", file=sys.stderr)
            refused += 1
            continue
        if line.strip() in ("/exit", "/quit"):
            return 1 if refused else 0
        if line.strip() == "/reset":
            history = list(system)
            continue
        if not line.strip():
            continue
        try:
            reply = turn(history + [{"role": "user", "content": line}])
        except KeyboardInterrupt:  # stop this answer, keep the conversation
            printer.end()
            print("[interrupted]", file=sys.stderr)
            continue
        except ContextError as e:  # before any model work: the conversation stays as it was
            print(f"error: {e}; this message was left out: type a shorter one"
                  f"{', or /reset to start over' if len(history) > len(system) else ''}", file=sys.stderr)
            refused += 1
            continue
        # the assistant turn goes back with its reasoning (Reply.message()): the template drops it from turns
        # before the last user message
        history += [{"role": "user", "content": line}, reply.message()]


def cmd_generate(args) -> int:
    """Raw completion: PROMPT is encoded as is (no chat template) and continued."""
    from .generation import generate
    check_args(args)
    model, tok = load(args)
    ids = tok.encode(args.prompt)
    decoder = tok.stream()
    n = [0]

    def show(t):
        n[0] += 1
        sys.stdout.write(decoder.push(int(t[0])))
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    t = time.perf_counter()
    try:
        generate(model, [ids], args.max_new_tokens, seed=args.seed, on_token=show, vocab_limit=len(tok),
                 fast=False if args.eager else None, **_sampling(args))
    except BaseException:  # Ctrl-C (status 130) or an error: end the text's line first, then the error's own
        print()
        raise
    print(decoder.flush())
    dt = time.perf_counter() - t
    print(f"[{n[0]} tokens; {n[0] / dt:.1f} tokens/s, {dt:.1f}s]", file=sys.stderr)
    return 0


def cmd_bench(args) -> int:
    """Decode and prefill speed against the measured bandwidth and matmul ceilings, optionally vs transformers."""
    from .bench import run
    return run(args.model, args.device, args.dtype, args.prompt, args.new, args.prefill, args.compare or [],
               args.repeats, not args.no_eager, args.out, args.profile, args.batch, args.first_call, args.experts)


DEVICE_HELP = "cpu, cuda, cuda:N, or auto: cuda if there is a GPU, else cpu (default: %(default)s)"
EXPERTS_HELP = ("under torchrun, how a MoE model's experts are split: tp, each expert across all ranks; ep, whole "
                "experts per rank (default: %(default)s)")


def _model_args(s: argparse.ArgumentParser, per_mode: bool) -> None:
    """The flags of chat and generate. per_mode: chat's sampling defaults depend on the mode (thinking or not)."""
    def default(thinking, non_thinking) -> str:
        if not per_mode:
            return f"default: {non_thinking}, Qwen's non-thinking setting"
        return f"default: {thinking}" if thinking == non_thinking else \
            f"default: {thinking} thinking, {non_thinking} non-thinking, Qwen's"
    s.add_argument("--model", help="checkpoint folder (default: official weights in weights/Qwen3-*, else the "
                   "bundled demo model weights/demo-dense)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="auto: as stored in the checkpoint (default: %(default)s)")
    s.add_argument("--max-new-tokens", type=int, default=4096, help="at most this many new tokens" +
                   (", thinking included" if per_mode else "") + " (default: %(default)s, or what the context leaves)")
    s.add_argument("--seed", type=int, help="fix the sampling for a reproducible reply (default: none, a new "
                   "reply each time)")
    T, N = {"presence_penalty": 0.0, **THINKING_DEFAULTS}, {"presence_penalty": 0.0, **NON_THINKING_DEFAULTS}
    defaults = {} if per_mode else N
    for flag, kind, what in (("temperature", float, "0 = greedy"), ("top_k", int, "0 = off"), ("top_p", float, "1 = off"),
                             ("min_p", float, "0 = off"), ("presence_penalty", float, "0 to 1.5 curbs repetition")):
        s.add_argument("--" + flag.replace("_", "-"), type=kind, default=defaults.get(flag),
                       help=f"{what} ({default(T[flag], N[flag])})")
    s.add_argument("--eager", action="store_true", help="on a GPU, decode without torch.compile and CUDA graphs "
                   "(the fast path compiles for ~30 s before the first reply, seconds once ~/.cache/minqwen3 holds its "
                   "compile caches, then streams in bursts of 16 tokens)")
    s.add_argument("--experts", choices=["tp", "ep"], default="tp", help=EXPERTS_HELP)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m minqwen3", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("demo", help="the main job: show the models, run the demo")
    s.set_defaults(fn=cmd_demo)
    s = sub.add_parser("download", help="download official weights (needs the network)")
    s.add_argument("name", help="e.g. Qwen/Qwen3-0.6B")
    s.add_argument("--dir", help="destination (default weights/<name without its Qwen/ prefix>, e.g. "
                   "weights/Qwen3-0.6B)")
    s.set_defaults(fn=cmd_download)
    s = sub.add_parser("verify", help="compare a checkpoint in minqwen3 against transformers")
    s.add_argument("model", help="checkpoint folder")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="(default: %(default)s)")
    s.add_argument("--tokens", type=int, default=20, help="greedy tokens to compare per prompt (default: %(default)s)")
    s.set_defaults(fn=cmd_verify)
    s = sub.add_parser("chat", help="talk to a model (one PROMPT, or a conversation)",
                       description="Sampling defaults to Qwen's per mode: thinking {}, non-thinking {}; the flags "
                                   "override them.".format(*(", ".join(f"{k} {v}" for k, v in d.items())
                                                             for d in (THINKING_DEFAULTS, NON_THINKING_DEFAULTS))))
    _model_args(s, per_mode=True)
    mode = s.add_mutually_exclusive_group()  # without thinking there is no budget to spend
    mode.add_argument("--no-think", action="store_true", help="answer without thinking (empty think block)")
    mode.add_argument("--thinking-budget", type=int, help="at most N thinking tokens, then answer (default: none, "
                      "unlimited)")
    s.add_argument("--system", help="a system prompt (default: none)")
    s.add_argument("prompt", nargs="?", help="answer this once and exit; without it, a conversation")
    s.set_defaults(fn=cmd_chat)
    s = sub.add_parser("generate", help="continue a text as is, without the chat template")
    _model_args(s, per_mode=False)
    s.add_argument("prompt")
    s.set_defaults(fn=cmd_generate)
    s = sub.add_parser("bench", help="tokens/s against the memory-bandwidth limit (and transformers)")
    s.add_argument("--model", nargs="+", required=True, help="official names (random weights in their shapes) "
                   "or checkpoint folders, e.g. Qwen3-0.6B Qwen3-8B Qwen3-30B-A3B")
    s.add_argument("--compare", nargs="*", metavar="PEER", help="transformers (eager), transformers-static "
                   "(static cache + torch.compile): measured in the same process on the same weights (default: none)")
    s.add_argument("--device", default="auto", help=DEVICE_HELP)
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], help="default: bfloat16 on GPU, else float32")
    s.add_argument("--prompt", type=int, default=128, help="prompt tokens (default: %(default)s)")
    s.add_argument("--new", type=int, default=128, help="new tokens (default: %(default)s)")
    s.add_argument("--prefill", type=int, help="prompt tokens of the prefill measurement (default 4096 on GPU, "
                   "512 on CPU, less than the shortest context among the models; 0 = skip)")
    s.add_argument("--repeats", type=int, default=3, help="timed rounds, the best of them taken (default: "
                   "%(default)s)")
    s.add_argument("--no-eager", action="store_true", help="skip minqwen3's eager generate() (the token reference)")
    s.add_argument("--out", help="also write every number to this JSON file (default: none)")
    s.add_argument("--profile", action="store_true", help="list the GPU kernels of minqwen3's decode step")
    s.add_argument("--batch", type=int, nargs="+", default=[1], metavar="N", help="rows per batch, each its own "
                   "random prompt; one table per N (default: %(default)s)")
    s.add_argument("--first-call", action="store_true", help="also time generate()'s first call (compile "
                   "included) in three fresh processes: with empty compile caches, then with what the first left, then "
                   "so again with the warm-start thread started while the model loads")
    s.add_argument("--experts", choices=["tp", "ep"], default="tp", help=EXPERTS_HELP)
    s.set_defaults(fn=cmd_bench)
    return p


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        bytecode.use_cache()  # before torch's first import: where its bytecode is not kept, ~1-3 s of every start
        if args.fn is cmd_download and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a download cleans up after Ctrl-C
        if parallel_run() and args.fn not in (cmd_generate, cmd_chat, cmd_bench):
            raise ValueError(f"under torchrun only generate, chat PROMPT and bench split a model over the processes: "
                             f"run {args.cmd} in one process (python -m minqwen3 {args.cmd} ...)")
        if getattr(args, "device", None) is not None:
            args.device = check_device(args.device)
        return args.fn(args)
    except KeyboardInterrupt:  # Ctrl-C while loading, at the prompt or during a reply: quietly, as a shell expects
        print(file=sys.stderr)
        return 130
    except (OSError, ValueError, TypeError) as e:  # errors a user can act on: say it in one line, no traceback
        _error(" ".join(str(e).split()))
        return 1
    except Exception as e:  # anything else is a bug in minqwen3: still one line, with what to report
        if parallel_run() and _timed_out(e):  # a peer that neither answers nor fails: stopped, or stuck
            from .parallel import collective_timeout
            _error(f"another process of this torchrun launch did not answer within {collective_timeout():.0f} s "
                   f"(stopped, or stuck; MINQWEN3_TIMEOUT_S sets the wait): {type(e).__name__}: "
                   f"{' '.join(str(e).split())[:200]}")
            return 1
        if parallel_run() and _peer_left(e):  # this process is fine: another one failed first, or quit
            _error("another process of this torchrun launch failed or quit (its error is printed above), and this "
                   f"one lost it: {type(e).__name__}")
            return 1
        _error(f"{type(e).__name__}: {' '.join(str(e).split())} (a bug in minqwen3? please report it)")
        return 1


def _error(message: str) -> None:
    """One line on stderr, 'rank N: ' first in a torchrun process other than rank 0 (onto the real stderr)."""
    print(f"{_rank()}error: {message}", file=sys.__stderr__ if _rank() else sys.stderr)


def _peer_left(e: Exception) -> bool:
    """A collective that failed because a peer is gone: torch's DistError, or gloo's / NCCL's connection errors."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and isinstance(e, getattr(dist, "DistError", ())):
        return True
    text = str(e)
    return isinstance(e, RuntimeError) and any(k in text for k in (
        "Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
        "Socket Timeout", "gloo/transport"))


def _timed_out(e: Exception) -> bool:
    """A collective that gave up waiting for a peer (gloo: "Timed out waiting ... for recv"; NCCL: its watchdog)."""
    text = str(e).lower()
    return isinstance(e, RuntimeError) and ("timed out" in text or "timeout" in text and "socket" not in text)


def _rank() -> str:
    """'rank N: ' in a process of a torchrun launch other than rank 0 (whose output alone is shown), else ''."""
    rank = int(os.environ.get("RANK", "0")) if parallel_run() else 0
    return f"rank {rank}: " if rank else ""
