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
    for _ in range(400):
        p = A.make_problem(rng)
        want = eval(f"{p.a} {p.op.replace('×', '*')} {p.b}")
        assert p.answer == want >= 0
        assert str(p.a) in p.question.replace(",", "") and str(p.b) in p.question.replace(",", "")
        lines = A.trace(p).splitlines()
        for line in lines:
            _check_line(line)
        assert lines[-1] == f"So {p.expression} = {want}."
        # each block of columns collects one digit per line, and the last block's digits spell the answer
        blocks = re.split(r"\n(?=[^\n]*(?::|starting from the ones\.)$)", "\n".join(lines), flags=re.M)
        for block in filter(None, (re.findall(r"(?:so far|goes in front:) (\d+)$", b, re.M) for b in blocks)):
            so_far = block
            assert len(so_far[0]) == 1 and all(len(b) == len(a) + 1 for a, b in zip(so_far, so_far[1:])), so_far
        assert int(so_far[-1]) == want
        if p.op == "×" and p.b >= 10:  # the column method adds the two partial products
            low, high = map(int, re.search(r"^(\d+) \+ (\d+): add", "\n".join(lines), re.M).groups())
            assert (low, high) == (p.a * (p.b % 10), p.a * (p.b // 10) * 10)
        assert A.check(p, A.answer_text(p)) and not A.check(p, f"The answer is {want + 1}.")


def test_stage2_word_problems_name_their_numbers_in_order():
    """Stage 2 starts every word problem's thinking with the question's two numbers in its order, then the
    arithmetic they make; the rest of the trace is stage 1's."""
    rng = random.Random(4)
    mix = A.MIXES["stage2"]
    problems = [p for p in (A.make_problem(rng, kind="word", mix=mix) for _ in range(600))]
    for p in problems:
        numbers = [int(n) for n in re.findall(r"\d+", p.question.replace(",", ""))]
        first, rest = A.trace(p).split("\n", 1)
        assert first == A.SETUP[p.op].format(x=numbers[0], y=numbers[1], a=p.a, b=p.b), (p.question, first)
        assert rest == A.trace(A.Problem(p.op, p.a, p.b, p.question))
    assert {p.op for p in problems} == set(A.OPS)
    firsts = [int(re.search(r"\d+", p.question.replace(",", "")).group()) for p in problems if p.a != p.b]
    assert sum(n == p.b for n, p in zip(firsts, [p for p in problems if p.a != p.b])) > 100  # "b" first, too
    assert A.Mix() == A.MIXES["stage1"]  # stage 1 is what the shipped stage-1 runs drew


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
    assert A.trace(A.Problem("×", 12, 11, "")) == (
        "12 × 11: 12 × 1 plus 12 × 10, starting from the ones.\n"
        "12 × 1:\n"
        "ones: 2×1+0=2, carry 0, so far 2\n"
        "tens: 1×1+0=1, carry 0, so far 12\n"
        "12 × 10 is 12 × 1 with a 0 behind:\n"
        "ones: 2×1+0=2, carry 0, so far 2\n"
        "tens: 1×1+0=1, carry 0, so far 12\n"
        "with the 0: 120\n"
        "12 + 120: add, starting from the ones.\n"
        "ones: 2+0+0=2, carry 0, so far 2\n"
        "tens: 1+2+0=3, carry 0, so far 32\n"
        "hundreds: 0+1+0=1, carry 0, so far 132\n"
        "So 12 × 11 = 132.")


def test_questions_are_typed_every_way():
    """Training asks with and without spaces, with *, x, × and words, in any case, with thousands separators,
    two-digit multipliers, and with or without final punctuation."""
    rng = random.Random(1)
    qs = [p for p in (A.make_problem(rng) for _ in range(3000))]
    text = [p.question for p in qs]
    for pattern in (r"\d\+\d", r"\d \+ \d", r"\d-\d", r"\d\*\d", r"\dx\d", r"\d ×\d", r"\d plus \d", r"\d minus \d",
                    r"\d times \d", r"\d multiplied by \d", r"\d,\d\d\d", r"^[^a-z]*[A-Z]{4}", r"^[a-z]", r"\d$",
                    r"\?$", r"\.$", r"!$"):
        assert sum(bool(re.search(pattern, q)) for q in text) >= 10, pattern
    assert sum(p.op == "×" and p.b >= 10 for p in qs) > 200


def _template_regex(template: str) -> re.Pattern:
    parts = re.split(r"(\{\w+\})", template)
    return re.compile("".join(".+" if re.fullmatch(r"\{\w+\}", x) else re.escape(x) for x in parts), re.I)


def test_held_out_phrasings():
    """Held-out templates never occur in training, use only words training uses, and ask the same problems."""
    words = lambda ts: {w for t in ts for w in re.findall(r"[a-z]+", re.sub(r"\{\w+\}", " ", t.lower()))}
    train = (list(A.TRAIN_EXPRESSION) + [t for v in A.TRAIN_VERBAL.values() for t in v]
             + [q for v in A.TRAIN_WORD.values() for q, _ in v] + [q for v in A.MORE_WORD.values() for q in v]
             + [s for v in A.SYMBOLS.values() for s in v])
    held = (list(A.HELD_OUT_EXPRESSION) + [t for v in A.HELD_OUT_VERBAL.values() for t in v]
            + [q for v in A.HELD_OUT_WORD.values() for q in v])
    assert words(held) <= words(train), words(held) - words(train)
    assert not set(held) & set(train)
    rng = random.Random(2)
    questions = [A.make_problem(rng, mix=mix).question.rstrip("?.! ") for mix in A.MIXES.values() for _ in range(3000)]
    assert sum(bool(_template_regex(t.rstrip("?.! ")).fullmatch(q)) for v in A.MORE_WORD.values() for t in v
               for q in questions) >= 300  # stage 2's sentences are asked (and checked above)
    for t in held:
        rx = _template_regex(t.rstrip("?.! "))
        assert not any(rx.fullmatch(q) for q in questions), t
    seen = _template_regex
    for phrasing in ("train", "held_out"):
        templates = held if phrasing == "held_out" else train
        for _, p in A.eval_problems(10, phrasing=phrasing):
            q = p.question.rstrip("?.! ")
            assert any(seen(t.rstrip("?.! ")).fullmatch(q) for t in templates), q
    train_items, held_items = A.eval_problems(20), A.eval_problems(20, phrasing="held_out")
    assert [(c, p.op, p.a, p.b) for c, p in train_items] == [(c, p.op, p.a, p.b) for c, p in held_items]
    with pytest.raises(ValueError, match="phrasing"):
        A.eval_problems(1, phrasing="unseen")


def test_held_out_problems_never_reach_training():
    rng = random.Random(0)
    train = [A.make_problem(rng) for _ in range(3000)]
    assert not any(A.is_held_out(p.op, p.a, p.b) for p in train)
    items = A.eval_problems(20)
    assert len(items) == 20 * len(A.CATEGORIES) and all(A.is_held_out(p.op, p.a, p.b) for _, p in items)
    assert [p for _, p in A.eval_problems(20)] == [p for _, p in items]  # seeded: the same set every time
    adds = [p for c, p in items if c == "add 4+4 digits"]
    assert all(p.op == "+" and 1000 <= p.a <= 9999 and 1000 <= p.b <= 9999 for p in adds)
    muls = [p for c, p in items if c == "mul 3x2 digits"]
    assert all(p.op == "×" and 100 <= p.a <= 999 and 10 <= p.b <= 99 for p in muls)


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
SPLITS = ("training phrasings", "held-out phrasings")


def _claimed(model: str, key: str, split: str = SPLITS[0]) -> float:
    """Thinking-mode accuracy (per category, or "all") from the committed evaluation."""
    return json.loads(EVAL.read_text())[f"demo-{model}"]["splits"][split]["accuracy"]["thinking"][key]


def test_wilson_interval():
    """eval_demo.wilson against the interval's definition: the p where |k/n - p| <= 1.96 sqrt(p(1-p)/n)."""
    import eval_demo
    for k, n in ((0, 100), (95, 100), (100, 100), (37, 60), (3, 7)):
        inside = [p / 10**4 for p in range(10**4 + 1) if abs(k / n - p / 10**4) <= 1.96 * (p / 10**4 * (1 - p / 10**4) / n) ** 0.5]
        lo, hi = eval_demo.wilson(k, n)
        assert abs(lo - min(inside)) < 2e-4 and abs(hi - max(inside)) < 2e-4, (k, n)


def test_committed_evaluation_shows_what_the_issue_asks():
    """At least 100 problems per category and phrasing split, with their intervals; thinking beats non-thinking
    clearly; the soft switches are obeyed; the budget gives a curve, not a step; the MoE model is within 3 points
    of the dense one; and both reach 95% per category on training's phrasings and 85% on held-out ones."""
    import eval_demo
    results = json.loads(EVAL.read_text())
    assert set(results) == {"demo-dense", "demo-moe"}
    for name, res in results.items():
        assert list(res["splits"]) == list(SPLITS) and res["categories"] == list(A.CATEGORIES)
        for split, s in res["splits"].items():
            assert all(s["n"][c] >= 100 for c in res["categories"]), (name, split)
            for mode, acc in s["accuracy"].items():
                for c, a in acc.items():  # the intervals are those of the counts
                    assert s["interval"][mode][c] == pytest.approx(eval_demo.wilson(round(a * s["n"][c]), s["n"][c]),
                                                                   abs=1e-4)
            acc = s["accuracy"]
            assert acc["thinking"]["all"] >= acc["non-thinking"]["all"] + 0.3, (name, split)
        assert res["soft_switch"]["/think: thought"] == res["soft_switch"]["/no_think: empty think block"] == 1.0
        curve = [c["accuracy"] for c in res["budget_curve"] if c["budget"] is not None]
        lo, hi = min(curve), max(curve)
        think = res["splits"][res["budget_split"]]["accuracy"]["thinking"]["all"]
        assert curve[0] == lo and hi >= lo + 0.3 and hi >= think - 0.02, name  # budget 0 → full
        assert sum(lo + 0.05 < a < hi - 0.05 for a in curve) >= 3, name  # budgets in between land in between
    for split in SPLITS:
        assert _claimed("moe", "all", split) >= _claimed("dense", "all", split) - 0.03, split
    for m in ("dense", "moe"):  # the issue's bar, per category: 95% on training's phrasings, 85% on held-out ones
        assert all(_claimed(m, c) >= 0.95 for c in A.CATEGORIES), (m, SPLITS[0])
        assert all(_claimed(m, c, SPLITS[1]) >= 0.85 for c in A.CATEGORIES), (m, SPLITS[1])
        assert sum(ok for _, _, ok in results[f"demo-{m}"]["typed without spaces"]) >= 8, m


@pytest.mark.slow
def test_dense_demo_reaches_the_claimed_accuracy():
    """24 held-out problems (4 of each category), greedy, thinking mode, on CPU."""
    import eval_demo
    path = weights("dense")
    model = minqwen3.from_pretrained(path, dtype=torch.float32)
    tok = minqwen3.tokenizer.Tokenizer.from_pretrained(path)
    items = A.eval_problems(4)
    problems = [p for _, p in items]
    reps = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems, "thinking"))
    acc = sum(A.check(p, r["content"]) for p, r in zip(problems, reps)) / len(problems)
    claimed = min(_claimed("dense", c) for c, _ in items)
    assert acc >= claimed - 0.1, f"{acc:.2f} on 24 problems; the table claims {claimed:.2f}+ per category"
    assert all(r["reasoning"] for r in reps)  # thinking mode thinks
    no = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems[:8], "/no_think"))
    assert all(r["text"].startswith("<think>\n\n</think>\n\n") for r in no)  # the soft switch is obeyed


