"""The training loop: schedule, masked loss, gradient accumulation, both load-balancing variants, resuming."""
import json
import math
import os
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import minqwen3
from minqwen3.moe import expert_counts, load_balancing_loss
from minqwen3.train import (Balance, TrainConfig, collate, load_checkpoint, lr_at, make_optimizer,
                            train, train_step)

TINY = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=8, max_position_embeddings=128)
MOE = dict(TINY, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, router_aux_loss_coef=0.1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def col(s):
    return collate(s, pad_id=0)  # the tiny vocabulary has no <|endoftext|>


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return minqwen3.Qwen3(minqwen3.Qwen3Config(**{**TINY, **kw}))


def samples(seed, n, lo=5, hi=20):
    """Random (ids, loss mask) pairs: a 'prompt' without loss, then a 'reply' with loss."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        T = int(torch.randint(lo, hi, (1,), generator=g))
        k = int(torch.randint(1, T - 1, (1,), generator=g))
        ids = torch.randint(0, 60, (T,), generator=g).tolist()
        out.append((ids, [False] * k + [True] * (T - k)))
    return out


def reference_loss(model, batch_samples):
    """The oracle: full logits from Qwen3.forward, cross-entropy on every masked token, one mean over all of them."""
    total, n = 0.0, 0
    for ids, mask in batch_samples:
        logits = model(torch.tensor([ids]))[0]  # (T, V)
        tgt = torch.tensor(ids[1:])
        sel = torch.tensor(mask[1:])
        total = total + F.cross_entropy(logits[:-1][sel], tgt[sel], reduction="sum")
        n += int(sel.sum())
    return total / n


def test_lr_schedule_warmup_then_cosine():
    tc = TrainConfig(steps=110, lr=1e-3, min_lr=1e-4, warmup=10)
    assert lr_at(0, tc) == pytest.approx(1e-4)  # 1/10 of the way up
    assert lr_at(9, tc) == pytest.approx(1e-3)  # peak at the end of warm-up
    assert lr_at(60, tc) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way down the cosine: the midpoint
    assert lr_at(35, tc) == pytest.approx(1e-4 + 0.5 * 9e-4 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, tc) == pytest.approx(1e-4) and lr_at(500, tc) == pytest.approx(1e-4)


def test_collate_pads_on_the_right():
    ids, loss, valid = collate([([1, 2, 3], [False, True, True]), ([4] * 10, [True] * 10)], pad_id=0, multiple=8)
    assert ids.shape == (2, 16)
    assert ids[0].tolist() == [1, 2, 3] + [0] * 13
    assert loss[0].tolist() == [False, True, True] + [False] * 13
    assert valid.sum(1).tolist() == [3, 10] and loss.sum().item() == 12


@pytest.mark.parametrize("kw", [{}, MOE], ids=["dense", "moe"])
def test_hidden_states_are_the_model_without_its_head(kw):
    model = tiny(**kw).eval()
    ids = torch.randint(0, 64, (2, 17))
    with torch.no_grad():
        h, routers = model.hidden_states(ids)
        want, want_routers = model(ids, return_router_logits=True)
    torch.testing.assert_close(model.lm_head(h).float(), want, rtol=1e-5, atol=1e-5)
    assert len(routers) == (2 if kw else 0)
    for r, w in zip(routers, want_routers):
        torch.testing.assert_close(r, w)


def test_step_loss_is_the_token_mean_over_all_micro_batches():
    model = tiny()
    data = samples(1, 6)
    with torch.no_grad():
        want = reference_loss(model, data).item()
    opt = make_optimizer(model, TrainConfig())
    stats = train_step(model, opt, [col(data[:2]), col(data[2:])], TrainConfig(), Balance("none"))
    assert stats["loss"].item() == pytest.approx(want, rel=1e-5)
    assert stats["tokens"] == sum(sum(m[1:]) for _, m in data)


def test_gradient_accumulation_equals_one_big_batch():
    data = samples(2, 8)
    tc = TrainConfig(grad_clip=1e9, weight_decay=0.0)
    a, b = tiny(), tiny()
    train_step(a, make_optimizer(a, tc), [col(data)], tc, Balance("none"))
    train_step(b, make_optimizer(b, tc), [col(data[:3]), col(data[3:5]), col(data[5:])], tc,
               Balance("none"))
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_optimizer_decays_matrices_not_norms():
    model = tiny(**MOE)
    opt = make_optimizer(model, TrainConfig(weight_decay=0.1))
    decayed = {id(p) for p in opt.param_groups[0]["params"]}
    for n, p in model.named_parameters():
        assert (id(p) in decayed) == (p.dim() >= 2), n  # experts (3-D), router, embeddings yes; norms no
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0


def _hand_lbl(router_logits, top_k, f_counts):
    """E * sum_e f_e * P_e by hand, one layer at a time, from explicit loops (the oracle)."""
    out = []
    for logits, counts in zip(router_logits, f_counts):
        E = logits.shape[1]
        probs = logits.softmax(-1)
        f = [counts[e] / sum(counts) for e in range(E)]
        P = [probs[:, e].mean() for e in range(E)]
        out.append(E * sum(fe * pe for fe, pe in zip(f, P)))
    return sum(out) / len(out)


def _counts_by_hand(logits, k):
    c = [0] * logits.shape[1]
    for row in logits:
        for e in row.argsort(descending=True)[:k].tolist():
            c[e] += 1
    return c


def test_balance_micro_vs_global():
    torch.manual_seed(0)
    micro = [[torch.randn(12, 4) * 2 for _ in range(3)] for _ in range(2)]  # 2 micro-batches x 3 layers, (N, E)
    valid = torch.ones(12, dtype=torch.bool)
    # micro-batch (Switch): each micro-batch uses its own counts
    b = Balance("micro")
    assert b.counts(micro[0], 2, valid) is None
    got = load_balancing_loss(micro[0], 2, valid, None)
    assert got.item() == pytest.approx(_hand_lbl(micro[0], 2, [_counts_by_hand(r, 2) for r in micro[0]]).item(),
                                       rel=1e-5)
    # global batch: counts accumulate over the micro-batches of the step
    g = Balance("global")
    g.start_step()
    c0 = g.counts(micro[0], 2, valid)
    c1 = g.counts(micro[1], 2, valid)
    want = [[a + b for a, b in zip(_counts_by_hand(x, 2), _counts_by_hand(y, 2))] for x, y in zip(*micro)]
    assert c1.tolist() == want and c0.sum().item() == 12 * 2 * 3
    got = load_balancing_loss(micro[1], 2, valid, c1)
    assert got.item() == pytest.approx(_hand_lbl(micro[1], 2, want).item(), rel=1e-5)
    g.start_step()
    assert torch.equal(g.counts(micro[1], 2, valid), torch.tensor([_counts_by_hand(r, 2) for r in micro[1]]).float())


def test_balance_ignores_padding():
    logits = torch.randn(6, 4)
    valid = torch.tensor([True, True, True, False, False, False])
    assert expert_counts(logits, 2, valid).tolist() == [float(c) for c in _counts_by_hand(logits[:3], 2)]
    assert load_balancing_loss([logits], 2, valid).item() == pytest.approx(
        load_balancing_loss([logits[:3]], 2).item(), rel=1e-6)


def test_moe_step_trains_the_router_with_the_aux_loss():
    model = tiny(**MOE)
    data = samples(3, 6)
    tc = TrainConfig(balance="global")
    stats = train_step(model, make_optimizer(model, tc), [col(data[:3]), col(data[3:])], tc, Balance("global"))
    assert 0.9 < stats["aux"].item() < 2.0  # ~1 when balanced, E / k = 2 at worst
    tc0 = TrainConfig(balance="none")
    a, b = tiny(**MOE), tiny(**MOE)
    for m, t in ((a, tc), (b, tc0)):
        train_step(m, make_optimizer(m, t), [col(data)], t, Balance(t.balance))
    gate_a = a.model.layers[0].mlp.gate.weight
    gate_b = b.model.layers[0].mlp.gate.weight
    assert not torch.allclose(gate_a, gate_b)  # the balancing loss reached the router


def _dist_worker(rank, world, port, data, init, results, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        # expert counts of the global balance: summed over ranks
        torch.manual_seed(rank)
        logits = [torch.randn(10, 4)]
        c = Balance("global").counts(logits, 2, torch.ones(10, dtype=torch.bool))
        model = tiny()
        model.load_state_dict(init)
        tc = TrainConfig(grad_clip=1e9, weight_decay=0.0)
        train_step(model, make_optimizer(model, tc), [col(data[rank])], tc, Balance("none"))
        results[rank] = (c, logits[0], {k: v.clone() for k, v in model.state_dict().items()})
        # whole runs with checkpoints: rank 0 alone writes (two writers of one folder removed each other's files)
        tc = TrainConfig(steps=3, warmup=1, out=out, save_every=1, log_every=1)
        train(model, [[col(data[rank])]] * 3, tc, progress=False)
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_distributed_counts_and_gradients_are_all_reduced(tmp_path):
    import torch.multiprocessing as mp
    data = samples(4, 4, lo=10, hi=11)
    data = [data[:2], data[2:]]
    for r, d in enumerate(data):  # rank 0 holds 12 loss tokens, rank 1 2: the global mean is not the ranks' mean
        for i, (ids, _) in enumerate(d):
            d[i] = (ids, [False] * 4 + [True] * 6 if r == 0 else [False] * 9 + [True])
    init = tiny(5).state_dict()
    results = mp.Manager().dict()
    port = 29500 + os.getpid() % 1000
    mp.spawn(_dist_worker, args=(2, port, data, init, results, str(tmp_path)), nprocs=2)
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()[1:]]
    assert steps == [1, 2, 3]  # each step logged once, not once a rank
    assert load_checkpoint(tmp_path / "checkpoint")[1]["step"] == 3
    (c0, l0, s0), (c1, l1, s1) = results[0], results[1]
    want = [a + b for a, b in zip(_counts_by_hand(l0, 2), _counts_by_hand(l1, 2))]
    assert c0.tolist() == [want] and c1.tolist() == [want]
    ref = tiny()
    ref.load_state_dict(init)
    tc = TrainConfig(grad_clip=1e9, weight_decay=0.0)
    train_step(ref, make_optimizer(ref, tc), [col(data[0]), col(data[1])], tc, Balance("none"))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(s0[k], v, rtol=1e-5, atol=1e-6, msg=k)
        torch.testing.assert_close(s1[k], v, rtol=1e-5, atol=1e-6, msg=k)


def test_resume_from_checkpoint_continues_exactly(tmp_path):
    batches = [[col(samples(10 + s, 4))] for s in range(4)]
    tc = TrainConfig(steps=4, warmup=2, lr=1e-2)
    a = tiny(**MOE)
    train(a, batches, tc, progress=False)
    b = tiny(**MOE)
    tc2 = TrainConfig(steps=2, warmup=2, lr=1e-2, out=str(tmp_path))
    train(b, batches[:2], tc2, progress=False)
    model, state = load_checkpoint(tmp_path / "checkpoint")
    assert state["step"] == 2
    opt = make_optimizer(model, tc)
    opt.load_state_dict(state["optimizer"])
    train(model, batches[2:], TrainConfig(steps=4, warmup=2, lr=1e-2), start_step=2, opt=opt, progress=False)
    for (n, p), q in zip(a.named_parameters(), model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=n)


def test_a_step_moves_the_weights_by_its_learning_rate():
    """AdamW's first step moves each weight that has a gradient by the learning rate itself (m / sqrt(v) = ±1 with
    no decay): the rate train() sets for step 0 is lr_at(0), the warm-up's first, lr / warmup."""
    model = tiny()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    tc = TrainConfig(steps=1, warmup=4, lr=1e-2, weight_decay=0.0, grad_clip=1e9)
    train(model, [[col(samples(10, 4))]], tc, progress=False)
    moved = max(float((p.detach() - before[n]).abs().max()) for n, p in model.named_parameters())
    assert moved == pytest.approx(lr_at(0, tc), rel=1e-3) and lr_at(0, tc) == pytest.approx(2.5e-3)


