"""Tests of the tests: plausible wrong answers to exercise 8 must each fail a named test of test_distill.py, and a
correct answer written differently from minqwen3's must pass them all. (This file tests the tests, not your code.)"""
import math
from types import SimpleNamespace

import torch

from exercises import test_distill as T
from exercises.mutants import mutation_tests, reference_only  # noqa: F401 (an autouse fixture)


def solution(wrong: str | None = None):
    """A student's divergence, written plainly; `wrong` slips in one mistake."""

    def divergence(s, t, mask=None, *, kind="forward", beta=0.5, temperature=1.0, top_k=None):
        if kind not in ("forward", "reverse", "jsd") or not 0 < beta < 1 or temperature <= 0:
            raise ValueError("bad argument")
        if mask is not None and wrong != "mean over every token":
            s, t = s[mask], t[mask]
        if wrong != "teacher not detached":
            t = t.detach()
        dtype = s.dtype if wrong == "computed in the input dtype" else torch.float32
        s, t = s.to(dtype), t.to(dtype)
        ts, tt = temperature, (1.0 if wrong == "temperature on the student only" else temperature)
        ls, lt = torch.log_softmax(s / ts, -1), torch.log_softmax(t / tt, -1)
        if top_k is not None and top_k < s.shape[-1]:
            ids = (s if wrong == "top-k of the student" else t).topk(top_k, -1).indices
            if wrong == "tail mass dropped":  # renormalised over the k ids: the tail is gone
                ls, lt = torch.log_softmax(ls.gather(-1, ids), -1), torch.log_softmax(lt.gather(-1, ids), -1)
            elif wrong == "tail mass dropped, not renormalised":
                ls, lt = ls.gather(-1, ids), lt.gather(-1, ids)
            else:
                ls, lt = (torch.cat([x.gather(-1, ids), x.scatter(-1, ids, -math.inf).logsumexp(-1, True)], -1)
                          for x in (ls, lt))

        def kl(a, b):
            return (a.exp() * (a - b)).sum(-1)

        if wrong == "KL in the wrong direction":
            kind = {"forward": "reverse", "reverse": "forward"}.get(kind, kind)
        if kind == "forward":
            d = kl(lt, ls)
        elif kind == "reverse":
            d = kl(ls, lt)
        else:
            b = 1 - beta if wrong == "beta on the wrong side" else beta
            lm = torch.logaddexp(lt + math.log(b), ls + math.log(1 - b))
            d = beta * kl(lt, lm) + (1 - beta) * kl(ls, lm)
        if wrong == "T² factor":
            d = d * temperature ** 2
        if wrong == "mean over every token":  # masked tokens zeroed, but still counted
            return (d * mask).sum() / d.numel() if mask is not None else d.mean()
        return d.float().mean() if d.numel() else d.float().sum()

    return SimpleNamespace(divergence=divergence)


# each wrong answer, and the test that must catch it (others may too)
MUTANTS = {
    "KL in the wrong direction": "test_forward_and_reverse_match_kl_div",
    "temperature on the student only": "test_temperature_divides_both_sides",
    "tail mass dropped": "test_top_k_keeps_the_tail",
    "tail mass dropped, not renormalised": "test_top_k_keeps_the_tail",
    "mean over every token": "test_mask_mean_over_true_tokens",
    "top-k of the student": "test_top_k_keeps_the_tail",
    "teacher not detached": "test_fp32_result_and_gradient_to_the_student_only",
    "computed in the input dtype": "test_fp32_result_and_gradient_to_the_student_only",
    "beta on the wrong side": "test_jsd",
    "T² factor": "test_temperature_divides_both_sides",
}


test_a_correct_answer_passes, test_each_wrong_answer_is_caught = mutation_tests(T, solution, MUTANTS)
