"""Measure a demo checkpoint on held-out arithmetic problems: thinking vs non-thinking accuracy per category, asked
in training's phrasings and in phrasings training never saw (with 95% intervals), the soft switches, accuracy as a
function of the thinking budget, and ten short questions typed without spaces.

    python scripts/eval_demo.py weights/demo-dense weights/demo-moe --json docs/demo_eval.json --plot docs/demo_budget.png

Decoding is greedy. The budget works as in minqwen3.chat: after `budget` tokens of thinking (counted after <think>)
the tech report's early-stop text, ending in </think>, is fed in and the model writes its answer. Here it is done in
batches: generate until </think> or the budget, append the early-stop text where the budget ran out, then generate
the answers (a test checks that this gives minqwen3.chat's replies).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import arithmetic  # noqa: E402

import minqwen3  # noqa: E402
from minqwen3.assistant import early_stop_ids  # noqa: E402
from minqwen3.chat_template import parse_reply  # noqa: E402
from minqwen3.checkpoint import atomic_write  # noqa: E402
from minqwen3.cli import number  # noqa: E402
from minqwen3.tokenizer import Tokenizer  # noqa: E402

BUDGETS = (0, 32, 64, 96, 128, 160, 192, 224, 256, 320, 384)
MAX_THINK, MAX_ANSWER = 480, 24  # the longest trace (999 × 99) is about 390 tokens
EMPTY_THINK = "<think>\n\n</think>"
# mode -> (text appended to the question, enable_thinking)
MODES = {"thinking": ("", True), "non-thinking": ("", False), "/think": (" /think", True),
         "/no_think": (" /no_think", True)}


# ten short questions typed without spaces, the way people type them (tests/test_demo.py asks them too)
NO_SPACES = (("What is 17+25?", 42), ("What is 12*11?", 132), ("what is 503-78", 425), ("9x8=?", 72),
             ("Compute 1234+5678.", 6912), ("64-29=", 35), ("what is 25x4?", 100), ("WHAT IS 999+1", 1000),
             ("7×13?", 91), ("How much is 4,500-1,250?", 3250))


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stops:
            return row[:i + 1]
    return row


def _generate(model, rows: list[list[int]], n: int, stops: tuple[int, ...], pad_id: int,
              vocab_limit: int | None = None) -> list[list[int]]:
    """Greedy continuations (up to and including a stop token), of ids below vocab_limit, in groups small enough for
    the prefill logits.

    The model returns fp32 logits for every prompt position: rows x length x 151,936 x 4 bytes, which for 250
    rows of 200 tokens is 30 GB. Groups keep that under ~2 GB on a CPU (8 GB on a GPU).
    """
    V = model.config.vocab_size
    cuda = next(model.parameters()).is_cuda
    cap = (32e9 if cuda else 2e9) / (4 * V * max(len(r) for r in rows))
    group = max(1, int(cap))
    out = []
    for i in range(0, len(rows), group):
        chunk = rows[i:i + group]
        # eager on a GPU too: every group has its own batch size and length, each a new compilation
        ids = minqwen3.generate(model, chunk, n, stop_ids=stops, pad_id=pad_id, fast=False, vocab_limit=vocab_limit)
        T = max(len(r) for r in chunk)
        out += [_until_stop(row, set(stops)) for row in ids[:, T:].tolist()]
    return out


@torch.no_grad()
def replies(model, tok: Tokenizer, prompts: list[list[int]], budget: int | None = None) -> list[dict]:
    """Greedy replies to many prompts: {"text", "reasoning", "content", "budget_hit", "think_tokens"} each."""
    end, stops = tok.end_think_id, (tok.im_end_id, tok.endoftext_id)
    limit = len(tok)  # the embedding's rows past the tokenizer are padding: no token decode could spell
    # phase 1: the thinking, up to </think> or the budget (+1: the <think> token itself)
    firsts = _generate(model, prompts, MAX_THINK if budget is None else budget + 1, (end, *stops), tok.endoftext_id,
                       limit)
    forced = [[] if g and g[-1] in (end, *stops) else early_stop_ids(tok, p + g)  # the budget ran out: stop it
              for p, g in zip(prompts, firsts)]
    todo = [j for j, g in enumerate(firsts) if not (g and g[-1] in stops)]  # not yet answered
    # phase 2: the answers
    seconds = [[] for _ in prompts]
    if todo:
        rows = [prompts[j] + firsts[j] + forced[j] for j in todo]
        for j, g in zip(todo, _generate(model, rows, MAX_ANSWER, stops, tok.endoftext_id, limit)):
            seconds[j] = g
    out = []
    for g1, f, g2 in zip(firsts, forced, seconds):
        gen = g1 + f + g2
        text = tok.decode(gen[:-1] if gen and gen[-1] in stops else gen)
        reasoning, content = parse_reply(text)
        if f:  # the early-stop text leaves "." after </think>, as in minqwen3.chat
            content = content.removeprefix(".").lstrip("\n")
        think_tokens = g1.index(end) if end in g1 else len(g1)  # <think> ... up to </think>
        out.append({"text": text, "reasoning": reasoning, "content": content, "budget_hit": bool(f),
                    "think_tokens": max(think_tokens - 1, 0)})
    return out


def prompt_ids(tok: Tokenizer, problems, mode: str) -> list[list[int]]:
    suffix, thinking = MODES[mode]
    return [tok.encode_messages([{"role": "user", "content": p.question + suffix}], add_generation_prompt=True,
                                enable_thinking=thinking) for p in problems]


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for k successes in n trials (sound near 0% and 100%, unlike the normal one)."""
    if n == 0:
        return 0.0, 1.0
    p = k / n
    mid, half = (p + z * z / (2 * n)), z * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, (mid - half) / (1 + z * z / n)), min(1.0, (mid + half) / (1 + z * z / n))


