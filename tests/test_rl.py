"""GRPO: the advantages and the clipped loss against a direct float64 computation written out token by token; the
reward checker against malformed replies; the chunked token log-probs against log_softmax; a few GRPO steps that
raise the reward on a toy task a tiny model can learn."""
import copy

import pytest
import torch
import torch.nn.functional as F

import minqwen3
from minqwen3.distill import DistillConfig, sample_replies
from minqwen3.rl import GRPOConfig, check_reply, group_advantages, grpo_loss, grpo_step, token_logprobs
from minqwen3.train import TrainConfig, make_optimizer


def test_advantages_are_group_normalised():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.5, 2.0, -1.0, 0.0]])
    a = group_advantages(r, eps=0.0 + 1e-4)
    for i, row in enumerate(r.tolist()):  # written out: mean and population standard deviation of each group
        m = sum(row) / len(row)
        sd = (sum((x - m) ** 2 for x in row) / len(row)) ** 0.5
        want = [(x - m) / (sd + 1e-4) for x in row]
        torch.testing.assert_close(a[i].double(), torch.tensor(want, dtype=torch.float64), rtol=1e-6, atol=1e-6)
    assert a[1].abs().max() == 0  # all alike: no signal
    torch.testing.assert_close(a[2], torch.tensor([-1, -1, -1, 3.0]) / 3 ** 0.5, rtol=1e-3, atol=1e-3)
    with pytest.raises(ValueError, match="rewards"):
        group_advantages(torch.ones(4))


def oracle_loss(lp, old, adv, mask, clip, kl_coef, ref):
    """float64, one reply at a time, in the clip's other form: A >= 0 caps the ratio at 1 + clip, A < 0 floors it at
    1 - clip (min(rho A, clip(rho) A) is exactly that); plus kl_coef times KL's k3 estimate; mean per reply."""
    replies = []
    for b in range(lp.shape[0]):
        rho = torch.exp(lp[b][mask[b]] - old[b][mask[b]])
        capped = torch.clamp(rho, max=1 + clip) if adv[b] >= 0 else torch.clamp(rho, min=1 - clip)
        per = -capped * adv[b]
        if kl_coef:
            log_r = ref[b][mask[b]] - lp[b][mask[b]]
            per = per + kl_coef * (torch.exp(log_r) - log_r - 1)
        replies.append(per.mean())
    return torch.stack(replies).mean()


@pytest.mark.parametrize("kl_coef", [0.0, 0.3])
def test_loss_and_gradient_match_a_direct_computation(kl_coef):
    g = torch.Generator().manual_seed(0)
    B, T = 4, 7
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + torch.randn(B, T, generator=g) * 0.4  # ratios on both sides of the clip range
    ref = lp + torch.randn(B, T, generator=g) * 0.5
    adv = torch.tensor([1.5, -0.7, 0.2, -1.1])
    mask = torch.rand(B, T, generator=g) < 0.7
    mask[:, 0] = True
    x = lp.clone().requires_grad_(True)
    ours = grpo_loss(x, old, adv, mask, clip=0.2, kl_coef=kl_coef, ref_logprobs=ref)
    ours.backward()
    y = lp.double().requires_grad_(True)
    want = oracle_loss(y, old.double(), adv.double(), mask, 0.2, kl_coef, ref.double())
    want.backward()
    torch.testing.assert_close(ours.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-7)
    assert x.grad[~mask].abs().max() == 0
    rho = (lp - old).exp()  # clipped where the ratio left the range in the advantage's favour: no gradient there
    dead = mask & (((rho > 1.2) & (adv[:, None] > 0)) | ((rho < 0.8) & (adv[:, None] < 0)))
    assert dead.any()
    if kl_coef == 0:
        assert x.grad[dead].abs().max() == 0


