"""The decode matrix-vector kernel (minqwen3/matvec.py) against torch's product, and with the RMSNorm on the way in
against rmsnorm.py's module and a float64 reference."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from minqwen3 import matvec
from minqwen3.attention import Attention
from minqwen3.config import Qwen3Config
from minqwen3.mlp import MLP
from minqwen3.rmsnorm import RMSNorm


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


def test_normed_linear_off_the_gpu_is_the_norm_then_torchs_product():
    torch.manual_seed(0)
    norm, w, x = RMSNorm(16, 1e-5), torch.randn(24, 16), torch.randn(2, 1, 16)
    norm.weight.data.uniform_(0.5, 1.5)
    assert not matvec.available(x, w, norm)
    assert torch.equal(matvec.normed_linear(x, w, norm), F.linear(norm(x), w))
    assert torch.equal(matvec.normed_linear(x, w, None), F.linear(x, w))


@pytest.mark.gpu
def test_gpu_the_norm_goes_in_at_one_row_and_for_large_weights_at_more():
    norm, x = RMSNorm(16).cuda(), torch.zeros(2, 16, device="cuda")
    small = torch.zeros(24, 16, device="cuda")
    large = torch.zeros(1, 16, device="cuda").expand(10**7, 16)  # 640 MB of float32 as far as numel goes
    with torch.no_grad():
        assert matvec.available(x[:1], small, norm) and not matvec.available(x, small, norm)
        assert matvec.NORMED_MIN_BYTES <= 640e6 and matvec.available(x, large, norm)
        assert not matvec.available(torch.zeros(9, 16, device="cuda"), large, norm)


def test_one_row_reads_the_stacks_where_it_measured_faster(monkeypatch):
    """A one-row step takes the kernel with the norm (reading the stacks) on a GPU for small models (hidden size up
    to 2048) and split ones, dense only, every model with MINQWEN3_NORMED=all, none with 0; elsewhere the step is
    as before."""
    from types import SimpleNamespace

    from test_fast import tiny

    from minqwen3 import Decoder
    model = tiny()
    dec = Decoder(model, max_len=16)
    assert not dec._normed_one_row()  # a CPU
    monkeypatch.setattr(dec, "device", torch.device("cuda"))
    monkeypatch.setattr(matvec, "triton", matvec.triton or object())
    assert dec._normed_one_row()
    monkeypatch.setattr(model.config, "hidden_size", 4096)  # as Qwen3-8B
    assert not dec._normed_one_row()
    model.plan = SimpleNamespace(world=2)  # parallel.shard's mark
    assert dec._normed_one_row()
    monkeypatch.setattr(model.config, "num_experts", 8)  # an MoE model (measured slower, as Qwen3-30B-A3B), split
    assert not dec._normed_one_row()
    monkeypatch.setattr(model.config, "hidden_size", 2048)  # or small
    assert not dec._normed_one_row()
    del model.plan
    monkeypatch.setattr(matvec, "normed_one_row_always", True)
    assert dec._normed_one_row()
    monkeypatch.setattr(matvec, "normed", False)
    assert not dec._normed_one_row()


@pytest.mark.parametrize("norm, eps, match", [
    (torch.ones(5), 1e-6, r"norm \(5,\) torch.float32 on cpu must be \(4,\)"),
    (torch.ones(4, dtype=torch.float64), 1e-6, "norm .4,. torch.float64"),
    (torch.ones(4), -1e-6, "eps -1e-06 must be"),
    (torch.ones(4), float("nan"), "eps nan must be"),
], ids=["shape", "dtype", "eps-negative", "eps-nan"])
def test_bad_norm_inputs_are_refused_naming_them(norm, eps, match):
    with pytest.raises(ValueError, match=match):
        matvec.matvec(torch.zeros(2, 4), torch.zeros(3, 4), norm, eps)


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
@pytest.mark.parametrize("normed", [False, True], ids=["plain", "normed"])
@pytest.mark.parametrize("config", [matvec.Config(16, 256, 8, 4, 3, False), matvec.Config(32, 128, 8, 4, 4, True)],
                         ids=["elem", "dot"])
def test_gpu_same_bits_every_call_and_in_a_graph(config, normed):
    g = torch.Generator("cuda").manual_seed(1)
    M = 4 if config.dot else 1
    x = torch.randn(M, 5120, device="cuda", generator=g).bfloat16()
    w = (torch.randn(4096, 5120, device="cuda", generator=g) * 0.02).bfloat16()
    # with the norm, the slices' sums of squares also go through the finishing program, in slice order
    norm = ((torch.rand(5120, device="cuda", generator=g) + 0.5).bfloat16(), 1e-6) if normed else ()
    first = matvec.launch(x, w, config, *norm)
    assert all(torch.equal(first, matvec.launch(x, w, config, *norm)) for _ in range(5))  # the counters were reset
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = matvec.launch(x, w, config, *norm)
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
    assert matvec.available(torch.zeros(1, 16, device="cuda"), w, one_row=True)  # a split model's o/down_proj


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


# ---------------------------------------------------------------- with the RMSNorm on the way in, on a GPU
def _normed_reference(x, g, w, eps):
    """RMSNorm(x; g, eps) @ w.T in float64, and the sum of the products' magnitudes."""
    xd = x.double()
    xn = xd * torch.rsqrt(xd.pow(2).mean(-1, keepdim=True) + eps) * g.double()
    return xn @ w.double().T, xn.abs() @ w.double().abs().T


