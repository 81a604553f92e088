"""Mutation testing: every plausible wrong solution in mutants.py must fail its exercise's tests.

Each case runs the exercise's test that catches the mistake (CATCHES) in-process (pytest.main), with conftest's
`impl` fixture returning the mutant, and that test must fail. A mutant that passes means the tests cannot tell that
mistake from a right answer: add a test for it. To find which test catches a new mutant, run its whole file:
    python -c "from exercises.test_mutants import *; print(run('test_rope.py', MUTANTS['test_rope.py'][NAME]))"
"""
import contextlib
import io
from pathlib import Path

import pytest

from exercises.mutants import CORRECT, MUTANTS, reference_only  # noqa: F401 (an autouse fixture)

HERE = Path(__file__).resolve().parent
CATCHES = {  # (test file, mistake) -> the test that fails on it (running one test keeps this quick)
    ("test_rmsnorm.py", "statistics in the input dtype"): "test_bf16_matches_transformers_bit_for_bit",
    ("test_rmsnorm.py", "gain applied before the cast back"): "test_bf16_matches_transformers_bit_for_bit",
    ("test_rmsnorm.py", "mean subtracted (LayerNorm)"): "test_fp32_matches_torch[shape0]",
    ("test_rmsnorm.py", "eps outside the square root"): "test_eps_is_used",
    ("test_rmsnorm.py", "eps ignored (always 1e-6)"): "test_eps_is_used",
    ("test_rmsnorm.py", "gain not initialised to ones"): "test_fp32_matches_torch[shape0]",
    ("test_rope.py", "YaRN attention_factor ignored"): "test_attention_factor_and_legacy_type_key",
    ("test_rope.py", "legacy 'type' key not read"): "test_attention_factor_and_legacy_type_key",
    ("test_rope.py", "angles in the model's dtype"): "test_angles_in_float32_at_large_positions",
    ("test_rope.py", "pairs (2i, 2i+1) instead of rotate-half"): "test_apply_rope_matches_transformers",
    ("test_rope.py", "rotate-half with the sign flipped"): "test_apply_rope_matches_transformers",
    ("test_rope.py", "frequencies theta^(i/D) instead of theta^(2i/D)"): "test_cos_sin_match_transformers[plain]",
    ("test_rope.py", "YaRN ramp reversed"): "test_cos_sin_match_transformers[qwen3_yarn]",
    ("test_rope.py", "YaRN bounds not rounded (truncate ignored)"): "test_cos_sin_match_transformers[qwen3_yarn]",
    ("test_rope.py", "YaRN attention scale left out"): "test_cos_sin_match_transformers[qwen3_yarn]",
    ("test_moe.py", "top-k weights not renormalised"): "test_block_matches_transformers[True-decode-gather]",
    ("test_moe.py", "top-k weights always renormalised"): "test_block_matches_transformers[False-decode-gather]",
    ("test_moe.py", "sorted dispatch: the sort not undone"): "test_sorted_dispatch_itself",
    ("test_moe.py", "sorted dispatch: block ends off by one expert"): "test_sorted_dispatch_itself",
    ("test_moe.py", "only the gather path written"): "test_sorted_dispatch_itself",
    ("test_moe.py", "loss: f counted per token (sums to k)"): "test_loss_matches_transformers",
    ("test_moe.py", "loss: padding tokens in P"): "test_loss_matches_transformers",
    ("test_moe.py", "loss: global counts ignored"): "test_global_batch_counts",
    ("test_moe.py", "loss: global counts summed over the layers"): "test_global_counts_per_layer",
    ("test_moe.py", "expert_counts ignores the mask"): "test_expert_counts",
    ("test_chat_template.py", "enable_thinking=None turns thinking off"):
        "test_matches_official_template[thinking_none_is_on]",
    ("test_chat_template.py", "tool schemas ASCII-escaped"): "test_matches_official_template[tools_with_system]",
    ("test_chat_template.py", "last query: any user message, tool results included"): "test_last_query_index",
    ("test_chat_template.py", "parse_reply: content after the first </think>"):
        "test_tool_response_text_and_a_second_closing_tag",
    ("test_chat_template.py", "last query: a tool response told by its start alone"):
        "test_tool_response_text_and_a_second_closing_tag",
    ("test_chat_template.py", "reasoning never dropped from history"):
        "test_matches_official_template[reasoning_dropped_before_last_query]",
    ("test_chat_template.py", "parse_reply keeps the stop token"): "test_parse_reply",
    ("test_sampling.py", "penalty only when sampling"): "test_presence_penalty_greedy",
    ("test_sampling.py", "penalty multiplies (repetition-penalty style)"): "test_presence_penalty_is_a_flat_subtraction",
    ("test_sampling.py", "temperature after the filters"):
        "test_draws_follow_the_filtered_distribution[temperature before top-p]",
    ("test_sampling.py", "top-p on the distribution before top-k"):
        "test_draws_follow_the_filtered_distribution[qwen non-thinking]",
    ("test_sampling.py", "top-p drops the token that crosses it"):
        "test_draws_follow_the_filtered_distribution[top-p 0.5 keeps the crossing token]",
    ("test_sampling.py", "min-p as an absolute threshold"): "test_draws_follow_the_filtered_distribution[min-p 0.2]",
    ("test_sampling.py", "generator ignored"): "test_the_generator_makes_draws_reproducible",
    ("test_sampling.py", "penalty after the temperature"): "test_presence_penalty_before_temperature",
    ("test_sampling.py", "top-p without sorting"):
        "test_filters_on_unsorted_logits_and_in_order[top-p on unsorted logits]",
    ("test_sampling.py", "min-p before top-p"): "test_filters_on_unsorted_logits_and_in_order[min-p after top-p]",
    ("test_sampling.py", "min-p against the batch's largest"): "test_min_p_compares_with_each_rows_own_largest",
    ("test_assistant.py", "no blank line before the sentence"): "test_early_stop_ids[thought ends in a word]",
    ("test_assistant.py", "blank line always added (two after a blank line)"):
        "test_early_stop_ids[thought ends in a blank line]",
    ("test_assistant.py", "a thought ending in one newline gets two more"):
        "test_early_stop_ids[thought ends in one newline]",
    ("test_assistant.py", "only the last token looked at"): "test_early_stop_ids[blank line in two tokens]",
    ("test_assistant.py", "</think> encoded as text"): "test_early_stop_ids[thought ends in a word]",
    ("test_assistant.py", "the '.' after </think> left out"): "test_tokens_of_the_common_case",
    ("test_model.py", "rope_scaling not passed on"): "test_yarn_config_reaches_rope",
    ("test_model.py", "attention not causal"): "test_causal",
    ("test_model.py", "every layer MoE (mlp_only_layers ignored)"): "test_logits_match_transformers[moe-untied]",
    ("test_model.py", "post-norm instead of pre-norm"): "test_logits_match_transformers[dense-untied]",
    ("test_model.py", "no residual around the MLP"): "test_logits_match_transformers[dense-untied]",
    ("test_model.py", "head a copy of the embedding, not tied"): "test_head_tied_or_not[dense-tied]",
    ("test_model.py", "RoPE on the queries only"): "test_logits_match_transformers[dense-untied]",
    ("test_model.py", "final norm left out"): "test_logits_match_transformers[dense-untied]",
    ("test_checkpoint.py", "experts stacked in the keys' string order"): "test_experts_land_in_their_rows",
    ("test_checkpoint.py", "never strict"): "test_strict_names_missing_and_unexpected",
    ("test_checkpoint.py", "tied model refuses a stored head"): "test_tied_model_accepts_a_stored_head",
    ("test_checkpoint.py", "state dict keeps the tied head"): "test_state_dict_official_is_the_file[tied]",
    ("test_checkpoint.py", "shard index ignored"): "test_shards_and_dtype",
    ("test_checkpoint.py", "shape never checked"): "test_wrong_shape_is_named",
    ("test_checkpoint.py", "dtype ignored"): "test_shards_and_dtype",
    ("test_checkpoint.py", "index read before model.safetensors"): "test_model_safetensors_is_read_before_an_index",
    ("test_checkpoint.py", "a stored head never compared"): "test_tied_model_refuses_a_stored_head_that_differs",
}


