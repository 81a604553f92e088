"""Exercise 9 · GRPO advantages and loss, against the formulas written out one token at a time in float64 (never
against minqwen3 itself). exercises/test_mutants_rl.py checks that these tests catch the usual mistakes."""
import pytest
import torch


def oracle_advantages(r, eps=1e-4):
    out = []
    for row in r.double().tolist():
        m = sum(row) / len(row)
        sd = (sum((x - m) ** 2 for x in row) / len(row)) ** 0.5
        out.append([(x - m) / (sd + eps) for x in row])
    return torch.tensor(out, dtype=torch.float64)


def oracle_loss(lp, old, adv, mask, clip=0.2, kl_coef=0.0, ref=None):
    """float64, token by token: -min(rho A, clip(rho) A) (+ kl_coef k3), mean per reply, then over replies."""
    total = 0.0
    for b in range(lp.shape[0]):
        terms = []
        for t in range(lp.shape[1]):
            if mask[b, t]:
                rho = torch.exp(lp[b, t] - old[b, t])
                term = -torch.minimum(rho * adv[b], torch.clamp(rho, 1 - clip, 1 + clip) * adv[b])
                if kl_coef:
                    term = term + kl_coef * (torch.exp(ref[b, t] - lp[b, t]) - (ref[b, t] - lp[b, t]) - 1)
                terms.append(term)
        total = total + sum(terms) / len(terms)
    return total / lp.shape[0]


def data(seed=0, B=4, T=7):
    g = torch.Generator().manual_seed(seed)
    lp = -torch.rand(B, T, generator=g) * 3
    old = lp + torch.randn(B, T, generator=g) * 0.4  # ratios inside and outside the clip range
    ref = lp + torch.randn(B, T, generator=g) * 0.5
    adv = torch.randn(B, generator=g)
    lengths = torch.tensor([7, 2, 5, 3])[:B]  # replies of different lengths
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return lp, old, ref, adv, mask


def test_advantages(impl):
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [0.5, 2.0, -1.0, 0.0], [3.0, 1.0, 1.0, 1.0]])
    a = impl.group_advantages(r)
    assert a.dtype == torch.float32 and a.shape == r.shape
    torch.testing.assert_close(a.double(), oracle_advantages(r), rtol=1e-5, atol=1e-6)


def test_advantages_of_a_uniform_group_are_zero(impl):
    a = impl.group_advantages(torch.tensor([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.isfinite(a).all()
    assert a[:2].abs().max() == 0 and a[2].abs().max() > 1


def test_advantages_reject_a_group_of_one(impl):
    with pytest.raises(ValueError, match="rewards"):
        impl.group_advantages(torch.ones(5))
    with pytest.raises(ValueError, match="rewards"):
        impl.group_advantages(torch.ones(5, 1))


@pytest.mark.parametrize("clip", [0.2, 0.1])
def test_loss_and_gradient(impl, clip):
    lp, old, _, adv, mask = data(1)
    x = lp.clone().requires_grad_(True)
    ours = impl.grpo_loss(x, old, adv, mask, clip=clip)
    ours.backward()
    y = lp.double().requires_grad_(True)
    want = oracle_loss(y, old.double(), adv.double(), mask, clip)
    want.backward()
    assert ours.dtype == torch.float32 and ours.dim() == 0
    torch.testing.assert_close(ours.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-7)


def test_masked_tokens_count_for_nothing(impl):
    lp, old, _, adv, mask = data(2)
    x = lp.clone().requires_grad_(True)
    impl.grpo_loss(x, old, adv, mask).backward()
    assert x.grad[~mask].abs().max() == 0
    garbage = torch.where(mask, lp, torch.full_like(lp, 50.0))  # whatever sits under the mask
    torch.testing.assert_close(impl.grpo_loss(garbage, old, adv, mask), impl.grpo_loss(lp, old, adv, mask))


def test_constants_get_no_gradient(impl):
    """Only the policy's log-probs are trained: the sampler's, the advantages and the reference's are constants."""
    lp, old, ref, adv, mask = data(3)
    old, adv, ref = (t.clone().requires_grad_(True) for t in (old, adv, ref))
    impl.grpo_loss(lp.clone().requires_grad_(True), old, adv, mask, kl_coef=0.3, ref_logprobs=ref).backward()
    for name, t in (("old_logprobs", old), ("advantages", adv), ("ref_logprobs", ref)):
        assert t.grad is None or t.grad.abs().max() == 0, name


def test_on_policy_gradient_is_minus_the_advantage_per_token(impl):
    """old = current: ratio 1; d loss / d logprob = -A / (reply length) / B at each reply token."""
    lp, _, _, adv, mask = data(4)
    x = lp.clone().requires_grad_(True)
    impl.grpo_loss(x, lp, adv, mask).backward()
    want = -adv[:, None] / mask.sum(1, keepdim=True) / lp.shape[0] * mask
    torch.testing.assert_close(x.grad, want.float(), rtol=1e-5, atol=1e-7)


def test_kl_penalty(impl):
    lp, old, ref, adv, mask = data(5)
    x = lp.clone().requires_grad_(True)
    ours = impl.grpo_loss(x, old, adv, mask, kl_coef=0.3, ref_logprobs=ref)
    ours.backward()
    y = lp.double().requires_grad_(True)
    want = oracle_loss(y, old.double(), adv.double(), mask, 0.2, 0.3, ref.double())
    want.backward()
    torch.testing.assert_close(ours.double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.double(), y.grad, rtol=1e-4, atol=1e-7)
    same = impl.grpo_loss(lp, old, adv, mask, kl_coef=0.3, ref_logprobs=lp)  # reference = policy: no penalty
    torch.testing.assert_close(same, impl.grpo_loss(lp, old, adv, mask))


def test_errors_name_the_argument(impl):
    lp, old, _, adv, mask = data(6)
    with pytest.raises(ValueError, match="clip"):
        impl.grpo_loss(lp, old, adv, mask, clip=0.0)
    with pytest.raises(ValueError, match="kl_coef"):
        impl.grpo_loss(lp, old, adv, mask, kl_coef=0.1)