@pytest.mark.gpu
@pytest.mark.parametrize("config", CONFIGS, ids=["table-or-rule", "elem-1split", "elem-5splits", "dot-3splits",
                                                 "dot-6splits"])
@pytest.mark.parametrize("M, N, K", [(1, 37, 1000), (3, 130, 515), (8, 5, 3001), (2, 64, 256), (5, 300, 77),
                                     (7, 1000, 4100)])
def test_gpu_normed_float32_matches_float64(config, M, N, K):
    g = torch.Generator("cuda").manual_seed(M * N + K)
    x = torch.randn(M, K, device="cuda", generator=g) * 5
    gain = torch.rand(K, device="cuda", generator=g) + 0.5
    w = torch.randn(N, K, device="cuda", generator=g)
    got = matvec.matvec(x, w, gain, 1e-5) if config is None else matvec.launch(x, w, config, gain, 1e-5)
    want, scale = _normed_reference(x, gain, w, 1e-5)
    assert got.shape == (M, N) and got.dtype == torch.float32
    assert ((got.double() - want).abs() <= 3e-5 * scale + 1e-6).all()


@pytest.mark.gpu
@pytest.mark.parametrize("config", [None, matvec.Config(16, 256, 3, 4, 3, False),
                                    matvec.Config(32, 128, 4, 4, 4, True)],
                         ids=["table-or-rule", "elem-3splits", "dot-4splits"])
@pytest.mark.parametrize("M", [1, 2, 5, 8])
def test_gpu_normed_bf16_is_within_rounding_of_the_module(config, M):
    """bf16: the module rounds x / rms(x) and then g * that to bf16 (half an ulp each), the kernel x * g in the
    tl.dot path (half an ulp) and the result: within about an ulp of the products' magnitudes, of float64 and of
    the module followed by torch's product."""
    g = torch.Generator("cuda").manual_seed(M)
    norm = RMSNorm(3000, 1e-6).cuda().bfloat16().requires_grad_(False)
    norm.weight.uniform_(0.5, 1.5, generator=g)
    x = (torch.randn(M, 1, 3000, device="cuda", generator=g) * 4).bfloat16()
    w = (torch.randn(700, 3000, device="cuda", generator=g) * 0.05).bfloat16()
    got = (matvec.matvec(x, w, norm.weight, norm.eps) if config is None
           else matvec.launch(x.view(M, -1), w, config, norm.weight, norm.eps).view(M, 1, -1))
    want, scale = _normed_reference(x.view(M, -1), norm.weight, w, norm.eps)
    ulp = 2.0 ** -8
    assert got.shape == (M, 1, 700) and got.dtype == torch.bfloat16
    assert ((got.view(M, -1).double() - want).abs() <= ulp * want.abs() + ulp * scale).all()
    module = F.linear(norm(x), w).view(M, -1).double()
    assert ((got.view(M, -1).double() - module).abs() <= 2 * ulp * module.abs() + 2 * ulp * scale).all()
    # the norm matters: without it (or with g = 1) the results are far off
    assert ((matvec.matvec(x, w).view(M, -1).double() - want).abs() > 4 * ulp * scale).any()


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2])
def test_gpu_compiled_normed_step_equals_eager_tokens(rows, monkeypatch):
    """fp32, TF32 off: the Decoder's compiled step, its q|k|v and gate|up through the kernel with the norm on the
    way in (at one row too, on the stacks), gives the eager loop's tokens (the norm applied first, one product per
    weight)."""
    from test_fast import tiny

    import minqwen3
    from minqwen3 import Decoder, stack
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(matvec, "normed", True)
    monkeypatch.setattr(matvec, "NORMED_MIN_BYTES", 0)  # the test model's small weights take it at 2 rows too
    launched = []
    launch = matvec.launch
    monkeypatch.setattr(matvec, "launch", lambda x, w, c, norm=None, eps=0.0: launched.append(norm is not None)
                        or launch(x, w, c, norm, eps))
    model = tiny(device="cuda")
    ids = torch.randint(0, 320, (rows, 9), generator=torch.Generator().manual_seed(rows)).cuda()
    want = minqwen3.generate(model, ids, 60, stop_ids=(), fast=False)
    assert not any(launched)  # eager: the norm, then torch's products
    got = minqwen3.generate(model, ids, 60, stop_ids=(), decoder=Decoder(model, max_len=128, smallest_prefix=64))
    assert sum(launched) >= 2 * model.config.num_hidden_layers  # q|k|v and gate|up of every layer, normed
    assert all(stack.aliases(mod.stacked, lin) for mod, lin in stack.groups(model))
    assert torch.equal(got, want)