@pytest.mark.slow
def test_dense_demo_understands_questions_typed_without_spaces():
    """Ten short questions as people type them ("What is 17+25?", "9x8=?", "7×13?"): at least eight right."""
    import eval_demo
    path = weights("dense")
    model = minqwen3.from_pretrained(path, dtype=torch.float32)
    tok = minqwen3.tokenizer.Tokenizer.from_pretrained(path)
    assert len(eval_demo.NO_SPACES) == 10 and not any(" + " in q or " - " in q for q, _ in eval_demo.NO_SPACES)
    prompts = [tok.encode_messages([{"role": "user", "content": q}], add_generation_prompt=True)
               for q, _ in eval_demo.NO_SPACES]
    reps = eval_demo.replies(model, tok, prompts)
    right = [A.extract_answer(r["content"]) == a for (_, a), r in zip(eval_demo.NO_SPACES, reps)]
    assert sum(right) >= 8, [(q, r["content"]) for (q, _), r in zip(eval_demo.NO_SPACES, reps)]


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


# ---------------------------------------------------------------- eval_demo's input checks and writes
def test_eval_replies_never_pick_the_embedding_padding():
    """The official embedding has rows past the tokenizer (151669..151935), padding that decode refuses: a model
    whose padding rows win (a random or drifting one may) still gets replies, of real tokens only."""
    import eval_demo
    tok = minqwen3.tokenizer.Tokenizer.default()
    torch.manual_seed(0)
    model = minqwen3.Qwen3(minqwen3.Qwen3Config(vocab_size=151936, hidden_size=16, intermediate_size=32,
                                                num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                                                head_dim=8, max_position_embeddings=256))
    with torch.no_grad():
        model.lm_head.weight[len(tok):] *= 1000
        assert int(model(torch.tensor([[1, 2, 3]]))[0, -1].argmax()) >= len(tok)  # the padding wins
    problems = [p for _, p in A.eval_problems(1)[:2]]
    reps = eval_demo.replies(model, tok, eval_demo.prompt_ids(tok, problems, "thinking"), budget=3)
    assert len(reps) == 2 and all(r["text"] for r in reps)


