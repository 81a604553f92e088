"""Exercise 7b · the thinking budget's early-stop text: against the official tokenizer (tokenizers, reading the
bundled tokenizer.json directly) and the report's sentence written out by hand. Never against minqwen3 itself."""
import pytest

from minqwen3.tokenizer import Tokenizer  # given to early_stop_ids: part of the setup, not of the exercise

tokenizers = pytest.importorskip("tokenizers")
from pathlib import Path  # noqa: E402

TOKENIZER_JSON = Path(__file__).resolve().parents[1] / "minqwen3" / "assets" / "tokenizer.json"
# the Qwen3 tech report (section 4.3), typed out here: the sentence, the closing tag, the "." after it
SENTENCE = ("Considering the limited time by the user, I have to give the solution based on the thinking "
            "directly now.")
REPORT_TEXT = SENTENCE + "\n</think>.\n\n"
END_THINK, THINK, NL, NLNL = 151668, 151667, 198, 271
PROMPT_END = "<|im_start|>user\nSay hi.<|im_end|>\n<|im_start|>assistant\n<think>"  # a thinking turn's start


@pytest.fixture(scope="module")
def official():
    return tokenizers.Tokenizer.from_file(str(TOKENIZER_JSON))


@pytest.fixture(scope="module")
def tok():
    return Tokenizer.default()


def ids(official, text):
    return official.encode(text, add_special_tokens=False).ids


# the thought so far (text after <think>, or ids spelled out) -> the newlines that must come before the sentence
CASES = {
    "budget 0: right after <think>": ("", "\n\n"),
    "thought ends in a word": ("Hmm ok so", "\n\n"),
    "thought ends in one newline": ("Hmm ok so\n", "\n"),
    "thought ends in a blank line": ("Hmm ok so\n\n", ""),
    "thought ends in three newlines, one token": ("Hmm, a\n\n\n", ""),
    "blank line in two tokens": ([80022, NL, NL], ""),
    "blank line then a word": ("Hmm\n\nok", "\n\n"),
}


@pytest.mark.parametrize("case", CASES)
def test_early_stop_ids(impl, official, tok, case):
    thought, newlines = CASES[case]
    thought_ids = thought if isinstance(thought, list) else ids(official, thought)
    before = ids(official, PROMPT_END) + thought_ids
    got = impl.early_stop_ids(tok, before)
    assert isinstance(got, list) and all(isinstance(i, int) for i in got), "a list of int ids"
    text = official.decode(got, skip_special_tokens=False)
    assert text == newlines + REPORT_TEXT, f"the text fed after {thought!r} should be {newlines + REPORT_TEXT!r}"
    assert got == ids(official, newlines + REPORT_TEXT), "the newlines and the sentence encoded together"
    assert got.count(END_THINK) == 1, "</think> is one control token (151668), not spelled out"


def test_tokens_of_the_common_case(impl, tok, official):
    """Written out: after a word, "\\n\\n" is one token (271), then the sentence, </think> (151668) and ".\\n\\n"."""
    got = impl.early_stop_ids(tok, ids(official, PROMPT_END + "Hmm"))
    assert impl.EARLY_STOP == REPORT_TEXT
    assert got[0] == NLNL and got[1:] == ids(official, SENTENCE + "\n") + [END_THINK, 382]


# ---------------------------------------------------------------- your early_stop_ids inside minqwen3's chat()
HMM, OK, SO, HI, BANG, IM_END, DOT_NLNL = 80022, 5394, 773, 13048, 0, 151645, 382  # "Hmm" " ok" " so" "Hi" "!"
CHAIN = {NL: THINK, THINK: HMM, HMM: OK, OK: SO, SO: END_THINK, END_THINK: NLNL, NLNL: HI, DOT_NLNL: HI,
         HI: BANG, BANG: IM_END}  # "<think>Hmm ok so</think>\n\nHi!<|im_end|>", and "Hi!" after the early stop


@pytest.fixture(scope="module")
def rigged():
    """A real Qwen3 (the official vocabulary, hidden size 32) that follows CHAIN token by token: attention and MLP
    outputs zeroed, orthonormal embeddings for the chain's tokens, lm_head row b along the embedding of a for a -> b."""
    import torch

    import minqwen3
    cfg = minqwen3.Qwen3Config(vocab_size=151936, hidden_size=32, intermediate_size=32, num_hidden_layers=1,
                               num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=512)
    torch.manual_seed(0)
    model = minqwen3.Qwen3(cfg).eval()
    ids_ = sorted(set(CHAIN) | set(CHAIN.values()))
    q = torch.linalg.qr(torch.randn(32, len(ids_)))[0].T * 32 ** 0.5
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
        model.model.embed_tokens.weight[ids_] = q
        for a, b in CHAIN.items():
            model.lm_head.weight[b] += 40 * q[ids_.index(a)] / 32
    return model


@pytest.mark.parametrize("budget", [0, 1, 3])
def test_chat_with_your_early_stop(impl, tok, rigged, budget, monkeypatch):
    """The model thinks "Hmm ok so" then closes </think> (4 thinking tokens): a budget under 4 cuts the thought
    after `budget` tokens and feeds your early-stop text (tests/test_assistant.py checks that no budget, or one of 4 or
    more, changes nothing: that is chat()'s logic, not this exercise's)."""
    import minqwen3.assistant
    monkeypatch.setattr(minqwen3.assistant, "early_stop_ids", impl.early_stop_ids)
    r = minqwen3.assistant.chat(rigged, tok, "Say hi.", thinking_budget=budget, temperature=0.0)
    thought = "".join(["Hmm", " ok", " so"][:budget])
    assert r.budget_hit and r.text == "<think>" + thought + "\n\n" + REPORT_TEXT + "Hi!"
    assert (r.reasoning, r.content) == ((thought + "\n\n" + SENTENCE).lstrip("\n"), "Hi!")
