"""Distillation vs reasoning RL at equal compute (Qwen3 tech report §4.5 and Table 21, in miniature): from one
student checkpoint made by off-policy distillation, continue with (a) on-policy distillation or (b) GRPO.

    python scripts/rl_experiment.py --work out/rl                 # all stages; re-run to resume
    python scripts/rl_experiment.py --work out/rl --report out/rl/report   # table + plot (.md, .png)

Stages, each stored in --work, each skipped when its output is there:
  1. the teacher's (weights/demo-dense) replies to training problems, top-20 log-probs stored, wrong ones dropped
     (scripts/distill_experiment.py's build_pool: the distillation experiment's off-policy data);
  2. the start: the student (the teacher with --layers kept) trained off-policy on them for --off-tflops
     (distill_experiment.run_arm("off")), saved as start.safetensors and evaluated;
  3. per seed, the two arms from the start, each given --arm-tflops (FLOPs, 2 per multiply-add, backward = 2×
     forward): (a) "on-policy": the student samples (both modes, per-mode defaults), the teacher scores the same tokens,
     reverse-KL step (minqwen3.distill.onpolicy_step); teacher passes counted; (b) "grpo": --group replies to each of
     --prompts prompts, reward 1 for a well-formed right reply (minqwen3.rl.check_reply), clipped policy-gradient step
     (minqwen3.rl.grpo_step); every sample counted. Greedy accuracy on the held-out problems at --curve points.
Evaluation per mode (/think, /no_think) on --n-eval held-out problems (scripts/arithmetic.py's eval_problems):
greedy accuracy, and pass@k (k = 1 .. --samples) from --samples sampled replies per problem, per-mode defaults.
One row per stage and (arm, seed) in results.jsonl; --deadline stops starting new stages after that many seconds.
The stored files and rows record the arguments they were made with and the teacher's SHA-256: a re-run with other
values is refused, naming the argument.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import arithmetic  # noqa: E402
import distill_experiment as de  # noqa: E402

from minqwen3.checkpoint import atomic_write, read_metadata  # noqa: E402
from minqwen3.cli import number  # noqa: E402
from minqwen3.distill import DistillConfig, onpolicy_step, sample_replies  # noqa: E402
from minqwen3.rl import GRPOConfig, check_reply, grpo_step  # noqa: E402
from minqwen3.tokenizer import ENDOFTEXT  # noqa: E402
from minqwen3.train import TrainConfig, make_optimizer  # noqa: E402

ARMS = ("on-policy", "grpo")
MODES = de.MODES
LABEL = {"on-policy": "(a) on-policy distillation", "grpo": "(b) GRPO"}
COLOR = {"start": "gray", "on-policy": "C0", "grpo": "C1"}


def reward_of(tok, p: arithmetic.Problem, reply: list[int], thinking: bool) -> float:
    return check_reply(tok.decode(reply), p.answer, thinking)


# ---------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(model, tok, enc, items, n_samples: int, max_new: dict, seed: int, greedy_only: bool = False) -> dict:
    """Per mode: greedy accuracy (the reply's answer, de.grade) and well-formed accuracy (the reward); pass@k from
    n_samples sampled replies per problem (the unbiased estimator, k = 1, 2, 4, ... n_samples). Samples only ids
    below len(tok): the embedding's rows past it are padding."""
    if not greedy_only and (isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1):
        raise ValueError(f"n_samples must be an int >= 1 (sampled replies per problem for pass@k), got {n_samples!r}")
    model.eval()
    out = {}
    for mode in MODES:
        think = mode == "think"
        ps = [de.prompt(enc, p, mode) for p in items]
        dc = DistillConfig(max_new_tokens=max_new[mode], rollout_batch=1 << 14, vocab_limit=len(tok))
        greedy = de.greedy_replies(model, ps, max_new[mode], dc)
        acc = [de.grade(tok, p, r) for p, r in zip(items, greedy)]
        res = {"accuracy": sum(acc) / len(acc), "correct": sum(acc), "n": len(acc),
               "reward": sum(reward_of(tok, p, r, think) for p, r in zip(items, greedy)) / len(items),
               "reply_tokens": sum(map(len, greedy)) / len(greedy)}
        if not greedy_only:
            sampled = sample_replies(model, ps * n_samples, [think] * (len(ps) * n_samples), dc, seed=seed)
            correct = [sum(de.grade(tok, items[j], sampled[s * len(ps) + j]) for s in range(n_samples))
                       for j in range(len(ps))]
            res["pass@k"] = de.pass_at_k(correct, n_samples, [2 ** i for i in range(int(math.log2(n_samples)) + 1)])
        out[mode] = res
    model.train()
    return out


# ---------------------------------------------------------------- the arms
def run_arm(arm: str, seed: int, start: dict, teacher, tok, enc, items, a, device, append_curve) -> tuple:
    torch.manual_seed(seed)
    student = de.make_student(teacher, a.layers, device)
    student.load_state_dict({"lm_head.weight": start["model.embed_tokens.weight"], **start})  # tied head
    tc = TrainConfig(steps=1000, lr=a.arm_lr, min_lr=a.arm_lr / 10, warmup=20, balance="none")  # step = 1000 · progress
    opt = make_optimizer(student, tc)
    sample = DistillConfig(kind="reverse", max_new_tokens=a.max_think, pad_id=ENDOFTEXT, rollout_batch=1 << 14,
                           vocab_limit=a.vocab_limit)
    gc = GRPOConfig(group=a.group, clip=a.clip, kl_coef=0.0, sample=sample)
    meter, budget = de.Meter(), a.arm_tflops * 1e12
    curve_at = [budget * (i + 1) / (a.curve + 1) for i in range(a.curve)]
    log, step, t_start = [], 0, time.perf_counter()
    while meter.flops < budget:
        progress = meter.flops / budget
        de.sync(device)
        t0 = time.perf_counter()
        if arm == "on-policy":
            n = a.prompts * a.group  # as many rollouts per step as GRPO, both modes
            ps_items = de.problems(seed * 7919 + step, n, held_out=False)
            think = [i % 2 == 0 for i in range(n)]
            ps = [de.prompt(enc, p, "think" if t else "no_think") for p, t in zip(ps_items, think)]
            stats = onpolicy_step(student, teacher, opt, ps, think, sample, tc, int(1000 * progress), seed=step)
            n_tok, shape = stats.pop("tokens"), stats.pop("batch_tokens")
            meter.flops += de.Meter.forward(student, shape, shape)  # the rollouts (padded batch)
            meter.flops += de.Meter.forward(teacher, shape, n_tok) + 3 * de.Meter.forward(student, shape, n_tok)
        else:
            ps_items = de.problems(seed * 7919 + step, a.prompts, held_out=False)
            think = [i % 2 == 0 for i in range(a.prompts)]
            ps = [de.prompt(enc, p, "think" if t else "no_think") for p, t in zip(ps_items, think)]
            stats = grpo_step(student, opt, ps, think, lambda i, r: reward_of(tok, ps_items[i], r, think[i]), gc,
                              tc, int(1000 * progress), seed=step)
            n_tok, shape = stats.pop("tokens"), stats.pop("batch_tokens")
            meter.flops += de.Meter.forward(student, shape, shape) + 3 * de.Meter.forward(student, shape, n_tok)
        de.sync(device)
        meter.seconds += time.perf_counter() - t0
        step += 1
        row = {"step": step, "tflops": round(meter.flops / 1e12, 2), "seconds": round(meter.seconds, 2),
               **{k: round(float(v), 4) for k, v in stats.items()}}
        log.append(row)
        print(f"  {arm} seed {seed}: {row}", flush=True)
        while curve_at and meter.flops >= curve_at[0]:  # greedy accuracy along the way (not counted as compute)
            curve_at.pop(0)
            ev = evaluate(student, tok, enc, items, 1, {"think": a.max_think, "no_think": a.max_direct}, 0, True)
            append_curve({"arm": arm, "seed": seed, "tflops": meter.flops / 1e12, "device_seconds": meter.seconds,
                          **{f"{m}_accuracy": ev[m]["accuracy"] for m in MODES}})
    return student, {"arm": arm, "seed": seed, "steps": step, "tflops": meter.flops / 1e12,
                     "device_seconds": meter.seconds, "wall_seconds": time.perf_counter() - t_start, "log": log}


# the arguments (besides the teacher) that the stored start, and every result row, depends on
START_ARGS = (*de.POOL_ARGS, "layers", "lr", "off_tflops", "batch")
RUN_ARGS = (*START_ARGS, "arm_tflops", "prompts", "group", "clip", "arm_lr", "curve", "n_eval", "samples",
            "max_direct")


def parser() -> argparse.ArgumentParser:
    ap = de.common_args(__doc__, work="out/rl", layers="0,1,2", samples=64)
    ap.add_argument("--pool", type=de.positive, default=4096, help="teacher replies generated for off-policy data")
    ap.add_argument("--off-tflops", type=number(float, 0), default=30.0,
                    help="the off-policy stage that makes the start")
    ap.add_argument("--arm-tflops", type=number(float, 0), default=60.0,
                    help="compute per arm and seed after the start")
    ap.add_argument("--batch", type=de.positive, default=128, help="samples per off-policy step")
    ap.add_argument("--prompts", type=de.positive, default=32, help="GRPO prompts per step")
    ap.add_argument("--group", type=number(int, 2, strict=False), default=8,
                    help="GRPO replies per prompt (the group is the baseline: at least 2)")
    ap.add_argument("--clip", type=number(float, 0), default=0.2)
    ap.add_argument("--lr", type=number(float, 0), default=1e-3, help="off-policy stage")
    ap.add_argument("--arm-lr", type=number(float, 0), default=3e-4, help="both arms")
    ap.add_argument("--curve", type=number(int, 0, strict=False), default=2,
                    help="greedy evaluations along each arm (plus its end)")
    ap.set_defaults(top_k=20, keep_wrong=False)  # the pool's, as the distillation experiment's: no flags here
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    a, work, results = de.parse(ap, argv)
    if a.report:
        return report(results, a.report)
    t_begin = time.perf_counter()
    device, tok, enc, teacher = de.setup(a)
    run = de.settings(a, RUN_ARGS)
    rows = de.read_rows(results, drop_torn=True)
    de.check_rows(results, rows, run)  # all before any work
    done = {(r["arm"], r.get("seed", 0)) for r in rows if "eval" in r}
    items = [p for _, p in arithmetic.eval_problems(-(-a.n_eval // 5))][:a.n_eval]
    max_new = {"think": a.max_think, "no_think": a.max_direct}
    pool_settings, start_settings = de.settings(a, de.POOL_ARGS), de.settings(a, START_ARGS)
    start_file = work / "start.safetensors"
    if start_file.is_file():  # before any work: a start made with other arguments is refused now
        de.check_settings(str(start_file), read_metadata(start_file), start_settings)

    def append(row):
        de.append_row(results, row | {"settings": run})

    def late(what):
        if a.deadline is not None and time.perf_counter() - t_begin > a.deadline:
            print(f"deadline: stopping before {what}", flush=True)
            return True
        return False

    if ("teacher", 0) not in done:  # greedy only: its sampled accuracy is docs/distill_experiment.md's
        t = time.perf_counter()
        ev = evaluate(teacher, tok, enc, items, 1, max_new, 0, greedy_only=True)
        sha = a.teacher_sha256  # taken by de.setup, before any work
        append({"arm": "teacher", "seed": 0, "eval": ev, "eval_seconds": time.perf_counter() - t, "sha256": sha,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "args": {k: v for k, v in vars(a).items() if isinstance(v, (int, float, str, tuple))}})
        print(f"teacher {sha[:16]}: {json.dumps(ev)}", flush=True)
    if not start_file.is_file() and ("start", 0) in done:
        raise SystemExit(f"{results} has results from a start checkpoint that {start_file} no longer holds: restore "
                         "it, or use a fresh --work / --results (a regenerated start would mix two starts)")
    if not start_file.is_file():
        pool = de.stored(work / "teacher_pool.safetensors", pool_settings,
                         lambda: de.build_pool(teacher, tok, enc, a.pool, 1, False, a, keep_wrong=False))
        off = SimpleNamespace(layers=a.layers, lr=a.lr, budget_tflops=a.off_tflops, batch=a.batch, on_batch=0,
                              pad_id=a.pad_id, max_think=a.max_think, log_every=20, vocab_limit=a.vocab_limit)
        student, row = de.run_arm("off", 0, teacher, pool, enc, off, device)
        sd = {k: v.detach().contiguous() for k, v in student.state_dict().items() if k != "lm_head.weight"}  # tied
        atomic_write(start_file, lambda tmp: save_file(sd, str(tmp), metadata=start_settings))
        row["arm"] = "start"
        t = time.perf_counter()
        row["eval"] = evaluate(student, tok, enc, items, a.samples, max_new, seed=1)
        row["eval_seconds"] = time.perf_counter() - t
        row["kept"] = {m: float(pool[f"kept_{m}"]) for m in MODES}
        append(row)
        print("start: " + json.dumps({m: row["eval"][m]["accuracy"] for m in MODES})
              + f" ({row['tflops']:.3g} TFLOP, {row['device_seconds']:.1f} s)", flush=True)
    start = load_file(start_file, device=str(device))
    for seed in range(a.seeds):
        for arm in ARMS:
            if (arm, seed) in done or late(f"{arm} seed {seed}"):
                continue
            student, row = run_arm(arm, seed, start, teacher, tok, enc, items, a, device,
                                   lambda r: append({"curve": True, **r}))
            t = time.perf_counter()
            row["eval"] = evaluate(student, tok, enc, items, a.samples, max_new, seed=seed + 1)
            row["eval_seconds"] = time.perf_counter() - t
            append(row)
            print(f"{arm} seed {seed}: " + ", ".join(f"{m} acc {row['eval'][m]['accuracy']:.3f}" for m in MODES)
                  + f" ({row['tflops']:.3g} TFLOP, {row['device_seconds']:.1f} s, eval {row['eval_seconds']:.1f} s)",
                  flush=True)
    return 0


# ---------------------------------------------------------------- the report
def _interp_cost(curve: list[tuple[float, float]], target: float) -> float | None:
    """The compute at which a rising accuracy curve [(compute, acc)] first reaches target (linear between points)."""
    if curve and curve[0][1] >= target:  # the start has it already
        return curve[0][0]
    for (x0, y0), (x1, y1) in zip(curve, curve[1:]):
        if y0 < target <= y1:
            return x0 + (x1 - x0) * (target - y0) / (y1 - y0)
    return None


def finished_curves(rows: list[dict]) -> list[dict]:
    """The curve rows of the runs that ended (an eval row), each run's own points only. An arm stopped midway (a
    deadline, a kill) runs again from its start on resume while its earlier points stay in the file: a point at no
    more compute than the one before it, for the same arm and seed, begins the run again."""
    per = {}
    for r in rows:
        if r.get("curve"):
            pts = per.setdefault((r["arm"], r.get("seed", 0)), [])
            if pts and r["tflops"] <= pts[-1]["tflops"]:
                pts.clear()
            pts.append(r)
    ended = {(r["arm"], r.get("seed", 0)) for r in rows if "eval" in r}
    return [r for key, pts in per.items() if key in ended for r in pts]


def report(results: Path, out: str) -> int:
    rows = de.read_rows(results)
    ends = [r for r in rows if "eval" in r]
    curves = finished_curves(rows)
    by = {}
    for r in ends:
        by.setdefault(r["arm"], []).append(r)
    start = by["start"][0]
    ks = sorted(int(k) for k in start["eval"]["think"]["pass@k"])
    kmax = ks[-1]
    lines = [f"| model | seeds | TFLOP after start | device s after start | /think acc % | /no_think acc % | "
             f"/think pass@1 % | /think pass@{kmax} % | /no_think pass@1 % | /no_think pass@{kmax} % |",
             "|---|---|---|---|---|---|---|---|---|---|"]

    for arm in ("teacher", "start", *ARMS):
        rs = by.get(arm)
        if not rs:
            continue
        tfl = f"{sum(r['tflops'] for r in rs) / len(rs):.3g}" if arm in ARMS else "-"
        sec = f"{sum(r['device_seconds'] for r in rs) / len(rs):.1f}" if arm in ARMS else "-"
        accs = [de.accuracy_cell(rs, m) for m in MODES]
        pk = []
        for m in MODES:
            for k in (1, kmax):
                pk.append(de.cell(rs, lambda r: r["eval"][m]["pass@k"][str(k)]) if "pass@k" in rs[0]["eval"][m]
                          else "-")
        name = {"start": f"start (off-policy, {start['tflops']:.3g} TFLOP)"}.get(arm, LABEL.get(arm, arm))
        lines.append(f"| {name} | {len(rs)} | {tfl} | {sec} | {accs[0]} | {accs[1]} | " + " | ".join(pk) + " |")
    # the compute each arm needs to reach the other's final accuracy (mean curves over seeds, /think greedy)
    mean_curve = {}
    for arm in ARMS:
        pts = {}
        for r in [c for c in curves if c["arm"] == arm] + [
                {"seed": r["seed"], "tflops": r["tflops"], "device_seconds": r["device_seconds"],
                 **{f"{m}_accuracy": r["eval"][m]["accuracy"] for m in MODES}} for r in by.get(arm, [])]:
            pts.setdefault(r["seed"], []).append(r)
        if not pts:
            continue
        n = min(len(v) for v in pts.values())
        seeds = list(pts.values())
        mean_curve[arm] = [(0.0, 0.0, {m: start["eval"][m]["accuracy"] for m in MODES})] + [
            (sum(s[i]["tflops"] for s in seeds) / len(seeds), sum(s[i]["device_seconds"] for s in seeds) / len(seeds),
             {m: sum(s[i][f"{m}_accuracy"] for s in seeds) / len(seeds) for m in MODES}) for i in range(n)]
    ratio_lines = []
    if len(mean_curve) == 2:
        for m in MODES:
            for x, y in ((ARMS[0], ARMS[1]), (ARMS[1], ARMS[0])):
                target = mean_curve[y][-1][2][m]
                for unit, j in (("TFLOP", 0), ("device s", 1)):
                    c = _interp_cost([(p[j], p[2][m]) for p in mean_curve[x]], target)
                    have = mean_curve[y][-1][j]
                    need = "not reached" if c is None else "0 (the start has it)" if c == 0 else f"{c:.3g}"
                    ratio_lines.append(f"| /{m} | {LABEL[x]} to reach {LABEL[y]}'s final {target * 100:.1f} % | "
                                       f"{unit} | {need} | {have:.3g} | " + ("-" if c is None else f"{c / have:.2f}")
                                       + " |")
    table = "\n".join(lines)
    if ratio_lines:
        table += ("\n\n| mode | what | unit | compute needed | the other arm used | ratio |\n|---|---|---|---|---|---|\n"
                  + "\n".join(ratio_lines))
    Path(out + ".md").write_text(table + "\n")
    print(table)
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 4, figsize=(18, 3.8))
    for j, m in enumerate(MODES):
        ax = axes[j]
        for arm, pts in mean_curve.items():
            for seed in sorted({r["seed"] for r in by.get(arm, [])}):
                sc = [(0.0, start["eval"][m]["accuracy"])] + [
                    (c["tflops"], c[f"{m}_accuracy"]) for c in curves if c["arm"] == arm and c["seed"] == seed] + [
                    (r["tflops"], r["eval"][m]["accuracy"]) for r in by[arm] if r["seed"] == seed]
                ax.plot([x for x, _ in sc], [y for _, y in sc], color=COLOR[arm], alpha=0.3, lw=1)
            ax.plot([p[0] for p in pts], [p[2][m] for p in pts], color=COLOR[arm], marker="o",
                    label=LABEL[arm] + " (mean)")
        ax.axhline(by["teacher"][0]["eval"][m]["accuracy"], color="gray", ls=":", label="teacher")
        ax.set_xlabel("TFLOP after the start")
        ax.set_ylabel("greedy accuracy")
        ax.set_title(f"/{m}: accuracy vs compute")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    for j, m in enumerate(MODES):
        de.plot_pass_at_k(axes[2 + j], by, m, ("start", *ARMS), dashed=("start",), label=LABEL, color=COLOR)
        axes[2 + j].set_title(f"/{m}: pass@k (held-out)")
    axes[2].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out + ".png", dpi=100)
    return 0


if __name__ == "__main__":
    sys.exit(main())
