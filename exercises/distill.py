"""Exercise 8 · Distillation divergences.  Read notebooks/08_distillation.ipynb first.

Check your work:  pytest exercises/test_distill.py --impl student
"""
import torch


def divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None, *,
               kind: str = "forward", beta: float = 0.5, temperature: float = 1.0,
               top_k: int | None = None) -> torch.Tensor:
    """The mean, over the tokens where mask (B, T) is true (every token when mask is None), of a divergence between
    p_S = softmax(student_logits / temperature) and p_T = softmax(teacher_logits / temperature), logits (B, T, V).

    kind="forward":  KL(p_T ‖ p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))   (the teacher weights the sum)
    kind="reverse":  KL(p_S ‖ p_T)                                               (the student weights the sum)
    kind="jsd":      beta·KL(p_T ‖ M) + (1 - beta)·KL(p_S ‖ M),  M = beta·p_T + (1 - beta)·p_S
    top_k=k: only the teacher's k most likely ids of each token are kept, plus ONE extra class, the "tail",
    holding the rest of each distribution's mass (the teacher's rest for p_T, the student's rest for p_S): the
    divergence is then over k + 1 classes. k >= V is the full divergence.

    Returns a float32 scalar whatever the input dtype; gradients reach the student only; no T² factor.
    """
    raise NotImplementedError("exercise 8: divergence")

# ---------------------------------------------------------------- hints (read them only if you are stuck)
# divergence, step by step:
# 1. raise ValueError for a kind not in ("forward", "reverse", "jsd"), beta outside (0, 1), temperature <= 0;
# 2. keep only the masked tokens: student_logits[mask] is (N, V) (the mean is over these N, not over B·T);
# 3. the teacher is a fixed target: .detach() it; cast both to float32, divide BOTH by the temperature, and take
#    torch.log_softmax(..., dim=-1) (log-probabilities are more accurate than log(softmax));
# 4. with top_k < V: ids = the teacher's topk(k).indices; gather both log-probs at ids (N, k); each tail is the
#    logsumexp of that side's log-probs outside ids (scatter -inf at ids first), appended as class k + 1;
# 5. per token, sum over the classes; then the mean over the N tokens (0 when N is 0).
# Tip: write kl(a, b) = (a.exp() * (a - b)).sum(-1) for log-probs a, b; log M = torch.logaddexp(
# log(beta) + log p_T, log(1 - beta) + log p_S).
