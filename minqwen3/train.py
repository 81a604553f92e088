"""Training: next-token loss on the tokens the model must write, AdamW with warm-up and cosine decay, bf16 autocast
on GPU, gradient accumulation, checkpoints, and the MoE load-balancing loss per micro-batch or per global batch.

One optimizer step takes a list of micro-batches (ids, loss mask, valid mask). Under torch.distributed each rank
brings its own micro-batches; gradients and the expert counts of the global balance are all-reduced by hand.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import re
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .model import Qwen3
from .moe import expert_counts, load_balancing_loss
from .tokenizer import ENDOFTEXT


BALANCE = ("global", "micro", "none")


@dataclass
class TrainConfig:
    steps: int = 1000
    lr: float = 2e-3
    min_lr: float = 2e-4  # the cosine decays to this, not to zero
    warmup: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0
    # "global": expert frequencies f over every micro-batch of the step and every rank (Qwen3);
    # "micro": f of each micro-batch alone (Switch Transformer); "none": no balancing loss
    balance: str = "global"
    aux_coef: float | None = None  # default: the model's router_aux_loss_coef
    log_every: int = 10
    save_every: int = 0  # 0: only at the end
    out: str | None = None  # checkpoints and log.jsonl go here
    run: dict | None = None  # what defines the run to its caller (a script's flags): kept in the trainer state

    def __post_init__(self) -> None:
        # a bad value here does not fail: it trains wrongly (grad_clip < 0 flips the gradient, 0 stops learning,
        # a NaN rate poisons every weight) or crashes only after the first step, so every field is checked now
        def integer(name: str, lo: int) -> None:
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or isinstance(v, bool):
                raise TypeError(f"TrainConfig.{name} must be an int, got {v!r}")
            if v < lo:
                raise ValueError(f"TrainConfig.{name} must be >= {lo}, got {v}")

        def real(name: str, v, ok, want: str) -> None:
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise TypeError(f"TrainConfig.{name} must be a number, got {v!r}")
            if not ok(v):  # NaN fails every comparison, so it lands here too
                raise ValueError(f"TrainConfig.{name} must be {want}, got {v}")

        for name, lo in (("steps", 0), ("warmup", 0), ("log_every", 1), ("save_every", 0)):
            integer(name, lo)
        for name in ("lr", "min_lr", "weight_decay"):
            real(name, getattr(self, name), lambda v: 0 <= v < math.inf, "finite and >= 0")
        real("grad_clip", self.grad_clip, lambda v: v > 0, "> 0 (inf: no clipping)")
        if self.aux_coef is not None:
            real("aux_coef", self.aux_coef, lambda v: 0 <= v < math.inf, "finite and >= 0, or None")
        if not isinstance(self.betas, (tuple, list)) or len(self.betas) != 2:
            raise TypeError(f"TrainConfig.betas must be a pair of numbers, got {self.betas!r}")
        for i, b in enumerate(self.betas):
            real(f"betas[{i}]", b, lambda v: 0 <= v < 1, "in [0, 1)")
        self.betas = tuple(self.betas)  # a list (from JSON, say) becomes the tuple AdamW itself keeps
        if self.balance not in BALANCE:
            raise ValueError(f"TrainConfig.balance must be one of {', '.join(map(repr, BALANCE))}, "
                             f"got {self.balance!r}")
        if self.out is not None:
            if not isinstance(self.out, (str, os.PathLike)):
                raise TypeError(f"TrainConfig.out must be a folder path or None, got {self.out!r}")
            self.out = os.fspath(self.out)  # a str, as the log's JSON copy of the config needs
        try:  # the checkpoint keeps it as JSON: fail now, not at the first save
            if not isinstance(self.run, (dict, type(None))):
                raise TypeError
            json.dumps(self.run, allow_nan=False)
        except (TypeError, ValueError):
            raise TypeError(f"TrainConfig.run must be None or a dict that JSON can hold, got {self.run!r}") from None


def lr_at(step: int, tc: TrainConfig) -> float:
    """Linear warm-up over tc.warmup steps, then half a cosine from tc.lr down to tc.min_lr at tc.steps."""
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    t = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.min_lr + 0.5 * (tc.lr - tc.min_lr) * (1 + math.cos(math.pi * t))


def collate(samples: list[tuple[list[int], list[bool]]], pad_id: int = ENDOFTEXT,
            multiple: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-pad samples (ids, loss mask) into ids, loss mask and valid mask, each (B, T).

    Padding goes after the real tokens, so causal attention keeps it out of every real position; T is rounded up
    to `multiple` so that few distinct shapes reach the kernels.
    """
    if not samples:
        raise ValueError("collate: samples is empty; a micro-batch needs at least one (ids, loss mask) sample")
    if isinstance(multiple, bool) or not isinstance(multiple, int) or multiple < 1:
        raise ValueError(f"collate: multiple must be an int >= 1, got {multiple!r}")
    for i, (s, m) in enumerate(samples):  # a shorter mask would leave tokens without loss, a longer one not fit
        if len(s) != len(m):
            raise ValueError(f"collate: sample {i} has {len(s)} ids but a loss mask of {len(m)}; they must match")
    T = -(-max(len(ids) for ids, _ in samples) // multiple) * multiple
    ids = torch.full((len(samples), T), pad_id, dtype=torch.long)
    loss = torch.zeros(len(samples), T, dtype=torch.bool)
    valid = torch.zeros(len(samples), T, dtype=torch.bool)
    for i, (s, m) in enumerate(samples):
        ids[i, :len(s)] = torch.tensor(s)
        loss[i, :len(m)] = torch.tensor(m)
        valid[i, :len(s)] = True
    return ids, loss, valid


class Balance:
    """Expert counts for the frequencies f of the load-balancing loss, per micro-batch or per global batch.

    Global batch (Qiu et al. 2025, used by Qwen3): f counts the tokens of every micro-batch of the step, summed over
    ranks, so a micro-batch of one kind of text may use few experts as long as the whole batch is balanced. f has no
    gradient, and micro-batch m is back-propagated before m+1 is seen, so micro-batch m uses the counts of
    micro-batches 1..m (a running buffer); the last one uses exactly the global-batch frequencies.
    """

    def __init__(self, mode: str):
        if mode not in BALANCE:
            raise ValueError(f"Balance: mode must be one of {', '.join(map(repr, BALANCE))}, got {mode!r}")
        self.mode = mode
        self.running: torch.Tensor | None = None

    def start_step(self) -> None:
        self.running = None

    def counts(self, router_logits: list[torch.Tensor], top_k: int, valid: torch.Tensor) -> torch.Tensor | None:
        """(L, E) counts to use for f, or None: the micro-batch's own (what load_balancing_loss computes)."""
        if self.mode != "global":
            return None
        c = torch.stack([expert_counts(r, top_k, valid) for r in router_logits])  # (L, E)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(c)  # every rank's tokens count towards f
        self.running = c if self.running is None else self.running + c
        return self.running


def train_step(model: Qwen3, opt: torch.optim.Optimizer, micro_batches: list, tc: TrainConfig,
               balance: Balance, autocast: bool = False) -> dict[str, torch.Tensor]:
    """One optimizer step over micro-batches of (ids, loss_mask, valid), each (B, T); returns the step's numbers.

    The cross-entropy is the mean over every loss token of the step (not a mean of micro-batch means), so a
    micro-batch of long samples weighs as much as its tokens; data parallel (torch.distributed initialised), over
    every rank's tokens: each rank divides by the global count and the gradients are summed. The numbers come back
    as device tensors, so that reading them (a host sync) is the caller's choice.
    """
    device = next(model.parameters()).device
    cfg = model.config
    distributed = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if distributed else 1
    n_tokens = sum(int(m[:, 1:].sum()) for _, m, _ in micro_batches)  # the mask is on the host: free
    if distributed:  # the step's loss tokens over all ranks
        count = torch.tensor(n_tokens, device=device)
        dist.all_reduce(count)
        n_tokens = int(count)
    coef = cfg.router_aux_loss_coef if tc.aux_coef is None else tc.aux_coef
    use_aux = cfg.is_moe and tc.balance != "none" and coef > 0
    balance.start_step()
    ce_total = torch.zeros((), device=device)
    aux_total = torch.zeros((), device=device)
    for ids, mask, valid in micro_batches:
        ids, mask, valid = (t.to(device, non_blocking=True) for t in (ids, mask, valid))
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            h, routers = model.hidden_states(ids)  # the head only where the loss is, below
            sel = mask[:, 1:]  # token t+1 is predicted from position t
            logits = F.linear(h[:, :-1][sel], model.lm_head.weight)  # (N, V), only where the loss is
        ce = F.cross_entropy(logits.float(), ids[:, 1:][sel], reduction="sum") / max(n_tokens, 1)
        loss = ce
        if use_aux:
            counts = balance.counts(routers, cfg.num_experts_per_tok, valid)
            aux = load_balancing_loss(routers, cfg.num_experts_per_tok, valid, counts) / (len(micro_batches) * world)
            loss = loss + coef * aux
            aux_total += aux.detach()
        loss.backward()
        ce_total += ce.detach()
    if distributed:  # data parallel by hand: each rank's gradient is its share of the global mean, so sum them
        for p in model.parameters():
            if p.grad is not None:
                dist.all_reduce(p.grad)
        for t in (ce_total, aux_total):  # and the step's numbers: the global mean
            dist.all_reduce(t)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {"loss": ce_total, "aux": aux_total, "grad_norm": grad_norm, "tokens": n_tokens}


def make_optimizer(model: Qwen3, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (and the stacked experts), none on norms. Fused on GPU."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()  # tied weights once
    decay = [p for p in params if p.dim() >= 2]
    other = [p for p in params if p.dim() < 2]
    fused = next(model.parameters()).is_cuda
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=tc.lr, betas=tc.betas, fused=fused)


SCHEDULE = ("steps", "lr", "min_lr", "warmup")  # what lr_at reads: a resumed run must continue the same curve
STATE = "trainer_state.json"  # beside it trainer_state.<save id>.safetensors: the optimizer's tensors
SAVE_ID, SAVE_STEP = "minqwen3.save_id", "minqwen3.step"  # in the weights' and the tensors' headers


def save_checkpoint(model: Qwen3, opt: torch.optim.Optimizer, step: int, path: str | Path,
                    tc: TrainConfig | None = None) -> None:
    """An official-layout checkpoint (fp32, loadable anywhere) plus the trainer state to resume from: the optimizer's
    tensors (state.{i}.{key}: AdamW's exp_avg, exp_avg_sq, step) in safetensors, the rest in trainer_state.json (the
    step, the param groups' hyper-parameters, the learning rate schedule, tc's as a time budget may have fitted its
    steps, and tc.run). Nothing is pickled.

    Every save has a random id, written in the headers of the weights and of the tensors and in trainer_state.json,
    which load_checkpoint compares. The writes go in an order that keeps the folder resumable: each file atomic, the
    tensors under a name of this save's own (the previous save's stay), then the weights, then trainer_state.json
    (the switch), then the previous tensors removed. Stopped before the weights' rename, the folder is the previous
    save whole; between it and the switch (config.json and trainer_state.json, both small), load_checkpoint refuses
    the pair and names both steps, rather than mix weights of one step with the optimizer of another.
    """
    from .checkpoint import atomic_write, save_pretrained
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    save_id = os.urandom(8).hex()
    tag = {SAVE_ID: save_id, SAVE_STEP: str(step)}
    sd = opt.state_dict()
    tensors, scalars = {}, {}  # scalars: a non-tensor entry of some other optimizer's state, kept in the JSON
    for i, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"state.{i}.{k}"] = v.detach().to("cpu").contiguous()
            else:
                scalars[f"state.{i}.{k}"] = v
    tensor_file = f"trainer_state.{save_id}.safetensors"
    state = {"step": step, "save_id": save_id, "optimizer_tensors": tensor_file, "optimizer_scalars": scalars,
             "param_groups": sd["param_groups"]}
    if tc is not None:
        state["schedule"] = {k: getattr(tc, k) for k in SCHEDULE}
        if tc.run is not None:
            state["run"] = tc.run
    text = json.dumps(state, indent=1) + "\n"  # before the first write: a value JSON cannot hold fails here
    atomic_write(path / tensor_file, lambda tmp: save_file(tensors, tmp, metadata={**tag, "format": "pt"}))
    save_pretrained(model, path, metadata=tag)
    atomic_write(path / STATE, lambda tmp: Path(tmp).write_text(text))
    for f in path.glob("trainer_state.*.safetensors"):  # the previous save's, and any a stopped save left
        if f.name != tensor_file:
            f.unlink()