def test_a_checkpoint_keeps_the_schedule_a_time_budget_fitted(tmp_path):
    """A time budget lowers tc.steps at step 60 (here to 61: no time left); the checkpoint records that schedule, so
    a resumed run continues the same learning-rate curve instead of the --steps it was started with."""
    import itertools
    tc = TrainConfig(steps=1000, warmup=60, lr=1e-2, out=str(tmp_path), save_every=50, log_every=100)
    train(tiny(), itertools.repeat([col(samples(10, 4))]), tc, progress=False, time_budget=0.0)
    _, state = load_checkpoint(tmp_path / "checkpoint")
    assert state["step"] == 61 and state["schedule"] == {"steps": 61, "lr": 1e-2, "min_lr": tc.min_lr, "warmup": 60}


def test_training_learns_and_logs(tmp_path):
    """A tiny model learns to copy the first half of a sequence into the second: the loss must fall far."""
    g = torch.Generator().manual_seed(0)

    def batch(step):
        rows = []
        for _ in range(16):
            x = torch.randint(0, 60, (8,), generator=g).tolist()
            rows.append((x + x, [False] * 9 + [True] * 7))  # loss on the copy, from its second token on
        return [col(rows)]

    model = tiny()
    tc = TrainConfig(steps=150, lr=1e-2, min_lr=1e-3, warmup=10, log_every=10, out=str(tmp_path))
    rows = train(model, (batch(s) for s in range(150)), tc, progress=False)
    assert rows[0]["loss"] > 3.5  # ~ln(64) at the start
    assert rows[-1]["loss"] < 0.5 * rows[0]["loss"]
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 1 + len(rows) and '"loss"' in lines[-1]
    again = minqwen3.from_pretrained(tmp_path / "checkpoint")  # the final checkpoint is an official-layout one
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))


