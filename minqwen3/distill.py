"""Strong-to-weak distillation (Qwen3 tech report §4.5): a small student learns a large teacher's next-token
distributions, first off-policy (on the teacher's own replies, in both modes), then on-policy (on its own samples,
scored by the teacher).

The loss is a divergence between the two distributions, per token: forward KL(p_T‖p_S), reverse KL(p_S‖p_T) or a
generalized Jensen–Shannon divergence. Storing the teacher's 151,936 probabilities per token is unaffordable, so the
teacher's k most likely ids are kept plus one "tail" class holding the rest of each distribution's mass.

Legend: N rows (tokens where the loss is), V vocabulary, C hidden size, k kept ids.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .config import NON_THINKING_DEFAULTS, THINKING_DEFAULTS
from .generation import STOP_IDS, _integer, check_stop_ids, generate
from .moe import load_balancing_loss
from .tokenizer import ENDOFTEXT
from .train import TrainConfig, collate, lr_at

KINDS = ("forward", "reverse", "jsd")
_FLOOR = -1e30  # log 0 made finite: 0 * (log 0 - x) must be 0, not nan, in the values and in the gradients


class TopK(NamedTuple):
    """Stored teacher targets: ids (..., k) and the teacher's FULL-vocabulary log-probs at them (..., k), at the
    temperature the divergence uses (log_softmax(logits / temperature)), and the log of the teacher's mass outside
    them (..., 1), from its logits (teacher_data stores it). Without `tail` it is rebuilt as one minus the kept
    mass, which float32 log-probs cannot resolve once a confident teacher leaves less than ~1e-7 outside: reverse
    KL then sees a tail of log 0 (1e29 where the logits give 27)."""
    ids: torch.Tensor
    logprobs: torch.Tensor
    tail: torch.Tensor | None = None

    def parts(self) -> list[tuple[str, torch.Tensor]]:
        """The (name, tensor) fields that are there."""
        return [(n, x) for n, x in zip(self._fields, self) if x is not None]


def tail_from(lt_k: torch.Tensor) -> torch.Tensor:
    """log(1 - sum exp(lt_k)) (..., k) -> (...,), as well as float64 can: 1 - p_1 as -expm1(log p_1), then the others
    taken off (the stored tail, TopK.tail, is exact; this is for targets stored without it)."""
    lt = lt_k.double().sort(-1, descending=True).values
    rest = -torch.expm1(lt[..., 0]) - lt[..., 1:].exp().sum(-1)
    return torch.log(rest.clamp(min=0)).float()


def _check(kind: str, beta: float, temperature: float, top_k: int | None) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if not 0.0 < beta < 1.0:
        raise ValueError(f"beta must be in (0, 1) (the teacher's weight in the JSD mixture), got {beta}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise ValueError(f"top_k must be None (the whole vocabulary) or an int >= 1, got {top_k!r}")


def _rows(x: torch.Tensor, mask: torch.Tensor | None, lead: tuple[int, ...], what: str) -> torch.Tensor:
    """x (*lead, D) -> (N, D): the rows where mask (*lead) is true (all rows when mask is None)."""
    if tuple(x.shape[:-1]) != lead:
        raise ValueError(f"{what} has shape {tuple(x.shape)}; expected leading dimensions {lead}")
    if mask is None:
        return x.reshape(-1, x.shape[-1])
    return x[mask]


def _check_topk(t: TopK) -> None:
    if t.ids.shape != t.logprobs.shape:
        raise ValueError(f"TopK ids {tuple(t.ids.shape)} and logprobs {tuple(t.logprobs.shape)} must have the same "
                         "shape")
    if t.tail is not None and t.tail.shape != (*t.ids.shape[:-1], 1):
        raise ValueError(f"TopK tail {tuple(t.tail.shape)} must be {(*t.ids.shape[:-1], 1)}: one per row")


def _check_mask(mask: torch.Tensor | None, lead: tuple[int, ...]) -> None:
    if mask is not None and (mask.dtype != torch.bool or tuple(mask.shape) != lead):
        raise ValueError(f"mask must be a bool tensor of shape {lead}, got {mask.dtype} {tuple(mask.shape)}")


def per_token(ls: torch.Tensor, lt: torch.Tensor, kind: str = "forward", beta: float = 0.5) -> torch.Tensor:
    """The divergence over the last dimension between student and teacher log-probs ls, lt (..., K) -> (...,)."""
    ls, lt = ls.clamp(min=_FLOOR), lt.clamp(min=_FLOOR)

    def kl(a, b):  # KL(exp(a) ‖ exp(b))
        return (a.exp() * (a - b)).sum(-1)

    if kind == "forward":
        return kl(lt, ls)
    if kind == "reverse":
        return kl(ls, lt)
    lm = torch.logaddexp(lt + math.log(beta), ls + math.log(1 - beta))  # log M, M = beta p_T + (1-beta) p_S
    return beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)


def _with_tail(ls: torch.Tensor, ids: torch.Tensor, lt_k: torch.Tensor, lt_tail: torch.Tensor | None,
               kind: str, beta: float) -> torch.Tensor:
    """Divergence over k + 1 classes: the teacher's ids, then one tail class (dropped when None: nothing is left)."""
    ls_k = ls.gather(-1, ids)  # (N, k)
    if lt_tail is None:
        return per_token(ls_k, lt_k, kind, beta)
    ls_tail = ls.scatter(-1, ids, float("-inf")).logsumexp(-1)  # (N,) the student's mass outside the k ids, exactly
    return per_token(torch.cat([ls_k, ls_tail[:, None]], -1), torch.cat([lt_k, lt_tail[:, None]], -1), kind, beta)


