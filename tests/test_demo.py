"""The demo task and the bundled demo checkpoints: data generator, chat rendering, loading, measured accuracy."""
import json
import random
import re
import sys
from pathlib import Path

import pytest
import torch

import minqwen3

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import arithmetic as A  # noqa: E402

WEIGHTS = {name: ROOT / "weights" / f"demo-{name}" for name in ("dense", "moe")}
ENCODE = A.load_encoder()


def weights(name: str) -> Path:
    path = WEIGHTS[name]
    if not (path / "config.json").is_file():
        pytest.skip(f"{path} is not there (train it: python scripts/train_demo.py --model {name} --out {path})")
    return path


# ---------------------------------------------------------------- the task
def _check_line(line: str) -> None:
    """Every 'x+y+c=s', 'x-y-b=s' or 'x×d+c=s' step in a trace is true arithmetic (Python is the oracle)."""
    for expr, value in re.findall(r"(\d+(?:[-+×]\d+)+)=(\d+)", line):
        assert eval(expr.replace("×", "*")) == int(value), line


@pytest.mark.parametrize("seed", range(3))
def test_traces_are_correct_arithmetic(seed):
    rng = random.Random(seed)
    for _ in range(300):
        p = A.make_problem(rng)
        want = eval(f"{p.a} {p.op.replace('×', '*')} {p.b}")
        assert p.answer == want >= 0
        lines = A.trace(p).splitlines()
        for line in lines:
            _check_line(line)
        assert lines[-1] == f"So {p.expression} = {want}."
        so_far = [ln.rsplit(" ", 1)[1] for ln in lines if "so far" in ln or "in front" in ln]
        assert int(so_far[-1]) == want  # the digits collected column by column spell the answer
        assert len(so_far[0]) == 1 and all(len(b) == len(a) + 1 for a, b in zip(so_far, so_far[1:]))
        assert A.check(p, A.answer_text(p)) and not A.check(p, f"The answer is {want + 1}.")


def test_known_trace():
    assert A.trace(A.Problem("+", 987, 45, "")) == (
        "987 + 45: add, starting from the ones.\n"
        "ones: 7+5+0=12, carry 1, so far 2\n"
        "tens: 8+4+1=13, carry 1, so far 32\n"
        "hundreds: 9+0+1=10, carry 1, so far 032\n"
        "carry 1 goes in front: 1032\n"
        "So 987 + 45 = 1032.")
    assert A.trace(A.Problem("-", 502, 38, "")).splitlines()[1:3] == [
        "ones: 2-8-0 is below 0, borrow 10: 12-8-0=4, borrow 1, so far 4",
        "tens: 0-3-1 is below 0, borrow 10: 10-3-1=6, borrow 1, so far 64"]


def test_held_out_problems_never_reach_training():
    rng = random.Random(0)
    train = [A.make_problem(rng) for _ in range(3000)]
    assert not any(A.is_held_out(p.op, p.a, p.b) for p in train)
    items = A.eval_problems(20)
    assert len(items) == 100 and all(A.is_held_out(p.op, p.a, p.b) for _, p in items)
    assert [p for _, p in A.eval_problems(20)] == [p for _, p in items]  # seeded: the same set every time
    adds = [p for c, p in items if c == "add 4+4 digits"]
    assert all(p.op == "+" and 1000 <= p.a <= 9999 and 1000 <= p.b <= 9999 for p in adds)


def test_extract_answer():
    assert A.extract_answer("The answer is 1,032.") == 1032
    assert A.extract_answer("so 12 then 40") == 40
    assert A.extract_answer("no idea") is None


# ---------------------------------------------------------------- chat samples
def _official_render(ref, messages, **kw):
    jinja2 = pytest.importorskip("jinja2")
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string((ref / "chat_template.jinja").read_text()).render(messages=messages, **kw)


def test_samples_render_as_the_official_template(ref):
    """Whole samples are prompt + completion = the official Jinja template's rendering of the conversation."""
    rng = random.Random(7)
    n = 0
    while n < 60:
        chat = A.make_chat(rng)
        if "completion" not in chat:
            continue
        n += 1
        users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", chat["prompt"], re.S)
        answers = re.findall(r"<\|im_start\|>assistant\n(.*?)<\|im_end\|>", chat["prompt"], re.S)
        messages = [m for u, a in zip(users, answers + [None]) for m in (
            {"role": "user", "content": u}, *([{"role": "assistant", "content": a}] if a else []))]
        prefill = chat["prompt"].endswith("<think>\n\n</think>\n\n")  # enable_thinking=False
        body = ("<think>\n\n</think>\n\n" if prefill else "") + chat["completion"].removesuffix("<|im_end|>")
        reasoning, content = body.split("</think>")
        reply = {"role": "assistant", "content": content.lstrip("\n"),
                 "reasoning_content": reasoning.removeprefix("<think>").strip("\n")}
        assert _official_render(ref, messages + [reply]) == chat["prompt"] + chat["completion"] + "\n"
        kw = {"enable_thinking": False} if prefill else {}
        assert _official_render(ref, messages, add_generation_prompt=True, **kw) == chat["prompt"]