def test_time_budget_cuts_the_run_short():
    batches = ([col(samples(s, 2))] for s in range(10**6))
    tc = TrainConfig(steps=10**6, warmup=60)
    rows = train(tiny(), batches, tc, progress=False, time_budget=0.0)
    assert tc.steps == 61 and rows[-1]["step"] == 61  # the speed is measured over steps 30..60


@pytest.mark.parametrize("field, value, error, says", [
    ("steps", -1, ValueError, "steps must be >= 0, got -1"), ("steps", 2.5, TypeError, "steps must be an int"),
    ("warmup", -1, ValueError, "warmup must be >= 0, got -1"), ("lr", -1e-3, ValueError, "lr must be finite"),
    ("lr", math.nan, ValueError, "lr must be finite and >= 0, got nan"),
    ("min_lr", math.nan, ValueError, "min_lr must be finite and >= 0, got nan"),
    ("min_lr", math.inf, ValueError, "min_lr must be finite and >= 0, got inf"),
    ("grad_clip", -1.0, ValueError, "grad_clip must be > 0 (inf: no clipping), got -1.0"),
    ("grad_clip", 0.0, ValueError, "grad_clip must be > 0 (inf: no clipping), got 0.0"),
    ("grad_clip", math.nan, ValueError, "grad_clip must be > 0 (inf: no clipping), got nan"),
    ("log_every", 0, ValueError, "log_every must be >= 1, got 0"),
    ("save_every", -5, ValueError, "save_every must be >= 0, got -5"),
    ("balance", "gloabl", ValueError, "balance must be one of 'global', 'micro', 'none', got 'gloabl'"),
    ("betas", (0.9, 1.0), ValueError, "betas[1] must be in [0, 1), got 1.0"),
    ("betas", (-0.1, 0.9), ValueError, "betas[0] must be in [0, 1), got -0.1"),
    ("betas", (0.9,), TypeError, "betas must be a pair of numbers, got (0.9,)"),
    ("weight_decay", -0.1, ValueError, "weight_decay must be finite and >= 0, got -0.1"),
    ("weight_decay", math.inf, ValueError, "weight_decay must be finite and >= 0, got inf"),
    ("aux_coef", -0.01, ValueError, "aux_coef must be finite and >= 0, or None, got -0.01"),
    ("out", 3, TypeError, "out must be a folder path or None, got 3"),
    ("run", [1], TypeError, "run must be None or a dict that JSON can hold, got [1]"),
    ("run", {"lr": math.nan}, TypeError, "run must be None or a dict that JSON can hold, got {'lr': nan}")])