def _row_divergence(s: torch.Tensor, teacher, kind: str, beta: float, temperature: float,
                    top_k: int | None) -> torch.Tensor:
    """Student logits s (N, V) against teacher logits (N, V) or a TopK of (N, k) -> divergence per row (N,), fp32."""
    ls = torch.log_softmax(s.float() / temperature, -1)
    V = ls.shape[-1]
    if isinstance(teacher, TopK):
        lt_k = teacher.logprobs.detach().float()
        tail = (None if teacher.ids.shape[-1] >= V else tail_from(lt_k) if teacher.tail is None
                else teacher.tail.detach().float()[..., 0])
        return _with_tail(ls, teacher.ids.long(), lt_k, tail, kind, beta)
    lt = torch.log_softmax(teacher.detach().float() / temperature, -1)
    if top_k is None or top_k >= V:
        return per_token(ls, lt, kind, beta)
    lt_k, ids = lt.topk(top_k, -1)  # the same ids at any temperature
    return _with_tail(ls, ids, lt_k, lt.scatter(-1, ids, float("-inf")).logsumexp(-1), kind, beta)


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor | TopK, mask: torch.Tensor | None = None,
               *, kind: str = "forward", beta: float = 0.5, temperature: float = 1.0,
               top_k: int | None = None) -> torch.Tensor:
    """Mean over the tokens where mask (B, T) is true (all when None) of a divergence between
    p_S = softmax(student_logits / temperature) and p_T = softmax(teacher_logits / temperature), logits (B, T, V).

    kind: "forward" KL(p_T‖p_S), "reverse" KL(p_S‖p_T), "jsd" beta·KL(p_T‖M) + (1−beta)·KL(p_S‖M) with
    M = beta·p_T + (1−beta)·p_S. fp32 inside whatever the inputs; gradients reach the student only; no T² factor.
    top_k: keep the teacher's k most likely ids per token plus one tail class with the rest of each distribution's
    mass (k + 1 classes; k >= V is the full divergence).
    teacher_logits may instead be stored targets, TopK(ids (B, T, k), logprobs (B, T, k)) (top_k is then theirs).
    """
    _check(kind, beta, temperature, top_k)
    lead = tuple(student_logits.shape[:-1])
    _check_mask(mask, lead)
    s = _rows(student_logits, mask, lead, "student_logits")
    if isinstance(teacher_logits, TopK):
        _check_topk(teacher_logits)
        t = TopK(**{n: _rows(x, mask, lead, f"teacher {n}") for n, x in teacher_logits.parts()})
    else:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"teacher_logits {tuple(teacher_logits.shape)} and student_logits "
                             f"{tuple(student_logits.shape)} must have the same shape")
        t = _rows(teacher_logits, mask, lead, "teacher_logits")
    d = _row_divergence(s, t, kind, beta, temperature, top_k)  # (N,)
    return d.sum() / max(d.numel(), 1)


