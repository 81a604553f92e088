"""Reasoning RL (Qwen3 tech report §4.2, stage 2): GRPO on verifiable rewards.

For each prompt the policy samples a group of G replies; a checker gives each a reward (1 when the reply is
well-formed AND its answer is right, else 0); each reward minus its group's mean, over its group's standard
deviation, is that reply's advantage: no value network, the group is the baseline. The policy then takes a clipped
policy-gradient step (PPO's ratio clip) on its own tokens, optionally with a KL penalty to a frozen reference model.

Legend: P prompts, G replies per prompt, B = P·G rows, T positions, N reply tokens (rows of the loss mask), C hidden.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .distill import DistillConfig, _autocast, _step, sample_replies
from .generation import _integer
from .train import TrainConfig, collate

# ---------------------------------------------------------------- the reward
# A well-formed reply, as the demo task writes it: one think block opening the reply (empty in non-thinking mode),
# then exactly one answer line, then the end-of-turn token. Anything else (a reply cut off by the length limit, a
# second think block, text around the answer, two answers) earns nothing, whatever numbers it contains.
REPLY = re.compile(r"<think>\n(?P<think>.*?)\n</think>\n\n(?P<answer>The answer is (?P<n>-?\d+)\.)<\|im_end\|>",
                   re.DOTALL)


def check_reply(text: str, answer: int, thinking: bool) -> float:
    """The reward of one decoded reply (its stop token included): 1.0 if it is well-formed for its mode and its
    answer line holds `answer`, else 0.0. Thinking mode needs non-empty reasoning; non-thinking an empty block."""
    m = REPLY.fullmatch(text)
    if m is None or "<think>" in m["think"] or "</think>" in m["think"]:
        return 0.0
    if bool(m["think"].strip()) != thinking:
        return 0.0
    return float(int(m["n"]) == answer)


# ---------------------------------------------------------------- advantages and the loss
def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (P, G) -> advantages (P, G): (r - the group's mean) / (the group's std + eps), the population std
    (correction 0). A group whose replies all score the same has advantage 0 everywhere: it teaches nothing."""
    if rewards.dim() != 2 or rewards.shape[1] < 2:
        raise ValueError(f"rewards must be (prompts, group >= 2), got shape {tuple(rewards.shape)}")
    r = rewards.float()
    return (r - r.mean(1, keepdim=True)) / (r.std(1, correction=0, keepdim=True) + eps)


def _check(clip: float, kl_coef: float) -> None:
    if not clip > 0:
        raise ValueError(f"clip must be > 0, got {clip}")
    if not kl_coef >= 0:
        raise ValueError(f"kl_coef must be >= 0, got {kl_coef}")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              clip: float = 0.2, kl_coef: float = 0.0, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """The GRPO objective, negated for minimisation. logprobs / old_logprobs / ref_logprobs (B, T): each reply
    token's log-prob under the policy being trained, the policy that sampled it, the reference; advantages (B,);
    mask (B, T) true at reply tokens.

    Per token: -min(ρ·A, clip(ρ, 1 - clip, 1 + clip)·A) with ρ = exp(logprobs - old_logprobs), plus
    kl_coef · (exp(ref - logprobs) - (ref - logprobs) - 1) (the k3 estimate of KL(policy ‖ reference), >= 0).
    Averaged over each reply's tokens, then over the replies (GRPO's sequence-level mean).
    """
    _check(clip, kl_coef)
    if kl_coef > 0 and ref_logprobs is None:
        raise ValueError(f"kl_coef {kl_coef} > 0 needs ref_logprobs")
    if mask.dtype != torch.bool or mask.shape != logprobs.shape or old_logprobs.shape != logprobs.shape:
        raise ValueError(f"logprobs {tuple(logprobs.shape)}, old_logprobs {tuple(old_logprobs.shape)} and mask "
                         f"{mask.dtype} {tuple(mask.shape)} must all be (B, T), mask bool")
    if advantages.shape != logprobs.shape[:1]:
        raise ValueError(f"advantages must be (B={logprobs.shape[0]},), got {tuple(advantages.shape)}")
    lp = logprobs.float()
    ratio = torch.exp(lp - old_logprobs.detach().float())
    a = advantages.detach().float()[:, None]
    per = -torch.minimum(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a)  # (B, T)
    if kl_coef > 0:
        d = ref_logprobs.detach().float() - lp
        per = per + kl_coef * (d.exp() - d - 1)
    m = mask.float()
    return ((per * m).sum(1) / m.sum(1).clamp(min=1)).mean()


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, tokens: torch.Tensor, chunk: int = 1024) -> torch.Tensor:
    """log p(tokens) (N,) from final hidden states (N, C) and the LM head (V, C), `chunk` rows at a time and each
    chunk recomputed in the backward pass: a (chunk, V) softmax at a time, never (N, V)."""
    def piece(h, t):
        logits = F.linear(h, weight).float()
        return logits.gather(-1, t[:, None])[:, 0] - logits.logsumexp(-1)
    return torch.cat([checkpoint(piece, hidden[i:i + chunk], tokens[i:i + chunk], use_reentrant=False)
                      for i in range(0, hidden.shape[0], chunk)]) if hidden.shape[0] else hidden.new_zeros(0)


