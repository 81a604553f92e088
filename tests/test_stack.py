"""Stacked projections (minqwen3/stack.py): q|k|v and gate|up as one weight each, the Linears' weights views of it;
used only inside a Decoder's step, which stacks again whenever the parameters were replaced."""
import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

import minqwen3
from minqwen3 import Decoder, make_cache, stack
from test_fast import MOE, decode, exact_fp32, tiny  # noqa: F401 (exact_fp32: a fixture)


def storages(model) -> dict[int, int]:
    """The distinct storages behind the parameters: data pointer -> bytes."""
    return {p.untyped_storage().data_ptr(): p.untyped_storage().nbytes() for p in model.parameters()}


@pytest.mark.parametrize("over", [dict(), MOE], ids=["dense", "moe"])
def test_stacked_weights_alias_the_parameters_and_keep_the_checkpoint(over):
    model = tiny(**over)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params = dict(model.named_parameters())
    nbytes = sum(p.numel() * p.element_size() for p in model.parameters())
    assert stack.stack(model) and not stack.stack(model)  # stacked once; the second call finds it fresh
    after = model.state_dict()
    assert list(after) == list(before) and all(torch.equal(after[k], before[k]) for k in before)
    assert all(p is params[n] for n, p in model.named_parameters())  # the same Parameter objects
    groups = list(stack.groups(model))
    assert len(groups) == 3 + sum(not layer.is_moe for layer in model.model.layers)  # attention per layer, dense MLPs
    for mod, linears in groups:
        w = mod.stacked
        assert w.shape == (sum(lin.weight.shape[0] for lin in linears), 64)
        assert torch.equal(w, torch.cat([before[n] for n, p in params.items()
                                         if any(p is lin.weight for lin in linears)]))
        for lin in linears:  # a view of the stack: one storage, no copy kept
            assert lin.weight.untyped_storage().data_ptr() == w.untyped_storage().data_ptr()
    assert sum(storages(model).values()) == nbytes  # no byte more than the parameters themselves


@pytest.mark.parametrize("over", [dict(), MOE], ids=["dense", "moe"])
def test_stacked_logits_equal_one_projection_per_weight(over):
    model = tiny(**over)
    ids, pad = torch.randint(0, 320, (2, 11), generator=torch.Generator().manual_seed(4)), torch.tensor([3, 0])
    dec = Decoder(model, stacked=True)
    stack.stack(model)  # what the Decoder's start does for 2 rows
    want = model(ids, pad=pad)[:, -1]  # outside a Decoder's step: one projection per weight
    with torch.no_grad(), stack.using(True):
        got = dec.forward_last(ids, make_cache(model, 2, 16), torch.arange(11), pad)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        for mod, _ in stack.groups(model):  # the stacks are what is read: changed, the logits change
            mod.stacked = mod.stacked * 1.5
        assert (dec.forward_last(ids, make_cache(model, 2, 16), torch.arange(11), pad) - want).abs().max() > 1e-2
    stack.stack(model)  # they no longer alias the parameters: stacked again from them
    assert all(stack.aliases(mod.stacked, linears) for mod, linears in stack.groups(model))


@pytest.mark.parametrize("replace", ["to-float64", "load-assign"])
def test_decoder_stacks_again_when_the_parameters_are_replaced(replace, one_thread):
    """A decode, then the parameters replaced: the next decode must not read the stale stacks (nor caches of the
    old dtype), and must give the eager tokens of the new parameters."""
    model = tiny(**MOE)
    dec = Decoder(model, max_len=48, smallest_prefix=8, stacked=True)
    ids = torch.randint(0, 320, (2, 7), generator=torch.Generator().manual_seed(1))
    assert torch.equal(decode(dec, ids, 20, stop_ids=()), minqwen3.generate(model, ids, 20, stop_ids=(), fast=False))
    old = [mod.stacked for mod, _ in stack.groups(model)]
    if replace == "to-float64":
        model.to(torch.float64)
    else:
        other = tiny(seed=5, **MOE)
        model.load_state_dict(other.state_dict(), assign=True)
    want = minqwen3.generate(model, ids, 20, stop_ids=(), fast=False)
    assert not torch.equal(want, minqwen3.generate(tiny(**MOE), ids, 20, stop_ids=(), fast=False)) or \
        replace == "to-float64"  # new weights: other tokens, which stale stacks would not give
    assert torch.equal(decode(dec, ids, 20, stop_ids=()), want)
    for (mod, linears), w in zip(stack.groups(model), old):
        assert mod.stacked is not w and stack.aliases(mod.stacked, linears)
    assert dec.cache[0].k.dtype == next(model.parameters()).dtype


