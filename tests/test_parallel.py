"""Tensor and expert parallelism (minqwen3/parallel.py) on CPU: gloo, 2 and 4 processes spawned here, against the
same checkpoint in one process (itself checked against transformers in test_model.py): logits within 1e-5 in
float32, the same greedy tokens, left-padded batches, and each rank holding only its slices."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minqwen3
from conftest import TINY
from minqwen3 import parallel
from minqwen3.config import Qwen3Config, count_params
from minqwen3.generation import as_batch
from minqwen3.model import random_model

MOE = dict(num_experts=8, num_experts_per_tok=2, moe_intermediate_size=32, mlp_only_layers=[1])  # MoE and dense
PROMPTS = [[3, 1, 4, 1, 5, 9, 2, 6], [5, 3, 5], [8, 9, 7, 9, 3]]  # rows 1 and 2 left-padded
NEW = 8


def tiny(path, seed=0, **over):
    """A tiny random Qwen3 saved in the official layout; weights scaled so that the logits are decisive."""
    model = random_model(Qwen3Config(**{**TINY, **over}), seed=seed)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in n else p.mul_(3.0)
    minqwen3.save_pretrained(model, path)
    return minqwen3.from_pretrained(path, dtype=torch.float32)


def one_process(model, prompts=PROMPTS, new=NEW):
    ids, pad = as_batch(prompts, 0)
    with torch.no_grad():
        logits = model(ids, pad=pad)
    return logits, minqwen3.generate(model, prompts, new, stop_ids=(), pad_id=0)


def expected_bytes(model, world: int) -> int:
    """What a rank should hold: 1/world of every split weight; the KV projections 1/min(world, KV heads) (beyond
    that they are copied); the embedding, norms and routers whole; the LM head split by rows when they divide."""
    cfg = model.config
    split_head = cfg.vocab_size % world == 0
    nbytes = lambda keys: sum(p.numel() * p.element_size() for n, p in model.named_parameters()  # noqa: E731
                              if any(k in n for k in keys))
    whole = nbytes(("embed_tokens", "norm", "mlp.gate.") + (() if split_head else ("lm_head",)))
    kv = nbytes(("k_proj", "v_proj"))
    head = cfg.vocab_size * cfg.hidden_size * 4 if split_head and cfg.tie_word_embeddings else 0  # a copied slice
    split = parallel.weight_bytes(model) - whole - kv + head
    return split // world + whole + kv // min(world, cfg.num_key_value_heads)


def check(results, model, world, prompts=PROMPTS, rel: float | None = None, new: int = NEW):
    """Every rank's logits within 1e-5 of one process's (or rel times the largest logit: summing partial results in
    another order rounds differently, and 94 layers carry it further), the same tokens, the expected bytes."""
    want_logits, want_tokens = one_process(model, prompts, new)
    tol = 1e-5 if rel is None else rel * want_logits.abs().max().item()
    want_bytes = expected_bytes(model, world)
    for rank, r in enumerate(results):
        err = (r["logits"] - want_logits).abs().max().item()
        assert err < tol, f"rank {rank}: logits differ from one process by {err:.2e} (tolerance {tol:.2e})"
        assert torch.equal(r["tokens"], want_tokens), f"rank {rank}: greedy tokens differ"
        # sharded loading: a rank holds its 1/world of the split weights and the replicated ones, nothing more
        assert r["weight_bytes"] == want_bytes, f"rank {rank} holds {r['weight_bytes']} bytes, not {want_bytes}"


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """One spawn of 2 gloo ranks for every layout: a dense model with tied embeddings (the split LM head is then a
    slice of the embedding), a MoE model with experts tensor-parallel and expert-parallel."""
    d = tmp_path_factory.mktemp("tp2")
    models = {"dense": tiny(d / "dense", tie_word_embeddings=True), "moe": tiny(d / "moe", seed=1, **MOE)}
    # the dense checkpoint again, its tied matrix stored under the head's name alone (checkpoint._head_as_embedding)
    shutil.copytree(d / "dense", d / "dense_head")
    tensors = load_file(d / "dense_head" / "model.safetensors")
    tensors["lm_head.weight"] = tensors.pop("model.embed_tokens.weight")
    save_file(tensors, d / "dense_head" / "model.safetensors", metadata={"format": "pt"})
    models["dense_head"] = models["dense"]
    jobs = [("dense", "tp"), ("moe", "tp"), ("moe", "ep"), ("moe", "stacked"), ("dense_head", "tp")]
    results = parallel.spawn(_jobs, 2, [(str(d / m), e) for m, e in jobs] + [({**TINY, **MOE}, "ep")], timeout_s=300)
    return models, {job: [r[i] for r in results] for i, job in enumerate(jobs + [("random", "ep")])}


def _jobs(plan, jobs):  # runs in each spawned rank: checkpoints loaded sharded, or a config built sharded
    return [_stacked_tokens(plan, path) if experts == "stacked" else
            parallel.sharded_forward(plan, path, PROMPTS, NEW, experts) if isinstance(path, str) else
            _random_logits(plan, path, experts) for path, experts in jobs]


def _stacked_tokens(plan, path: str) -> dict:
    """Greedy tokens of a Decoder that stacks this rank's slices (stack.py), and whether its stacks alias them."""
    from minqwen3 import Decoder, stack
    model = parallel.from_pretrained(path, plan, dtype=torch.float32)
    dec = Decoder(model, max_len=32, compile=False, cuda_graphs=False, stacked=True)
    tokens = minqwen3.generate(model, PROMPTS, NEW, stop_ids=(), pad_id=0, decoder=dec)
    return dict(tokens=tokens, aliased=all(stack.aliases(m.stacked, lins) for m, lins in stack.groups(model)),
                q_rows=model.model.layers[0].self_attn.q_proj.weight.shape[0])