class _Impl:
    """A pytest plugin: hands the module to conftest's impl fixture, records which tests failed."""

    def __init__(self, module):
        self.module, self.failed = module, []

    def pytest_configure(self, config):
        config.exercise_impl = self.module

    def pytest_runtest_logreport(self, report):
        if report.failed:
            self.failed.append(report.nodeid.rsplit("::", 1)[-1])


def run(test_file: str, module, first_failure: bool = True, test: str | None = None) -> tuple[int, list[str]]:
    plugin = _Impl(module)
    target = str(HERE / test_file) + (f"::{test}" if test and "[" in test else "")
    select = ["-k", test] if test and "[" not in test else []
    args = [target, *select, "-q", "-p", "no:cacheprovider", "--no-header", "-W", "ignore"]
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        code = pytest.main(args + (["-x"] if first_failure else []), plugins=[plugin])
    return int(code), plugin.failed


@pytest.mark.parametrize("test_file,mistake", [(f, m) for f, ms in MUTANTS.items() for m in ms])
def test_wrong_solution_is_caught(test_file, mistake):
    test = CATCHES[test_file, mistake]
    code, failed = run(test_file, MUTANTS[test_file][mistake], test=test)
    assert code == pytest.ExitCode.TESTS_FAILED and failed, f"{test_file}::{test} passes with the mistake: {mistake}"


@pytest.mark.parametrize("test_file", CORRECT)
def test_the_unmutated_solution_passes(test_file):
    """The switches off, the compact solutions the mutants come from are right (else the mutants prove nothing)."""
    code, failed = run(test_file, CORRECT[test_file], first_failure=False)
    assert code == pytest.ExitCode.OK, f"{test_file}: {failed}"
