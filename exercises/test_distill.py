"""Exercise 8 · Distillation divergences, against torch's kl_div and probabilities written out in float64 (never
against minqwen3 itself). exercises/test_mutants_distill.py checks that these tests catch the usual mistakes."""
import pytest
import torch
import torch.nn.functional as F

KINDS = ("forward", "reverse", "jsd")


def oracle(s, t, kind="forward", beta=0.5, temperature=1.0, top_k=None):
    """Per token (B, T), float64: p log(p / q) over the vocabulary, or over the k teacher ids plus 1 - their sum."""
    ps, pt = (s.double() / temperature).softmax(-1), (t.double() / temperature).softmax(-1)
    if top_k is not None and top_k < s.shape[-1]:
        ids = t.topk(top_k, -1).indices
        ps, pt = (torch.cat([p.gather(-1, ids), 1 - p.gather(-1, ids).sum(-1, keepdim=True)], -1) for p in (ps, pt))

    def kl(p, q):
        return (p * (p / q).log()).sum(-1)

    m = beta * pt + (1 - beta) * ps
    return {"forward": kl(pt, ps), "reverse": kl(ps, pt), "jsd": beta * kl(pt, m) + (1 - beta) * kl(ps, m)}[kind]


def pair(B=2, T=5, V=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g) * 3, torch.randn(B, T, V, generator=g) * 3


def test_forward_and_reverse_match_kl_div(impl):
    s, t = pair()
    ls, lt = F.log_softmax(s, -1).flatten(0, 1), F.log_softmax(t, -1).flatten(0, 1)
    # F.kl_div(input, target) is KL(target ‖ exp(input)): the first argument is the one inside the log
    torch.testing.assert_close(impl.divergence(s, t, kind="forward"),
                               F.kl_div(ls, lt, log_target=True, reduction="batchmean"))
    torch.testing.assert_close(impl.divergence(s, t, kind="reverse"),
                               F.kl_div(lt, ls, log_target=True, reduction="batchmean"))


def test_default_is_forward(impl):
    s, t = pair(seed=1)
    torch.testing.assert_close(impl.divergence(s, t).double(), oracle(s, t).mean())


def test_jsd(impl):
    s, t = pair(seed=2)
    for beta in (0.5, 0.2, 0.9):
        torch.testing.assert_close(impl.divergence(s, t, kind="jsd", beta=beta).double(),
                                   oracle(s, t, "jsd", beta).mean(), rtol=1e-5, atol=1e-6)


def test_temperature_divides_both_sides(impl):
    s, t = pair(seed=3)
    for kind in KINDS:
        for T in (0.5, 2.0):
            torch.testing.assert_close(impl.divergence(s, t, kind=kind, temperature=T).double(),
                                       oracle(s, t, kind, temperature=T).mean(), rtol=1e-5, atol=1e-6)


def test_mask_mean_over_true_tokens(impl):
    s, t = pair(seed=4)
    mask = torch.tensor([[True, False, False, True, False], [False, False, True, False, False]])
    for kind in KINDS:
        torch.testing.assert_close(impl.divergence(s, t, mask, kind=kind).double(),
                                   oracle(s, t, kind)[mask].mean(), rtol=1e-5, atol=1e-6)
    s2 = s.clone()
    s2[~mask] = 100.0  # what is under the mask does not matter
    torch.testing.assert_close(impl.divergence(s2, t, mask), impl.divergence(s, t, mask))
    for kind in KINDS:  # no token at all: 0, not 0 / 0 (hint 5)
        assert impl.divergence(s, t, torch.zeros_like(mask), kind=kind).item() == 0.0, kind


def test_top_k_keeps_the_tail(impl):
    s, t = pair(seed=5)
    for kind in KINDS:
        for k in (1, 5):
            torch.testing.assert_close(impl.divergence(s, t, kind=kind, top_k=k).double(),
                                       oracle(s, t, kind, top_k=k).mean(), rtol=1e-5, atol=1e-6)
        # k >= V: nothing is left for the tail, the full divergence
        torch.testing.assert_close(impl.divergence(s, t, kind=kind, top_k=40), impl.divergence(s, t, kind=kind))
        torch.testing.assert_close(impl.divergence(s, t, kind=kind, top_k=99), impl.divergence(s, t, kind=kind))


def test_identical_inputs_give_zero(impl):
    s, _ = pair(seed=6)
    for kind in KINDS:
        for k in (None, 3):
            assert impl.divergence(s, s.clone(), kind=kind, top_k=k).abs() < 1e-6


def test_fp32_result_and_gradient_to_the_student_only(impl):
    s, t = pair(seed=7)
    s, t = s.bfloat16().requires_grad_(True), t.bfloat16().requires_grad_(True)
    for kind in KINDS:
        d = impl.divergence(s, t, kind=kind, top_k=6)
        assert d.dtype == torch.float32, "compute in float32 whatever the input dtype"
        torch.testing.assert_close(d.double(), oracle(s.detach(), t.detach(), kind, top_k=6).mean(),
                                   rtol=1e-5, atol=1e-6)
        d.backward()
        assert t.grad is None, "the teacher is a fixed target: detach it"
        assert s.grad is not None and s.grad.abs().sum() > 0
        s.grad = None


def test_gradient_matches_float64(impl):
    s, t = pair(seed=8)
    mask = torch.tensor([[True, True, False, True, False], [False, True, True, True, True]])
    for kind in KINDS:
        a = s.clone().requires_grad_(True)
        impl.divergence(a, t, mask, kind=kind, temperature=1.5, top_k=4).backward()
        b = s.double().requires_grad_(True)
        oracle(b, t.double(), kind, temperature=1.5, top_k=4)[mask].mean().backward()
        torch.testing.assert_close(a.grad.double(), b.grad, rtol=1e-4, atol=1e-7)


def test_bad_arguments_raise(impl):
    s, t = pair(seed=9)
    for kw in (dict(kind="kl"), dict(beta=0.0), dict(beta=1.5), dict(temperature=0.0)):
        with pytest.raises(ValueError):
            impl.divergence(s, t, **kw)