def divergence_chunked(hidden: torch.Tensor, weight: torch.Tensor, teacher, mask: torch.Tensor | None = None, *,
                       chunk: int = 1024, kind: str = "forward", beta: float = 0.5, temperature: float = 1.0,
                       top_k: int | None = None) -> torch.Tensor:
    """divergence() with the student's logits made from its final hidden states (B, T, C) and LM head weight (V, C),
    `chunk` rows at a time, each chunk recomputed in the backward pass: a (chunk, V) softmax at a time, never (N, V).

    teacher: logits (B, T, V); TopK(ids, logprobs) (B, T, k); or (hidden (B, T, C'), weight (V, C')), the teacher's
    own hidden states and head, its logits made chunk by chunk too.
    """
    _check(kind, beta, temperature, top_k)
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    lead = tuple(hidden.shape[:-1])
    _check_mask(mask, lead)
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (V, C={hidden.shape[-1]}), got {tuple(weight.shape)}")
    h = _rows(hidden, mask, lead, "hidden")
    if isinstance(teacher, TopK):
        _check_topk(teacher)
        names = [n for n, _ in teacher.parts()]
        parts = [_rows(x, mask, lead, f"teacher {n}") for n, x in teacher.parts()]
        make = lambda *t: TopK(**dict(zip(names, t)))  # noqa: E731
    elif isinstance(teacher, torch.Tensor):
        parts, make = [_rows(teacher, mask, lead, "teacher logits")], lambda t: t
    else:
        th, tw = teacher
        parts, make = [_rows(th.detach(), mask, lead, "teacher hidden")], lambda x: F.linear(x, tw.detach())

    def piece(h_c, *t_c):  # one chunk's summed divergence
        return _row_divergence(F.linear(h_c, weight), make(*t_c), kind, beta, temperature, top_k).sum()

    total = h.new_zeros((), dtype=torch.float32)
    for i in range(0, h.shape[0], chunk):
        total = total + checkpoint(piece, h[i:i + chunk], *(p[i:i + chunk] for p in parts), use_reentrant=False)
    return total / max(h.shape[0], 1)


# ---------------------------------------------------------------- the loops
SAMPLING = {True: THINKING_DEFAULTS, False: NON_THINKING_DEFAULTS}  # Qwen's published settings per mode


@dataclass
class DistillConfig:
    kind: str = "forward"  # off-policy; the tech report's on-policy stage minimises KL: use "reverse" there
    beta: float = 0.5
    temperature: float = 1.0
    top_k: int | None = 20  # teacher ids stored per token (off-policy); on-policy scores the whole vocabulary
    ce_coef: float = 0.0  # off-policy: plus this times the next-token loss on the teacher's tokens
    max_new_tokens: int = 256
    chunk: int = 1024
    rollout_batch: int = 256  # prompts per generate call
    stop_ids: tuple[int, ...] = STOP_IDS
    pad_id: int = ENDOFTEXT
    vocab_limit: int | None = None  # sample only ids below it: len(tokenizer), past which the embedding is padding

    def __post_init__(self) -> None:  # a bad setting fails here, not inside the first rollout or step
        _check(self.kind, self.beta, self.temperature, self.top_k)
        if not self.ce_coef >= 0:
            raise ValueError(f"ce_coef must be >= 0 (the next-token loss's weight), got {self.ce_coef}")
        _integer("max_new_tokens", self.max_new_tokens, "tokens sampled per reply at most", 1)
        _integer("chunk", self.chunk, "rows of logits at a time", 1)
        _integer("rollout_batch", self.rollout_batch, "prompts per generate call", 1)
        _integer("pad_id", self.pad_id, "the id that pads prompts and replies")
        if self.vocab_limit is not None:
            _integer("vocab_limit", self.vocab_limit, "sample only ids below it, e.g. len(tokenizer)", 1)
        self.stop_ids = check_stop_ids(self.stop_ids)