def test_train_config_refuses_bad_values_naming_the_field(field, value, error, says):
    """Each of these trained wrongly or crashed late: grad_clip -1 flipped the gradient, 0 froze the weights, a NaN
    rate poisoned them, log_every 0 divided by zero after the first step."""
    with pytest.raises(error, match=re.escape(f"TrainConfig.{says}")):
        TrainConfig(**{field: value})


def test_train_config_accepts_the_edges():
    tc = TrainConfig(steps=0, warmup=0, lr=0.0, min_lr=0.0, weight_decay=0.0, grad_clip=math.inf, betas=[0.0, 0.5],
                     log_every=1, save_every=0, aux_coef=0.0, balance="none", out=Path("/tmp/x"))
    assert tc.betas == (0.0, 0.5) and tc.out == "/tmp/x"


@pytest.mark.parametrize("samples_, says", [
    ([([1, 2], [True, True]), ([1, 2, 3], [True, True])], "sample 1 has 3 ids but a loss mask of 2"),
    ([([1, 2, 3], [True] * 5)], "sample 0 has 3 ids but a loss mask of 5"),
    ([], "samples is empty")])
def test_collate_refuses_mismatched_masks_and_no_samples(samples_, says):
    """Under python -O the assert let a short mask through (its tokens silently without loss); a long one failed
    as a bare RuntimeError, an empty list as 'max() arg is an empty sequence'."""
    with pytest.raises(ValueError, match=re.escape(f"collate: {says}")):
        collate(samples_, pad_id=0)