def test_on_policy_loss_is_the_policy_gradient():
    """old = the current log-probs detached: the ratio is 1, and the gradient is -A/len per token (REINFORCE)."""
    lp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, -4.0]], requires_grad=True)
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss = grpo_loss(lp, lp.detach(), torch.tensor([2.0, -1.0]), mask)
    loss.backward()
    assert float(loss.detach()) == pytest.approx(-(2.0 - 1.0) / 2)
    torch.testing.assert_close(lp.grad, torch.tensor([[-2 / 2 / 2, -2 / 2 / 2, 0], [1 / 3 / 2] * 3]))


def test_loss_errors_name_the_argument():
    lp, m = torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="clip"):
        grpo_loss(lp, lp, torch.zeros(2), m, clip=0.0)
    with pytest.raises(ValueError, match="kl_coef"):
        grpo_loss(lp, lp, torch.zeros(2), m, kl_coef=0.1)
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(lp, lp, torch.zeros(3), m)
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(lp, lp, torch.zeros(2), m.float())


# ---------------------------------------------------------------- the reward checker
GOOD_THINK = "<think>\n12 + 30: add, starting from the ones.\nSo 12 + 30 = 42.\n</think>\n\nThe answer is 42.<|im_end|>"
GOOD_DIRECT = "<think>\n\n</think>\n\nThe answer is 42.<|im_end|>"


def test_checker_rewards_a_right_well_formed_reply():
    assert check_reply(GOOD_THINK, 42, thinking=True) == 1.0
    assert check_reply(GOOD_DIRECT, 42, thinking=False) == 1.0
    assert check_reply(GOOD_DIRECT.replace("42", "-7"), -7, thinking=False) == 1.0
    assert check_reply(GOOD_THINK, 41, thinking=True) == 0.0  # wrong answer
    assert check_reply(GOOD_THINK.replace("<|im_end|>", "<|endoftext|>"), 42, thinking=True) == 0.0  # not a turn end


@pytest.mark.parametrize("reply", [
    "The answer is 42.<|im_end|>",  # no think block
    "<think>\n12 + 30 = 42\n</think>\n\nThe answer is 42.",  # cut off: no end of turn
    "<think>\n12 + 30 = 42\n</think>\n\nThe answer is 42.<|im_end|>The answer is 42.",  # text after the end
    "<think>\n12 + 30 = 42\n</think>\n\nThe answer is 41. The answer is 42.<|im_end|>",  # two answers
    "<think>\n12 + 30 = 42\n</think>\n\nThe answer is 42. Or 41.<|im_end|>",  # a hedge after the answer
    "<think>\n12 + 30 = 42\n</think>\n\nI think 42.<|im_end|>",  # no answer line
    "<think>\n12 + 30 = 42\n</think>\n\nThe answer is 42.\nThe answer is 42.<|im_end|>",  # two answer lines
    "<think>\na\n</think>\n\n<think>\nb\n</think>\n\nThe answer is 42.<|im_end|>",  # two think blocks
    "<think>\n<think>\nThe answer is 42.\n</think>\n\nThe answer is 42.<|im_end|>",  # nested think
    "<think>\nThe answer is 42.<|im_end|>",  # the answer inside an unclosed think block
    "\n<think>\n12 + 30 = 42\n</think>\n\nThe answer is 42.<|im_end|>",  # text before the think block
    "<think>\n\n</think>\n\nThe answer is 4 2.<|im_end|>",  # digits split
    "<think>\n\n</think>\n\nThe answer is 42.0.<|im_end|>",  # not an integer
    "<think>\n\n</think>\n\nThe answer is 42!<|im_end|>",  # not the answer line's punctuation
])
def test_checker_cannot_be_fooled_by_malformed_replies(reply):
    assert check_reply(reply, 42, thinking=True) == 0.0
    assert check_reply(reply, 42, thinking=False) == 0.0


def test_checker_holds_each_mode_to_its_form():
    assert check_reply(GOOD_DIRECT, 42, thinking=True) == 0.0  # thinking mode with no thinking
    assert check_reply(GOOD_THINK, 42, thinking=False) == 0.0  # non-thinking mode that thought
    assert check_reply("<think>\n  \n</think>\n\nThe answer is 42.<|im_end|>", 42, thinking=True) == 0.0