def sample_replies(model, prompts: list[list[int]], thinking: list[bool], dc: DistillConfig,
                   seed: int | None = None) -> list[list[int]]:
    """One sampled reply per prompt (up to and including its stop token), each mode with its own defaults."""
    if len(prompts) != len(thinking):
        raise ValueError(f"{len(prompts)} prompts but {len(thinking)} thinking flags")
    out: list[list[int]] = [[] for _ in prompts]
    for mode in (True, False):
        idx = [i for i, t in enumerate(thinking) if t == mode]
        if not idx:
            continue
        for j in range(0, len(idx), dc.rollout_batch):  # the prefill's logits are (rows, T, V) floats: bound them
            part = idx[j:j + dc.rollout_batch]
            rows = [prompts[i] for i in part]
            T = max(map(len, rows))
            ids = generate(model, rows, dc.max_new_tokens, stop_ids=dc.stop_ids, pad_id=dc.pad_id,  # eager: no
                           seed=None if seed is None else seed + 2 * j + mode, **SAMPLING[mode], fast=False,  # compile
                           vocab_limit=dc.vocab_limit)
            for i, row in zip(part, ids[:, T:].tolist()):
                cut = next((k + 1 for k, t in enumerate(row) if t in dc.stop_ids), len(row))
                out[i] = row[:cut]
    return out


def _autocast(model):
    device = next(model.parameters()).device
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


@torch.no_grad()
def teacher_data(teacher, prompts: list[list[int]], thinking: list[bool], dc: DistillConfig, *,
                 seed: int | None = None, keep=None, batch: int = 64) -> dict[str, torch.Tensor]:
    """Off-policy data: the teacher's sampled replies with its top-k log-probs at every reply token.

    keep(i, reply_ids) -> bool filters replies (e.g. drop wrong answers). Returns flat tensors (safetensors-ready):
    ids (S_total,), lengths (S,), prompt_lengths (S,), topk_ids / topk_logprobs (M, k) and topk_tail (M, 1), one row
    per reply token in order, each the teacher's distribution over that token (made at the position before it).
    """
    if dc.top_k is None:
        raise ValueError("DistillConfig.top_k must be set to store teacher targets (None would store all V ids)")
    _check(dc.kind, dc.beta, dc.temperature, dc.top_k)  # again: a field may have been changed since __post_init__
    replies = sample_replies(teacher, prompts, thinking, dc, seed)
    kept = [(p, r) for i, (p, r) in enumerate(zip(prompts, replies)) if r and (keep is None or keep(i, r))]
    ids, lengths, plens, tk_ids, tk_lp, tk_tail = [], [], [], [], [], []
    for j in range(0, len(kept), batch):
        group = kept[j:j + batch]
        x, mask, _ = collate([(p + r, [False] * len(p) + [True] * len(r)) for p, r in group], dc.pad_id)
        x, sel = x.to(next(teacher.parameters()).device), mask[:, 1:].to(next(teacher.parameters()).device)
        with _autocast(teacher):
            h, _ = teacher.hidden_states(x)
        lp = torch.log_softmax(F.linear(h[:, :-1][sel], teacher.lm_head.weight).float() / dc.temperature, -1)
        top = lp.topk(dc.top_k, -1)  # (M_group, k) in the samples' order
        tk_ids.append(top.indices.int().cpu())
        tk_lp.append(top.values.cpu())
        tk_tail.append(lp.scatter(-1, top.indices, float("-inf")).logsumexp(-1, keepdim=True).cpu())  # (M_group, 1)
        for p, r in group:
            ids += p + r
            lengths.append(len(p) + len(r))
            plens.append(len(p))
    k = dc.top_k
    return {"ids": torch.tensor(ids, dtype=torch.long), "lengths": torch.tensor(lengths, dtype=torch.long),
            "prompt_lengths": torch.tensor(plens, dtype=torch.long),
            "topk_ids": torch.cat(tk_ids) if tk_ids else torch.zeros(0, k, dtype=torch.int32),
            "topk_logprobs": torch.cat(tk_lp) if tk_lp else torch.zeros(0, k),
            "topk_tail": torch.cat(tk_tail) if tk_tail else torch.zeros(0, 1)}


