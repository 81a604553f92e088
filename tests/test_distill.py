"""Distillation: the divergences against a direct float64 computation and torch's kl_div; top-k with its tail class;
the stored and chunked forms against the plain one; the off-policy and on-policy loops on tiny random models."""
import re
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

import minqwen3
from minqwen3.distill import (DistillConfig, TopK, data_batch, divergence, divergence_chunked, offpolicy_step,
                              onpolicy_step, sample_replies, teacher_data)
from minqwen3.train import TrainConfig, make_optimizer

KINDS = ("forward", "reverse", "jsd")


def oracle(s, t, mask=None, kind="forward", beta=0.5, temperature=1.0, top_k=None):
    """Probabilities in float64, written out: p log(p / q), the mixture, the k kept ids and 1 - their sum."""
    s, t = s.double() / temperature, t.double() / temperature
    ps, pt = s.softmax(-1), t.softmax(-1)
    if top_k is not None and top_k < s.shape[-1]:
        ids = t.topk(top_k, -1).indices
        ps_k, pt_k = ps.gather(-1, ids), pt.gather(-1, ids)
        ps = torch.cat([ps_k, 1 - ps_k.sum(-1, keepdim=True)], -1)
        pt = torch.cat([pt_k, 1 - pt_k.sum(-1, keepdim=True)], -1)

    def kl(p, q):
        return (p * (p / q).log()).sum(-1)

    m = beta * pt + (1 - beta) * ps
    d = {"forward": kl(pt, ps), "reverse": kl(ps, pt), "jsd": beta * kl(pt, m) + (1 - beta) * kl(ps, m)}[kind]
    return d.mean() if mask is None else d[mask].sum() / mask.sum()