def test_checker_reads_the_tokenizers_decoding():
    """Replies reach the checker as ids decoded by the official tokenizer: the special tokens must survive."""
    from minqwen3.tokenizer import Tokenizer
    tok = Tokenizer.default()
    for text, thinking in ((GOOD_THINK, True), (GOOD_DIRECT, False)):
        ids = tok.encode(text)
        assert ids[-1] == tok.im_end_id and tok.decode(ids) == text
        assert check_reply(tok.decode(ids), 42, thinking) == 1.0


def test_checker_on_the_demo_teachers_format():
    """The demo task's own target text (scripts/arithmetic.py), rendered by the chat template, is well-formed."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import random

    import arithmetic
    from minqwen3.chat_template import apply_chat_template
    rng = random.Random(0)
    for _ in range(20):
        p = arithmetic.make_problem(rng)
        for thinking in (True, False):
            msgs = [{"role": "user", "content": p.question},
                    {"role": "assistant", "content": arithmetic.answer_text(p),
                     "reasoning_content": arithmetic.trace(p) if thinking else ""}]
            text = apply_chat_template(msgs)
            reply = text.split("<|im_start|>assistant\n")[-1].rstrip("\n")
            assert check_reply(reply, p.answer, thinking) == 1.0, reply
            assert check_reply(reply, p.answer + 1, thinking) == 0.0


def test_experiment_reports_curves_and_costs_of_resumed_runs():
    """scripts/rl_experiment.py: an arm killed midway and run again leaves its first run's curve points in the file;
    the report keeps the finished run's only. A start that already meets the target costs nothing."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import rl_experiment as X
    pt = lambda arm, seed, tf: {"curve": True, "arm": arm, "seed": seed, "tflops": tf}  # noqa: E731
    rows = [pt("grpo", 0, 10.0), pt("grpo", 0, 20.0),  # killed here, before its eval row
            pt("grpo", 0, 10.0), pt("grpo", 0, 20.0), {"arm": "grpo", "seed": 0, "eval": {}},
            pt("grpo", 1, 10.0), {"arm": "on-policy", "seed": 0, "eval": {}}]  # seed 1: never finished
    assert [r["tflops"] for r in X.finished_curves(rows)] == [10.0, 20.0]
    assert X._interp_cost([(0, 0.72), (20, 0.70), (40, 0.75)], 0.71) == 0
    assert X._interp_cost([(0, 0.5), (20, 0.70), (40, 0.75)], 0.71) == pytest.approx(24.0)
    assert X._interp_cost([(0, 0.5), (20, 0.6)], 0.71) is None


# ---------------------------------------------------------------- the log-probs and the loop, on tiny models
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(seed):
    torch.manual_seed(seed)
    return minqwen3.Qwen3(minqwen3.Qwen3Config(**TINY))


