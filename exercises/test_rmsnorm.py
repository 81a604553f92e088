"""Exercise 1 · RMSNorm, against torch's F.rms_norm and transformers' Qwen3RMSNorm (never against minqwen3 itself)."""
import pytest
import torch
import torch.nn.functional as F


def make(impl, dim, eps=1e-6, dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    norm = impl.RMSNorm(dim, eps)
    assert isinstance(norm.weight, torch.nn.Parameter) and norm.weight.shape == (dim,), "weight: a (dim,) Parameter"
    assert torch.equal(norm.weight.detach(), torch.ones(dim)), "the gain starts at ones"
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)  # a gain of ones would hide a missing or misplaced multiplication
    return norm.to(dtype)


@pytest.mark.parametrize("shape", [(48,), (3, 48), (2, 5, 48)])
def test_fp32_matches_torch(impl, shape):
    norm = make(impl, 48)
    x = torch.randn(shape) * 3 + 1  # a non-zero mean: RMSNorm must not subtract it
    torch.testing.assert_close(norm(x), F.rms_norm(x, (48,), norm.weight, eps=1e-6))


def test_eps_is_used(impl):
    norm = make(impl, 16, eps=1e-2)
    x = torch.full((2, 16), 1e-3)  # tiny values: the eps dominates the denominator
    torch.testing.assert_close(norm(x), F.rms_norm(x, (16,), norm.weight, eps=1e-2))


def test_bf16_matches_transformers_bit_for_bit(impl):
    """fp32 statistics, cast back to bf16, then the gain: the exact order Qwen3's checkpoints were trained with."""
    pytest.importorskip("transformers")
    from transformers.models.qwen3.modeling_qwen3 import Qwen3RMSNorm
    norm = make(impl, 256, dtype=torch.bfloat16)
    theirs = Qwen3RMSNorm(256, eps=1e-6).to(torch.bfloat16)
    theirs.load_state_dict(norm.state_dict())  # also checks the parameter is called `weight`
    x = (torch.randn(4, 7, 256) * 50).to(torch.bfloat16)
    out = norm(x)
    assert out.dtype == torch.bfloat16
    assert torch.equal(out, theirs(x))


def test_gradients_flow(impl):
    norm = make(impl, 32)
    x = torch.randn(3, 32, requires_grad=True)
    norm(x).square().sum().backward()
    assert x.grad is not None and norm.weight.grad is not None and norm.weight.grad.abs().sum() > 0


def test_fp16_large_values_do_not_overflow(impl):
    """fp16 stops at 65,504: squaring activations of a few hundred in fp16 overflows to inf (and the output to 0)."""
    norm = make(impl, 64, dtype=torch.float16)
    x = (torch.randn(3, 64) * 400).to(torch.float16)
    out = norm(x)
    assert out.dtype == torch.float16 and torch.isfinite(out).all()
    want = F.rms_norm(x.float(), (64,), norm.weight.float(), eps=1e-6)
    torch.testing.assert_close(out.float(), want, rtol=1e-2, atol=1e-2)
