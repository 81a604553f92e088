"""The one-kernel decode attention (minqwen3/flash_decode.py) against attention.decode_attention, on a GPU."""
import pytest
import torch

from minqwen3.attention import decode_attention
from minqwen3.flash_decode import available, flash_decode


def case(B, H, H_kv, S, dtype, seed=0):
    """q and the new k, v; caches that are a prefix of S slots of longer ones; the new slot; a mask that hides
    left padding and the slots after the new one (not written yet)."""
    g = torch.Generator("cuda").manual_seed(seed)
    D = 128
    q = torch.randn(B, H, 1, D, device="cuda", dtype=dtype, generator=g)
    k, v = (torch.randn(B, H_kv, 1, D, device="cuda", dtype=dtype, generator=g) for _ in "kv")
    k_cache, v_cache = (torch.randn(B, H_kv, S + 9, D, device="cuda", dtype=dtype, generator=g)[:, :, :S]
                        for _ in "kv")
    slots = torch.arange(S, device="cuda")
    pad = torch.arange(B, device="cuda") * 7  # row b starts after 7b padding slots
    pos = torch.tensor([S - 40 if S > 100 else S - 1], device="cuda")
    mask = ((slots <= pos) & (slots >= pad[:, None]))[:, None, None]  # (B, 1, 1, S)
    return q, k, v, k_cache, v_cache, pos, mask


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B, H, H_kv, S", [(1, 16, 8, 256), (2, 32, 4, 700), (1, 32, 8, 4096), (3, 40, 8, 100),
                                           (1, 64, 4, 1000)])
def test_gpu_flash_decode_matches_the_matmul_form(dtype, tol, B, H, H_kv, S):
    q, k, v, k_cache, v_cache, pos, mask = case(B, H, H_kv, S, dtype)
    assert available(q, mask)
    want_k, want_v = k_cache.clone().index_copy_(2, pos, k), v_cache.clone().index_copy_(2, pos, v)
    want = decode_attention(q.double(), want_k.double(), want_v.double(), mask)  # the reference, in float64
    for _ in range(3):  # the split counters reset themselves: repeated calls give the same answer
        got = flash_decode(q, k, v, k_cache, v_cache, pos, mask)
        assert got.shape == q.shape and got.dtype == dtype
        assert (got.double() - want).abs().max().item() < tol * want.abs().max().item()
        assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)  # the new slot written, no other


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_flash_decode_replays_in_a_cuda_graph():
    args = case(2, 32, 8, 1000, torch.bfloat16)  # several splits per (row, head): the merge runs
    flash_decode(*args)  # warm up (compiles the kernel) outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = flash_decode(*args)
    for seed in (1, 2):  # new inputs in place, then replay
        for t, new in zip(args, case(2, 32, 8, 1000, torch.bfloat16, seed)):
            t.copy_(new)
        graph.replay()
        assert torch.equal(out, flash_decode(*args))


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["fp32", "bf16"])
@pytest.mark.parametrize("B, H, H_kv, S", [(1, 16, 8, 256), (2, 32, 4, 700), (3, 40, 8, 100), (8, 16, 8, 300)])
def test_gpu_flash_decode_takes_slices_of_one_stacked_projection(dtype, tol, B, H, H_kv, S):
    """q, k, v from one stacked projection (stack.py; row strides of its output): QK-Norm and RoPE by torch (per-row
    positions, past left padding), v a strided slice, then the kernel's cache write and attention."""
    from minqwen3.rmsnorm import RMSNorm
    from minqwen3.rope import RotaryEmbedding, apply_rope
    _, _, _, k_cache, v_cache, pos, mask = case(B, H, H_kv, S, dtype)
    g = torch.Generator("cuda").manual_seed(1)
    D = 128
    qkv = torch.randn(B, 1, (H + 2 * H_kv) * D, device="cuda", dtype=dtype, generator=g) * 3  # one projection
    q, k, v = (t.view(B, 1, -1, D).transpose(1, 2) for t in qkv.split([H * D, H_kv * D, H_kv * D], -1))
    q_norm, k_norm = (RMSNorm(D, 1e-6).to("cuda", dtype) for _ in "qk")
    with torch.no_grad():
        for n in (q_norm, k_norm):
            n.weight.uniform_(0.5, 1.5, generator=g)
        cos, sin = RotaryEmbedding(D, 1e6).cuda()(pos[None] - torch.arange(B, device="cuda")[:, None] * 7, dtype)
        want_q, want_k = apply_rope(q_norm(q), cos, sin), apply_rope(k_norm(k), cos, sin)  # (B, H|H_kv, 1, D)
        want_kc, want_vc = k_cache.clone().index_copy_(2, pos, want_k), v_cache.clone().index_copy_(2, pos, v)
        want = decode_attention(want_q.double(), want_kc.double(), want_vc.double(), mask)  # float64
        got = flash_decode(want_q, want_k, v, k_cache, v_cache, pos, mask)  # v: rows (H + 2 H_kv) D apart
        assert (got.double() - want).abs().max().item() < tol * want.abs().max().item()
        assert torch.equal(k_cache, want_kc) and torch.equal(v_cache, want_vc)
