"""The decode loop's Decoder (minqwen3/generation.py): cache prefixes, the compiled step, CUDA graphs, against the
plain loop; the benchmark's arithmetic; and the GPU-only parts."""
import gc
import json
import weakref
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._dynamo.testing import CompileCounter

import minqwen3
from conftest import TINY
from minqwen3 import Decoder, make_cache, random_model
from minqwen3.bench import decode_bytes, prefill_flops
from minqwen3.cli import main
from minqwen3 import generation
from minqwen3.generation import fast_decoder, prefix_lengths

MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1])


def tiny(seed=0, dtype=torch.float32, device="cpu", **over):
    cfg = minqwen3.Qwen3Config(**{**TINY, **over})
    model = random_model(cfg, torch.device(device), dtype, seed)
    with torch.no_grad():  # norms at 1 and weights at std 0.02 would hide mix-ups; make logits decisive
        for n, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in n else p.mul_(3.0)
    return model


def decode(decoder, ids, n, **kw):
    return minqwen3.generate(decoder.model, ids, n, decoder=decoder, **kw)


# ---------------------------------------------------------------- CPU: same tokens as generate()
SAMPLED = dict(temperature=0.8, top_k=40, top_p=0.9, seed=7, presence_penalty=0.5)


@pytest.mark.parametrize("over, kw, stops", [(dict(), dict(), False), (MOE, dict(), True),
                                             (dict(), SAMPLED, True), (MOE, SAMPLED, False)],
                         ids=["dense-greedy", "moe-greedy-stops", "dense-sampled-stops", "moe-sampled"])
def test_decoder_over_cache_prefixes_equals_generate(over, kw, stops):
    model = tiny(**over)
    fast = Decoder(model, max_len=48, smallest_prefix=8)  # prefixes 8, 16, 32, 48: several per run
    prompts = [[3, 1, 4, 1, 5], [9, 2, 6, 5, 3, 5, 8, 9, 7, 9, 3, 2]]  # left-padded batch
    for ids in (torch.randint(0, 320, (2, 7), generator=torch.Generator().manual_seed(1)), prompts):
        want = minqwen3.generate(model, ids, 30, pad_id=0, stop_ids=(), fast=False, **kw)
        stop_ids = ()
        if stops:  # tokens the rows really produce: row 0 stops at new token 5, row 1 at 15
            T = want.shape[1] - 30
            stop_ids = (int(want[0, T + 5]), int(want[1, T + 15]))
            want = minqwen3.generate(model, ids, 30, pad_id=0, stop_ids=stop_ids, fast=False, **kw)
            assert want.shape[1] < T + 30 and (want[0, T + 6:] == 0).all()
        assert torch.equal(decode(fast, ids, 30, pad_id=0, stop_ids=stop_ids, **kw), want)


def test_generate_fast_streams_stops_and_limits_as_eager():
    """generate(fast=True), the default on a GPU, goes through the model's own Decoder: the same ids, the same
    on_token steps (handed over in bursts), the same stops and vocab_limit as the eager loop."""
    model = tiny(seed=2)
    prompts = [[1, 2, 3], [9]]
    free = minqwen3.generate(model, prompts, 40, stop_ids=(), pad_id=0, fast=False)
    stops = (int(free[0, 3 + 20]), int(free[1, 3 + 25]))  # each row meets one by its 20th / 25th new token
    for kw in (dict(stop_ids=()), dict(stop_ids=stops), dict(stop_ids=(), vocab_limit=100)):
        outs, steps = {}, {}
        for fast in (False, True):
            got = []
            outs[fast] = minqwen3.generate(model, prompts, 40, pad_id=0, fast=fast, on_token=got.append, **kw)
            steps[fast] = torch.stack(got, dim=1)
        assert torch.equal(outs[True], outs[False]) and torch.equal(steps[True], steps[False])
        assert torch.equal(steps[False], outs[False][:, 3:])
        if "vocab_limit" in kw:
            assert outs[True][:, 3:].max() < 100 <= free[:, 3:].max()
        if kw["stop_ids"]:
            assert outs[True].shape[1] <= 3 + 26
    fast = fast_decoder(model, 10)
    assert fast is fast_decoder(model, 43) is model.fast_decoder and fast.max_len == 512  # one, capped by the context
    assert set(model.state_dict()) == set(tiny(seed=2).state_dict())  # not part of the checkpoint
    del model.fast_decoder  # the documented way to drop it
    assert fast_decoder(model, 10) is not fast
    gone = weakref.ref(model)
    del model, fast
    gc.collect()
    assert gone() is None  # the kept decoder does not keep the model (and its GPU memory) alive


