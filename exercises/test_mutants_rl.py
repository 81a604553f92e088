"""Tests of the tests: plausible wrong answers to exercise 9 must each fail a named test of test_rl.py, and a correct
answer written differently from minqwen3's must pass them all. (This file tests the tests, not your code.)"""
from types import SimpleNamespace

import torch

from exercises import test_rl as T
from exercises.mutants import mutation_tests, reference_only  # noqa: F401 (an autouse fixture)


def solution(wrong: str | None = None):
    """A student's GRPO pieces, written plainly; `wrong` slips in one mistake."""

    def group_advantages(rewards, eps=1e-4):
        if rewards.dim() != 2 or rewards.shape[1] < 2:
            raise ValueError(f"rewards must be (P, G >= 2), got {tuple(rewards.shape)}")
        r = rewards.float()
        if wrong == "normalised over the whole batch":
            mean, var = r.mean(), ((r - r.mean()) ** 2).mean()
        else:
            mean = r.sum(1, keepdim=True) / r.shape[1]
            var = ((r - mean) ** 2).sum(1, keepdim=True) / (r.shape[1] - (1 if wrong == "sample std (G - 1)" else 0))
        if wrong == "mean not subtracted":
            return r / (var.sqrt() + eps)
        if wrong == "not divided by the std":
            return r - mean
        if wrong == "eps inside the square root":
            return (r - mean) / (var + eps).sqrt()
        return (r - mean) / (var.sqrt() + eps)

    def grpo_loss(logprobs, old_logprobs, advantages, mask, *, clip=0.2, kl_coef=0.0, ref_logprobs=None):
        if clip <= 0:
            raise ValueError("clip must be > 0")
        if kl_coef > 0 and ref_logprobs is None:
            raise ValueError("kl_coef > 0 needs ref_logprobs")
        lp = logprobs.float()
        old = old_logprobs.float() if wrong == "old log-probs not detached" else old_logprobs.detach().float()
        adv = advantages.float() if wrong == "advantages not detached" else advantages.detach().float()
        ratio = (lp - old).exp()
        a = adv[:, None]
        if wrong == "ratio the wrong way round":
            ratio = (old - lp).exp()
        clipped = ratio.clamp(1 - clip, 1 + clip) * a
        if wrong == "max instead of min":
            per = -torch.maximum(ratio * a, clipped)
        elif wrong == "clipped term only":
            per = -clipped
        elif wrong == "log-ratio clipped, no min":
            per = -(lp - old).clamp(-clip, clip).exp() * a
        elif wrong == "log-prob times advantage (no ratio)":
            per = -lp * a
        else:
            per = -torch.min(ratio * a, clipped)
        if kl_coef > 0:
            d = ref_logprobs.detach().float() - lp
            if wrong == "KL as the plain log-ratio":
                per = per + kl_coef * (lp - ref_logprobs.detach().float())
            elif wrong == "KL sign flipped":
                per = per - kl_coef * (d.exp() - d - 1)
            else:
                per = per + kl_coef * (d.exp() - d - 1)
        m = mask.float()
        if wrong == "mean over every token":
            return (per * m).sum() / m.sum()
        if wrong == "mask ignored":
            return per.mean(1).mean()
        if wrong == "sum per reply":
            return (per * m).sum(1).mean()
        out = torch.stack([(per[b] * m[b]).sum() / m[b].sum() for b in range(per.shape[0])]).mean()
        return out.double() if wrong == "float64 result" else out

    return SimpleNamespace(group_advantages=group_advantages, grpo_loss=grpo_loss)


# each wrong answer, and the test that must catch it (others may too)
MUTANTS = {
    "normalised over the whole batch": "test_advantages",
    "sample std (G - 1)": "test_advantages",
    "mean not subtracted": "test_advantages",
    "not divided by the std": "test_advantages",
    "eps inside the square root": "test_advantages",
    "old log-probs not detached": "test_constants_get_no_gradient",
    "advantages not detached": "test_constants_get_no_gradient",
    "ratio the wrong way round": "test_loss_and_gradient",
    "max instead of min": "test_loss_and_gradient",
    "clipped term only": "test_loss_and_gradient",
    "log-ratio clipped, no min": "test_loss_and_gradient",
    "log-prob times advantage (no ratio)": "test_loss_and_gradient",
    "KL as the plain log-ratio": "test_kl_penalty",
    "KL sign flipped": "test_kl_penalty",
    "mean over every token": "test_on_policy_gradient_is_minus_the_advantage_per_token",
    "mask ignored": "test_masked_tokens_count_for_nothing",
    "sum per reply": "test_loss_and_gradient",
    "float64 result": "test_loss_and_gradient",
}


test_a_correct_answer_passes, test_each_wrong_answer_is_caught = mutation_tests(T, solution, MUTANTS)