def _tag(meta: dict[str, str]) -> str:
    if SAVE_ID not in meta:
        return "no training save (no save id in its header: not written by save_checkpoint)"
    return f"step {meta.get(SAVE_STEP)} (save {meta[SAVE_ID]})"


def read_trainer_state(path: str | Path) -> dict:
    """trainer_state.json of the training checkpoint folder `path`, checked: step, save_id, param_groups,
    optimizer_tensors, optimizer_scalars, and schedule and run where saved. Cheap: a caller may check a resume's
    arguments against it before loading anything."""
    from .checkpoint import CheckpointError
    path = Path(path)
    state_file = path / STATE
    if not path.is_dir():
        raise FileNotFoundError(f"training checkpoint folder {path} does not exist")
    if not state_file.is_file():
        if (path / "trainer_state.pt").is_file():
            raise CheckpointError(f"{path / 'trainer_state.pt'} is the old trainer state format, a pickle: minqwen3 "
                                  "never unpickles a checkpoint (unpickling can run code), so this run cannot be "
                                  f"resumed; start it again (its weights still load: from_pretrained({str(path)!r}))")
        raise FileNotFoundError(f"{path} has no {STATE}: it is not a training checkpoint to resume from")
    try:
        state = json.loads(state_file.read_text())
        if not isinstance(state, dict):
            raise TypeError(f"a JSON {type(state).__name__}, not an object")
        missing = [k for k in ("step", "save_id", "param_groups", "optimizer_tensors", "optimizer_scalars")
                   if k not in state]  # optimizer_tensors, a file name, is checked by _inside where it is read
        if missing:
            raise KeyError(", ".join(missing))
        step, groups = state["step"], state["param_groups"]
        if (not isinstance(step, int) or step < 0 or not isinstance(groups, list)
                or not all(isinstance(g, dict) for g in groups)
                or not all(isinstance(state.get(k, {}), dict) for k in ("optimizer_scalars", "schedule", "run"))):
            raise TypeError("step, param_groups, optimizer_scalars, schedule or run has the wrong type")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{state_file}: not a valid trainer state ({type(e).__name__}: {e})") from None
    return state


