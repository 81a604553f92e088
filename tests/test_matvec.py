"""The decode matrix-vector kernel (minqwen3/matvec.py) against torch's product."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minqwen3 import matvec
from minqwen3.attention import Attention
from minqwen3.config import Qwen3Config
from minqwen3.mlp import MLP


def test_cpu_tensors_and_gradients_keep_torchs_product():
    layer, x = nn.Linear(16, 8, bias=False), torch.randn(1, 16)
    assert not matvec.available(x, layer.weight)
    assert torch.equal(matvec.linear(layer, x), layer(x))
    if torch.cuda.is_available():
        w = torch.zeros(8, 16, device="cuda", requires_grad=True)
        assert not matvec.available(torch.zeros(1, 16, device="cuda"), w)


@pytest.mark.parametrize("x, w, match", [
    (torch.zeros(2, 5), torch.zeros(3, 4), r"x \(2, 5\) and weight \(3, 4\)"),
    (torch.zeros(2, 4), torch.zeros(4), r"weight \(4,\)"),
    (torch.zeros(2, 4), torch.zeros(3, 4, dtype=torch.float64), "float32 on cpu and weight torch.float64"),
    (torch.zeros(2, 4, dtype=torch.int32), torch.zeros(3, 4, dtype=torch.int32), "one dtype of"),
    (torch.zeros(2, 4), torch.zeros(3, 4), "needs a CUDA tensor"),
], ids=["K", "weight-dims", "dtypes", "int", "cpu"])
def test_bad_inputs_are_refused_naming_them(x, w, match):
    with pytest.raises(ValueError, match=match):
        matvec.matvec(x, w)


@pytest.mark.parametrize("K, splits, block_k", [(4096, 4, 256), (12800, 7, 256), (1000, 3, 128), (300, 9, 256),
                                                (25600, 1, 512)])
def test_slices_cover_k_none_empty(K, splits, block_k):
    per, n = matvec.slice_k(K, splits, block_k)
    assert per % block_k == 0 and n <= splits
    assert (n - 1) * per < K <= n * per  # the last slice holds at least one column, together they hold all


def test_the_rule_fills_the_gpu_and_depends_on_the_shape_alone():
    c = matvec.rule(1, 5120, 12800, 132)  # Qwen3-32B's down_proj on each of two GPUs
    programs = -(-5120 // c.block_n) * c.splits
    assert 2 * 132 <= programs <= 8 * 132
    assert matvec.rule(1, 5120, 12800, 132) == c  # no timing: every rank computes the same
    assert matvec.rule(8, 5120, 4096, 132).dot and not c.dot


def test_modules_on_the_cpu_are_torchs_spelling():
    torch.manual_seed(0)
    mlp, x = MLP(16, 40), torch.randn(2, 3, 16)
    assert torch.equal(mlp(x), mlp.down_proj(F.silu(mlp.gate_proj(x)) * mlp.up_proj(x)))


# ---------------------------------------------------------------- on a GPU
def _reference(x, w):
    """x @ w.T in float64, and the sum of the products' magnitudes (the scale of the rounding error)."""
    return x.double() @ w.double().T, x.double().abs() @ w.double().abs().T


CONFIGS = [None, matvec.Config(16, 256, 1, 4, 3, False), matvec.Config(8, 128, 5, 4, 1, False),
           matvec.Config(16, 128, 3, 4, 4, True), matvec.Config(32, 64, 6, 4, 3, True)]


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("config", CONFIGS, ids=["table-or-rule", "elem-1split", "elem-5splits", "dot-3splits",
                                                 "dot-6splits"])