def test_balance_refuses_an_unknown_mode():
    says = "Balance: mode must be one of 'global', 'micro', 'none', got 'gloabl'"
    with pytest.raises(ValueError, match=re.escape(says)):
        Balance("gloabl")


def test_checkpoint_is_safetensors_and_json_and_gives_the_optimizer_back(tmp_path):
    """No pickle: the optimizer's tensors in safetensors (state.<i>.<key>), the rest in JSON; three saves leave the
    last one's tensor file alone; load_checkpoint gives back exactly what opt.state_dict() held."""
    from safetensors.torch import load_file
    model = tiny(**MOE)
    tc = TrainConfig(steps=3, warmup=1, lr=1e-2, out=str(tmp_path), save_every=1)
    opt = make_optimizer(model, tc)
    train(model, [[col(samples(20 + s, 4))] for s in range(3)], tc, opt=opt, progress=False)
    ck = tmp_path / "checkpoint"
    tensor_file = json.loads((ck / "trainer_state.json").read_text())["optimizer_tensors"]
    assert sorted(f.name for f in ck.iterdir()) == sorted(
        ["config.json", "model.safetensors", "trainer_state.json", tensor_file])
    assert re.fullmatch(r"trainer_state\.[0-9a-f]{16}\.safetensors", tensor_file)
    n = len(opt.state_dict()["state"])
    assert set(load_file(ck / tensor_file)) == {f"state.{i}.{k}" for i in range(n)
                                                for k in ("exp_avg", "exp_avg_sq", "step")}
    _, state = load_checkpoint(ck)
    want = opt.state_dict()
    assert state["step"] == 3 and state["optimizer"]["param_groups"] == want["param_groups"]
    assert state["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.95)
    for i, st in want["state"].items():
        assert st.keys() == state["optimizer"]["state"][i].keys()
        for k, v in st.items():
            assert torch.equal(state["optimizer"]["state"][i][k], v), (i, k)
    assert float(state["optimizer"]["state"][0]["step"]) == 3.0


def test_a_save_stopped_half_way_keeps_the_old_save_or_is_refused(tmp_path, monkeypatch):
    """Stopped before the weights are replaced, the folder is the previous save whole; stopped between the weights
    and trainer_state.json, load_checkpoint refuses the pair, naming both steps, instead of mixing them."""
    import minqwen3.checkpoint as ckpt
    from minqwen3.checkpoint import CheckpointError
    from minqwen3.train import save_checkpoint
    model, ck = tiny(), tmp_path / "ck"
    tc = TrainConfig(grad_clip=1e9)
    opt = make_optimizer(model, tc)
    train_step(model, opt, [col(samples(30, 4))], tc, Balance("none"))
    save_checkpoint(model, opt, 1, ck, tc)
    step1 = [p.detach().clone() for p in model.parameters()]
    train_step(model, opt, [col(samples(31, 4))], tc, Balance("none"))

    def killed(*a, **k):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:  # stopped after the new optimizer file, before the weights
        m.setattr(ckpt, "save_pretrained", killed)
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(model, opt, 2, ck, tc)
    again, state = load_checkpoint(ck)
    assert state["step"] == 1 and float(state["optimizer"]["state"][0]["step"]) == 1.0
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), step1))
    write = ckpt.atomic_write
    with monkeypatch.context() as m:  # stopped after the weights, before trainer_state.json
        m.setattr(ckpt, "atomic_write",
                  lambda dest, w: killed() if dest.name == "trainer_state.json" else write(dest, w))
        with pytest.raises(KeyboardInterrupt):
            save_checkpoint(model, opt, 2, ck, tc)
    with pytest.raises(CheckpointError, match=r"model\.safetensors holds the weights of step 2 \(save [0-9a-f]+\), but "
                                              r".*trainer_state\.json is the trainer state of step 1 "):
        load_checkpoint(ck)
    save_checkpoint(model, opt, 2, ck, tc)  # the next save repairs it, and leaves one optimizer file
    assert load_checkpoint(ck)[1]["step"] == 2 and len(list(ck.glob("trainer_state.*.safetensors"))) == 1