def load_checkpoint(path: str | Path, device=None) -> tuple[Qwen3, dict]:
    """The model (fp32, trainable) and trainer state written by save_checkpoint: a dict with "optimizer" (for
    opt.load_state_dict), "step", and "schedule" and "run" where saved. A trainer state that is not the weights' own
    save (a save stopped half-way) is refused, naming both."""
    from .checkpoint import CheckpointError, _inside, checkpoint_files, from_pretrained, read_metadata
    path = Path(path)
    state_file = path / STATE
    state = read_trainer_state(path)
    step, save_id, groups = state["step"], state["save_id"], state["param_groups"]
    scalars, tensor_file = state["optimizer_scalars"], state["optimizer_tensors"]
    ours = f"{state_file} is the trainer state of step {step} (save {save_id})"
    for f in checkpoint_files(path):
        meta = read_metadata(f)
        if meta.get(SAVE_ID) != save_id:
            raise CheckpointError(f"{f} holds the weights of {_tag(meta)}, but {ours}: they are not one save (a "
                                  "save stopped between its writes, or a file replaced), and resuming would mix "
                                  "them; resume from another checkpoint or start the run again")
    tensor_path = _inside(path, tensor_file, state_file)
    if not tensor_path.is_file():
        raise FileNotFoundError(f"{tensor_path}, the optimizer's tensors that {STATE} names, is missing")
    meta = read_metadata(tensor_path)
    if meta.get(SAVE_ID) != save_id:
        raise CheckpointError(f"{tensor_path} holds the optimizer of {_tag(meta)}, but {ours}")
    opt_state: dict[int, dict] = {}
    for name, v in [*load_file(tensor_path, device=str(device or "cpu")).items(), *scalars.items()]:
        m = re.fullmatch(r"state\.(\d+)\.(\w+)", name)
        if not m:
            raise CheckpointError(f"{tensor_path}: optimizer entry {name!r} is not named state.<index>.<key>")
        opt_state.setdefault(int(m[1]), {})[m[2]] = v
    # JSON turned tuples (AdamW's betas) into lists; "params" is the one list param groups hold as such
    groups = [{k: tuple(v) if isinstance(v, list) and k != "params" else v for k, v in g.items()} for g in groups]
    model = from_pretrained(path, device=device, dtype=torch.float32).train()
    for p in model.parameters():
        p.requires_grad_(True)
    extra = {k: state[k] for k in ("schedule", "run") if k in state}
    return model, {"optimizer": {"state": opt_state, "param_groups": groups}, "step": step, **extra}