@pytest.mark.parametrize("chunk", [1, 5, 1024])
def test_token_logprobs_match_log_softmax(chunk):
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(13, 32, generator=g, requires_grad=True), torch.randn(64, 32, generator=g)
    t = torch.randint(0, 64, (13,), generator=g)
    ours = token_logprobs(h, w, t, chunk)
    want = F.log_softmax(h @ w.T, -1).gather(-1, t[:, None])[:, 0]
    torch.testing.assert_close(ours, want)
    gh, = torch.autograd.grad(ours.sum(), h)
    gw, = torch.autograd.grad(want.sum(), h)
    torch.testing.assert_close(gh, gw)


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (int(torch.randint(3, 7, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


GOOD = set(range(40, 52))  # the toy task: the first reply token must be one of these 12 ids (a random model: ~1 in 5)


def toy_reward(ps):
    return lambda i, r: float(len(r) > 0 and r[0] in GOOD)


def mean_reward(model, ps, dc, seed):
    from minqwen3.distill import sample_replies
    with torch.no_grad():
        rs = sample_replies(model, ps * 8, [True] * (8 * len(ps)), dc, seed=seed)
    return sum(r[0] in GOOD for r in rs) / len(rs)


@pytest.mark.parametrize("kl_coef", [0.0, 0.05])
def test_grpo_steps_raise_the_reward(kl_coef):
    model = tiny(1)
    ref = copy.deepcopy(model).eval() if kl_coef else None
    dc = DistillConfig(stop_ids=(1,), pad_id=0, max_new_tokens=3)
    gc = GRPOConfig(group=8, kl_coef=kl_coef, sample=dc)
    ps, think = prompts(8), [True, False] * 4
    tc = TrainConfig(steps=30, lr=1e-2, min_lr=1e-3, warmup=2)
    opt = make_optimizer(model, tc)
    before = mean_reward(model, ps, dc, seed=1000)
    for step in range(30):
        stats = grpo_step(model, opt, ps, think, toy_reward(ps), gc, tc, step, ref=ref, seed=step)
    after = mean_reward(model, ps, dc, seed=1000)
    assert {"loss", "reward", "grad_norm", "solved_groups", "mixed_groups"} <= set(stats)
    assert 0 <= stats["mixed_groups"] <= stats["solved_groups"] <= 1
    assert before < 0.4 and after > before + 0.4, (before, after)
    if ref is not None:
        assert all(p.grad is None for p in ref.parameters())


def test_grpo_steps_kl_term_against_a_hand_computation():
    """Every reply scored alike (advantage 0): the step's loss is the KL term alone, kl_coef times the mean over
    replies of the mean over their tokens of k3 = exp(r - p) - (r - p) - 1, with p and r each reply token's
    log-prob under the policy and the reference, computed here by a plain forward of every reply alone. A copy of
    the policy as the reference gives 0."""
    model, other = tiny(4), tiny(5)
    dc = DistillConfig(stop_ids=(1,), pad_id=0, max_new_tokens=4)
    gc = GRPOConfig(group=2, kl_coef=0.5, sample=dc)
    ps, think = prompts(3), [True, False, True]
    replies = sample_replies(model, ps * 2, think * 2, dc, seed=7)  # what the step samples with seed 7

    def logprobs(m, p, x):  # log-probs of reply x's tokens after prompt p, one forward of the sequence alone
        with torch.no_grad():
            lp = torch.log_softmax(m(torch.tensor([p + x]))[0, :-1].float(), -1)
        return lp[len(p) - 1:].gather(-1, torch.tensor(x)[:, None])[:, 0]

    want = []
    for p, x in zip(ps * 2, replies):
        d = logprobs(other, p, x) - logprobs(model, p, x)
        want.append((d.exp() - d - 1).mean())
    want = gc.kl_coef * torch.stack(want).mean()
    tc = TrainConfig(lr=0.0, min_lr=0.0, warmup=1)
    for ref, expected in ((copy.deepcopy(model), 0.0), (other, float(want))):
        stats = grpo_step(model, make_optimizer(model, tc), ps, think, lambda i, r: 1.0, gc, tc, ref=ref, seed=7)
        assert stats["loss"] == pytest.approx(expected, abs=1e-6, rel=1e-4)
    assert float(want) > 1e-3  # the two models differ: the term is not 0 by accident


def test_grpo_samples_stay_below_vocab_limit():
    """GRPO samples through its DistillConfig: its vocab_limit keeps the padding rows (here made to win) out."""
    model = tiny(1)
    with torch.no_grad():
        model.lm_head.weight[48:] *= 100
    seen = []
    gc = GRPOConfig(group=2, sample=DistillConfig(stop_ids=(1,), pad_id=0, max_new_tokens=3, vocab_limit=48))
    grpo_step(model, make_optimizer(model, TrainConfig(lr=1e-3, warmup=0, steps=1)), prompts(4), [True, False] * 2,
              lambda i, r: seen.append(r) or 0.0, gc, TrainConfig(lr=1e-3, warmup=0, steps=1), seed=0)
    assert len(seen) == 8 and all(r for r in seen) and max(t for r in seen for t in r) < 48


@pytest.mark.parametrize("kw, value", [(dict(group=1), "1"), (dict(clip=0.0), "0.0"), (dict(clip=-0.2), "-0.2"),
                                       (dict(kl_coef=-1.0), "-1.0"), (dict(sample="x"), "str")])
def test_config_errors_name_the_field_and_value(kw, value):
    """Made, not after the rollouts: a group of 1 has no baseline, a clip <= 0 no trust region."""
    (field, _), = kw.items()
    with pytest.raises((ValueError, TypeError), match=rf"{field}.*{value}"):
        GRPOConfig(**kw)


def test_grpo_step_needs_a_reference_for_kl():
    model = tiny(2)
    gc = GRPOConfig(group=2, kl_coef=0.1, sample=DistillConfig(stop_ids=(1,), pad_id=0, max_new_tokens=2))
    with pytest.raises(ValueError, match="reference"):
        grpo_step(model, make_optimizer(model, TrainConfig()), prompts(2), [True, True], toy_reward(None), gc,
                  TrainConfig())


def test_a_group_with_one_reward_changes_nothing():
    """Every reply scored alike: zero advantages, zero gradient, the weights stay (no KL term)."""
    model = tiny(3)
    before = copy.deepcopy(model.state_dict())
    gc = GRPOConfig(group=4, sample=DistillConfig(stop_ids=(1,), pad_id=0, max_new_tokens=3))
    tc = TrainConfig(steps=1, lr=1e-2, warmup=0, weight_decay=0.0)
    grpo_step(model, make_optimizer(model, tc), prompts(3), [True] * 3, lambda i, r: 1.0, gc, tc, seed=0)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


# ---------------------------------------------------------------- the experiment's checks
DEMO = __import__("pathlib").Path(__file__).resolve().parents[1] / "weights" / "demo-dense"


def _experiment():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import rl_experiment as X
    return X


def test_experiment_refuses_a_sample_count_of_zero(tmp_path, capsys):
    X = _experiment()
    with pytest.raises(ValueError, match="n_samples.*0"):  # it took log2(0)
        X.evaluate(tiny(0), None, None, [], 0, {"think": 2, "no_think": 2}, 0)
    # a rate of nan or < 0 failed only in the first arm, after rows recording it were written (and then blocked
    # every resume with the rate mended)
    for flags, word in ((["--samples", "0"], "--samples"), (["--group", "1"], "--group"), (["--clip", "0"], "--clip"),
                        (["--lr", "nan"], "--lr"), (["--arm-lr", "-1"], "--arm-lr"),
                        (["--arm-tflops", "0"], "--arm-tflops")):
        with pytest.raises(SystemExit) as e:
            X.main(["--work", str(tmp_path), *flags])
        assert e.value.code == 2 and word in capsys.readouterr().err, flags


@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no demo checkpoint")
def test_experiment_resume_refuses_a_start_of_other_arguments_before_any_work(tmp_path, monkeypatch):
    """A stored start made with another --lr is refused before the teacher is evaluated (it was reused silently)."""
    import hashlib
    from safetensors.torch import save_file
    X = _experiment()
    monkeypatch.setattr(X, "evaluate", lambda *a, **k: pytest.fail("work before the check"))
    argv = ["--work", str(tmp_path), "--teacher", str(DEMO), "--device", "cpu"]
    a, work, _ = X.de.parse(X.parser(), argv + ["--lr", "0.01"])
    a.teacher_sha256 = hashlib.sha256((DEMO / "model.safetensors").read_bytes()).hexdigest()
    a.vocab_limit = 151669
    save_file({"x": torch.zeros(1)}, str(work / "start.safetensors"), metadata=X.de.settings(a, X.START_ARGS))
    with pytest.raises(SystemExit, match=r"start.safetensors was made with --lr 0.01; this run has 0.001"):
        X.main(argv + ["--lr", "0.001"])