def test_eval_flags_are_checked_by_argparse(tmp_path, capsys):
    import eval_demo
    bad = tmp_path / "bad.json"
    bad.write_text('{"demo-dense": {"n"')
    for flags, word in ((["--n", "0"], "--n"), (["--budgets", "32,x"], "--budgets"), (["--budgets", "-1"], "--budgets"),
                        (["--max-think", "0"], "--max-think"), (["--json", str(bad)], f"--json {bad}: not a JSON")):
        with pytest.raises(SystemExit) as e:
            eval_demo.main([str(tmp_path / "no-model"), *flags])
        assert e.value.code == 2 and word in capsys.readouterr().err, flags
    assert eval_demo._budgets("0, 32,64") == (0, 32, 64)


def test_eval_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """--json is rewritten a dozen times a run: stopped mid-write, the file keeps what it had."""
    import eval_demo
    f = tmp_path / "eval.json"
    eval_demo.write_json(str(f), {"a": 1})
    assert json.loads(f.read_text()) == {"a": 1}
    real = Path.write_text

    def torn(self, text, *args, **kw):  # half the text, then the run stops
        real(self, text[:len(text) // 2], *args, **kw)
        raise KeyboardInterrupt
    monkeypatch.setattr(Path, "write_text", torn)
    with pytest.raises(KeyboardInterrupt):
        eval_demo.write_json(str(f), {"a": 2, "b": list(range(100))})
    monkeypatch.undo()
    assert json.loads(f.read_text()) == {"a": 1} and [p.name for p in tmp_path.iterdir()] == ["eval.json"]