def _random_logits(plan, config: dict, experts: str) -> torch.Tensor:
    from dataclasses import replace
    model = parallel.random_model(Qwen3Config(**config), replace(plan, experts=experts), dtype=torch.float32)
    ids, pad = as_batch(PROMPTS, 0)
    with torch.no_grad():
        return model(ids, pad=pad)


def test_random_weights_are_slices_of_the_same_model(two_ranks):
    """parallel.random_model (the GPU benchmarks' weights, built sharded on each device) draws every tensor whole
    and keeps its slice: 2 ranks compute what the one-process build computes."""
    _, results = two_ranks
    want = _random_logits(parallel.Plan(0, 1), {**TINY, **MOE}, "tp")
    for rank, logits in enumerate(results["random", "ep"]):
        assert (logits - want).abs().max() < 1e-5, f"rank {rank}"


@pytest.mark.parametrize("job", [("dense", "tp"), ("moe", "tp"), ("moe", "ep"), ("dense_head", "tp")],
                         ids=["dense", "moe-tp", "moe-ep", "dense-head-only"])
def test_two_ranks_match_one_process(two_ranks, job):
    models, results = two_ranks
    check(results[job], models[job[0]], 2)


def test_two_ranks_decode_with_their_slices_stacked(two_ranks):
    """stack.py after parallel.shard: each rank stacks its own slices of q|k|v and gate|up, tokens unchanged."""
    models, results = two_ranks
    want = one_process(models["moe"])[1]
    for rank, r in enumerate(results["moe", "stacked"]):
        assert torch.equal(r["tokens"], want), f"rank {rank}: greedy tokens differ"
        assert r["aliased"] and r["q_rows"] == TINY["num_attention_heads"] * TINY["head_dim"] // 2


def test_the_reference_is_transformers(two_ranks):
    """The one-process model the ranks are held to gives transformers' logits (the unpadded row)."""
    pytest.importorskip("transformers")
    from minqwen3.bench import transformers_twin
    models, _ = two_ranks
    for model in models.values():
        hf = transformers_twin(model)
        ids = torch.tensor([PROMPTS[0]])
        with torch.no_grad():
            want = hf(ids).logits
        assert (model(ids) - want).abs().max() < 1e-4


def test_four_ranks_replicate_kv_heads(tmp_path):
    """4 ranks, 4 query heads and 2 KV heads: ranks 0, 1 hold a copy of KV head 0, ranks 2, 3 of KV head 1."""
    model = tiny(tmp_path, seed=2, **MOE)
    cfg = model.config
    assert [parallel.heads(cfg, parallel.Plan(r, 4))[2:] for r in range(4)] == [(0, 1), (0, 1), (1, 1), (1, 1)]
    results = parallel.spawn(_jobs, 4, [(str(tmp_path), "ep")], timeout_s=300)
    check([r[0] for r in results], model, 4)