def logits(*shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def grads(fn, s):
    s = s.clone().requires_grad_(True)
    out = fn(s)
    out.backward()
    return out.detach(), s.grad


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("top_k", [None, 7])
def test_values_and_gradients_match_float64(kind, top_k):
    s, t = logits(2, 5, 40, seed=1), logits(2, 5, 40, seed=2)
    mask = torch.rand(2, 5, generator=torch.Generator().manual_seed(3)) < 0.6
    kw = dict(kind=kind, beta=0.3, temperature=1.5, top_k=top_k)
    ours, g = grads(lambda x: divergence(x, t, mask, **kw), s)
    ref, g_ref = grads(lambda x: oracle(x, t.double(), mask, **kw), s.double())
    assert ours.dtype == torch.float32 and ours > 0.05
    torch.testing.assert_close(ours.double(), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-4, atol=1e-7)
    assert g[~mask].abs().max() == 0  # masked tokens get no gradient


def test_matches_torch_kl_div():
    s, t = logits(3, 4, 50, seed=4), logits(3, 4, 50, seed=5)
    ls, lt = F.log_softmax(s, -1), F.log_softmax(t, -1)
    # kl_div(input, target) = KL(target ‖ exp(input)), summed over the vocabulary, averaged over the 12 tokens
    fwd = F.kl_div(ls.reshape(-1, 50), lt.reshape(-1, 50), log_target=True, reduction="batchmean")
    rev = F.kl_div(lt.reshape(-1, 50), ls.reshape(-1, 50), log_target=True, reduction="batchmean")
    torch.testing.assert_close(divergence(s, t, kind="forward"), fwd)
    torch.testing.assert_close(divergence(s, t, kind="reverse"), rev)
    assert not torch.allclose(fwd, rev, rtol=1e-2)  # the two directions differ here: the tests can tell them apart


def test_gradient_reaches_the_student_only():
    s, t = logits(2, 3, 20, seed=6).requires_grad_(True), logits(2, 3, 20, seed=7).requires_grad_(True)
    for kind in KINDS:
        divergence(s, t, kind=kind, top_k=5).backward()
        assert t.grad is None and s.grad.abs().sum() > 0
        s.grad = None


def test_mask_mean_is_over_true_tokens_only():
    s, t = logits(2, 6, 30, seed=8), logits(2, 6, 30, seed=9)
    mask = torch.zeros(2, 6, dtype=torch.bool)
    mask[0, 1] = mask[1, 4] = True
    want = (oracle(s[0, 1], t[0, 1]) + oracle(s[1, 4], t[1, 4])) / 2
    torch.testing.assert_close(divergence(s, t, mask).double(), want)
    s2 = s.clone()
    s2[~mask] = 1e4  # what is under the mask does not matter, even absurd values
    assert divergence(s2, t, mask) == divergence(s, t, mask)
    empty = divergence(s.requires_grad_(True), t, torch.zeros(2, 6, dtype=torch.bool))
    assert empty == 0
    empty.backward()  # a batch with no loss token still back-propagates (zeros)
    assert s.grad.abs().sum() == 0


@pytest.mark.parametrize("kind", KINDS)
def test_top_k_of_whole_vocabulary_is_the_full_divergence(kind):
    s, t = logits(2, 3, 25, seed=10), logits(2, 3, 25, seed=11)
    full = divergence(s, t, kind=kind)
    for k in (25, 26, 1000):
        assert divergence(s, t, kind=kind, top_k=k) == full
    lt = F.log_softmax(t, -1)
    top = lt.topk(25, -1)
    torch.testing.assert_close(divergence(s, TopK(top.indices, top.values), kind=kind), full)
    # k < V: a bound, not the full value (the tail class merges the rest)
    assert divergence(s, t, kind=kind, top_k=3) < full


def test_top_k_one_is_a_binary_divergence():
    """k = 1: the teacher's best id versus everything else, checked by hand."""
    s, t = logits(1, 1, 10, seed=12), logits(1, 1, 10, seed=13)
    i = t[0, 0].argmax()
    a, b = s[0, 0].softmax(-1)[i].double(), t[0, 0].softmax(-1)[i].double()
    want = b * (b / a).log() + (1 - b) * ((1 - b) / (1 - a)).log()
    torch.testing.assert_close(divergence(s, t, top_k=1).double(), want)


def test_temperature_applies_to_both_sides():
    s, t = logits(2, 4, 30, seed=14), logits(2, 4, 30, seed=15)
    for T in (0.5, 2.0):
        got = divergence(s, t, temperature=T)
        torch.testing.assert_close(got.double(), oracle(s, t, temperature=T))
        torch.testing.assert_close(got, divergence(s / T, t / T))
        assert not torch.allclose(got, divergence(s / T, t), rtol=1e-2)  # one side only is a different number


def test_bf16_inputs_are_computed_in_fp32():
    s, t = logits(2, 4, 64, seed=16).bfloat16(), logits(2, 4, 64, seed=17).bfloat16()
    for kind in KINDS:
        got = divergence(s, t, kind=kind, top_k=9)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), oracle(s.double(), t.double(), kind=kind, top_k=9),
                                   rtol=1e-5, atol=1e-6)
    sb = s.clone().requires_grad_(True)
    divergence(sb, t).backward()
    assert sb.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", KINDS)
def test_identical_inputs_give_zero(kind):
    x = logits(3, 5, 40, seed=18)
    for k in (None, 4):
        assert divergence(x, x.clone(), kind=kind, top_k=k).abs() < 1e-7
    # a shift of the logits is the same distribution
    assert divergence(x, x + 5.0, kind=kind).abs() < 1e-6