def test_an_old_pickled_trainer_state_is_refused_by_name(tmp_path):
    import pickle
    minqwen3.save_pretrained(tiny(), tmp_path)
    (tmp_path / "trainer_state.pt").write_bytes(pickle.dumps({"step": 3}))
    with pytest.raises(ValueError, match=r"trainer_state\.pt is the old trainer state format, a pickle: minqwen3 "
                                         r"never unpickles"):
        load_checkpoint(tmp_path)


# ---------------------------------------------------------------- scripts/train_demo.py
@pytest.fixture
def demo(monkeypatch):
    """scripts/train_demo.py with a small model (the official vocabulary, one narrow layer) and no DataLoader
    workers; train and export stop the test if a refused flag got that far."""
    import sys
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "scripts"))
    sys.modules.pop("train_demo", None)
    import train_demo
    small = dict(train_demo.BASE, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                 num_key_value_heads=1, head_dim=16, max_window_layers=1)
    monkeypatch.setitem(train_demo.CONFIGS, "dense", small)
    return train_demo


def _stop(*a, **k):
    raise AssertionError("a refused flag reached training or the export")


@pytest.mark.parametrize("flag, value, says", [
    ("--steps", "0", "must be > 0, got 0"), ("--steps", "-3", "must be > 0, got -3"),
    ("--batch", "0", "must be > 0, got 0"), ("--micro", "0", "must be > 0, got 0"),
    ("--minutes", "0", "must be > 0, got 0"), ("--minutes", "-1", "must be > 0, got -1"),
    ("--minutes", "nan", "must be > 0, got nan"), ("--lr", "inf", "must be > 0, got inf"),
    ("--warmup", "-1", "must be >= 0, got -1"), ("--workers", "-2", "must be >= 0, got -2"),
    ("--batch", "8.5", "must be an integer, got '8.5'")])