def _sum_op(plan, op_name):  # runs in each spawned rank: an all-reduce op the plan's hooks call, eager, compiled
    import torch.distributed as dist
    op = getattr(torch.ops.minqwen3, op_name)
    name = parallel.symm_group(dist.group.WORLD)
    x = (plan.rank + 1) * torch.arange(8, dtype=torch.float32)
    f = lambda x: op(2 * x, name) + 1  # noqa: E731
    residual = torch.full((8,), 0.5) if op_name == "all_reduce_flags" else None  # the layer's residual, added
    return (op(x, name), x, torch.compile(f, fullgraph=True, backend="aot_eager")(x),
            residual if residual is None else op(x, name, residual))


@pytest.mark.parametrize("op_name", ["all_reduce", "all_reduce_flags"])
def test_the_all_reduce_op_sums_eager_and_compiled(op_name):
    """minqwen3::all_reduce and ::all_reduce_flags (the one-shot symmetric-memory all-reduces on GPUs): on CPUs
    they take the group's own all-reduce (gloo), out of place (::all_reduce_flags with a residual adds it);
    torch.compile(fullgraph) traces each as one op (its fake gives the shape)."""
    results = parallel.spawn(_sum_op, 2, op_name, timeout_s=300)
    want = torch.arange(8, dtype=torch.float32) * (1 + 2)
    for rank, (summed, x, compiled, added) in enumerate(results):
        assert torch.equal(summed, want), f"rank {rank}"
        assert added is None or torch.equal(added, want + 0.5), f"rank {rank}"
        assert torch.equal(x, (rank + 1) * torch.arange(8, dtype=torch.float32)), f"rank {rank}: input changed"
        assert torch.equal(compiled, 2 * want + 1), f"rank {rank}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