def test_zero_probabilities_give_no_nan():
    """Logits of -inf (a masked vocabulary entry) on both sides: 0 · log 0 counts as 0, in value and gradient."""
    s, t = logits(2, 3, 12, seed=19), logits(2, 3, 12, seed=20)
    s[..., -2:] = t[..., -2:] = float("-inf")
    for kind in KINDS:
        for k in (None, 4, 12):
            d, g = grads(lambda x: divergence(x, t, kind=kind, top_k=k), s)
            assert torch.isfinite(d) and torch.isfinite(g).all()
            torch.testing.assert_close(d.double(), oracle(s[..., :-2], t[..., :-2], kind=kind,
                                                          top_k=None if k in (None, 12) else k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("confident", [False, True])
def test_stored_top_k_equals_logits_form(kind, confident):
    """Stored targets with their tail (as teacher_data stores them) give the logits form's values and gradients; a
    confident teacher leaves ~1e-10 of its mass outside the top k, which the kept log-probs cannot resolve in
    float32 (reverse KL came out ~1e29 from them), but the stored tail does. Without a tail, the rebuilt one serves
    a teacher that leaves enough outside."""
    s, t = logits(2, 5, 60, seed=21), logits(2, 5, 60, seed=22, scale=1.0)
    if confident:
        t[..., 7] += 30.0
    mask = torch.tensor([[True, False, True, True, False], [False, True, True, False, True]])
    for T in (1.0, 0.7):
        lt = F.log_softmax(t / T, -1)  # stored at the temperature the divergence uses
        top = lt.topk(8, -1)
        tail = lt.scatter(-1, top.indices, float("-inf")).logsumexp(-1, keepdim=True)
        want, g_want = grads(lambda x: divergence(x, t, mask, kind=kind, temperature=T, top_k=8), s)
        for stored in [TopK(top.indices.int(), top.values, tail)] + (
                [] if confident else [TopK(top.indices.int(), top.values)]):
            got, g_got = grads(lambda x: divergence(x, stored, mask, kind=kind, temperature=T), s)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(g_got, g_want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunk", [1, 3, 100])
def test_chunked_equals_plain(kind, chunk):
    g = torch.Generator().manual_seed(23)
    h, W = torch.randn(2, 7, 16, generator=g), torch.randn(50, 16, generator=g) * 0.5
    th, tW = torch.randn(2, 7, 12, generator=g), torch.randn(50, 12, generator=g) * 0.5
    t = th @ tW.T
    mask = torch.rand(2, 7, generator=g) < 0.7
    top = F.log_softmax(t, -1).topk(6, -1)
    for teacher, top_k in ((t, None), (t, 6), ((th, tW), None), (TopK(top.indices, top.values), None)):
        hp, Wp = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
        plain = divergence(hp @ Wp.T, t, mask, kind=kind, top_k=6 if isinstance(teacher, TopK) else top_k)
        plain.backward()
        hc, Wc = h.clone().requires_grad_(True), W.clone().requires_grad_(True)
        chunked = divergence_chunked(hc, Wc, teacher, mask, chunk=chunk, kind=kind, top_k=top_k)
        chunked.backward()
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(hc.grad, hp.grad, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(Wc.grad, Wp.grad, rtol=1e-4, atol=1e-6)


def test_chunked_keeps_no_full_logits_for_backward():
    """What autograd keeps between forward and backward: the plain form holds (N, V) tensors, the chunked one only
    its inputs (each chunk is recomputed in the backward pass)."""
    N, C, V = 64, 16, 3000
    h, W, t = torch.randn(N, C, requires_grad=True), torch.randn(V, C, requires_grad=True), torch.randn(N, V)

    def saved_bytes(fn):
        total = []

        def pack(x):
            total.append(x.numel() * x.element_size())
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fn().backward()
        return sum(total), max(total)
    plain_total, plain_max = saved_bytes(lambda: divergence(h @ W.T, t))
    chunk_total, chunk_max = saved_bytes(lambda: divergence_chunked(h, W, t, chunk=8))
    assert plain_max >= N * V * 4  # a whole (N, V) fp32 tensor
    assert chunk_max <= max(V * C * 4, 8 * V * 4)  # the weight, or one chunk's logits in the recomputation
    assert chunk_total < plain_total


def test_errors_name_the_argument():
    s, t = logits(2, 3, 10), logits(2, 3, 10, seed=1)
    for kw, word in ((dict(kind="kl"), "kind"), (dict(beta=0.0), "beta"), (dict(beta=1.0), "beta"),
                     (dict(temperature=0.0), "temperature"), (dict(top_k=0), "top_k"), (dict(top_k=2.5), "top_k")):
        with pytest.raises(ValueError, match=word):
            divergence(s, t, **kw)
    with pytest.raises(ValueError, match="same shape"):
        divergence(s, logits(2, 3, 11))
    with pytest.raises(ValueError, match="mask"):
        divergence(s, t, torch.ones(2, 3))  # not bool
    with pytest.raises(ValueError, match="mask"):
        divergence(s, t, torch.ones(3, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="weight"):
        divergence_chunked(torch.randn(2, 3, 4), torch.randn(10, 5), t)
    with pytest.raises(ValueError, match="chunk"):
        divergence_chunked(torch.randn(2, 3, 4), torch.randn(10, 4), t, chunk=0)


# ---------------------------------------------------------------- the loops, on tiny random models
TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
DC = dict(stop_ids=(1,), pad_id=0, max_new_tokens=8)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny(seed, sharp=1.0, **kw):
    torch.manual_seed(seed)
    m = minqwen3.Qwen3(minqwen3.Qwen3Config(**{**TINY, **kw}))
    with torch.no_grad():
        m.lm_head.weight.mul_(sharp)  # a peaked teacher: random models are otherwise near uniform
    return m


def prompts(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, 64, (int(torch.randint(3, 9, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def test_sample_replies_end_at_stop_and_follow_the_modes():
    m, ps = tiny(0, sharp=30.0), prompts(6)
    dc = DistillConfig(**DC)
    r = sample_replies(m, ps, [True, False] * 3, dc, seed=1)
    assert r == sample_replies(m, ps, [True, False] * 3, dc, seed=1)  # seeded
    for x in r:
        assert 1 <= len(x) <= 8 and (1 not in x[:-1])  # cut right after the first stop id
    with pytest.raises(ValueError, match="thinking"):
        sample_replies(m, ps, [True], dc)


def padding_wins(m, limit):
    """Like the official embedding's rows past the tokenizer (padding, no token), but winning every step, as they
    may in a random or drifting model: the LM head's rows from `limit` on scaled up."""
    with torch.no_grad():
        m.lm_head.weight[limit:] *= 100
    return m


def test_sample_replies_stay_below_vocab_limit():
    m, ps = padding_wins(tiny(0), 48), prompts(6)
    wild = sample_replies(m, ps, [True, False] * 3, DistillConfig(**DC), seed=1)
    assert sum(t >= 48 for r in wild for t in r) > len(ps)  # without the limit the padding rows win
    r = sample_replies(m, ps, [True, False] * 3, DistillConfig(**DC, vocab_limit=48), seed=1)
    assert all(len(x) >= 1 for x in r) and max(t for x in r for t in x) < 48


@pytest.mark.parametrize("kw, value", [(dict(rollout_batch=0), "0"), (dict(kind="kl"), "'kl'"),
                                       (dict(temperature=-1.0), "-1.0"), (dict(beta=2.0), "2.0"),
                                       (dict(top_k=0), "0"), (dict(max_new_tokens=0), "0"), (dict(chunk=0), "0"),
                                       (dict(ce_coef=-0.5), "-0.5"), (dict(vocab_limit=0), "0"),
                                       (dict(pad_id=-1), "-1"), (dict(stop_ids=1), "1")])
def test_config_errors_name_the_field_and_value(kw, value):
    (field, _), = kw.items()
    with pytest.raises((ValueError, TypeError), match=rf"{field}.*{re.escape(value)}"):
        DistillConfig(**kw)


def test_teacher_data_checks_a_temperature_changed_after_creation():
    dc = DistillConfig(**{**DC, "top_k": 4})
    dc.temperature = -1.0  # a dataclass field may be set after __post_init__
    with pytest.raises(ValueError, match="temperature.*-1.0"):
        teacher_data(tiny(1), prompts(2), [True, False], dc, seed=0)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_teacher_data_stores_the_teachers_top_k(temperature):
    teacher, ps = tiny(1, sharp=30.0), prompts(5)
    dc = DistillConfig(**{**DC, "top_k": 4, "temperature": temperature})
    data = teacher_data(teacher, ps, [True, False, True, False, True], dc, seed=0, batch=2)
    n_reply = int((data["lengths"] - data["prompt_lengths"]).sum())
    assert data["topk_ids"].shape == data["topk_logprobs"].shape == (n_reply, 4)
    assert data["topk_tail"].shape == (n_reply, 1)
    (ids, mask, valid), target = data_batch(data, [3, 0], dc.pad_id)
    rows = 0
    for b, i in enumerate([3, 0]):  # the oracle: a plain forward of each sample alone, in sample order
        L = int(data["lengths"][i])
        lp = F.log_softmax(teacher(ids[b:b + 1, :L])[0] / temperature, -1)
        sel = mask[b, 1:L]
        want = lp[:-1][sel].topk(4, -1)
        n = int(sel.sum())
        torch.testing.assert_close(target.logprobs[rows:rows + n], want.values, rtol=1e-4, atol=1e-5)
        assert torch.equal(target.ids[rows:rows + n].long(), want.indices)
        rest = lp[:-1][sel].scatter(-1, want.indices, float("-inf")).logsumexp(-1, keepdim=True)
        torch.testing.assert_close(target.tail[rows:rows + n], rest, rtol=1e-4, atol=1e-4)
        rows += n
    assert rows == target.ids.shape[0]
    kept = teacher_data(teacher, ps, [True] * 5, dc, seed=0, keep=lambda i, r: i % 2 == 0)
    assert len(kept["lengths"]) == 3


def _batch_divergence(student, data, idx, dc):
    (ids, mask, _), target = data_batch(data, idx, dc.pad_id)
    with torch.no_grad():
        h, _ = student.hidden_states(ids)
        return float(divergence(F.linear(h[:, :-1][mask[:, 1:]], student.lm_head.weight), target, kind=dc.kind,
                                temperature=dc.temperature))


@pytest.mark.parametrize("kind", KINDS)
def test_offpolicy_step_scores_at_its_temperature(kind):
    """The step's divergence (before its update) is divergence() at dc.temperature on the stored targets."""
    teacher, student = tiny(2, sharp=30.0), tiny(3, sharp=20.0)  # a peaked student too: T changes its softmax
    dc = DistillConfig(**{**DC, "top_k": 4, "temperature": 0.7, "kind": kind})
    data = teacher_data(teacher, prompts(4), [True, False] * 2, dc, seed=0)
    want = _batch_divergence(student, data, [0, 1, 2, 3], dc)
    tc = TrainConfig(lr=0.0, min_lr=0.0, warmup=1)
    stats = offpolicy_step(student, make_optimizer(student, tc), data, [0, 1, 2, 3], dc, tc)
    assert stats["divergence"] == pytest.approx(want, rel=1e-4)
    assert want != pytest.approx(_batch_divergence(student, data, [0, 1, 2, 3], replace(dc, temperature=1.0)),
                                 rel=1e-2)  # the temperature matters here


@pytest.mark.parametrize("student_kw", [{}, dict(num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)])
def test_offpolicy_steps_reduce_the_divergence(student_kw):
    teacher, student = tiny(2, sharp=30.0, num_hidden_layers=3), tiny(3, hidden_size=16, head_dim=4, **student_kw)
    dc = DistillConfig(top_k=8, ce_coef=0.5, **DC)
    data = teacher_data(teacher, prompts(16), [True, False] * 8, dc, seed=0)
    tc = TrainConfig(steps=20, lr=1e-2, min_lr=1e-3, warmup=2)
    opt = make_optimizer(student, tc)
    before = _batch_divergence(student, data, list(range(16)), dc)
    for step in range(20):
        stats = offpolicy_step(student, opt, data, list(range(16)), dc, tc, step)
    assert {"divergence", "ce", "grad_norm", "tokens"} <= set(stats)
    after = _batch_divergence(student, data, list(range(16)), dc)
    assert after < 0.7 * before, (before, after)


def test_onpolicy_steps_reduce_the_divergence():
    teacher = tiny(4, sharp=30.0, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16)  # an MoE teacher
    student = tiny(5, hidden_size=16, head_dim=4)
    dc = DistillConfig(kind="reverse", **DC)
    ps, think = prompts(12, seed=3), [True, False] * 6
    # measured on fixed samples of the untrained student: the same tokens before and after
    replies = sample_replies(student, ps, think, dc, seed=9)
    seqs = [(p + r, [False] * len(p) + [True] * len(r)) for p, r in zip(ps, replies)]
    from minqwen3.train import collate
    ids, mask, _ = collate(seqs, 0)

    def reverse_kl():
        with torch.no_grad():
            return float(divergence(student(ids)[:, :-1], teacher(ids)[:, :-1], mask[:, 1:], kind="reverse"))
    tc = TrainConfig(steps=40, lr=1e-2, min_lr=1e-3, warmup=2)
    opt = make_optimizer(student, tc)
    before = reverse_kl()
    for step in range(40):
        stats = onpolicy_step(student, teacher, opt, ps, think, dc, tc, step, seed=step)
    assert stats["reply_tokens"] >= 1 and stats["divergence"] >= 0
    assert reverse_kl() < 0.7 * before  # 0.53-0.54 for three seed offsets (25 steps: 0.69-0.71, too near the bar)
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained


# ---------------------------------------------------------------- the experiment's pieces
def test_experiment_student_is_the_teacher_with_layers_dropped():
    """scripts/distill_experiment.py: keeping every layer gives the teacher back; keeping some, the same model with
    those layers (checked against the teacher's own layers run by hand)."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import distill_experiment as X
    teacher = tiny(6, num_hidden_layers=3).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(X.make_student(teacher, (0, 1, 2), "cpu")(ids), teacher(ids))
        student = X.make_student(teacher, (0, 2), "cpu")
        assert student.config.num_hidden_layers == 2
        # the oracle: the teacher with layer 1 made the identity (its two residual branches output zero)
        teacher.model.layers[1].self_attn.o_proj.weight.zero_()
        teacher.model.layers[1].mlp.down_proj.weight.zero_()
        torch.testing.assert_close(student(ids), teacher(ids))
    # the FLOP count: 2 per multiply-add of the body for every token, of the head for the head's tokens
    c = teacher.config
    # q, k, v, o (4 query and 2 KV heads of 8 on hidden 32), SwiGLU, the q/k norms and the two RMSNorms
    per_layer = 32 * 8 * (4 + 2 + 2 + 4) + 3 * 32 * 64 + 2 * 8 + 2 * 32
    body = 3 * per_layer + 32  # + the final norm
    assert X.Meter.forward(teacher, 10, 4) == 2 * body * 10 + 2 * c.vocab_size * 32 * 4


def test_t_quantile_of_the_experiment_intervals():
    """scripts/distill_experiment.py's 95% t-intervals over seeds: Student's t quantiles as tables print them."""
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import distill_experiment as X
    table = {1: 12.706, 2: 4.303, 4: 2.776, 5: 2.571, 6: 2.447, 9: 2.262, 14: 2.145, 29: 2.045, 60: 2.000}
    for df, t in table.items():
        assert X.t975(df) == pytest.approx(t, abs=1e-3), df


def _experiment():
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import distill_experiment as X
    return X


DEMO = __import__("pathlib").Path(__file__).resolve().parents[1] / "weights" / "demo-dense"


def test_experiment_greedy_replies_stay_below_vocab_limit():
    X = _experiment()
    m, ps = padding_wins(tiny(0), 48), prompts(4)
    assert max(t for r in X.greedy_replies(m, ps, 4, DistillConfig(**DC)) for t in r) >= 48  # the rows do win
    r = X.greedy_replies(m, ps, 4, DistillConfig(**DC, vocab_limit=48))
    assert all(r) and max(t for x in r for t in x) < 48


def test_experiment_results_skip_a_torn_last_line(tmp_path, capsys):
    """A run stopped while appending leaves its last line cut short: skipped with a warning naming the file (cut
    off on resume, so the next row gets a line of its own); a bad line before the last is an error naming it."""
    X = _experiment()
    f = tmp_path / "results.jsonl"
    f.write_text('{"arm": "ce", "seed": 0}\n{"arm": "off", "se')
    assert X.read_rows(f) == [{"arm": "ce", "seed": 0}]
    assert f"{f}, line 2 (the last) is cut short" in capsys.readouterr().err
    assert f.read_text().endswith('"se')  # the report only reads
    assert X.read_rows(f, drop_torn=True) == [{"arm": "ce", "seed": 0}]
    assert f.read_text() == '{"arm": "ce", "seed": 0}\n'
    X.append_row(f, {"arm": "off", "seed": 0})
    assert X.read_rows(f) == [{"arm": "ce", "seed": 0}, {"arm": "off", "seed": 0}]
    f.write_text('{"arm": "ce", "seed": 0}')  # a whole row whose newline was lost: the next row still gets a line
    X.append_row(f, {"arm": "off", "seed": 1})
    assert f.read_text() == '{"arm": "ce", "seed": 0}\n{"arm": "off", "seed": 1}\n'
    f.write_text('{"arm": "ce", "seed": 0}\n{"arm": "of\n{"arm": "off", "seed": 1}\n')
    with pytest.raises(SystemExit, match=rf"{re.escape(str(f))}, line 2: not a JSON row"):
        X.read_rows(f)


@pytest.mark.parametrize("flag, value", [("--lr", "nan"), ("--lr", "-1"), ("--budget-tflops", "0"), ("--seeds", "0"),
                                         ("--top-k", "x")])
def test_experiment_flags_are_checked_by_argparse(tmp_path, capsys, flag, value):
    """A bad rate failed only in the first arm, after the teacher's rows recording it were written: those rows then
    blocked every resume with the rate mended."""
    X = _experiment()
    with pytest.raises(SystemExit) as e:
        X.main(["--work", str(tmp_path), flag, value])
    assert e.value.code == 2 and flag in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_experiment_refuses_stored_data_made_with_other_arguments(tmp_path):
    from types import SimpleNamespace
    X = _experiment()
    a = SimpleNamespace(teacher_sha256="ab" * 32, pool=64, top_k=10, max_think=16, keep_wrong=False,
                        vocab_limit=151669, layers=(0, 3))
    data = {"lengths": torch.tensor([3, 4])}
    f = tmp_path / "teacher_pool.safetensors"
    got = X.stored(f, X.settings(a, X.POOL_ARGS), lambda: data)
    assert torch.equal(got["lengths"], data["lengths"]) and [p.name for p in tmp_path.iterdir()] == [f.name]
    assert torch.equal(X.stored(f, X.settings(a, X.POOL_ARGS), lambda: pytest.fail("made again"))["lengths"],
                       data["lengths"])  # the same arguments: reused
    a.top_k = 20
    with pytest.raises(SystemExit, match=rf"{re.escape(str(f))} was made with --top-k 10; this run has 20"):
        X.stored(f, X.settings(a, X.POOL_ARGS), lambda: pytest.fail("made again"))
    a.top_k, a.teacher_sha256 = 10, "cd" * 32
    with pytest.raises(SystemExit, match=f"the teacher's sha256 {'ab' * 32}; this run has {'cd' * 32}"):
        X.stored(f, X.settings(a, X.POOL_ARGS), lambda: pytest.fail("made again"))
    assert X.settings(a, ("layers",))["layers"] == "0,3"
    from safetensors.torch import save_file
    save_file(data, str(f))  # stored before the arguments were: it may be either
    with pytest.raises(SystemExit, match=r"sha256 \(not recorded\)"):
        X.stored(f, X.settings(a, X.POOL_ARGS), lambda: pytest.fail("made again"))


@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no demo checkpoint")
def test_experiment_resume_refuses_rows_of_other_arguments_before_any_work(tmp_path, monkeypatch):
    """The results of a run with --samples 8 are not resumed by one with --samples 4 (the `done` check would skip
    their arms); and the teacher is hashed before anything runs, so a wrong --teacher fails first."""
    import hashlib
    X = _experiment()
    monkeypatch.setattr(X, "build_pool", lambda *a, **k: pytest.fail("work before the check"))
    monkeypatch.setattr(X, "evaluate", lambda *a, **k: pytest.fail("work before the check"))
    argv = ["--work", str(tmp_path), "--teacher", str(DEMO), "--device", "cpu"]
    a, _, results = X.parse(X.parser(), argv + ["--samples", "8"])
    a.teacher_sha256 = hashlib.sha256((DEMO / "model.safetensors").read_bytes()).hexdigest()
    a.vocab_limit = 151669
    X.append_row(results, {"arm": "ce", "seed": 0, "settings": X.settings(a, X.RUN_ARGS)})
    with pytest.raises(SystemExit, match=r"row 1: ce seed 0\) was made with --samples 8; this run has 4"):
        X.main(argv + ["--samples", "4"])
    with pytest.raises(SystemExit, match=f"--teacher {re.escape(str(tmp_path))}: no model.safetensors or "
                                         "model.safetensors.index.json"):
        X.main(["--work", str(tmp_path), "--teacher", str(tmp_path), "--device", "cpu"])


@pytest.mark.skipif(not (DEMO / "model.safetensors").is_file(), reason="no demo checkpoint")
def test_experiment_pool_with_no_reply_kept_says_so():
    """Two tokens are too few for the teacher to answer anything: no reply is kept, and the error says which
    setting to change (it was a ZeroDivisionError)."""
    from types import SimpleNamespace
    from minqwen3.tokenizer import ENDOFTEXT, Tokenizer
    X = _experiment()
    tok = Tokenizer.default()
    teacher = minqwen3.from_pretrained(DEMO, dtype=torch.float32)
    a = SimpleNamespace(top_k=4, max_think=2, pad_id=ENDOFTEXT, vocab_limit=len(tok))
    with pytest.raises(SystemExit, match=r"no teacher reply was kept \(0 of 4\).*--max-think.*--keep-wrong"):
        X.build_pool(teacher, tok, tok.encode, 4, 1, False, a, keep_wrong=False)
