"""The decode matrix-vector kernel (minqwen3/matvec.py) against torch's product, with the RMSNorm on the way in
against rmsnorm.py's module and a float64 reference, and with silu(gate) * up on the way in and the residual on the
way out against the unfused kernels (swiglu, the product, the add), bit for bit."""
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


@pytest.mark.parametrize("x, kw, match", [
    (torch.zeros(2, 4), dict(gated=True), r"x \(2, 4\) and weight \(3, 4\), gated: .* x \(\.\.\., 2K\)"),
    (torch.zeros(2, 8), dict(gated=True, norm=torch.ones(8)), "gated and norm do not combine"),
    (torch.zeros(2, 4), dict(residual=torch.zeros(2, 4)), r"residual \(2, 4\) torch.float32 on cpu must be \(2, 3\)"),
    (torch.zeros(2, 4), dict(residual=torch.zeros(2, 3, dtype=torch.float64)), "residual .2, 3. torch.float64"),
], ids=["gated-width", "gated-norm", "residual-shape", "residual-dtype"])
def test_bad_fused_inputs_are_refused_naming_them(x, kw, match):
    with pytest.raises(ValueError, match=match):
        matvec.matvec(x, torch.zeros(3, 4), **kw)


def test_blocks_hand_the_kernel_gate_up_and_the_residual(monkeypatch):
    """Where the kernel takes a product (emulated here in torch: silu(gate) * up, the product, the add, which is
    what the GPU kernel computes bit for bit), attention hands it o_proj's input with the residual and the dense MLP
    down_proj's with the residual, and inside a Decoder's step (the stacks read) the stacked gate|up with gated: at
    one row only there (one row outside stays torch's); a split layer's blocks get no residual. fp32 logits: the
    unfused ones, bit for bit."""
    from test_fast import tiny

    from minqwen3 import stack
    model = tiny()
    stack.stack(model)
    calls = []

    def emulated(x, weight, norm=None, eps=0.0, residual=None, gated=False):
        calls.append((x.shape[-1], weight.shape[0], gated, residual is not None))
        if gated:
            g, u = x.chunk(2, -1)
            x = F.silu(g) * u
        return F.linear(x, weight) if residual is None else residual + F.linear(x, weight)

    def logits(ids, kernel: bool, step: bool):
        """The model's logits, the products the kernel's (emulated) or torch's, inside a step or not."""
        monkeypatch.setattr(matvec, "available", lambda x, w, norm=None, one_row=False, gated=False, residual=None:
                            kernel and norm is None and (one_row or x.numel() > x.shape[-1]))
        with torch.no_grad(), stack.using(step):
            return model(ids)

    monkeypatch.setattr(matvec, "matvec", emulated)
    one, two = torch.tensor([[5]]), torch.tensor([[5], [7]])
    I, C, HD = model.config.intermediate_size, model.config.hidden_size, 4 * 32  # noqa: E741
    for ids in (one, two):
        assert torch.equal(logits(ids, True, True), logits(ids, False, True))
    assert calls == [(HD, C, False, True), (2 * I, C, True, True)] * 6  # both rows: o_proj, down_proj gated
    calls.clear()
    assert torch.equal(logits(one, True, False), logits(one, False, False)) and calls == []  # one row, no step
    assert torch.equal(logits(two, True, False), logits(two, False, False))
    assert calls == [(HD, C, False, True), (I, C, False, True)] * 3  # two rows, no step: swiglu then down_proj
    calls.clear()
    for layer in model.model.layers:
        layer.reduce = lambda out, residual: residual + out  # one rank: the sum is out
    assert torch.equal(logits(two, True, True), logits(two, False, True))
    assert calls == [(HD, C, False, False), (2 * I, C, True, False)] * 3  # the residual after the all-reduce


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
@pytest.mark.parametrize("branch", ["plain", "normed", "fused"])
@pytest.mark.parametrize("config", [matvec.Config(16, 256, 8, 4, 3, False), matvec.Config(32, 128, 8, 4, 4, True)],
                         ids=["elem", "dot"])
