"""Measure a demo checkpoint on held-out arithmetic problems: thinking vs non-thinking accuracy, the soft switches,
and accuracy as a function of the thinking budget.

    python scripts/eval_demo.py weights/demo-dense --json docs/demo_eval_dense.json --plot docs/demo_budget.png

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
from minqwen3.chat import early_stop_ids  # noqa: E402
from minqwen3.chat_template import parse_reply  # noqa: E402
from minqwen3.tokenizer import Tokenizer  # noqa: E402

BUDGETS = (0, 16, 32, 48, 64, 80, 96, 112, 128, 144, 160, 176)
MAX_THINK, MAX_ANSWER = 320, 24
EMPTY_THINK = "<think>\n\n</think>"
# mode -> (text appended to the question, enable_thinking)
MODES = {"thinking": ("", True), "non-thinking": ("", False), "/think": (" /think", True),
         "/no_think": (" /no_think", True)}


def _until_stop(row: list[int], stops: set[int]) -> list[int]:
    for i, t in enumerate(row):
        if t in stops:
            return row[:i + 1]
    return row


def _generate(model, rows: list[list[int]], n: int, stops: tuple[int, ...], pad_id: int) -> list[list[int]]:
    """Greedy continuations (up to and including a stop token), in groups small enough for the prefill logits.

    The model returns fp32 logits for every prompt position: rows x length x 151,936 x 4 bytes, which for 250
    rows of 200 tokens is 30 GB. Groups keep that under ~2 GB on a CPU (8 GB on a GPU).
    """
    V = model.config.vocab_size
    cap = (8e9 if next(model.parameters()).is_cuda else 2e9) / (4 * V * max(len(r) for r in rows))
    group = max(1, int(cap))
    out = []
    for i in range(0, len(rows), group):
        chunk = rows[i:i + group]
        ids = minqwen3.generate(model, chunk, n, stop_ids=stops, pad_id=pad_id)
        T = max(len(r) for r in chunk)
        out += [_until_stop(row, set(stops)) for row in ids[:, T:].tolist()]
    return out


@torch.no_grad()
def replies(model, tok: Tokenizer, prompts: list[list[int]], budget: int | None = None) -> list[dict]:
    """Greedy replies to many prompts: {"text", "reasoning", "content", "budget_hit", "think_tokens"} each."""
    end, stops = tok.end_think_id, (tok.im_end_id, tok.endoftext_id)
    # phase 1: the thinking, up to </think> or the budget (+1: the <think> token itself)
    firsts = _generate(model, prompts, MAX_THINK if budget is None else budget + 1, (end, *stops), tok.endoftext_id)
    forced = [[] if g and g[-1] in (end, *stops) else early_stop_ids(tok, p + g)  # the budget ran out: stop it
              for p, g in zip(prompts, firsts)]
    todo = [j for j, g in enumerate(firsts) if not (g and g[-1] in stops)]  # not yet answered
    # phase 2: the answers
    seconds = [[] for _ in prompts]
    if todo:
        rows = [prompts[j] + firsts[j] + forced[j] for j in todo]
        for j, g in zip(todo, _generate(model, rows, MAX_ANSWER, stops, tok.endoftext_id)):
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


def evaluate(model, tok: Tokenizer, items: list[tuple[str, arithmetic.Problem]], budgets=BUDGETS,
             log=print) -> dict:
    """Accuracy per category and mode, the soft-switch rates, and the budget curve (all categories together)."""
    problems = [p for _, p in items]
    res = {"n": len(items), "categories": sorted({c for c, _ in items}, key=[c for c, _ in items].index)}

    def run(mode: str, budget: int | None = None) -> list[dict]:
        t = time.perf_counter()
        r = replies(model, tok, prompt_ids(tok, problems, mode), budget)
        for rep, p in zip(r, problems):
            rep["correct"] = arithmetic.check(p, rep["content"])
        acc = sum(x["correct"] for x in r) / len(r)
        log(f"  {mode:<13} budget {'-' if budget is None else budget:>4}: accuracy {acc:.3f} "
            f"({time.perf_counter() - t:.1f} s)")
        return r

    def by_category(r: list[dict]) -> dict:
        acc = defaultdict(list)
        for (c, _), x in zip(items, r):
            acc[c].append(x["correct"])
            acc["all"].append(x["correct"])
        return {c: sum(v) / len(v) for c, v in acc.items()}

    think, direct = run("thinking"), run("non-thinking")
    res["accuracy"] = {"thinking": by_category(think), "non-thinking": by_category(direct)}
    res["mean_think_tokens"] = sum(x["think_tokens"] for x in think) / len(think)
    soft_think, soft_no = run("/think"), run("/no_think")
    res["soft_switch"] = {
        "/think: thought": sum(bool(x["reasoning"]) for x in soft_think) / len(soft_think),
        "/think: accuracy": sum(x["correct"] for x in soft_think) / len(soft_think),
        "/no_think: empty think block": sum(x["text"].startswith(EMPTY_THINK) for x in soft_no) / len(soft_no),
        "/no_think: accuracy": sum(x["correct"] for x in soft_no) / len(soft_no),
    }
    curve = []
    for b in budgets:
        r = run("thinking", b)
        curve.append({"budget": b, "accuracy": sum(x["correct"] for x in r) / len(r),
                      "budget_hit": sum(x["budget_hit"] for x in r) / len(r), **{
                          f"accuracy {c}": v for c, v in by_category(r).items() if c != "all"}})
    curve.append({"budget": None, "accuracy": res["accuracy"]["thinking"]["all"],
                  "budget_hit": sum(x["budget_hit"] for x in think) / len(think)})
    res["budget_curve"] = curve
    res["examples"] = {"thinking": think[0]["text"], "non-thinking": direct[0]["text"],
                       "/no_think": soft_no[0]["text"]}
    return res


def markdown(res: dict, name: str) -> str:
    cats = res["categories"] + ["all"]
    acc = res["accuracy"]
    lines = [f"| {name} | " + " | ".join(cats) + " |", "|---|" + "---:|" * len(cats)]
    for mode in ("thinking", "non-thinking"):
        lines.append(f"| {mode} | " + " | ".join(f"{100 * acc[mode][c]:.0f}%" for c in cats) + " |")
    lines += ["", "| soft switch | rate |", "|---|---:|"]
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
        line, = ax.plot([c["budget"] for c in curve], [100 * c["accuracy"] for c in curve], "o-",
                        label=f"{name} ({res['n']} held-out problems)")
        ax.axhline(100 * res["accuracy"]["thinking"]["all"], color=line.get_color(), ls=":", lw=1)
        ax.axhline(100 * res["accuracy"]["non-thinking"]["all"], color=line.get_color(), ls="--", lw=1)
    ax.set_xlabel("thinking budget (tokens)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title("Accuracy vs thinking budget (dotted: unlimited, dashed: no thinking)")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("models", nargs="+", help="checkpoint folders, e.g. weights/demo-dense weights/demo-moe")
    p.add_argument("--n", type=int, default=100, help="held-out problems per category (5 categories)")
    p.add_argument("--budgets", default=",".join(map(str, BUDGETS)))
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json", help="write the results here (merged with what the file holds: one entry per model)")
    p.add_argument("--plot", help="write the budget curve here (png)")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    items = arithmetic.eval_problems(args.n)
    budgets = tuple(int(b) for b in args.budgets.split(",") if b)
    # results merge into an existing --json file, one entry per model, written as each model finishes
    results = json.loads(Path(args.json).read_text()) if args.json and Path(args.json).is_file() else {}
    for path in args.models:
        # bf16 on GPU as stored; fp32 on CPU, where bf16 matmuls are slow (the bf16 values convert exactly)
        dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
        model = minqwen3.from_pretrained(path, device=args.device, dtype=dtype)
        tok = Tokenizer.from_pretrained(path)
        name = Path(path).name
        print(f"{name}: {len(items)} held-out problems on {args.device}")
        t = time.perf_counter()
        results[name] = evaluate(model, tok, items, budgets)
        results[name]["seconds"] = round(time.perf_counter() - t, 1)
        print(markdown(results[name], name) + "\n")
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