def test_thinking_mode_fusion_and_loss_mask():
    rng = random.Random(3)
    seen = {"think": 0, "no_think": 0, "prefill": 0, "cut": 0, "two turns": 0}
    chats = [A.make_chat(rng) for _ in range(400)]
    encoded = A.encode_chats(chats, ENCODE, random.Random(0))
    for chat, (ids, mask) in zip(chats, encoded):
        users = re.findall(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", chat["prompt"], re.S)
        flags = re.findall(r" /(no_think|think)$", "\n".join(users), re.M)
        prefill = chat["prompt"].endswith("<think>\n\n</think>\n\n")
        thinks = not prefill and (not flags or flags[-1] == "think")  # the last flag wins; none means thinking
        seen["two turns"] += len(users) == 2
        assert len(ids) == len(mask) and ids[-1] == A.IM_END and mask[-1]
        loss = [t for t, m in zip(ids, mask) if m]
        if prefill:
            seen["prefill"] += 1
            assert "completion" in chat and "<think>" not in chat["completion"]
        elif not thinks:
            seen["no_think"] += 1
            assert chat["completion"].startswith("<think>\n\n</think>\n\nThe answer is ")
        else:
            assert loss[0] == 151667  # <think>: the model opens the block itself
            if "completion" in chat:
                seen["think"] += 1
                assert chat["completion"].startswith("<think>\n") and "so far" in chat["completion"]
            else:
                seen["cut"] += 1
                stop = [t for t, m in zip(ids, mask) if not m][-len(ENCODE([chat["stop"]])[0]):]
                assert stop == ENCODE([chat["stop"]])[0]  # the early-stop text is fed in, not learned
                assert chat["stop"] in A.STOP_TEXTS
        # the loss starts right after the prompt and covers everything the model writes
        n_prompt = len(ENCODE([chat["prompt"]])[0])
        assert not any(mask[:n_prompt]) and mask[n_prompt]
    assert all(v >= 15 for v in seen.values()), seen


def test_split_encoding_equals_joined_encoding():
    rng = random.Random(11)
    chats = [c for c in (A.make_chat(rng) for _ in range(200)) if "completion" in c]
    for chat, (ids, _) in zip(chats, A.encode_chats(chats, ENCODE, rng)):
        assert ids == ENCODE([chat["prompt"] + chat["completion"]])[0]


def test_budget_cuts_span_the_whole_trace():
    """Cut samples keep 0..all of their thinking: the budget curve needs every length."""
    rng = random.Random(5)
    chats = [c for c in (A.make_chat(rng) for _ in range(600)) if "thinking" in c]
    fractions = []
    for chat, (ids, mask) in zip(chats, A.encode_chats(chats, ENCODE, random.Random(1))):
        think = ENCODE([chat["thinking"]])[0]
        start = len(ENCODE([chat["prompt"]])[0])
        kept = ids[start:start + len(think)]
        n = next((i for i, (a, b) in enumerate(zip(kept, think)) if a != b), len(kept))
        fractions.append((n - 1) / (len(think) - 1))
    assert min(fractions) == 0.0 and max(fractions) > 0.95 and 0.35 < sum(fractions) / len(fractions) < 0.65


def test_samples_are_seeded():
    assert A.make_samples(3, 20, ENCODE) == A.make_samples(3, 20, ENCODE)
    assert A.make_samples(3, 20, ENCODE) != A.make_samples(4, 20, ENCODE)


# ---------------------------------------------------------------- the bundled checkpoints
@pytest.mark.parametrize("name", ["dense", "moe"])
def test_checkpoint_files(name):
    path = weights(name)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["vocab_size"] == 151936 and cfg["torch_dtype"] == "bfloat16" and cfg["tie_word_embeddings"]
    if name == "moe":
        assert cfg["model_type"] == "qwen3_moe" and cfg["num_experts"] >= 4 and cfg["num_experts_per_tok"] > 1
        assert cfg["norm_topk_prob"] is True
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    assert size <= 50e6, f"{path} weighs {size / 1e6:.1f} MB"
    assets = ROOT / "minqwen3" / "assets"
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (path / f).read_bytes() == (assets / f).read_bytes()  # the official files, unchanged
    assert "chat_template" in json.loads((path / "tokenizer_config.json").read_text())
    gen = json.loads((path / "generation_config.json").read_text())
    assert gen["eos_token_id"] == [151645, 151643] and gen["temperature"] == 0.6


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dense", "moe"])
def test_checkpoint_loads_in_minqwen3_and_transformers(name):
    transformers = pytest.importorskip("transformers")
    path = weights(name)
    ours = minqwen3.from_pretrained(path, dtype=torch.float32)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    messages = [{"role": "user", "content": "What is 4821 + 3967?"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == minqwen3.chat_template.apply_chat_template(messages, add_generation_prompt=True)
    ids = torch.tensor([tok(text + "<think>\n4821 + 3967: add")["input_ids"]])
    with torch.no_grad():
        want, got = theirs(ids).logits, ours(ids)
    assert (got - want).abs().max().item() < 1e-3 * want.abs().max().item()
    assert torch.equal(got[0, -1].argmax(), want[0, -1].argmax())


EVAL = ROOT / "docs" / "demo_eval.json"  # written by scripts/eval_demo.py, the table docs/demo.md shows


def _claimed(model: str, key: str) -> float:
    """Thinking-mode accuracy (per category, or "all") from the committed evaluation."""
    return json.loads(EVAL.read_text())[f"demo-{model}"]["accuracy"]["thinking"][key]


def test_committed_evaluation_shows_what_the_issue_asks():
    """Thinking beats non-thinking clearly, the soft switches are obeyed, and the budget gives a curve, not a step."""
    for name, res in json.loads(EVAL.read_text()).items():
        acc = res["accuracy"]
        assert res["n"] >= 300 and acc["thinking"]["all"] >= acc["non-thinking"]["all"] + 0.3, name
        assert res["soft_switch"]["/think: thought"] == res["soft_switch"]["/no_think: empty think block"] == 1.0
        curve = [c["accuracy"] for c in res["budget_curve"] if c["budget"] is not None]
        lo, hi = min(curve), max(curve)
        assert curve[0] == lo and hi >= lo + 0.3 and hi >= acc["thinking"]["all"] - 0.02, name  # budget 0 → full
        assert sum(lo + 0.05 < a < hi - 0.05 for a in curve) >= 3, name  # budgets in between land in between
    assert _claimed("dense", "all") >= 0.9


@pytest.mark.slow
def test_dense_demo_reaches_the_claimed_accuracy():
    """24 held-out problems (the first of each category), greedy, thinking mode, on CPU."""
    import eval_demo
    path = weights("dense")
    model = minqwen3.from_pretrained(path, dtype=torch.float32)
    tok = minqwen3.tokenizer.Tokenizer.from_pretrained(path)
    items = A.eval_problems(6)[:24]  # 6 per category, 4 categories: 4-digit +, -, 3x1-digit ×, word problems
    problems = [p for _, p in items]
    reps = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems, "thinking"))
    acc = sum(A.check(p, r["content"]) for p, r in zip(problems, reps)) / len(problems)
    claimed = min(_claimed("dense", c) for c, _ in items)
    assert acc >= claimed - 0.1, f"{acc:.2f} on 24 problems; the table claims {claimed:.2f}+ per category"
    assert all(r["reasoning"] for r in reps)  # thinking mode thinks
    no = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems[:8], "/no_think"))
    assert all(r["text"].startswith("<think>\n\n</think>\n\n") for r in no)  # the soft switch is obeyed


@pytest.mark.slow
def test_batched_budget_matches_chat():
    """eval_demo's batched thinking budget gives what minqwen3.chat gives, one conversation at a time."""
    import eval_demo
    from minqwen3 import chat
    path = weights("dense")
    model = minqwen3.from_pretrained(path, dtype=torch.float32)
    tok = minqwen3.tokenizer.Tokenizer.from_pretrained(path)
    problems = [p for _, p in A.eval_problems(2)[::5]][:2]
    for budget in (0, 40):
        reps = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems, "thinking"), budget)
        for p, r in zip(problems, reps):
            want = chat(model, tok, p.question, thinking_budget=budget, temperature=0.0, max_new_tokens=400)
            assert (r["reasoning"], r["content"], r["budget_hit"]) == (want.reasoning, want.content, want.budget_hit)