def evaluate(model, tok: Tokenizer, splits: dict[str, list[tuple[str, arithmetic.Problem]]], budgets=BUDGETS,
             log=print, save=None) -> dict:
    """Per phrasing split: accuracy per category and mode (with 95% intervals). On the first split: the soft-switch
    rates and the budget curve (all categories together). save(res), if given, is called as parts are done."""
    first = next(iter(splits))
    res = {"n": sum(len(v) for v in splits.values()), "categories": list(dict.fromkeys(c for c, _ in splits[first])),
           "splits": {}}

    def run(items, mode: str, budget: int | None = None) -> list[dict]:
        t = time.perf_counter()
        problems = [p for _, p in items]
        r = replies(model, tok, prompt_ids(tok, problems, mode), budget)
        for rep, p in zip(r, problems):
            rep["correct"] = arithmetic.check(p, rep["content"])
        acc = sum(x["correct"] for x in r) / len(r)
        log(f"  {mode:<13} budget {'-' if budget is None else budget:>4}: accuracy {acc:.3f} "
            f"({time.perf_counter() - t:.1f} s)")
        return r

    def by_category(items, r: list[dict]) -> dict:
        acc = defaultdict(list)
        for (c, _), x in zip(items, r):
            acc[c].append(x["correct"])
            acc["all"].append(x["correct"])
        return acc

    for split, items in splits.items():
        log(f" {split}: {len(items)} problems")
        think, direct = run(items, "thinking"), run(items, "non-thinking")
        s = {"n": {}, "accuracy": {}, "interval": {}}
        for mode, r in (("thinking", think), ("non-thinking", direct)):
            acc = by_category(items, r)
            s["n"] = {c: len(v) for c, v in acc.items()}
            s["accuracy"][mode] = {c: sum(v) / len(v) for c, v in acc.items()}
            s["interval"][mode] = {c: [round(x, 4) for x in wilson(sum(v), len(v))] for c, v in acc.items()}
        s["mean_think_tokens"] = sum(x["think_tokens"] for x in think) / len(think)
        s["examples"] = {"thinking": [items[0][1].question, think[0]["text"]],
                         "non-thinking": [items[0][1].question, direct[0]["text"]],
                         "wrong": [[p.question, x["text"]] for (_, p), x in zip(items, think) if not x["correct"]][:5]}
        res["splits"][split] = s
        if save:
            save(res)
        if split != first:
            continue
        soft_think, soft_no = run(items, "/think"), run(items, "/no_think")
        res["soft_switch"] = {
            "/think: thought": sum(bool(x["reasoning"]) for x in soft_think) / len(soft_think),
            "/think: accuracy": sum(x["correct"] for x in soft_think) / len(soft_think),
            "/no_think: empty think block": sum(x["text"].startswith(EMPTY_THINK) for x in soft_no) / len(soft_no),
            "/no_think: accuracy": sum(x["correct"] for x in soft_no) / len(soft_no),
        }
        curve = []
        for b in budgets:
            if save:
                save(res | {"budget_curve": curve, "budget_split": split})
            r = run(items, "thinking", b)
            curve.append({"budget": b, "accuracy": sum(x["correct"] for x in r) / len(r),
                          "budget_hit": sum(x["budget_hit"] for x in r) / len(r), **{
                              f"accuracy {c}": sum(v) / len(v) for c, v in by_category(items, r).items()
                              if c != "all"}})
        curve.append({"budget": None, "accuracy": s["accuracy"]["thinking"]["all"],
                      "budget_hit": sum(x["budget_hit"] for x in think) / len(think)})
        res["budget_curve"] = curve
        res["budget_split"] = split
    return res


