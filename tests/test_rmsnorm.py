"""RMSNorm against torch's own rms_norm, and its fp32 statistics in bf16."""
import torch
import torch.nn.functional as F

from minqwen3.rmsnorm import RMSNorm


def test_matches_torch_rms_norm():
    torch.manual_seed(0)
    norm = RMSNorm(48, eps=1e-6)
    torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    x = torch.randn(2, 5, 48) * 3
    torch.testing.assert_close(norm(x), F.rms_norm(x, (48,), norm.weight, eps=1e-6))


def test_bf16_input_uses_fp32_statistics():
    torch.manual_seed(0)
    norm = RMSNorm(256).to(torch.bfloat16)
    x = (torch.randn(4, 256) * 50).to(torch.bfloat16)
    exact = F.rms_norm(x.double(), (256,), eps=1e-6).to(torch.bfloat16)
    assert norm(x).dtype == torch.bfloat16
    assert torch.equal(norm(x), exact)  # fp32 statistics round to the same bf16 values as float64 ones
