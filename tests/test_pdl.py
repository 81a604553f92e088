"""Programmatic dependent launch (minqwen3/pdl.py): kernels that start before the one they read has finished must
still read what it wrote. A chain of kernels, each reading the last one's output, replayed as a CUDA graph on new
inputs: with PDL the same bits as without, and as torch's products in float64 (a kernel that read its input before
the wait would read the previous replay's)."""
import pytest
import torch

from minqwen3 import flash_decode, matvec, pdl, swiglu


def test_off_the_gpu_no_kernel_asks_for_it():
    assert not pdl.on(torch.device("cpu"))
    with pdl.scope(True):
        assert pdl.launch(torch.device("cpu")) == {"PDL": False}


def test_kernels_ask_for_it_only_inside_a_scope(monkeypatch):
    monkeypatch.setattr(pdl, "on", lambda device: True)  # as on a Hopper GPU
    dev, on, off = torch.device("cuda"), {"PDL": True, "launch_pdl": True}, {"PDL": False}
    assert pdl.launch(dev) == off  # outside a compiled Decoder's step
    with pdl.scope(True):
        assert pdl.launch(dev) == on
        with pdl.scope(False):
            assert pdl.launch(dev) == off
        assert pdl.launch(dev) == on
    assert pdl.launch(dev) == off
    with pytest.raises(RuntimeError), pdl.scope(True):
        raise RuntimeError("a failed step")
    assert pdl.launch(dev) == off


def test_a_decoder_uses_it_for_all_kernels_or_none_unless_asked_for_ours_alone(monkeypatch):
    dev = torch.device("cuda")
    assert pdl.decoder_plan(torch.device("cpu")) == (False, False)
    monkeypatch.setattr(pdl, "on", lambda device: True)  # as on a Hopper GPU
    has_option = hasattr(torch._inductor.config.triton, "enable_pdl") and pdl.inductor_waits_first()
    assert pdl.decoder_plan(dev) == (has_option, has_option)  # ours only where Inductor's kernels take part
    monkeypatch.setattr(pdl, "inductor", False)  # MINQWEN3_PDL=ours
    assert pdl.decoder_plan(dev) == (True, False)


def test_a_decoders_steps_ask_for_it_and_its_prefill_does_not(monkeypatch):
    """Decoder.pdl (set where it compiles with Inductor's PDL on a Hopper GPU) puts each step, warm-up and capture
    included, inside pdl.scope; the prefill, eager, stays outside."""
    import minqwen3
    from conftest import TINY
    from minqwen3.generation import Decoder
    model = minqwen3.model.random_model(minqwen3.Qwen3Config(**TINY), torch.device("cpu"), torch.float32, 0)
    dec = Decoder(model, max_len=32, compile=False, cuda_graphs=False)
    assert dec.pdl is False  # on a CPU, as eager on any device
    dec.pdl = True
    seen, forward = [], dec.forward_last

    def spy(*args, **kwargs):
        seen.append(pdl._active)
        return forward(*args, **kwargs)
    monkeypatch.setattr(dec, "forward_last", spy)
    minqwen3.generate(model, torch.tensor([[5, 6, 7]]), 4, stop_ids=(), decoder=dec)
    assert seen == [False, True, True, True] and not pdl._active


def test_inductors_kernels_wait_where_its_rule_by_buffer_name_would_not():
    """The step of Inductor's code generation that decides whether a kernel waits before touching a buffer, called
    as it calls it: its own rule waits only for a buffer the kernel before wrote (or, storing, read); with
    pdl.inductor_waits_first() always. Runs on CPUs, with this torch's Inductor (a private step it may change)."""
    from types import SimpleNamespace
    from torch._inductor.codegen.triton import TritonKernel
    from torch._inductor.utils import IndentedBuffer
    from torch._inductor.virtualized import V
    if not pdl.inductor_waits_first():
        pytest.skip("this torch's Inductor has no such step")
    step = TritonKernel._handle_pdl_before_access
    before = SimpleNamespace(read_writes=SimpleNamespace(writes=[SimpleNamespace(name="buf0")],
                                                         reads=[SimpleNamespace(name="buf1")]))
    scheduler = SimpleNamespace(previous_node=before)
    kernel = SimpleNamespace(inside_reduction=False, current_node=SimpleNamespace(mutation_renames={}),
                             _enable_pdl_codegen=lambda: True, GDC_WAIT=TritonKernel.GDC_WAIT)

    def waits(decide, buffer: str, store: bool = False) -> bool:
        out = IndentedBuffer()
        with V.set_graph_handler(SimpleNamespace(scheduler=scheduler)), V.set_kernel_handler(kernel):
            decide(kernel, out, buffer, consider_reads=store)
        assert scheduler.previous_node is before  # put back
        return "gdc_wait" in out.getvalue()

    assert waits(step.inductors_rule, "buf0") and waits(step.inductors_rule, "buf1", store=True)
    assert not waits(step.inductors_rule, "buf2") and not waits(step.inductors_rule, "buf2", store=True)
    assert all(waits(step, b, store) for b in ("buf0", "buf1", "buf2") for store in (False, True))