# ---------------------------------------------------------------- the step
@dataclass
class GRPOConfig:
    group: int = 8  # replies per prompt
    clip: float = 0.2
    kl_coef: float = 0.0  # > 0: a reference model is needed
    sample: DistillConfig = field(default_factory=DistillConfig)  # sampling: max_new_tokens, batch, stop ids, ...

    def __post_init__(self) -> None:  # a bad setting fails here, not after the first rollouts
        _integer("group", self.group, "replies per prompt: the group is the baseline, so at least 2", 2)
        _check(self.clip, self.kl_coef)
        if not isinstance(self.sample, DistillConfig):
            raise TypeError(f"sample must be a DistillConfig, got {type(self.sample).__name__}")


def grpo_step(model, opt, prompts: list[list[int]], thinking: list[bool], reward: Callable[[int, list[int]], float],
              gc: GRPOConfig, tc: TrainConfig, step: int = 0, ref=None, seed: int | None = None) -> dict:
    """Sample gc.group replies per prompt (eagerly, the mode's own defaults), score each with reward(prompt index,
    reply ids), and take one clipped policy-gradient step on them. One step per batch of rollouts: the policy
    that sampled is the one trained, so old_logprobs are the current ones detached (ratio 1, clip inactive)."""
    if gc.kl_coef > 0 and ref is None:
        raise ValueError("GRPOConfig.kl_coef > 0 needs a reference model (ref=)")
    G = gc.group
    replies = sample_replies(model, prompts * G, thinking * G, gc.sample, seed)  # row g·P + i: prompt i, reply g
    P = len(prompts)
    r = torch.tensor([[reward(i, replies[g * P + i]) for g in range(G)] for i in range(P)])  # (P, G)
    adv = group_advantages(r).T.reshape(-1)  # (B,) in the rows' order
    ids, mask, valid = collate([(p + x, [False] * len(p) + [True] * len(x)) for p, x in zip(prompts * G, replies)],
                               gc.sample.pad_id)
    sel = mask[:, 1:]  # (B, T - 1): the positions whose next token is a reply token
    device = next(model.parameters()).device
    ref_lp = None
    if gc.kl_coef > 0:
        with torch.no_grad(), _autocast(ref):
            h, _ = ref.hidden_states(ids.to(device))
            ref_lp = token_logprobs(h[:, :-1][sel.to(device)], ref.lm_head.weight, ids[:, 1:][sel].to(device))

    def loss_fn(h, tokens):  # h (N, C), tokens (N,): the reply tokens in the mask's row-major order
        m = sel.to(h.device)

        def grid(x):  # (N,) -> (B, T - 1), zeros off the mask
            return torch.zeros(m.shape, device=h.device, dtype=x.dtype).masked_scatter(m, x)

        lp = token_logprobs(h, model.lm_head.weight, tokens, gc.sample.chunk)
        loss = grpo_loss(grid(lp), grid(lp.detach()), adv.to(h.device), m, clip=gc.clip, kl_coef=gc.kl_coef,
                         ref_logprobs=None if ref_lp is None else grid(ref_lp))
        return loss, {"loss": loss.detach()}

    stats = _step(model, opt, loss_fn, ids, mask, valid, tc, step)
    return stats | {"reward": float(r.mean()), "solved_groups": float((r.amax(1) > 0).float().mean()),
                    "mixed_groups": float((r.amax(1) > r.amin(1)).float().mean()),  # the ones that teach anything
                    "reply_tokens": sum(map(len, replies)) / len(replies)}
