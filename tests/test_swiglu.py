"""SwiGLU's product as a kernel (minqwen3/swiglu.py) against torch's silu(gate) * up."""
import pytest
import torch
import torch.nn.functional as F

from minqwen3 import matvec, swiglu
from minqwen3.mlp import MLP


def test_the_kernel_only_where_it_can_run():
    """A CPU tensor, or one that wants a gradient (the kernel has no backward), keeps torch's spelling."""
    assert not swiglu.available(torch.zeros(3))
    if torch.cuda.is_available():
        assert not swiglu.available(torch.zeros(3, device="cuda", requires_grad=True))


@pytest.mark.parametrize("up", [torch.zeros(2, 5), torch.zeros(2, 4, dtype=torch.float64)], ids=["shape", "dtype"])
def test_mismatched_inputs_are_refused_before_the_kernel(up):
    """Up of another shape would be read past its end by the kernel; another dtype mixed silently: both are refused,
    naming what was given (on a CPU the same check runs first, then the one for the device)."""
    with pytest.raises(ValueError, match=r"gate \(2, 4\) torch.float32 .* and up"):
        swiglu.swiglu(torch.zeros(2, 4), up)


def test_a_cpu_tensor_is_refused_with_a_message():
    with pytest.raises(ValueError, match="needs a CUDA tensor"):
        swiglu.swiglu(torch.zeros(3), torch.zeros(3))


def test_mlp_on_the_cpu_is_the_torch_spelling():
    torch.manual_seed(0)
    mlp, x = MLP(16, 40), torch.randn(2, 3, 16)
    assert torch.equal(mlp(x), mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)))


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 8e-3)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("shape", [(1, 1, 3072), (8, 1, 12288), (2, 37, 1000), (5,)])  # blocks of 1024, and not
def test_gpu_swiglu_matches_torch(dtype, tol, shape):
    g = torch.Generator("cuda").manual_seed(0)
    gate, up = (torch.randn(shape, device="cuda", dtype=dtype, generator=g) * 4 for _ in "gu")
    assert swiglu.available(gate)
    got = swiglu.swiglu(gate, up)
    want = F.silu(gate.double()) * up.double()  # the reference, in float64
    assert got.shape == gate.shape and got.dtype == dtype
    assert ((got.double() - want).abs() <= tol * want.abs() + 1e-6).all()  # bf16: rounded once, within one ulp
    mlp = MLP(64, shape[-1]).to("cuda", dtype)  # the module takes the kernel on CUDA without gradients
    with torch.no_grad():
        x = torch.randn(3, 64, device="cuda", dtype=dtype, generator=g)
        h = swiglu.swiglu(mlp.gate_proj(x), mlp.up_proj(x))
        assert torch.equal(mlp(x), matvec.linear(mlp.down_proj, h))  # down_proj: matvec.py's kernel, or torch's
    x.requires_grad_(True)
    mlp(x).sum().backward()  # with gradients: torch's spelling, which has a backward
    assert x.grad is not None