def markdown(res: dict, name: str) -> str:
    cats = res["categories"] + ["all"]
    lines = []
    for split, s in res["splits"].items():
        lines += [f"| {name}, {split} | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
        for mode in ("thinking", "non-thinking"):
            acc, ci = s["accuracy"][mode], s["interval"][mode]
            lines.append(f"| {mode} | " + " | ".join(
                f"{100 * acc[c]:.0f}% ({100 * ci[c][0]:.0f}-{100 * ci[c][1]:.0f})" for c in cats) + " |")
        lines.append("")
    lines += ["| soft switch | rate |", "|---|---:|"]
    lines += [f"| {k} | {100 * v:.0f}% |" for k, v in res["soft_switch"].items()]
    lines += ["", "| thinking budget (tokens) | " + " | ".join(
        "none" if c["budget"] is None else str(c["budget"]) for c in res["budget_curve"]) + " |",
        "|---|" + "---:|" * len(res["budget_curve"]),
        "| accuracy | " + " | ".join(f"{100 * c['accuracy']:.0f}%" for c in res["budget_curve"]) + " |",
        "| budget ran out | " + " | ".join(f"{100 * c['budget_hit']:.0f}%" for c in res["budget_curve"]) + " |"]
    return "\n".join(lines)


def plot(results: dict[str, dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=120)
    for name, res in results.items():
        curve = [c for c in res["budget_curve"] if c["budget"] is not None]
        acc = res["splits"][res["budget_split"]]["accuracy"]
        line, = ax.plot([c["budget"] for c in curve], [100 * c["accuracy"] for c in curve], "o-",
                        label=f"{name} ({res['splits'][res['budget_split']]['n']['all']} "
                              "held-out problems)")
        ax.axhline(100 * acc["thinking"]["all"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(100 * acc["non-thinking"]["all"], color=line.get_color(), ls="--", lw=1)
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs thinking budget (dotted: unlimited, dashed: no thinking)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def write_json(path: str, obj) -> None:
    """Write obj as JSON to path whole or not at all: a run cut short mid-write leaves the file it had."""
    atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=1) + "\n"))


def _budgets(text: str) -> tuple[int, ...]:
    """An argparse type: comma-separated thinking budgets, each an integer >= 0."""
    try:
        return tuple(number(int, 0, strict=False)(b) for b in text.split(",") if b.strip())
    except argparse.ArgumentTypeError as e:
        raise argparse.ArgumentTypeError(f"{text!r}: each budget must be an integer >= 0 ({e})") from None


def main(argv: list[str] | None = None) -> int:
    global MAX_THINK
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint folders, e.g. weights/demo-dense weights/demo-moe")
    p.add_argument("--n", type=number(int, 1, strict=False), default=100,
                   help=f"held-out problems per category and phrasing split ({len(arithmetic.CATEGORIES)} categories, "
                   "2 splits)")
    p.add_argument("--budgets", type=_budgets, default=BUDGETS, help="comma-separated thinking budgets")
    p.add_argument("--max-think", type=number(int, 1, strict=False), default=MAX_THINK,
                   help="most thinking tokens without a budget")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here (merged with what the file holds: one entry per model)")
    p.add_argument("--plot", help="write the budget curve here (png)")
    args = p.parse_args(argv)
    MAX_THINK = args.max_think
    # results merge into an existing --json file, one entry per model, written whole as each model finishes
    results = {}
    if args.json and Path(args.json).is_file():
        try:
            results = json.loads(Path(args.json).read_text())
        except ValueError as e:
            p.error(f"--json {args.json}: not a JSON file ({e}); results merge into it: mend it or name another")
        if not isinstance(results, dict):
            p.error(f"--json {args.json}: holds a {type(results).__name__}, not an object of results per model")

    torch.manual_seed(0)
    splits = {"training phrasings": arithmetic.eval_problems(args.n, phrasing="train"),
              "held-out phrasings": arithmetic.eval_problems(args.n, phrasing="held_out")}
    for path in args.models:
        # bf16 on GPU as stored; fp32 on CPU, where bf16 matmuls are slow (the bf16 values convert exactly)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model = minqwen3.from_pretrained(path, device=args.device, dtype=dtype)
        tok = Tokenizer.from_pretrained(path)
        name = Path(path).name
        print(f"{name}: {sum(map(len, splits.values()))} held-out problems on {args.device}")
        t = time.perf_counter()

        def save(res: dict) -> None:  # what is done so far, in case the run is cut short
            if args.json:
                write_json(args.json, results | {name: res})

        results[name] = evaluate(model, tok, splits, args.budgets, save=save)
        reps = replies(model, tok, [tok.encode_messages([{"role": "user", "content": q}], add_generation_prompt=True)
                                    for q, _ in NO_SPACES])
        results[name]["typed without spaces"] = [[q, r["content"], arithmetic.extract_answer(r["content"]) == a]
                                                 for (q, a), r in zip(NO_SPACES, reps)]
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(markdown(results[name], name) + "\n")
        if args.json:
            write_json(args.json, results)
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