@pytest.mark.parametrize("M, N, K", [(1, 37, 1000), (3, 130, 515), (8, 5, 3001), (2, 64, 256), (5, 300, 77)])
def test_gpu_float32_matches_float64(config, M, N, K):
    g = torch.Generator("cuda").manual_seed(M * N + K)
    x = torch.randn(M, K, device="cuda", generator=g)
    w = torch.randn(N, K, device="cuda", generator=g)
    got = matvec.matvec(x, w) if config is None else matvec.launch(x, w, config)
    want, scale = _reference(x, w)
    assert got.shape == (M, N) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= 3e-5 * scale + 1e-6).all()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("M", [1, 2, 4, 8])
def test_gpu_half_precision_is_rounded_once(dtype, M):
    """The same bf16/fp16 inputs, summed in float32: only the final rounding (half an ulp) and float32's sum."""
    g = torch.Generator("cuda").manual_seed(M)
    x = torch.randn(M, 1, 2000, device="cuda", generator=g).to(dtype)
    w = (torch.randn(333, 2000, device="cuda", generator=g) * 0.05).to(dtype)
    got = matvec.matvec(x, w)
    want, scale = _reference(x.view(M, -1), w)
    ulp = 2.0 ** -8 if dtype == torch.bfloat16 else 2.0 ** -11
    assert got.shape == (M, 1, 333) and got.dtype == dtype
    assert ((got.view(M, -1).double() - want).abs() <= ulp * want.abs() + 1e-5 * scale + 1e-6).all()


@pytest.mark.gpu
@pytest.mark.parametrize("config", [matvec.Config(16, 256, 8, 4, 3, False), matvec.Config(32, 128, 8, 4, 4, True)],
                         ids=["elem", "dot"])
def test_gpu_same_bits_every_call_and_in_a_graph(config):
    g = torch.Generator("cuda").manual_seed(1)
    M = 4 if config.dot else 1
    x = torch.randn(M, 5120, device="cuda", generator=g).bfloat16()
    w = (torch.randn(4096, 5120, device="cuda", generator=g) * 0.02).bfloat16()
    first = matvec.launch(x, w, config)
    assert all(torch.equal(first, matvec.launch(x, w, config)) for _ in range(5))  # the counters were reset
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = matvec.launch(x, w, config)
    for _ in range(3):
        out.zero_()
        graph.replay()
        assert torch.equal(out, first)


@pytest.mark.gpu
def test_gpu_too_many_rows_or_strided_weight_are_refused():
    w = torch.zeros(8, 16, device="cuda")
    with pytest.raises(ValueError, match="9 rows"):
        matvec.matvec(torch.zeros(9, 16, device="cuda"), w)
    with pytest.raises(ValueError, match="rows must be contiguous"):
        matvec.matvec(torch.zeros(1, 8, device="cuda"), w.T)
    assert not matvec.available(torch.zeros(9, 16, device="cuda"), w)
    assert matvec.available(torch.zeros(2, 1, 16, device="cuda"), w)
    # one row: Inductor's product unless MINQWEN3_MATVEC=all (it measured as fast, and fuses the residual add)
    assert matvec.available(torch.zeros(1, 16, device="cuda"), w) == (matvec.min_rows == 1)


@pytest.mark.gpu
def test_gpu_modules_take_the_kernel_without_gradients():
    torch.manual_seed(0)
    cfg = Qwen3Config(vocab_size=64, hidden_size=64, intermediate_size=96, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    mlp, attn = MLP(64, 96).cuda().bfloat16(), Attention(cfg).cuda().bfloat16()
    x = torch.randn(2, 1, 64, device="cuda").bfloat16()
    with torch.no_grad():
        from minqwen3 import swiglu
        h = swiglu.swiglu(mlp.gate_proj(x), mlp.up_proj(x))
        assert torch.equal(mlp(x), matvec.matvec(h, mlp.down_proj.weight))
        y = torch.randn(2, 1, 64, device="cuda").bfloat16()
        assert torch.equal(matvec.linear(attn.o_proj, y), matvec.matvec(y, attn.o_proj.weight))
    x.requires_grad_(True)
    mlp(x).sum().backward()  # with gradients: torch's product, which has a backward
    assert x.grad is not None