def test_decoder_checks_its_cache_size():
    fast = Decoder(tiny(), max_len=40)
    with pytest.raises(ValueError, match="cache slots"):
        decode(fast, torch.zeros(1, 30, dtype=torch.long), 20)
    with pytest.raises(ValueError, match="CUDA graphs"):
        Decoder(tiny(), cuda_graphs=True)


def test_prefix_lengths_and_cache_prefix_share_storage():
    assert prefix_lengths(4096) == [256, 512, 1024, 2048, 4096]
    assert prefix_lengths(300) == [256, 300] and prefix_lengths(100) == [100]
    cache = minqwen3.KVCache(tiny().config, 2, 64, dtype=torch.float32)
    view = cache.prefix(10)
    view.update(torch.tensor([9]), torch.ones(2, 2, 1, 32), torch.full((2, 2, 1, 32), 2.0))
    assert view.max_len == 10 and view.k.shape == (2, 2, 10, 32)
    assert cache.k[:, :, 9].eq(1).all() and cache.v[:, :, 9].eq(2).all() and cache.k.sum() == 2 * 2 * 32
    with pytest.raises(ValueError, match="prefix of 65"):
        cache.prefix(65)


def test_compiled_decode_traces_once_per_layer_kind():
    """torch.compile sees whole graphs (fullgraph), shared by every layer and every cache prefix: the
    inputs, dense layer, MoE layer, head and emit compile once each, never again while decoding."""
    model = tiny(**MOE)  # layer 1 dense, layers 0 and 2 MoE
    counter = CompileCounter()
    fast = Decoder(model, max_len=48, smallest_prefix=8, compile=True, backend=counter)
    ids = torch.randint(0, 320, (2, 5))
    assert torch.equal(decode(fast, ids, 10, stop_ids=()), minqwen3.generate(model, ids, 10, stop_ids=(), fast=False))
    assert counter.frame_count == 5
    ids = torch.randint(0, 320, (2, 20))  # other prefixes
    assert torch.equal(decode(fast, ids, 25, stop_ids=()), minqwen3.generate(model, ids, 25, stop_ids=(), fast=False))
    assert counter.frame_count == 5


def test_compiled_prompt_traces_once_per_layer_kind_for_every_length(monkeypatch):
    """compile_prefill: the prompt's layers compile once per layer kind for any prompt length (its T is a symbol),
    once more with a padding mask; prompts are right-padded to a multiple of 64 tokens (what a CUDA graph of the
    prompt replays), longer ones go as they are; the tokens are the eager loop's, and Inductor's code (not only
    the trace) gives them too."""
    model = tiny(**MOE)  # layer 1 dense, layers 0 and 2 MoE
    counter = CompileCounter()
    fast = Decoder(model, max_len=256, smallest_prefix=16, compile=True, backend=counter, compile_prefill=True)
    cpu = Decoder(model, compile=True, backend="eager")  # on a CPU the default prompt is eager
    decode(cpu, torch.tensor([[1, 2, 3]]), 2, stop_ids=())
    assert cpu.prefill is None and cpu.prompt is None
    # the step's 5 graphs (inputs, dense layer, MoE layer, head, record), then the prompt's dense and MoE layer
    runs = [(torch.randint(0, 320, (2, T), generator=torch.Generator().manual_seed(T)), 7) for T in (7, 70, 130)]
    runs += [([[3, 1, 4], list(range(1, 81))], 9), ([[9] * 11, [2, 7]], 9)]  # left padding: the masked graphs
    for ids, frames in runs:
        want = minqwen3.generate(model, ids, 8, stop_ids=(), pad_id=0, fast=False)
        assert torch.equal(decode(fast, ids, 8, stop_ids=(), pad_id=0), want)
        assert counter.frame_count == frames
    assert fast.prefill is not None and fast.prompt.shape == (2, 256)
    one = torch.tensor([[5], [7]])  # a one-token prompt: compiled as it is (no padding to fill a graph)
    assert torch.equal(decode(fast, one, 8, stop_ids=()), minqwen3.generate(model, one, 8, stop_ids=(), fast=False))
    wants = [minqwen3.generate(model, ids, 8, stop_ids=(), pad_id=0, fast=False) for ids, _ in runs[1:4]]
    fast = Decoder(model, max_len=256, smallest_prefix=16, compile=True, compile_prefill=True)
    for (ids, _), want in zip(runs[1:4], wants):
        assert torch.equal(decode(fast, ids, 8, stop_ids=(), pad_id=0), want)
    monkeypatch.setattr(generation, "PROMPT_GRAPHS", False)  # prompts as they are (MINQWEN3_PREFILL=direct)
    counter = CompileCounter()
    fast = Decoder(model, max_len=256, smallest_prefix=16, compile=True, backend=counter, compile_prefill=True)
    for (ids, frames), want in zip(runs[1:4], wants):
        assert torch.equal(decode(fast, ids, 8, stop_ids=(), pad_id=0), want)
        assert counter.frame_count == frames and fast.prompt is None