def test_gpu_same_bits_every_call_and_in_a_graph(config, branch):
    g = torch.Generator("cuda").manual_seed(1)
    M = 4 if config.dot else 1
    x = torch.randn(M, 2 * 5120 if branch == "fused" else 5120, device="cuda", generator=g).bfloat16()
    w = (torch.randn(4096, 5120, device="cuda", generator=g) * 0.02).bfloat16()
    # with the norm, the slices' sums of squares also go through the finishing program, in slice order
    kw = (dict(norm=(torch.rand(5120, device="cuda", generator=g) + 0.5).bfloat16(), eps=1e-6) if branch == "normed"
          else dict(residual=torch.randn(M, 4096, device="cuda", generator=g).bfloat16(), gated=True)
          if branch == "fused" else {})
    first = matvec.launch(x, w, config, **kw)
    assert all(torch.equal(first, matvec.launch(x, w, config, **kw)) for _ in range(5))  # the counters were reset
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = matvec.launch(x, w, config, **kw)
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
    monkeypatch.setattr(matvec, "fused", True)  # down_proj takes gate|up and the residual (at one row too: small)
    monkeypatch.setattr(matvec, "fused_rows", matvec.MAX_ROWS)  # and at 2 rows (MINQWEN3_FUSED=all)
    launched = []
    launch = matvec.launch
    monkeypatch.setattr(matvec, "launch", lambda x, w, c, norm=None, eps=0.0, residual=None, gated=False:
                        launched.append((norm is not None, gated)) or launch(x, w, c, norm, eps, residual, gated))
    model = tiny(device="cuda")
    ids = torch.randint(0, 320, (rows, 9), generator=torch.Generator().manual_seed(rows)).cuda()
    want = minqwen3.generate(model, ids, 60, stop_ids=(), fast=False)
    assert not any(n or g for n, g in launched)  # eager: the norm, then torch's products, swiglu's kernel
    got = minqwen3.generate(model, ids, 60, stop_ids=(), decoder=Decoder(model, max_len=128, smallest_prefix=64))
    L = model.config.num_hidden_layers
    assert sum(n for n, _ in launched) >= 2 * L  # q|k|v and gate|up of every layer, normed
    assert sum(g for _, g in launched) >= L  # and every down_proj with silu(gate) * up on the way in
    assert all(stack.aliases(mod.stacked, lin) for mod, lin in stack.groups(model))
    assert torch.equal(got, want)


# ---------------------------------------------------------------- silu(gate) * up in, the residual out, on a GPU
FUSED_CONFIGS = CONFIGS + [matvec.Config(16, 128, 1, 4, 3, True)]