def test_flag_all_reduce_on_two_gpus():
    """minqwen3::all_reduce_flags on 2 GPUs (scripts/allreduce_bench.py, which checks every way eagerly against
    NCCL's float32 sum and across ranks, then replays 128 of them in a CUDA graph): its sums agree with NCCL's to
    one bf16 rounding and are the same bits on both ranks; with a residual added in the kernel, exactly those of the
    sum rounded, then added."""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    out = root / "out" / "test_flag_all_reduce.jsonl"
    out.parent.mkdir(exist_ok=True)
    out.unlink(missing_ok=True)
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(root / "scripts" / "allreduce_bench.py"), "--ways", "symm", "flags", "flags-res",
                          "--replays", "5", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    rows = {r["way"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert "error" not in rows["flags"], rows["flags"]
    assert rows["flags"]["same"] and rows["flags"]["err"] <= rows["symm"]["err"] + 1e-6, rows
    # with the residual added in the kernel: exactly the two steps' bits (the sum rounded, then the add rounded)
    assert "error" not in rows["flags-res"] and rows["flags-res"]["same"] and rows["flags-res"]["err"] == 0, rows


# ---------------------------------------------------------------- the plan and the command line, without processes
def test_torchrun_chat_needs_a_prompt(monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    from minqwen3.cli import main
    assert main(["chat", "--device", "cpu"]) == 1
    assert "under torchrun, chat answers one PROMPT" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["verify", "weights/demo-dense"], ["demo"], ["download", "Qwen3-0.6B"]])
def test_torchrun_runs_only_the_commands_that_split_a_model(monkeypatch, capsys, argv):
    """Under torchrun every process would run verify, demo or download whole, each printing all of it."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    from minqwen3.cli import main
    assert main(argv) == 1
    assert f"under torchrun only generate, chat PROMPT and bench split a model over the processes: run {argv[0]} in " \
           "one process" in capsys.readouterr().err


def test_a_process_that_lost_its_peer_says_so(monkeypatch, capfd):
    """A collective that fails because another rank quit (that rank printed its own error) is not reported as a
    bug in minqwen3."""
    from minqwen3 import cli
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")

    def lost(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer")
    monkeypatch.setattr(cli, "cmd_generate", lost)
    assert cli.main(["generate", "--device", "cpu", "Hi"]) == 1
    err = capfd.readouterr().err  # a rank other than 0 writes to the real stderr
    assert "rank 1: error: another process of this torchrun launch failed or quit" in err and "a bug" not in err


def test_a_split_that_does_not_divide_says_what_would():
    """The error names the process counts that split the field, and the other --experts plan where it would."""
    c = Qwen3Config.from_dict({**TINY, **MOE, "num_experts": 3, "num_experts_per_tok": 2, "moe_intermediate_size": 33})
    with pytest.raises(ValueError, match=r"num_experts = 3 does not divide among 2 ranks: it splits among 1, 3 "
                                         r"processes; or --experts tp"):
        parallel.slices("model.layers.0.mlp.experts.gate_proj", (3, 33, c.hidden_size), c, parallel.Plan(0, 2, "ep"))
    with pytest.raises(ValueError, match=r"moe_intermediate_size = 33 does not divide among 2 ranks: it splits among "
                                         r"1, 3, 11, 33 processes; or --experts ep"):
        parallel.slices("model.layers.0.mlp.experts.down_proj", (3, c.hidden_size, 33), c, parallel.Plan(0, 2, "tp"))


def test_a_peer_that_does_not_answer_is_named_as_a_timeout(monkeypatch, capfd):
    """A stopped or stuck rank makes the others' collective time out: that is said, with the wait and its setting
    (it was reported as a rank that failed, with an error "printed above" that nobody printed)."""
    from minqwen3 import cli
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MINQWEN3_TIMEOUT_S", "15")

    def stalled(args):
        raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:81] Timed out waiting 15000ms "
                           "for recv operation to complete")
    monkeypatch.setattr(cli, "cmd_generate", stalled)
    assert cli.main(["generate", "--device", "cpu", "Hi"]) == 1
    err = capfd.readouterr().err
    assert "another process of this torchrun launch did not answer within 15 s" in err and "MINQWEN3_TIMEOUT_S" in err
    assert parallel.collective_timeout() == 15.0
    monkeypatch.setenv("MINQWEN3_TIMEOUT_S", "-1")
    with pytest.raises(ValueError, match="MINQWEN3_TIMEOUT_S='-1'"):
        parallel.collective_timeout()


def _dies(plan):  # runs in each spawned rank: rank 1 exits at once, rank 0 waits for it in a collective
    import os
    import torch.distributed as dist
    if plan.rank == 1:
        os._exit(3)
    dist.all_reduce(torch.ones(1))


def test_spawn_names_the_rank_that_died():
    with pytest.raises(RuntimeError, match="rank 1 died with exit code 3"):
        parallel.spawn(_dies, 2, timeout_s=60)



def test_plan_for_the_official_shapes():
    c = Qwen3Config.from_name("Qwen3-32B")  # 64 query heads, 8 KV heads
    assert parallel.heads(c, parallel.Plan(1, 2)) == (32, 32, 4, 4)
    assert parallel.heads(c, parallel.Plan(5, 8)) == (40, 8, 5, 1)
    assert [parallel.heads(c, parallel.Plan(r, 16))[2] for r in range(16)] == [r // 2 for r in range(16)]
    with pytest.raises(ValueError, match="num_attention_heads = 64 does not divide among 3 ranks: it splits among "
                                         "1, 2, 4, 8, 16, 32, 64 processes"):
        parallel.heads(c, parallel.Plan(0, 3))
    d = c.head_dim
    s = parallel.slices("model.layers.7.self_attn.o_proj.weight", (c.hidden_size, 64 * d), c, parallel.Plan(1, 2))
    assert s == (slice(None), slice(32 * d, 64 * d))  # by input: the columns of this rank's heads
    m = Qwen3Config.from_name("Qwen3-235B-A22B")  # 128 experts, 4 KV heads
    name, shape = "model.layers.0.mlp.experts.gate_proj", (128, m.moe_intermediate_size, m.hidden_size)
    assert parallel.slices(name, shape, m, parallel.Plan(3, 8, "ep"))[0] == slice(48, 64)
    assert parallel.slices(name, shape, m, parallel.Plan(3, 8, "tp"))[1] == slice(576, 768)
    assert parallel.slices("model.layers.0.mlp.gate.weight", (128, m.hidden_size), m, parallel.Plan(3, 8)) == \
        (slice(None), slice(None))  # the router is replicated: every rank routes alike
    with pytest.raises(ValueError, match="experts = 'dp'"):
        parallel.Plan(0, 2, "dp")
    with pytest.raises(ValueError, match="all_reduce = 'ring'"):
        parallel.Plan(0, 2, all_reduce="ring")


# ---------------------------------------------------------------- issue 18: the 235B-A22B layout, scaled down
SMALL_235B = dict(vocab_size=256, hidden_size=32, head_dim=16, intermediate_size=64, moe_intermediate_size=8,
                  max_position_embeddings=512, tie_word_embeddings=False)


@pytest.mark.slow
def test_235b_shaped_model_on_four_ranks(tmp_path):
    """Qwen3-235B-A22B's layer structure (94 layers, 64 query / 4 KV heads, 128 experts, top-8) at tiny widths:
    4 ranks, experts tensor-parallel and expert-parallel (32 experts each), against one process."""
    full = Qwen3Config.from_name("Qwen3-235B-A22B").to_dict()
    cfg = {**full, **SMALL_235B}
    assert (cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["num_experts"],
            cfg["num_experts_per_tok"]) == (94, 64, 4, 128, 8)
    model = random_model(Qwen3Config.from_dict(cfg))
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.uniform_(0.5, 1.5) if "norm" in n else p.mul_(2.0)
    minqwen3.save_pretrained(model, tmp_path)
    model = minqwen3.from_pretrained(tmp_path, dtype=torch.float32)
    prompts = PROMPTS[:2]
    results = parallel.spawn(_jobs_short, 4, [(str(tmp_path), "tp"), (str(tmp_path), "ep")], timeout_s=600)
    for i in range(2):
        # rel: in this model a 1e-7 relative nudge of the embedding, in one process, already moves the logits by
        # 2e-4 of the largest (a router near a tie flips an expert, 94 layers deep); a wrong slice moves them by ~1
        check([r[i] for r in results], model, 4, prompts, rel=1e-3, new=4)


def _jobs_short(plan, jobs):
    return [parallel.sharded_forward(plan, path, PROMPTS[:2], 4, experts) for path, experts in jobs]


def test_a_plan_shards_a_meta_model_without_a_process_group():
    """Planning memory (notebook 10) shards a meta model with no process group started: the plan applies, both
    all-reduces alike, and the rank holds its share of the parameters."""
    cfg = Qwen3Config(**TINY)
    full = sum(p.numel() for p in minqwen3.Qwen3(cfg).parameters())
    for how in parallel.ALL_REDUCES:
        with torch.device("meta"):
            model = minqwen3.Qwen3(cfg)
        parallel.shard(model, parallel.Plan(0, 2, all_reduce=how))
        assert model.model.layers[0].self_attn.n_heads == cfg.num_attention_heads // 2
        assert sum(p.numel() for p in model.parameters()) < full
        layer = model.model.layers[0]  # the products split by input, and only they, take matvec from one row
        assert layer.self_attn.o_proj.split_input and layer.mlp.down_proj.split_input
        assert not any(hasattr(m, "split_input") for m in (layer.self_attn.q_proj, layer.mlp.gate_proj))
        # the blocks' outputs are partial sums: every layer sums them and adds the residual through its reduce
        assert all(lay.reduce is not None for lay in model.model.layers)


def test_flag_all_reduce_layout_and_reach():
    """flag_all_reduce's buffer: the flags, then two halves each large enough for its largest sum in float32, every
    part 16-byte aligned (the kernel's vector loads); it takes CUDA tensors of the sizes and dtypes it was built for,
    and nothing else (parallel.flag_all_reduce then falls back)."""
    from minqwen3 import flag_all_reduce as fa
    assert fa.FLAG_BYTES >= fa.MAX_BLOCKS * fa.MAX_WORLD * 4 and fa.FLAG_BYTES % 16 == 0
    assert fa.HALF_BYTES >= fa.MAX_BLOCKS * fa.BLOCK * 4 and fa.HALF_BYTES % 16 == 0
    assert fa.BYTES == fa.FLAG_BYTES + 2 * fa.HALF_BYTES
    state = fa.State(torch.empty(0), torch.empty(0), torch.empty(0), rank=0, world=2)
    assert not fa.fits(torch.ones(5120, dtype=torch.bfloat16), state)  # a CPU tensor: never the kernel