def test_decoder_follows_a_replaced_module_and_a_changed_prompt_plan(monkeypatch):
    """A Decoder made before a module of the model is replaced decodes with the new one (its weights check walks the
    live model: the stacks and compiled state are made again); whether the prompt compiles is decided at each call
    (an MoE model's dtype may change), and so is PROMPT_GRAPHS' buffer."""
    model = tiny(seed=4)
    ids = torch.randint(0, 320, (2, 5), generator=torch.Generator().manual_seed(0))
    fast = Decoder(model, max_len=64, smallest_prefix=16, compile=False, stacked=True)
    decode(fast, ids, 8, stop_ids=())
    attn = model.model.layers[0].self_attn
    attn.q_proj = torch.nn.Linear(attn.q_proj.in_features, attn.q_proj.out_features, bias=False)
    torch.nn.init.normal_(attn.q_proj.weight, std=0.5)
    assert torch.equal(decode(fast, ids, 8, stop_ids=()), minqwen3.generate(model, ids, 8, stop_ids=(), fast=False))
    compiled = Decoder(model, max_len=64, smallest_prefix=16, compile=True, backend="eager")
    for on in (True, False, True):
        monkeypatch.setattr(Decoder, "_prefill_compiles", lambda self, on=on: on)
        monkeypatch.setattr(generation, "PROMPT_GRAPHS", on)
        want = minqwen3.generate(model, ids, 8, stop_ids=(), fast=False)
        assert torch.equal(decode(compiled, ids, 8, stop_ids=()), want)
        assert (compiled.prefill is not None) == on and (compiled.prompt is not None) == on


def test_a_process_decodes_with_many_models():
    """Every Decoder's layers compile into run_layer's one code object (a graph per layer kind, model shape, dtype,
    batch): with Dynamo's default limit of 8 there, the ninth model of a process (a notebook's, the GPU tests')
    failed under fullgraph. Ten models of ten shapes in one process each decode as eager does."""
    ids = torch.tensor([[1, 2, 3]])
    with torch._dynamo.config.patch(recompile_limit=8):  # the default, whatever ran before
        for i in range(10):
            model = tiny(intermediate_size=64 + 8 * i)
            fast = Decoder(model, max_len=40, smallest_prefix=64, compile=True, backend="eager")
            assert torch.equal(decode(fast, ids, 3, stop_ids=()),
                               minqwen3.generate(model, ids, 3, stop_ids=(), fast=False))