@pytest.mark.gpu
@pytest.mark.parametrize("config", FUSED_CONFIGS, ids=["table-or-rule", "elem-1split", "elem-5splits", "dot-3splits",
                                                       "dot-6splits", "dot-1split"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("M", [1, 2, 8])
def test_gpu_gated_and_residual_are_the_unfused_bits(config, dtype, M):
    """swiglu.py's kernel, then the product (this kernel with the same settings), then torch's residual add: three
    kernels, and the same bits from one, with either branch or both; within rounding of float64."""
    from minqwen3 import swiglu
    K, N = 3000, 333
    g = torch.Generator("cuda").manual_seed(M)
    gu = (torch.randn(M, 1, 2 * K, device="cuda", generator=g) * 3).to(dtype)  # gate | up
    w = (torch.randn(N, K, device="cuda", generator=g) * 0.05).to(dtype)
    r = torch.randn(M, 1, N, device="cuda", generator=g).to(dtype)

    def run(x, residual=None, gated=False):
        if config is None:  # the op, with the table's or the rule's settings
            return matvec.matvec(x, w, residual=residual, gated=gated)
        return matvec.launch(x.view(M, -1), w, config, residual=None if residual is None else residual.view(M, -1),
                             gated=gated).view(M, 1, N)

    h = swiglu.swiglu(*gu.chunk(2, -1))  # (M, 1, K), as mlp.MLP computes it unfused
    y = run(h)
    got = run(gu, r, gated=True)
    assert got.shape == (M, 1, N) and got.dtype == dtype
    assert torch.equal(got, r + y)
    assert torch.equal(run(gu, gated=True), y) and torch.equal(run(h, r), r + y)
    gd, ud = gu.view(M, -1).double().chunk(2, -1)
    hd = F.silu(gd) * ud
    want = r.view(M, -1).double() + hd @ w.double().T
    scale = r.view(M, -1).double().abs() + hd.abs() @ w.double().abs().T
    ulp = {torch.bfloat16: 2.0 ** -8, torch.float16: 2.0 ** -11, torch.float32: 2.0 ** -24}[dtype]
    # h rounded (an ulp of each term), the product rounded, the sum rounded; float32's own sums
    assert ((got.view(M, -1).double() - want).abs() <= ulp * want.abs() + (2 * ulp + 3e-5) * scale + 1e-6).all()
    # the gating matters: the gate alone as the input is far off
    assert ((run(gu[..., :K].contiguous(), r).view(M, -1).double() - want).abs() > 4 * ulp * scale).any()


@pytest.mark.gpu
def test_gpu_fused_where_available_and_off_with_the_switch(monkeypatch):
    monkeypatch.setattr(matvec, "enabled", True)
    monkeypatch.setattr(matvec, "fused", True)
    w = torch.zeros(8, 16, device="cuda")
    gu, r = torch.zeros(1, 32, device="cuda"), torch.zeros(1, 8, device="cuda")
    with torch.no_grad():
        assert matvec.available(gu, w, one_row=True, gated=True, residual=r)
        assert matvec.available(gu[:, :16], w, one_row=True, residual=r)
        assert not matvec.available(gu, w, one_row=True)  # gate|up is twice the weight's width
        assert not matvec.available(gu[:, :16], w, one_row=True, gated=True)
        assert not matvec.available(gu, w, one_row=True, gated=True, residual=r[:, :4])
        assert matvec.available(gu, w, gated=True) == (matvec.min_rows == 1)  # one row: only where told (one_row)
        monkeypatch.setattr(matvec, "fused", False)  # MINQWEN3_FUSED=0: swiglu's kernel and the add, as before
        assert not matvec.available(gu, w, one_row=True, gated=True)
        assert not matvec.available(gu[:, :16], w, one_row=True, residual=r)
        assert matvec.available(gu[:, :16], w, one_row=True)
        monkeypatch.setattr(matvec, "fused", True)  # by default at one row only (MINQWEN3_FUSED=all: up to 8)
        gu2, r2 = gu.expand(2, 32).contiguous(), r.expand(2, 8).contiguous()
        assert matvec.fused_rows == 1 and not matvec.available(gu2, w, gated=True, residual=r2)
        monkeypatch.setattr(matvec, "fused_rows", matvec.MAX_ROWS)
        assert matvec.available(gu2, w, gated=True, residual=r2)


@pytest.mark.gpu
@pytest.mark.parametrize("rows", [1, 2, 8])
def test_gpu_fused_layers_give_the_unfused_bits(rows, monkeypatch):
    """bf16, a decode step's layers reading the stacks: with the kernel taking silu(gate) * up and the residual,
    the logits have the bits of MINQWEN3_FUSED=0 (swiglu's kernel, the product, the add) where the kernel took the
    products before (2 rows or more); at one row, where torch's products did, within rounding."""
    from test_fast import tiny

    from minqwen3 import stack
    for name, value in (("enabled", True), ("min_rows", 2), ("normed", True), ("fused_rows", matvec.MAX_ROWS)):
        monkeypatch.setattr(matvec, name, value)
    launched = []
    launch = matvec.launch
    monkeypatch.setattr(matvec, "launch", lambda x, w, c, norm=None, eps=0.0, residual=None, gated=False:
                        launched.append((gated, residual is not None)) or launch(x, w, c, norm, eps, residual, gated))
    model = tiny(dtype=torch.bfloat16, device="cuda")
    stack.stack(model)
    ids = torch.randint(0, 320, (rows, 1), generator=torch.Generator().manual_seed(rows)).cuda()
    out, L = {}, model.config.num_hidden_layers
    for fused in (True, False):
        monkeypatch.setattr(matvec, "fused", fused)
        launched.clear()
        with torch.no_grad(), stack.using(True):
            out[fused] = model(ids)
        gated, added = sum(g for g, _ in launched), sum(a for _, a in launched)
        assert (gated, added) == ((L, 2 * L) if fused else (0, 0))
    if rows > 1:
        assert torch.equal(out[True], out[False])
    else:
        assert (out[True] - out[False]).abs().max() <= 0.03 * out[False].abs().max()