def chain(x, weights, norm, k_cache, v_cache, pos, mask):
    """normed q|k|v-like product, attention over a cache, an o_proj-like product, SwiGLU, and products again, each
    kernel reading the one before (the configs: one slice, and several slices with their counters shared)."""
    h = matvec.launch(x, weights[0], matvec.Config(8, 512, 1, 4, 1, False), norm, 1e-6)  # (1, 3 * 256)
    q, k, v = h.view(1, 3, 2, 1, 128).unbind(1)  # (B, H, 1, D) each, 2 heads of 128
    a = flash_decode.flash_decode(q, k, v, k_cache, v_cache, pos, mask)  # (1, 2, 1, 128)
    o = matvec.launch(a.reshape(1, 256), weights[1], matvec.Config(16, 256, 4, 4, 3, False))  # (1, 1024)
    # 64 blocks of columns, as o's: the next kernel uses the counters this one resets
    gu = matvec.launch(o, weights[2], matvec.Config(32, 128, 2, 4, 3, True))  # (1, 2048)
    y = swiglu.swiglu(*gu.chunk(2, -1))
    return matvec.launch(y, weights[3], matvec.Config(16, 256, 4, 4, 3, False))  # (1, 1024)


def reference(x, weights, norm, k_cache, v_cache, pos, mask):
    x, weights, norm = x.double(), [w.double() for w in weights], norm.double()
    h = (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * norm) @ weights[0].T
    q, k, v = h.view(1, 3, 2, 1, 128).unbind(1)
    keys = torch.cat([k_cache[:, :, :int(pos)].double(), k], 2)
    values = torch.cat([v_cache[:, :, :int(pos)].double(), v], 2)
    a = torch.softmax(q @ keys.transpose(2, 3) / 128 ** 0.5, -1) @ values
    gu = (a.reshape(1, 256) @ weights[1].T) @ weights[2].T
    g, u = gu.chunk(2, -1)
    return (torch.nn.functional.silu(g) * u) @ weights[3].T


@pytest.mark.gpu
def test_gpu_a_chain_in_a_graph_reads_each_output_after_it_is_written():
    if not pdl.on(torch.device("cuda")):
        pytest.skip("PDL needs a GPU of compute capability 9 or newer and Triton with gdc_wait")
    g = torch.Generator("cuda").manual_seed(0)
    w = [(torch.randn(n, k, device="cuda", generator=g) / k ** 0.5).float()
         for n, k in ((768, 1024), (1024, 256), (2048, 1024), (1024, 1024))]
    norm = torch.rand(1024, device="cuda", generator=g) + 0.5
    S, pos = 256, torch.tensor([100], device="cuda")
    k_cache, v_cache = (torch.randn(1, 2, S, 128, device="cuda", generator=g) for _ in range(2))
    mask = (torch.arange(S, device="cuda") <= pos).view(1, 1, 1, S)
    x = torch.zeros(1, 1024, device="cuda")
    args = (x, w, norm, k_cache, v_cache, pos, mask)
    chain(*args)  # the first call of each shape allocates its counters, outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), pdl.scope(True):
        out = chain(*args)
    for i in range(5):
        x.copy_(torch.randn(1, 1024, device="cuda", generator=g))
        graph.replay()
        with_pdl = out.clone()
        without = chain(*args)  # outside the scope: each kernel after the last has finished
        assert torch.equal(with_pdl, without), f"replay {i}"
        want = reference(*args)
        assert ((with_pdl.double() - want).abs() <= 1e-4 * want.abs().max()).all(), f"replay {i}"


@pytest.mark.gpu
def test_gpu_inductors_kernels_wait_before_their_first_access():
    """With pdl.inductor_waits_first(), each kernel Inductor writes waits before it loads or stores anything, also
    one that reads nothing the kernel before it wrote (its own rule would let that one start reading at once)."""
    import re
    from torch._inductor.utils import run_and_get_code
    if not (pdl.on(torch.device("cuda")) and hasattr(torch._inductor.config.triton, "enable_pdl")):
        pytest.skip("PDL needs a GPU of compute capability 9 or newer, Triton with gdc_wait, Inductor's option")
    assert pdl.inductor_waits_first() and pdl.inductor_waits_first()  # installed once

    def f(a, b):  # each kernel touches nothing the one before wrote; the last one loads nothing at all
        return a.sin() * 3, (b.cos() * 2).sum(-1), torch.arange(b.shape[1], device=b.device) * 2

    a, b = torch.randn(1000, device="cuda"), torch.randn(64, 300, device="cuda")
    torch._dynamo.reset()
    got, code = run_and_get_code(torch.compile(f, options={"triton.enable_pdl": True}), a, b)
    torch.testing.assert_close(got, f(a, b))
    kernels = re.findall(r"@triton\.jit\ndef (\w+)\(.*?\n(.*?)(?=''', device_str)", "\n".join(code), re.S)
    assert len(kernels) >= 3, code
    for name, body in kernels:
        first = re.search(r"tl\.(load|store|atomic\w*)\(|gdc_wait\(\)", body)
        assert first is not None and first.group(0) == "gdc_wait()", f"{name} touches memory before it waits:\n{body}"