def test_forward_last_equals_the_model():
    """The decoder's forward, from the model's public pieces (inputs, layers, head), is the model's forward."""
    model = tiny(**MOE)
    ids = torch.randint(0, 320, (2, 11))
    pad = torch.tensor([3, 0])
    with torch.no_grad():
        for cache, pad in ((make_cache(model, 2, 11), None), (make_cache(model, 2, 16), pad)):
            got = Decoder(model).forward_last(ids, cache, torch.arange(11), pad)
            torch.testing.assert_close(got, model(ids, pad=pad)[:, -1], rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the benchmark's arithmetic
def test_decode_bytes_match_the_published_parameter_counts():
    """Qwen's model cards: 0.6B has 0.44B non-embedding parameters and ties its head; 8B has 6.95B non-embedding;
    30B-A3B activates 3.3B of which 0.31B is the embedding (151936 x 2048) not read per token."""
    gb = {m: decode_bytes(minqwen3.Qwen3Config.from_name(m), torch.bfloat16) / 1e9
          for m in ("Qwen3-0.6B", "Qwen3-8B", "Qwen3-30B-A3B")}
    assert gb["Qwen3-0.6B"] == pytest.approx(2 * (0.44 + 0.1556), rel=0.01)
    assert gb["Qwen3-8B"] == pytest.approx(2 * (6.95 + 0.6223), rel=0.01)
    assert gb["Qwen3-30B-A3B"] == pytest.approx(2 * (3.3 - 0.311), rel=0.02)


@pytest.mark.parametrize("over", [dict(), MOE], ids=["dense", "moe"])
def test_prefill_flops_match_torch_flop_counter(over):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    model = tiny(**over)
    T, c = 24, model.config
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter, sdpa_kernel(SDPBackend.MATH):  # attention as plain matmuls the counter sees
        Decoder(model).forward_last(torch.randint(0, 320, (1, T)), make_cache(model, 1, T), torch.arange(T), None)
    # the math path computes all T x T scores, then masks half: count that half back
    skipped = 2 * T * T * c.num_attention_heads * c.head_dim * c.num_hidden_layers
    assert counter.get_total_flops() == prefill_flops(c, T) + skipped


def test_bench_reports_a_failed_implementation_in_one_line_and_carries_on():
    """A failure is a row of the table, whatever its message: an empty one (str(e) == "") too, and the next
    implementation is still measured."""
    from minqwen3.bench import measure, one_line

    def broken(ids, n):
        raise RuntimeError()

    def works(ids, n):
        return torch.cat([ids, ids[:, :1].expand(-1, n)], 1)

    runs = measure([("broken", broken, 2, True, False), ("works", works, 2, True, False)],
                   torch.zeros(1, 3, dtype=torch.long), 4, None, torch.device("cpu"), 1)
    assert runs[0] == dict(impl="broken", error="RuntimeError: ")
    assert runs[1]["impl"] == "works" and runs[1]["tok_s"] > 0
    assert torch.equal(runs[1]["tokens"], torch.zeros(1, 4, dtype=torch.long))
    assert one_line(ValueError("first line\nsecond"), 5) == "ValueError: first"


def test_bench_under_torchrun_raises_a_failed_implementation(monkeypatch):
    """Across processes a failure ends the run: a rank that went on to the next implementation would meet its
    peers' collectives out of step (gloo aborted with a size mismatch; NCCL could pair the wrong sums)."""
    from minqwen3.bench import measure

    def broken(ids, n):
        raise MemoryError("out of memory on this rank")

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    with pytest.raises(MemoryError, match="this rank"):
        measure([("broken", broken, 2, True, False)], torch.zeros(1, 3, dtype=torch.long), 4, None,
                torch.device("cpu"), 1)


def test_bench_command_on_a_tiny_checkpoint(tmp_path, capsys):
    pytest.importorskip("transformers")
    model = tiny(**MOE)
    minqwen3.save_pretrained(model, tmp_path)
    rc = main(["bench", "--model", str(tmp_path), "--device", "cpu", "--prompt", "10", "--new", "6",
               "--prefill", "16", "--repeats", "1", "--compare", "transformers", "transformers-static",
               "--batch", "1", "3", "--out", str(tmp_path / "r.json")])
    out = capsys.readouterr().out
    assert rc == 0
    rows = [line for line in out.splitlines() if line.startswith("| ") and "implementation" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "minqwen3 generate()", "transformers eager", "transformers static cache"] * 2  # batch 1, then 3
    # the same greedy tokens, all three; minqwen3's row is the reference, so it has no count against itself,
    ends = [r.rstrip(" |").rsplit("|", 1)[1].strip() for r in rows]
    assert ends == ["- / 6/6", "6/6", "6/6 / 6/6", "- / 18/18", "18/18", "18/18 / 18/18"], out  # nor transformers
    assert "batch 1; the rows route to 2.0 distinct experts of 8" in out  # top-2: a lone row reads 2
    assert (tmp_path / "r.json").stat().st_size > 0


def test_routed_experts_counts_the_union_of_the_rows_choices():
    """What a batched decode step reads: per MoE layer and step, the experts any row chose, against a plain loop."""
    from minqwen3.bench import routed_experts
    model = tiny(**MOE)
    ids = torch.randint(0, 320, (4, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        _, router = model.hidden_states(ids[:, :-1])
    want = []
    for logits in router:  # layers 0 and 2
        chosen = logits.view(4, 11, 8).topk(2, dim=-1).indices
        want += [len(set(chosen[:, t].flatten().tolist())) for t in range(5, 11)]  # steps fed positions 5..10
    assert routed_experts(model, ids, 5) == pytest.approx(sum(want) / len(want))
    assert 2 < routed_experts(model, ids, 5) <= 8 and routed_experts(tiny(), ids, 5) is None
    c = model.config  # two MoE layers of 8 experts, 3 * 64 * 32 weights each
    extra = decode_bytes(c, torch.bfloat16, experts=5.0) - decode_bytes(c, torch.bfloat16)
    assert extra == 2 * (5 - 2) * 3 * 64 * 32 * 2


def test_compile_cache_under_the_users_cache_dir(tmp_path, monkeypatch):
    """A compiling Decoder keeps torch.compile's caches in ~/.cache/minqwen3 (a second process starts warm), unless
    the user chose a directory."""
    from minqwen3.warmstart import use_compile_cache
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert use_compile_cache() == str(tmp_path / "minqwen3" / "inductor")
    assert (tmp_path / "minqwen3" / "inductor").is_dir()
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", default_cache_dir())  # what importing Inductor sets
    assert use_compile_cache() == str(tmp_path / "minqwen3" / "inductor")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "mine"))
    assert use_compile_cache() == str(tmp_path / "mine")


def test_compile_cache_left_to_torch_where_ours_is_not_writable(tmp_path, monkeypatch):
    """An existing ~/.cache/minqwen3/inductor this user cannot write (another user's, an immutable home): torch's
    default, where compiling works, not a directory where it fails. (os.access is stubbed: root may write anyway.)"""
    from minqwen3 import warmstart
    monkeypatch.delenv("TORCHINDUCTOR_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    ours = tmp_path / "minqwen3" / "inductor"
    ours.mkdir(parents=True)
    real = warmstart.os.access
    monkeypatch.setattr(warmstart.os, "access", lambda p, mode: False if str(p) == str(ours) else real(p, mode))
    assert warmstart.use_compile_cache() == "" and "TORCHINDUCTOR_CACHE_DIR" not in warmstart.os.environ


class _Config:  # a Triton launch setting, as far as the autotune cache looks at one
    def __init__(self, block: int, warps: int):
        self.kwargs, self.num_warps, self.num_stages = {"XBLOCK": block}, warps, 1


class _Heuristics:  # torch's triton_heuristics as adopt_cached_winner uses it, with an autotune cache of one entry
    def __init__(self, entry):
        self.entry = entry

    @staticmethod
    def triton_config_to_hashable(c):
        return tuple(sorted(c.kwargs.items())), c.num_warps, c.num_stages

    def check_autotune_cache(self, configs, filename, meta):  # torch's contract: a miss hands back the same list
        return ([self.entry], None, {"autotune_cache_state": "hit"}) if self.entry else (configs, None, {})


def _restored_kernel(*configs):
    from types import SimpleNamespace
    k = SimpleNamespace(compile_results=[SimpleNamespace(config=c) for c in configs], filename="k.py",
                        inductor_meta={"coordinate_descent_tuning": True}, fn=SimpleNamespace(fn=None))
    k._precompile_config = lambda c: SimpleNamespace(config=c, compiled=True)
    return k


def test_a_restored_kernel_keeps_its_cached_tuning():
    """torch 2.11 re-tunes a kernel restored from the FX-graph cache with one candidate (pytorch#172819):
    adopt_cached_winner keeps the cached winner, compiled or compiled now, and marks it tuned."""
    from minqwen3.warmstart import adopt_cached_winner
    tuned = _Config(64, 4)
    tuned.found_by_coordesc = True
    k = _restored_kernel(_Config(128, 8))  # one candidate; tuning found another setting at run time
    reloaded = []
    adopt_cached_winner(k, lambda: reloaded.append(1) or _restored_kernel(), _Heuristics(tuned))
    (r,) = k.compile_results
    assert r.compiled and r.config.kwargs == {"XBLOCK": 64} and r.config.found_by_coordesc and reloaded == [1]
    assert k.inductor_meta["dynamic_scale_rblock"] is False and k.autotune_cache_info["autotune_cache_state"] == "hit"
    a, b = _Config(32, 4), _Config(64, 4)  # two candidates, the cached winner among them
    k = _restored_kernel(a, b)
    adopt_cached_winner(k, None, _Heuristics(tuned))
    assert [r.config for r in k.compile_results] == [b] and b.found_by_coordesc
    k = _restored_kernel(a)  # nothing cached: left as it was, for torch to tune at the first run
    adopt_cached_winner(k, None, _Heuristics(None))
    assert [r.config for r in k.compile_results] == [a] and not hasattr(a, "found_by_coordesc")


def test_keep_tuned_configs_replaces_only_torchs_faulty_method():
    import inspect

    from minqwen3.warmstart import keep_tuned_configs
    th = pytest.importorskip("torch._inductor.runtime.triton_heuristics")
    before = th.CachingAutotuner.recheck_autotune_cache
    faulty = getattr(before, "_minqwen3", False) or "len(configs) > 1" in inspect.getsource(before)
    assert keep_tuned_configs() == faulty
    replaced = th.CachingAutotuner.recheck_autotune_cache is not before
    assert replaced == (faulty and not getattr(before, "_minqwen3", False))


def test_warm_start_thread_runs_beside_a_checkpoint_loading(tmp_path, monkeypatch):
    """warmstart's thread (on a GPU it starts as chat loads the model) does its work without an error while the
    main thread loads a checkpoint; on a CPU start() starts nothing."""
    from minqwen3 import warmstart
    from minqwen3.checkpoint import from_pretrained
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(warmstart, "_thread", None)
    monkeypatch.setitem(warmstart.STATS, "warm_s", None)
    assert warmstart.start("cpu") is None
    warmstart._start(torch.device("cpu"), torch.float32)  # what start() does on a GPU
    model = from_pretrained(Path(__file__).resolve().parents[1] / "weights" / "demo-dense")
    warmstart.wait()
    assert warmstart.STATS["warm_error"] is None and warmstart.STATS["warm_s"] > 0
    assert minqwen3.generate(model, [[1, 2, 3]], 4, stop_ids=()).shape == (1, 7)


def test_first_call_reports_its_timings():
    from minqwen3.bench import first_call
    model_dir = Path(__file__).resolve().parents[1] / "weights" / "demo-dense"
    r = first_call(str(model_dir), torch.device("cpu"), torch.float32, 8, 20)
    assert 0 < r["first_token_s"] < r["first_s"] and r["setup_s"] == 0.0  # on a CPU nothing is compiled


# ---------------------------------------------------------------- GPU: compiled + CUDA graphs
@pytest.fixture
def exact_fp32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.gpu  # conftest skips these without CUDA
@pytest.mark.parametrize("over", [dict(), MOE], ids=["dense", "moe"])
def test_gpu_compiled_graphs_equal_eager(over, exact_fp32):
    """fp32, so that compiled and eager kernels agree far below the gaps between logits: identical tokens."""
    model = tiny(device="cuda", **over)
    fast = Decoder(model, max_len=300, smallest_prefix=64)
    assert fast.cuda_graphs
    ids = torch.randint(0, 320, (1, 40), generator=torch.Generator().manual_seed(0)).cuda()
    for ids in (ids, [[5, 6, 7], list(range(1, 60))]):
        want = minqwen3.generate(model, ids, 100, stop_ids=(), pad_id=0, fast=False)
        assert torch.equal(decode(fast, ids, 100, stop_ids=(), pad_id=0), want)
    graphs, compiled = len(fast.graphs), torch._dynamo.utils.counters["stats"]["unique_graphs"]
    prompts = [[5, 6, 7], list(range(1, 151))]  # reaches prefix 300: a new graph, but no new compile
    want = minqwen3.generate(model, prompts, 140, stop_ids=(), pad_id=0, fast=False)
    assert torch.equal(decode(fast, prompts, 140, stop_ids=(), pad_id=0), want)
    assert len(fast.graphs) > graphs and torch._dynamo.utils.counters["stats"]["unique_graphs"] == compiled


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_a_captured_prompt_replays_for_other_prompts_of_its_length(exact_fp32):
    """One graph for every prompt that rounds up to 64 tokens: other ids, other lengths, left padding, a seed;
    each as the eager loop gives (the graph reads the prompt, its last position and the pad counts from buffers)."""
    model = tiny(device="cuda")
    fast = Decoder(model, max_len=200, smallest_prefix=64)
    g = torch.Generator().manual_seed(0)
    for T in (40, 50, 64, 33):
        ids = torch.randint(0, 320, (2, T), generator=g).cuda()
        want = minqwen3.generate(model, ids, 20, stop_ids=(), fast=False)
        assert torch.equal(decode(fast, ids, 20, stop_ids=()), want)
    assert [k[:3] for k in fast.graphs if k[0] == "prompt"] == [("prompt", 64, False)]
    for prompts in ([[1, 2, 3], list(range(1, 41))], [list(range(9, 60)), [4] * 7]):  # padded: one more graph
        want = minqwen3.generate(model, prompts, 20, stop_ids=(), pad_id=0, fast=False)
        assert torch.equal(decode(fast, prompts, 20, stop_ids=(), pad_id=0), want)
    assert sum(k[0] == "prompt" for k in fast.graphs) == 2
    for seed in (1, 2):
        want = minqwen3.generate(model, ids, 20, stop_ids=(), temperature=1.0, seed=seed, fast=False)
        assert torch.equal(decode(fast, ids, 20, stop_ids=(), temperature=1.0, seed=seed), want)


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_generate_defaults_to_the_fast_path(exact_fp32):
    """On CUDA, generate() compiles and captures by itself; streaming, stops and vocab_limit as eager."""
    model = tiny(device="cuda", seed=2)
    prompts = [[1, 2, 3], [9]]
    free = minqwen3.generate(model, prompts, 60, stop_ids=(), pad_id=0, fast=False)
    stops = (int(free[0, 3 + 30]), int(free[1, 3 + 40]))
    for kw in (dict(stop_ids=stops), dict(stop_ids=(), vocab_limit=100)):
        got, want = [], []
        a = minqwen3.generate(model, prompts, 60, pad_id=0, on_token=got.append, **kw)
        b = minqwen3.generate(model, prompts, 60, pad_id=0, on_token=want.append, fast=False, **kw)
        assert torch.equal(a, b) and torch.equal(torch.stack(got, 1), torch.stack(want, 1).cpu())
    assert model.fast_decoder.cuda_graphs and model.fast_decoder.graphs  # it was the fast path
    # graphs captured by an earlier call replay in later ones: what they read must still be there (a chat's
    # thinking-budget phases call generate() again with the same stops; freed memory gets reused meanwhile)
    junk = [torch.randint(0, 320, (1 << 16,), device="cuda") for _ in range(50)]
    del junk
    again = minqwen3.generate(model, prompts, 60, pad_id=0, stop_ids=stops)
    assert torch.equal(again, minqwen3.generate(model, prompts, 60, pad_id=0, stop_ids=stops, fast=False))


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_bf16_compiled_matches_eager():
    """bf16 kernels round differently once fused, so long runs may part where two logits nearly tie; with
    decisive logits (tiny() scales the weights up) the first tokens must still agree."""
    model = tiny(dtype=torch.bfloat16, device="cuda", **MOE)
    ids = torch.randint(0, 320, (1, 32), generator=torch.Generator().manual_seed(3)).cuda()
    fast = Decoder(model, max_len=128, smallest_prefix=64)
    got, want = decode(fast, ids, 64, stop_ids=()), minqwen3.generate(model, ids, 64, stop_ids=(), fast=False)
    assert torch.equal(got[:, :32 + 16], want[:, :32 + 16]), (got, want)


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_sampling_in_graphs_is_reproducible():
    model = tiny(device="cuda")
    fast = Decoder(model, max_len=128, smallest_prefix=64)
    ids = torch.randint(0, 320, (2, 16), device="cuda")
    a, b = (decode(fast, ids, 60, temperature=1.0, seed=s, stop_ids=()) for s in (1, 1))
    c = decode(fast, ids, 60, temperature=1.0, seed=2, stop_ids=())
    assert torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.gpu  # conftest skips these without CUDA
def test_gpu_grouped_mm_matches_loop_without_host_sync():
    from minqwen3.moe import Experts, _grouped_mm_ok
    torch.manual_seed(0)
    ex = Experts(16, 256, 128).cuda().bfloat16()
    for p in ex.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(300, 256, device="cuda", dtype=torch.bfloat16)
    idx = torch.randint(0, 16, (300, 4), device="cuda")
    idx[:, 0] = 2  # one busy expert, others idle or light
    idx[:, 1:] = idx[:, 1:] % 12 + 4  # experts 0, 1, 3 get nothing
    w = torch.rand(300, 4, device="cuda", dtype=torch.bfloat16)
    assert _grouped_mm_ok(x)
    torch.cuda.set_sync_debug_mode("error")  # any device-to-host wait raises
    try:
        with torch.no_grad():  # inference: the grouped_mm path (training on a GPU runs every expert, checked below)
            y = ex(x, idx, w)
        y_train = ex(x, idx, w)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    f = {n: p.float() for n, p in ex.named_parameters()}
    ref = torch.zeros(300, 256, device="cuda")
    for s in range(4):
        e = idx[:, s]
        h = F.silu(torch.einsum("nih,nh->ni", f["gate_proj"][e], x.float())) * torch.einsum(
            "nih,nh->ni", f["up_proj"][e], x.float())
        ref += w[:, s, None].float() * torch.einsum("nhi,ni->nh", f["down_proj"][e], h)
    assert ((y.float() - ref).norm() / ref.norm()).item() < 1e-2
    assert ((y_train.float() - ref).norm() / ref.norm()).item() < 1e-2  # a repeated expert counts twice in both


@pytest.mark.slow
def test_bench_first_call_runs_in_two_fresh_processes(tmp_path, capsys, monkeypatch):
    """--first-call: cold, then warm (twice: with the warm-up overlapping the loading, and after it), each a new
    process with the same new home; on a CPU nothing is compiled and every process makes the same tokens."""
    model = tiny()
    minqwen3.save_pretrained(model, tmp_path / "m")
    monkeypatch.setenv("MINQWEN3_FIRST_CALL_HOME", str(tmp_path / "home"))
    rc = main(["bench", "--model", str(tmp_path / "m"), "--device", "cpu", "--prompt", "6", "--new", "4",
               "--prefill", "0", "--repeats", "1", "--first-call", "--out", str(tmp_path / "out.json")])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): line for line in out.splitlines() if line.startswith("| cold")
            or line.startswith("| warm")}
    assert rc == 0 and set(rows) == {"cold", "warm", "warm, loading first"} and "failed" not in out, out
    same = [row.split("|")[-3].strip().split("/") for row in rows.values()]  # same tokens as cold, of all
    assert all(a == b and int(a) > 0 for a, b in same), out
    header = [c.strip() for c in next(x for x in out.splitlines() if x.startswith("| start |")).split("|")]
    assert {"making the Decoder s", "prefill and first token s", "compile and capture s", "steps s"} <= set(header)
    for label, r in json.loads((tmp_path / "out.json").read_text())["results"][0]["first_call"].items():
        # where the call's time went: making the Decoder, its start (the prefill; nothing compiles on a CPU), steps
        assert 0 < r["decoder_s"] and 0 < r["start_s"] and r["decoder_s"] + r["start_s"] < r["first_s"], label
    assert (tmp_path / "home").is_dir()  # the children's home, kept as asked


