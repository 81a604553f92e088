"""Tests of the tests: plausible wrong answers to exercise 10 must each fail a named test of test_flash_decode.py,
and a correct answer written differently from minqwen3's must pass them all. (This file tests the tests, not your
code.)"""
import math
from types import SimpleNamespace

import torch

from exercises import test_flash_decode as T
from exercises.mutants import mutation_tests, reference_only  # noqa: F401 (an autouse fixture)


def solution(wrong: str | None = None):
    """A student's split-K decode, written plainly (key/value heads copied per query head, maxima by hand);
    `wrong` slips in one mistake."""

    def split_attention(q, k, v, mask):
        B, H, _, D = q.shape
        G = H // k.shape[1]
        dtype = q.dtype if wrong == "computed in the input dtype" else torch.float32
        if wrong == "GQA heads paired with repeat (h % H_kv)":
            k, v = k.repeat(1, G, 1, 1), v.repeat(1, G, 1, 1)
        else:
            k, v = k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)  # (B, H, s, D)
        scores = q.to(dtype) @ k.to(dtype).transpose(2, 3)  # (B, H, 1, s)
        if wrong != "scores not scaled":
            scores = scores / math.sqrt(D)
        if mask is not None and wrong != "mask ignored":
            scores = scores.masked_fill(~mask, -math.inf)
        if wrong == "exp before subtracting the max":
            e = scores.exp()
            total = e.sum(-1, keepdim=True)
            return (e @ v.to(dtype) / total).float(), total.log().squeeze(-1).float()
        m = scores.amax(-1, keepdim=True)
        if wrong == "no guard for a split with nothing allowed":
            safe = m
        else:
            safe = torch.where(m == -math.inf, torch.zeros_like(m), m)
        e = (scores - safe).exp()
        total = e.sum(-1, keepdim=True)
        if wrong == "split output not normalised":
            out = e @ v.to(dtype)
        else:
            out = e @ v.to(dtype) / total.clamp(min=torch.finfo(dtype).tiny)
        lse = safe + total.log()
        if wrong == "a split with nothing allowed gets lse 0":
            lse = torch.where(total == 0, torch.zeros_like(lse), lse)
        if wrong == "lse of the unscaled scores":
            lse = lse * math.sqrt(D)
        return out.float(), lse.squeeze(-1).float()

    def merge_splits(outs, lses):
        outs, lses = outs.float(), lses.float()
        if wrong == "plain average of the splits":
            return outs.mean(0)
        if wrong == "weights exp(lse), max not subtracted":
            w = lses.exp()
        elif wrong == "one max over every row and head":
            w = (lses - lses.max()).exp()
        else:
            w = (lses - lses.max(0).values).exp()
        if wrong == "weights not normalised":
            return (w[..., None] * outs).sum(0)
        return (w[..., None] * outs).sum(0) / w.sum(0)[..., None]

    def split_decode(q, k, v, k_cache, v_cache, pos, mask, split):
        if split < 1:
            raise ValueError(f"split must be >= 1, got {split}")
        S = k_cache.shape[2]
        write = {"new token written one slot late": pos + 1,
                 "new token written one slot early": pos - 1}.get(wrong, pos)
        if wrong != "attends before writing the new token":
            k_cache[:, :, write] = k  # (B, H_kv, 1, D) into slot pos
            v_cache[:, :, write] = v
        n = S // split if wrong == "last, shorter split dropped" else math.ceil(S / split)
        width = split + 1 if wrong == "splits overlap by one slot" else split
        outs, lses = [], []
        for i in range(n):
            a, b = i * split, min(i * split + width, S)
            out, lse = split_attention(q, k_cache[:, :, a:b], v_cache[:, :, a:b], mask[..., a:b])
            outs.append(out)
            lses.append(lse)
        y = merge_splits(torch.stack(outs), torch.stack(lses)).to(q.dtype)
        if wrong == "attends before writing the new token":
            k_cache.index_copy_(2, pos, k)
            v_cache.index_copy_(2, pos, v)
        return y

    return SimpleNamespace(split_attention=split_attention, merge_splits=merge_splits, split_decode=split_decode)


# each wrong answer, and the test that must catch it (others may too)
MUTANTS = {
    "GQA heads paired with repeat (h % H_kv)": "test_split_attention_matches_sdpa",
    "scores not scaled": "test_split_attention_matches_sdpa",
    "mask ignored": "test_split_attention_matches_sdpa",
    "lse of the unscaled scores": "test_split_attention_matches_sdpa",
    "split output not normalised": "test_split_attention_matches_sdpa",
    "computed in the input dtype": "test_bf16_inputs_accumulate_in_fp32",
    "exp before subtracting the max": "test_large_scores_do_not_overflow",
    "no guard for a split with nothing allowed": "test_a_split_with_no_allowed_slot",
    "a split with nothing allowed gets lse 0": "test_a_split_with_no_allowed_slot",
    "plain average of the splits": "test_merge_is_exact",
    "weights not normalised": "test_merge_is_exact",
    "weights exp(lse), max not subtracted": "test_large_scores_do_not_overflow",
    "one max over every row and head": "test_merge_rows_at_different_scales",
    "new token written one slot late": "test_split_decode_writes_the_cache",
    "new token written one slot early": "test_split_decode_writes_the_cache",
    "attends before writing the new token": "test_split_decode_matches_sdpa",
    "last, shorter split dropped": "test_split_decode_matches_sdpa",
    "splits overlap by one slot": "test_split_decode_matches_sdpa",
}


test_a_correct_answer_passes, test_each_wrong_answer_is_caught = mutation_tests(T, solution, MUTANTS)