def test_the_decoder_reads_the_stacks_at_two_rows_or_more(monkeypatch):
    """At one row the step projects one weight at a time (Inductor's reductions already share x; measured faster)
    on the weights as they were (not stacked); at two rows and more, with the stacks, made at that call."""
    seen = []
    read = stack.stacked
    monkeypatch.setattr(stack, "stacked", lambda mod: seen.append(read(mod) is not None) or read(mod))
    model = tiny()
    dec = Decoder(model, max_len=48, smallest_prefix=8, stacked=True)
    for B, used in ((1, False), (2, True)):
        ids = torch.randint(0, 320, (B, 5), generator=torch.Generator().manual_seed(B))
        seen.clear()
        got = decode(dec, ids, 6, stop_ids=())
        assert set(seen[-2 * 3 * 5:]) == {used}  # the last 5 steps' 3 layers, attention and MLP each (the prompt: no)
        stacks = [getattr(mod, "stacked", None) for mod, _ in stack.groups(model)]
        assert all(stack.aliases(w, lin) for w, (_, lin) in zip(stacks, stack.groups(model))) if used else \
            stacks == [None] * len(stacks)  # one row: the parameters stay as they were
        assert torch.equal(got, minqwen3.generate(model, ids, 6, stop_ids=(), fast=False))


def test_stacks_compile_once_per_layer_kind():
    """The stacks are module attributes, read as inputs of the one compiled graph per layer kind."""
    model = tiny(**MOE)
    counter = CompileCounter()
    fast = Decoder(model, max_len=48, smallest_prefix=8, compile=True, backend=counter, stacked=True)
    ids = torch.randint(0, 320, (2, 5))
    assert torch.equal(decode(fast, ids, 10, stop_ids=()), minqwen3.generate(model, ids, 10, stop_ids=(), fast=False))
    assert counter.frame_count == 5


def test_training_is_untouched_by_stacking():
    """Outside a Decoder the modules project one weight at a time: the same gradients as an unstacked model, and
    an optimizer's in-place step keeps the stacks current."""
    model, plain = tiny(), tiny()
    model.requires_grad_(True), plain.requires_grad_(True)
    stack.stack(model)
    ids = torch.randint(0, 320, (2, 9), generator=torch.Generator().manual_seed(2))
    for m in (model, plain):
        F.cross_entropy(m(ids)[:, :-1].reshape(-1, 320), ids[:, 1:].reshape(-1)).backward()
    for (n, p), q in zip(model.named_parameters(), plain.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-6, msg=n)
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    assert all(stack.aliases(mod.stacked, linears) for mod, linears in stack.groups(model))
    a = model.model.layers[0].self_attn
    assert torch.equal(a.stacked[:a.q_proj.weight.shape[0]], a.q_proj.weight)


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_graphs_are_captured_again_for_new_parameters(exact_fp32):
    """A captured graph replays the addresses it saw: after load_state_dict(assign=True) it would read freed memory
    (refilled here) and the old stacks; the Decoder must capture again and give the new weights' eager tokens."""
    model = tiny(device="cuda")
    fast = Decoder(model, max_len=128, smallest_prefix=64)
    assert fast.stacked and fast.cuda_graphs and fast.compiled
    ids = torch.randint(0, 320, (2, 20), generator=torch.Generator().manual_seed(0)).cuda()
    assert torch.equal(decode(fast, ids, 40, stop_ids=()), minqwen3.generate(model, ids, 40, stop_ids=(), fast=False))
    old = list(fast.graphs.values())
    model.load_state_dict(tiny(seed=5, device="cuda").state_dict(), assign=True)
    junk = [torch.randn(1 << 16, device="cuda") for _ in range(50)]  # the freed weights' memory, overwritten
    want = minqwen3.generate(model, ids, 40, stop_ids=(), fast=False)
    assert torch.equal(decode(fast, ids, 40, stop_ids=()), want)
    assert fast.graphs and not any(g in old for g in fast.graphs.values())
    del junk
