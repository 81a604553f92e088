"""Exercise 9 · GRPO: group advantages and the clipped policy-gradient loss.  Read notebooks/08_distillation.ipynb
(its GRPO section) first.

Check your work:  pytest exercises/test_rl.py --impl student
"""
import torch


def group_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """rewards (P, G): G replies to each of P prompts -> advantages (P, G), float32.

    Each reward minus its group's (row's) mean, divided by the group's standard deviation plus eps. The standard
    deviation is the population one (divide by G, not G - 1). A group whose rewards are all equal gets 0 everywhere.
    Raise ValueError naming `rewards` unless rewards is 2-D with G >= 2.
    """
    raise NotImplementedError("exercise 9: group_advantages")


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor, *,
              clip: float = 0.2, kl_coef: float = 0.0, ref_logprobs: torch.Tensor | None = None) -> torch.Tensor:
    """The GRPO objective, negated (a loss to minimise), as a float32 scalar.

    logprobs (B, T): each token's log-prob under the policy being trained (gradients flow through it);
    old_logprobs (B, T): under the policy that sampled the replies (a constant); advantages (B,): one per reply
    (a constant); mask (B, T) bool: true at the reply tokens; ref_logprobs (B, T): under the reference model.

    Per token:  -min(ρ·A, clip(ρ, 1 - clip, 1 + clip)·A),  ρ = exp(logprobs - old_logprobs),
    plus, when kl_coef > 0,  kl_coef · (exp(ref - logprobs) - (ref - logprobs) - 1).
    Average over each reply's masked tokens, then over the B replies.
    Raise ValueError naming `clip` if clip <= 0, and naming `kl_coef` if kl_coef > 0 without ref_logprobs.
    """
    raise NotImplementedError("exercise 9: grpo_loss")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# group_advantages:
# 1. r = rewards.float(); mean and std over dim 1 with keepdim=True; std(..., correction=0) is the population one;
# 2. (r - mean) / (std + eps): with all rewards equal the numerator is 0, so the eps keeps 0 / 0 away.
# grpo_loss:
# 1. the ratio: torch.exp(logprobs - old_logprobs.detach()); advantages[:, None] broadcasts one per reply over T;
# 2. the clipped objective takes the MINIMUM of the two products (the pessimistic one), and the loss is its negative;
#    where the ratio has left the range in the advantage's favour, the clipped product is a constant: no gradient;
# 3. the KL term is the "k3" estimate, >= 0 and 0 when the two log-probs agree; detach ref_logprobs;
# 4. per reply: (per_token * mask).sum(1) / mask.sum(1); then .mean() over replies. Not the mean over all tokens
#    at once: that weighs long replies more.