def train(model: Qwen3, batches: Iterable[list], tc: TrainConfig, start_step: int = 0,
          opt: torch.optim.Optimizer | None = None, progress: bool = True,
          time_budget: float | None = None) -> list[dict]:
    """Train from start_step to tc.steps; `batches` yields one list of micro-batches per step, from start_step on.

    Logs every tc.log_every steps (to tc.out/log.jsonl and the progress bar) and returns the logged rows;
    saves a checkpoint every tc.save_every steps and at the end when tc.out is set. Under torch.distributed (data
    parallel) every rank trains and rank 0 alone writes the log and the checkpoints: the ranks hold the same
    weights, and two writers of one folder would remove each other's files.
    time_budget (seconds): after 60 steps, lower tc.steps to what fits in the budget at the speed of steps 30..60
    (late enough that start-up costs, and other jobs starting beside this one, are over). The choice is logged;
    since it is made during warm-up (tc.warmup >= 60), `steps=N` repeats the same schedule.
    """
    from tqdm import tqdm
    device = next(model.parameters()).device
    model.train()
    opt = opt or make_optimizer(model, tc)
    balance = Balance(tc.balance)
    distributed = dist.is_available() and dist.is_initialized()
    out = Path(tc.out) if tc.out and (not distributed or dist.get_rank() == 0) else None
    if out:
        out.mkdir(parents=True, exist_ok=True)
    log_file = open(out / "log.jsonl", "a") if out else None

    def log(row: dict) -> None:
        if log_file:
            log_file.write(json.dumps(row) + "\n")
            log_file.flush()

    log({"train_config": asdict(tc), "model_config": model.config.to_dict(), "start_step": start_step})
    rows, tokens, batches = [], 0, iter(batches)
    bar = tqdm(total=tc.steps, initial=start_step, disable=not progress, unit="step", dynamic_ncols=True)
    step = start_step
    t0 = t30 = time.perf_counter()
    try:
        while step < tc.steps:
            lr = lr_at(step, tc)
            for g in opt.param_groups:
                g["lr"] = lr
            stats = train_step(model, opt, next(batches), tc, balance, autocast=device.type == "cuda")
            tokens += stats["tokens"]
            step += 1
            bar.update(1)
            done = step - start_step
            if time_budget is not None and done in (30, 60):  # the first steps pay start-up costs: time 30..60
                if device.type == "cuda":
                    torch.cuda.synchronize()
                if done == 30:
                    t30 = time.perf_counter()
                else:
                    per_step = (time.perf_counter() - t30) / 30
                    fit = step + int((time_budget - (time.perf_counter() - t0)) / per_step)
                    if distributed:  # rank 0's choice for all: ranks that stopped apart would wait for each other
                        fit_t = torch.tensor([fit], device=device if dist.get_backend() == "nccl" else "cpu")
                        dist.broadcast(fit_t, 0)
                        fit = int(fit_t.item())
                    if fit < tc.steps:
                        tc.steps = max(fit, step + 1)
                        bar.total = tc.steps
                    log({"time_budget_s": time_budget, "s_per_step": per_step, "steps": tc.steps})
                    bar.write(f"{per_step * 1e3:.0f} ms/step: training for {tc.steps} steps")
            if (step - 1) % tc.log_every == 0 or step == tc.steps:
                row = {"step": step, "loss": stats["loss"].item(), "aux": stats["aux"].item(),
                       "grad_norm": stats["grad_norm"].item(), "lr": lr, "loss_tokens": tokens,
                       "elapsed_s": round(time.perf_counter() - t0, 2)}
                rows.append(row)
                bar.set_postfix(loss=f"{row['loss']:.4f}", lr=f"{lr:.2e}")
                log(row)
            if out and tc.save_every and step % tc.save_every == 0 and step < tc.steps:
                save_checkpoint(model, opt, step, out / "checkpoint", tc)
    finally:
        bar.close()
        if log_file:
            log_file.close()
    if out:
        save_checkpoint(model, opt, step, out / "checkpoint", tc)
    return rows