def test_compile_in_process_once_the_shapes_are_in_the_cache(tmp_path, monkeypatch):
    """After a Decoder compiled a model (remember_compiled), a later process compiles in itself, without Inductor's
    pool of workers; other shapes, another dtype, or the user's own TORCHINDUCTOR_COMPILE_THREADS keep torch's way."""
    import dataclasses

    from torch._inductor import config as inductor_config

    from minqwen3 import warmstart
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS", raising=False)
    monkeypatch.setattr(inductor_config, "compile_threads", None)
    cfg, cpu = minqwen3.Qwen3Config.from_name("Qwen3-0.6B"), torch.device("cpu")
    wider = dataclasses.replace(cfg, hidden_size=2048)
    assert not warmstart.compile_in_process_if_cached(cfg, torch.bfloat16, cpu)
    assert inductor_config.compile_threads is None
    warmstart.remember_compiled(cfg, torch.bfloat16, cpu)
    assert not warmstart.compile_in_process_if_cached(wider, torch.bfloat16, cpu)
    assert not warmstart.compile_in_process_if_cached(cfg, torch.float32, cpu)
    monkeypatch.setenv("TORCHINDUCTOR_COMPILE_THREADS", "4")
    assert not warmstart.compile_in_process_if_cached(cfg, torch.bfloat16, cpu)
    assert inductor_config.compile_threads is None
    monkeypatch.delenv("TORCHINDUCTOR_COMPILE_THREADS")
    assert warmstart.compile_in_process_if_cached(cfg, torch.bfloat16, cpu)
    assert inductor_config.compile_threads == 1