def test_train_demo_refuses_bad_flags_before_any_work(demo, monkeypatch, capsys, tmp_path, flag, value, says):
    """--steps 0 trained the default 1530 steps and --steps -3 exported an untrained model over --out; --batch 0
    and --micro 0 crashed in a DataLoader worker."""
    monkeypatch.setattr(demo, "train", _stop)
    monkeypatch.setattr(demo, "export", _stop)
    with pytest.raises(SystemExit) as e:
        demo.main(["--out", str(tmp_path / "out"), "--workers", "0", flag, value])
    assert e.value.code == 2 and f"argument {flag}: {says}" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())


def test_train_demo_refuses_more_micro_batches_than_samples(demo, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(demo, "train", _stop)
    with pytest.raises(SystemExit):
        demo.main(["--out", str(tmp_path / "out"), "--batch", "4", "--micro", "8"])
    assert "--micro 8 is more than --batch 4" in capsys.readouterr().err


def test_train_demo_exports_every_file_atomically(demo, monkeypatch, tmp_path):
    """A stopped export leaves each file whole: generation_config.json and the tokenizer files go through a
    temporary file too (they were written in place)."""
    from minqwen3.checkpoint import atomic_write
    written = []
    monkeypatch.setattr(demo, "atomic_write", lambda dest, w: written.append(dest.name) or atomic_write(dest, w))
    demo.export(tiny(), tmp_path)
    assert {"tokenizer.json", "tokenizer_config.json", "generation_config.json"} <= set(written)
    assert json.loads((tmp_path / "generation_config.json").read_text()) == demo.GENERATION_CONFIG
    assert (tmp_path / "tokenizer.json").read_bytes() == (demo.ASSETS / "tokenizer.json").read_bytes()
    assert not list(tmp_path.glob(".*.tmp"))


def test_train_demo_resume_keeps_the_run_and_refuses_a_changed_flag(demo, monkeypatch, capsys, tmp_path):
    """--resume silently ignored a different --model, --lr or --steps and took a new --seed, --batch or --mix (other
    batches than the run's). The run's flags are kept in its trainer state: one given with another value is refused,
    naming both; the others come from there."""
    out = str(tmp_path / "out")
    demo.main(["--out", out, "--steps", "2", "--batch", "4", "--micro", "2", "--lr", "1e-2", "--warmup", "1",
               "--seed", "3", "--workers", "0", "--no-progress"])
    run = json.loads((tmp_path / "out-train" / "checkpoint" / "trainer_state.json").read_text())["run"]
    assert run == {"model": "dense", "steps": 2, "batch": 4, "micro": 2, "lr": 0.01, "warmup": 1,
                   "balance": "global", "seed": 3, "mix": "stage1"}
    monkeypatch.setattr(demo, "train", _stop)
    monkeypatch.setattr(demo, "export", _stop)
    for flag, value, saved in [("--model", "moe", "dense"), ("--lr", "0.001", "0.01"), ("--steps", "5", "2"),
                               ("--seed", "4", "3"), ("--batch", "8", "4"), ("--micro", "1", "2"),
                               ("--mix", "stage2", "stage1"), ("--warmup", "0", "1"), ("--balance", "none", "global")]:
        with pytest.raises(SystemExit):
            demo.main(["--out", out, "--resume", "--workers", "0", flag, value])
        assert f"--resume: {flag} {value} differs from the run's {flag} {saved}" in capsys.readouterr().err, flag
    seen = {}
    monkeypatch.setattr(demo, "train", lambda model, loader, tc, start_step, **k: seen.update(
        tc=tc, start=start_step, data=loader.dataset))
    monkeypatch.setattr(demo, "export", lambda model, path: None)
    demo.main(["--out", out, "--resume", "--workers", "0", "--no-progress", "--seed", "3", "--lr", "0.01"])
    d, tc = seen["data"], seen["tc"]
    assert (d.seed, d.batch, d.micro, d.mix) == (3, 4, 2, demo.arithmetic.MIXES["stage1"])
    assert (seen["start"], tc.steps, tc.lr, tc.warmup, tc.run) == (2, 2, 0.01, 1, run)