def data_batch(data: dict[str, torch.Tensor], idx: list[int], pad_id: int):
    """Samples idx of teacher_data as (ids, loss mask, valid) (B, T) plus their TopK rows (N, k) in mask order."""
    ends = data["lengths"].cumsum(0)
    reply = data["lengths"] - data["prompt_lengths"]
    rows = torch.cat([torch.zeros(1, dtype=torch.long), reply.cumsum(0)])
    samples, sel = [], []
    for i in idx:
        s = data["ids"][ends[i] - data["lengths"][i]:ends[i]].tolist()
        p = int(data["prompt_lengths"][i])
        samples.append((s, [False] * p + [True] * (len(s) - p)))
        sel.append(torch.arange(rows[i], rows[i + 1]))
    sel = torch.cat(sel)
    tail = data["topk_tail"][sel] if "topk_tail" in data else None  # data stored before session 14 lacks it
    return collate(samples, pad_id), TopK(data["topk_ids"][sel], data["topk_logprobs"][sel], tail)


def _step(student, opt, loss_fn, ids, mask, valid, tc: TrainConfig, step: int) -> dict:
    """Forward the student, loss_fn(rows (N, C)) + the MoE balancing loss, backward, clip, optimizer step."""
    device = next(student.parameters()).device
    ids, mask, valid = ids.to(device), mask.to(device), valid.to(device)
    for g in opt.param_groups:
        g["lr"] = lr_at(step, tc)
    with _autocast(student):
        h, routers = student.hidden_states(ids)
        loss, stats = loss_fn(h[:, :-1][mask[:, 1:]], ids[:, 1:][mask[:, 1:]])
    cfg = student.config
    coef = cfg.router_aux_loss_coef if tc.aux_coef is None else tc.aux_coef
    if cfg.is_moe and tc.balance != "none" and coef > 0:
        loss = loss + coef * load_balancing_loss(routers, cfg.num_experts_per_tok, valid)
    loss.backward()
    stats["grad_norm"] = torch.nn.utils.clip_grad_norm_(student.parameters(), tc.grad_clip)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return {k: float(v) for k, v in stats.items()} | {"tokens": int(mask[:, 1:].sum()), "batch_tokens": ids.numel()}


def offpolicy_step(student, opt, data: dict[str, torch.Tensor], idx: list[int], dc: DistillConfig,
                   tc: TrainConfig, step: int = 0) -> dict:
    """One step on samples idx of teacher_data: the divergence to the stored top-k targets on the teacher's
    tokens (plus dc.ce_coef times the next-token loss on them)."""
    (ids, mask, valid), target = data_batch(data, idx, dc.pad_id)
    target = TopK(**{n: t.to(next(student.parameters()).device) for n, t in target.parts()})
    W = student.lm_head.weight

    def loss_fn(h, tokens):
        d = divergence_chunked(h, W, target, chunk=dc.chunk, kind=dc.kind, beta=dc.beta, temperature=dc.temperature)
        stats = {"divergence": d.detach()}
        if dc.ce_coef:
            ce = F.cross_entropy(F.linear(h, W).float(), tokens)
            stats["ce"] = ce.detach()
            d = d + dc.ce_coef * ce
        return d, stats

    return _step(student, opt, loss_fn, ids, mask, valid, tc, step)


def onpolicy_step(student, teacher, opt, prompts: list[list[int]], thinking: list[bool], dc: DistillConfig,
                  tc: TrainConfig, step: int = 0, seed: int | None = None) -> dict:
    """The student samples a reply to each prompt (per-mode defaults), the teacher scores the same tokens in one
    forward pass, and the student takes a divergence step on its own tokens (full vocabulary: nothing stored)."""
    replies = sample_replies(student, prompts, thinking, dc, seed)
    ids, mask, valid = collate([(p + r, [False] * len(p) + [True] * len(r)) for p, r in zip(prompts, replies)],
                               dc.pad_id)
    with torch.no_grad(), _autocast(teacher):
        th, _ = teacher.hidden_states(ids.to(next(teacher.parameters()).device))
    th = th[:, :-1][mask[:, 1:].to(th.device)]

    def loss_fn(h, tokens):
        d = divergence_chunked(h, student.lm_head.weight, (th.to(h.device), teacher.lm_head.weight.to(h.device)),
                               chunk=dc.chunk, kind=dc.kind, beta=dc.beta, temperature=dc.temperature)
        return d, {"divergence": d.detach()}

    stats = _step(student, opt, loss_fn, ids, mask, valid, tc, step)
    return stats | {"reply_tokens": sum(map(len, replies)) / len(replies)}
