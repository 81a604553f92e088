"""Generation: the KV cache, left padding, sampling filters and stop tokens, each against an independent oracle."""
import re

import pytest
import torch

import minqwen3
from minqwen3.generation import sample

TINY = dict(vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
            num_key_value_heads=2, head_dim=32, max_position_embeddings=512)
MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32)
KINDS = {"dense": {}, "moe": MOE}


def tiny(seed: int = 0, **overrides) -> minqwen3.Qwen3:
    torch.manual_seed(seed)
    model = minqwen3.Qwen3(minqwen3.Qwen3Config(**{**TINY, **overrides})).eval()
    with torch.no_grad():  # larger weights than the 0.02 init: sharper logits, so greedy choices are clear-cut
        for p in model.parameters():
            p.normal_(std=0.3) if p.dim() > 1 else p.uniform_(0.5, 1.5)
    return model


def recompute_greedy(model, prompt: list[int], n: int, penalty: float = 0.0) -> list[int]:
    """The oracle: no cache, the whole sequence through the model for every new token."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            logits = model(torch.tensor([ids]))[0, -1]
            if penalty:
                logits[list(set(ids[len(prompt):]))] -= penalty
            ids.append(int(logits.argmax()))
    return ids


@pytest.mark.parametrize("kind", KINDS)
def test_kv_cache_matches_recomputing(kind):
    model = tiny(**KINDS[kind])
    prompt = [5, 17, 99, 3, 250, 42, 7]
    got = minqwen3.generate(model, torch.tensor([prompt]), 30, stop_ids=())
    assert got.shape == (1, 37)
    assert got[0].tolist() == recompute_greedy(model, prompt, 30)


@pytest.mark.parametrize("kind", KINDS)
def test_left_padded_batch_matches_one_at_a_time(kind):
    model = tiny(seed=1, **KINDS[kind])
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 320, (n,), generator=g).tolist() for n in (3, 11, 1, 7)]
    batch = minqwen3.generate(model, prompts, 15, stop_ids=(), pad_id=0)
    assert batch.shape == (4, 11 + 15)
    for row, p in zip(batch, prompts):
        alone = minqwen3.generate(model, [p], 15, stop_ids=())[0]
        assert row[:11 - len(p)].tolist() == [0] * (11 - len(p))  # the left padding
        assert row[11 - len(p):].tolist() == alone.tolist()


def test_no_needless_work():
    """The prefill applies the LM head to the last position only, and no forward pass runs after the last token
    is sampled: n new tokens cost one prefill and n - 1 one-token steps."""
    model = tiny(**MOE)
    calls, head_rows = [], []
    model.model.layers[0].register_forward_pre_hook(lambda m, args: calls.append(args[0].shape[1]))
    model.lm_head.register_forward_pre_hook(lambda m, args: head_rows.append(args[0].shape))
    out = minqwen3.generate(model, [[1, 2, 3, 4, 5], [6, 7]], 6, stop_ids=(), pad_id=0)
    assert out.shape == (2, 5 + 6)
    assert calls == [5] + [1] * 5  # T tokens once, then one per step, none after the sixth token
    assert head_rows == [(2, 64)] * 6  # (B, C): one position per row, never (B, T, C)


def test_every_module_is_a_module():
    """No function hides its module: `import minqwen3.x as m` gives the module x, for every file of the package."""
    import importlib
    import pathlib
    import sys
    import types
    names = sorted(p.stem for p in pathlib.Path(minqwen3.__file__).parent.glob("*.py")
                   if p.stem not in ("__init__", "__main__"))
    assert {"generation", "assistant", "model", "cache"} <= set(names)
    for name in names:
        importlib.import_module(f"minqwen3.{name}")
        assert isinstance(getattr(minqwen3, name), types.ModuleType), f"minqwen3.{name} is not the module"
    # and every module the package imports is one of its files (not, say, a stale installed copy)
    package = pathlib.Path(minqwen3.__file__).parent
    for name, module in sys.modules.items():
        if name.startswith("minqwen3."):
            assert pathlib.Path(module.__file__).parent == package, f"{name} comes from {module.__file__}"


def test_seeded_sampling_is_reproducible_and_seeds_differ():
    model = tiny()
    prompt = torch.tensor([[1, 2, 3]])
    kw = dict(temperature=1.0, stop_ids=())
    a, b = (minqwen3.generate(model, prompt, 20, seed=7, **kw) for _ in range(2))
    c = minqwen3.generate(model, prompt, 20, seed=8, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, minqwen3.generate(model, prompt, 20, stop_ids=()))  # not just greedy


def test_top_k_1_is_greedy():
    model = tiny(**MOE)
    prompt = torch.tensor([[9, 8, 7, 6]])
    greedy = minqwen3.generate(model, prompt, 20, stop_ids=())
    for seed in range(3):
        assert torch.equal(minqwen3.generate(model, prompt, 20, temperature=1.5, top_k=1, seed=seed, stop_ids=()),
                           greedy)


def draws(logits: torch.Tensor, n: int = 40_000, **kw) -> torch.Tensor:
    """Frequency of each token over n independent draws from sample()."""
    g = torch.Generator().manual_seed(0)
    ids = sample(logits[None].expand(n, -1), generator=g, **kw)
    return torch.bincount(ids, minlength=logits.shape[-1]).float() / n


P = torch.tensor([0.05, 0.30, 0.02, 0.40, 0.15, 0.08])  # sorted: 3 (.40), 1 (.30), 4 (.15), 5 (.08), 0 (.05), 2 (.02)


@pytest.mark.parametrize("kw, allowed", [
    (dict(top_k=2), [3, 1]),
    (dict(top_p=0.69), [3, 1]),  # .40 + .30 reaches .69: nothing more is needed
    (dict(top_p=0.71), [3, 1, 4]),
    (dict(top_p=0.9), [3, 1, 4, 5]),
    (dict(min_p=0.19), [3, 1, 4, 5]),  # keeps p >= .19 * .40 = .076
    (dict(min_p=0.25), [3, 1, 4]),
    (dict(top_k=3, top_p=0.8), [3, 1]),  # top-k first: renormalised .47 + .35 = .82 >= .8
    (dict(top_k=4, min_p=0.15), [3, 1, 4, 5]),  # .08 >= .15 * .40 = .06; 0 (.05) falls to top-k anyway
    (dict(top_k=5, min_p=0.15), [3, 1, 4, 5]),  # 0: .05 < .06
])
def test_filters_against_a_hand_computation(kw, allowed):
    freq = draws(P.log(), temperature=1.0, **kw)
    assert sorted(freq.nonzero().flatten().tolist()) == sorted(allowed)
    want = torch.zeros_like(P)
    want[allowed] = P[allowed] / P[allowed].sum()  # what is kept, renormalised
    assert (freq - want).abs().max() < 0.01


@pytest.mark.parametrize("kw", [dict(temperature=0.7, top_k=20, top_p=0.8),
                                dict(temperature=0.6, top_p=0.95, min_p=0.05),
                                dict(temperature=1.3, top_k=7, min_p=0.1)])
def test_filters_match_transformers_warpers(kw):
    lp = pytest.importorskip("transformers.generation.logits_process")
    logits = torch.randn(50, generator=torch.Generator().manual_seed(3)) * 2
    warpers = [lp.TemperatureLogitsWarper(kw["temperature"])]
    if kw.get("top_k"):
        warpers.append(lp.TopKLogitsWarper(kw["top_k"]))
    if kw.get("top_p"):
        warpers.append(lp.TopPLogitsWarper(kw["top_p"]))
    if kw.get("min_p"):
        warpers.append(lp.MinPLogitsWarper(kw["min_p"]))
    ref = logits[None].clone()
    for w in warpers:
        ref = w(None, ref)
    want = ref.softmax(-1)[0]
    freq = draws(logits, 60_000, **kw)
    assert torch.equal(freq > 0, want > 0)
    assert (freq - want).abs().max() < 0.01


def test_a_tiny_temperature_is_greedy():
    """1e-40 scales the logits past float32's range: the best token still wins (not token 0 from a NaN softmax),
    with or without top-k."""
    logits = torch.tensor([[1.0, 5.0, 2.0], [3.0, -1.0, 2.5]])
    for kw in ({}, {"top_k": 2}, {"top_p": 0.9}):
        assert torch.equal(sample(logits, temperature=1e-40, **kw), logits.argmax(-1))


def test_temperature_scales_logits():
    logits = torch.tensor([0.0, 1.0, 2.0])
    for t in (0.5, 2.0):
        assert (draws(logits, temperature=t) - (logits / t).softmax(-1)).abs().max() < 0.01


def test_presence_penalty():
    logits = torch.tensor([[2.0, 1.9, 0.0, 1.5]])
    seen = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert sample(logits, presence_penalty=0.05, seen=seen).item() == 0  # 1.95 still beats 1.9
    assert sample(logits, presence_penalty=0.2, seen=seen).item() == 1
    # in generate: greedy with the penalty equals the recomputed oracle that subtracts it by hand
    model = tiny()
    prompt = [4, 4, 4]
    plain = minqwen3.generate(model, torch.tensor([prompt]), 25, stop_ids=())[0].tolist()
    assert len(set(plain[3:])) < 25  # the tiny model repeats itself without the penalty...
    got = minqwen3.generate(model, torch.tensor([prompt]), 25, presence_penalty=1.0, stop_ids=())[0].tolist()
    assert got == recompute_greedy(model, prompt, 25, penalty=1.0)
    assert got != plain
    never = minqwen3.generate(model, torch.tensor([prompt]), 25, presence_penalty=1e4, stop_ids=())[0].tolist()
    assert len(set(never[3:])) == 25  # ...and never does with a huge one


@pytest.mark.parametrize("fast", [False, True])
def test_a_reply_continued_in_parts_keeps_its_presence_penalty(fast):
    """generate(generated=...) counts an earlier part of the reply as generated: two calls give what one gives."""
    model = tiny()
    prompt = [4, 4, 4]
    whole = recompute_greedy(model, prompt, 25, penalty=1e4)  # the oracle; 1e4: no token twice
    first = minqwen3.generate(model, [prompt], 10, presence_penalty=1e4, stop_ids=(), fast=fast)[0].tolist()
    part = first[3:]
    rest = minqwen3.generate(model, [first], 15, presence_penalty=1e4, stop_ids=(), fast=fast, generated=[part])
    assert rest[0].tolist() == whole
    forgot = minqwen3.generate(model, [first], 15, presence_penalty=1e4, stop_ids=(), fast=fast)
    assert forgot[0].tolist() != whole  # without it the penalty starts afresh and the reply differs


def test_stop_tokens_end_rows_and_pad_the_rest():
    model = tiny(seed=2)
    prompts = [[1, 2, 3], [100, 200], [7]]
    free = minqwen3.generate(model, prompts, 12, stop_ids=(), pad_id=0)
    stop = free[0, 3 + 4].item()  # the 5th token row 0 generates becomes a stop token
    got = minqwen3.generate(model, prompts, 12, stop_ids=(stop,), pad_id=0)
    for row_free, row in zip(free, got):
        new_free, new = row_free[3:].tolist(), row[3:].tolist()
        k = new_free.index(stop) + 1 if stop in new_free else len(new)
        assert new[:k] == new_free[:k]  # the same tokens, the stop token included
        assert all(t == 0 for t in new[k:])  # then padding
    assert got[0, 3:].tolist().index(stop) == 4
    # when every row has stopped, generation ends early
    one = minqwen3.generate(model, [prompts[0]], 12, stop_ids=(stop,))
    assert one.shape == (1, 3 + 5) and one[0, -1].item() == stop


def test_on_token_streams_each_step():
    model = tiny(seed=2)
    steps = []
    out = minqwen3.generate(model, [[1, 2, 3], [9]], 6, stop_ids=(), pad_id=0, on_token=lambda t: steps.append(t))
    assert torch.equal(torch.stack(steps, dim=1), out[:, 3:])


def test_vocab_limit_never_samples_past_it():
    model = tiny()
    prompt = [5, 6, 7]
    with torch.no_grad():  # the oracle: greedy over the first 100 logits only, recomputed each step
        want = list(prompt)
        for _ in range(15):
            want.append(int(model(torch.tensor([want]))[0, -1, :100].argmax()))
    assert minqwen3.generate(model, torch.tensor([prompt]), 15, stop_ids=(), vocab_limit=100)[0].tolist() == want
    assert max(minqwen3.generate(model, torch.tensor([prompt]), 15, stop_ids=())[0, 3:].tolist()) >= 100
    sampled = minqwen3.generate(model, torch.tensor([prompt] * 8), 15, temperature=2.0, seed=0, stop_ids=(),
                                vocab_limit=100)
    assert sampled[:, 3:].max() < 100


def test_prompt_past_the_context_fails_before_any_work():
    model = tiny(max_position_embeddings=64)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match=r"80 tokens.*64 tokens"):
        minqwen3.generate(model, torch.zeros(1, 80, dtype=torch.long), 5)
    with pytest.raises(ValueError, match=r"64 tokens.*64 tokens"):
        minqwen3.generate(model, torch.zeros(1, 64, dtype=torch.long), 5)
    assert calls == []
    # a prompt that fits gets only as many new tokens as the context still holds
    assert minqwen3.generate(model, torch.zeros(1, 60, dtype=torch.long), 10, stop_ids=()).shape == (1, 64)


@pytest.mark.parametrize("kw, name", [(dict(temperature=-1), "temperature"), (dict(top_p=0.0), "top_p"),
                                      (dict(top_k=-3), "top_k"), (dict(min_p=1.0), "min_p"),
                                      (dict(presence_penalty=-1), "presence_penalty")])
def test_bad_sampling_settings_are_named(kw, name):
    with pytest.raises(ValueError, match=name):
        minqwen3.generate(tiny(), torch.tensor([[1, 2]]), 3, **kw)


# ---------------------------------------------------------------------------------------------- issue 11
BAD_SAMPLING = [(dict(temperature=float("nan")), ValueError, "temperature"),
                (dict(temperature=float("-inf")), ValueError, "temperature"),
                (dict(presence_penalty=float("nan")), ValueError, "presence_penalty"),
                (dict(presence_penalty=float("inf")), ValueError, "presence_penalty"),
                (dict(top_p=float("nan")), ValueError, "top_p"),
                (dict(top_k=1.5), TypeError, "top_k"),
                (dict(top_k="20"), TypeError, "top_k"),
                (dict(max_new_tokens=-1), ValueError, "max_new_tokens"),
                (dict(max_new_tokens=2.5), TypeError, "max_new_tokens"),
                (dict(seed=2**64), ValueError, "seed"),
                (dict(seed=-5), ValueError, "seed"),
                (dict(seed=0.5), TypeError, "seed")]


def _named(kw):
    return [f"{k}={v!r}" for k, v in kw.items()][0]


@pytest.mark.parametrize("kw, error, name", BAD_SAMPLING, ids=[_named(kw) for kw, _, _ in BAD_SAMPLING])
@pytest.mark.parametrize("fast", [False, True])  # generate(), and generate() with a Decoder of one's own
def test_bad_generation_arguments_are_named_before_any_work(kw, error, name, fast):
    model = tiny()
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    kw = {"max_new_tokens": 3, **kw}
    value = re.escape(str(next(v for k, v in kw.items() if k == name)))
    with pytest.raises(error, match=rf"{name}.*{value}"):
        decoder = minqwen3.Decoder(model, max_len=16, compile=False, cuda_graphs=False) if fast else None
        minqwen3.generate(model, torch.tensor([[1, 2]]), decoder=decoder, **kw)
    assert calls == []


BAD_IDS = [(torch.tensor([[1, 320]]), {}, ValueError, "input_ids holds 320"),
           (torch.tensor([[-1, 2]]), {}, ValueError, "input_ids holds -1"),
           (torch.tensor([[1.0, 2.0]]), {}, TypeError, "input_ids.*float"),
           (torch.tensor([[True, False]]), {}, TypeError, "input_ids.*bool"),
           (torch.tensor([1, 2]), {}, ValueError, r"input_ids.*\(2,\)"),
           (torch.zeros(1, 0, dtype=torch.long), {}, ValueError, r"input_ids.*\(1, 0\)"),
           ([[1, 2], [5, 1000]], {}, ValueError, r"input_ids\[1\] holds 1000"),
           ([[1, 2.0]], {}, TypeError, r"input_ids\[0\].*float"),
           ([[1, 2], []], {}, ValueError, r"input_ids\[1\]"),
           ([], {}, TypeError, "input_ids"),
           ("hello", {}, TypeError, "input_ids"),
           ([[1, 2], [3]], dict(pad_id=151643), ValueError, "pad_id holds 151643"),
           ([[1, 2]], dict(generated=[[7, 400]], presence_penalty=1.0), ValueError, r"generated\[0\] holds 400"),
           ([[1, 2]], dict(generated=[[1], [2]], presence_penalty=1.0), ValueError, r"generated.*per prompt \(1\), got 2"),
           ([[1, 2]], dict(generated=7, presence_penalty=1.0), TypeError, r"generated.*per prompt, got int"),
           (torch.tensor([[1, 2]], dtype=torch.uint8), {}, TypeError, "input_ids.*uint8"),
           ([[1, 2], [3]], dict(pad_id=None), TypeError, "pad_id must be a token id.*None"),
           ([[1, 2]], dict(pad_id=None), TypeError, "pad_id must be a token id.*None"),
           ([[1, 2]], dict(stop_ids=151645), TypeError, "stop_ids.*int 151645"),
           ([[1, 2]], dict(stop_ids=[5, "6"]), TypeError, "stop_ids.*str '6'"),
           ([[1, 2]], dict(vocab_limit=0), ValueError, r"vocab_limit.*\[1, 320\].*got 0"),
           ([[1, 2]], dict(vocab_limit=100.5), TypeError, "vocab_limit.*100.5")]


@pytest.mark.parametrize("ids, kw, error, match", BAD_IDS, ids=[m for *_, m in BAD_IDS])
def test_ids_outside_the_vocabulary_are_named_before_any_work(ids, kw, error, match):
    model = tiny()  # 320 ids
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(error, match=match):
        minqwen3.generate(model, ids, 3, **kw)
    assert calls == []
    # the same prompts within the vocabulary run
    assert minqwen3.generate(model, [[1, 2], [3]], 2, pad_id=0, stop_ids=()).shape == (2, 4)


def test_max_new_tokens_and_a_decoder_of_another_model_are_named():
    model, other = tiny(), tiny(seed=1)
    with pytest.raises(TypeError, match="max_new_tokens must be an integer.*None"):
        minqwen3.generate(model, [[1, 2]], None)
    decoder = minqwen3.Decoder(other, max_len=16, compile=False, cuda_graphs=False)
    with pytest.raises(ValueError, match="decoder was made for another model"):
        minqwen3.generate(model, [[1, 2]], 3, decoder=decoder)


def test_array_and_tensor_arguments_are_taken_as_lists():
    """stop_ids as a set, a numpy array or an integer tensor (of 0-d tensors too), generated as a numpy array: the
    same tokens as plain lists."""
    import numpy as np
    model = tiny()
    want = minqwen3.generate(model, [[1, 2, 3]], 6, stop_ids=[5, 6], generated=[[3]], presence_penalty=1.0)
    for stops in ({5, 6}, np.array([5, 6]), torch.tensor([5, 6]), [torch.tensor(5), np.int64(6)], torch.tensor(5)):
        got = minqwen3.generate(model, [[1, 2, 3]], 6, stop_ids=stops, generated=np.array([[3]]),
                                presence_penalty=1.0)
        if isinstance(stops, torch.Tensor) and stops.dim() == 0:  # one id: stops at 5 only
            got5 = minqwen3.generate(model, [[1, 2, 3]], 6, stop_ids=[5], generated=[[3]], presence_penalty=1.0)
            assert torch.equal(got, got5)
        else:
            assert torch.equal(got, want), stops
    with pytest.raises(TypeError, match="stop_ids must hold integer token ids, got Tensor"):
        minqwen3.generate(model, [[1, 2, 3]], 2, stop_ids=[torch.tensor(5.0)])
