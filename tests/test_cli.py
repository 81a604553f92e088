"""The chat and generate commands end to end, on a saved checkpoint of the rigged bigram model from test_chat."""
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import minqwen3
from minqwen3 import cli
import minqwen3.assistant as chat_module
import minqwen3.generation as gen_module
from minqwen3 import EARLY_STOP
from minqwen3.tokenizer import ASSETS
from test_chat import bigram_model

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory) -> Path:
    """A checkpoint folder holding what an official one does: config.json, model.safetensors, tokenizer.json."""
    d = tmp_path_factory.mktemp("bigram")
    minqwen3.save_pretrained(bigram_model(), d)
    shutil.copy(ASSETS / "tokenizer.json", d / "tokenizer.json")
    return d


def run(capsys, *argv) -> tuple[int, str, str]:
    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


def test_chat_one_prompt_shows_thinking_then_answer(ckpt, capsys):
    rc, out, err = run(capsys, "chat", "--model", ckpt, "--seed", "0", "Say hi.")
    assert rc == 0
    assert out == "thinking: Hmm ok so\n\nHi!\n"
    assert "9 tokens, 5 thinking" in err and "tokens/s" in err


def test_chat_no_think(ckpt, capsys):
    rc, out, err = run(capsys, "chat", "--model", ckpt, "--no-think", "Say hi.")
    assert (rc, out) == (0, "Hi!\n")
    assert "3 tokens;" in err


def test_chat_thinking_budget(ckpt, capsys):
    rc, out, err = run(capsys, "chat", "--model", ckpt, "--thinking-budget", "1", "--temperature", "0", "Say hi.")
    assert rc == 0
    assert out == "thinking: Hmm" + EARLY_STOP.split("</think>")[0].rstrip("\n") + "\n\nHi!\n"
    assert "thinking budget of 1 reached" in err


def test_chat_max_new_tokens(ckpt, capsys):
    rc, out, err = run(capsys, "chat", "--model", ckpt, "--max-new-tokens", "3", "Say hi.")
    assert (rc, out) == (0, "thinking: Hmm ok\n")
    assert "cut off at --max-new-tokens" in err


def test_chat_color_on_a_terminal():
    buf = io.StringIO()
    p = cli.Printer(buf, color=True)
    for kind, piece in [("reasoning", "<think>"), ("reasoning", "\n"), ("reasoning", "Hmm"), ("reasoning", "\n"),
                        ("reasoning", "</think>"), ("content", "\n\n"), ("content", "Hi")]:
        p(kind, piece)
    p.end()
    assert buf.getvalue() == "\033[2mthinking: Hmm\033[0m\n\nHi\n"


def test_repl_two_turns_then_eof(ckpt, capsys, monkeypatch):
    seen = []
    real = chat_module.chat
    monkeypatch.setattr(chat_module, "chat", lambda m, t, messages, **kw: seen.append(list(messages)) or
                        real(m, t, messages, **kw))
    monkeypatch.setattr(sys, "stdin", io.StringIO("Say hi.\n\nAgain /no_think\n"))
    rc, out, err = run(capsys, "chat", "--model", ckpt, "--system", "Be brief.")
    assert rc == 0
    assert out.count("Hi!") == 2 and out.count("thinking: Hmm ok so") == 2
    assert "/exit" in err
    # the second turn sees the first answer's content, not its reasoning
    assert seen[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                       {"role": "assistant", "content": "Hi!"}, {"role": "user", "content": "Again /no_think"}]
    assert len(seen) == 2  # the empty line was skipped


def test_repl_exit_command(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/exit\nSay hi.\n"))
    rc, out, _ = run(capsys, "chat", "--model", ckpt)
    assert rc == 0 and "Hi!" not in out


def test_generate_raw_completion(ckpt, capsys):
    rc, out, err = run(capsys, "generate", "--model", ckpt, "--temperature", "0", "--max-new-tokens", "5", "Hmm")
    assert rc == 0
    assert out == "Hmm ok so</think>\n\nHi\n"  # no template: the bigram chain from "Hmm"
    assert "5 tokens;" in err and "tokens/s" in err


def test_fast_path_by_device_and_eager_flag(ckpt, capsys, monkeypatch):
    """chat and generate leave the choice to the device (fast=None) unless --eager says otherwise."""
    seen, real = [], gen_module.generate

    def spy(*a, **kw):
        seen.append(kw["fast"])
        return real(*a, **kw)
    monkeypatch.setattr(gen_module, "generate", spy)
    monkeypatch.setattr(chat_module, "generate", spy)
    for cmd in (["generate"], ["chat", "--temperature", "0"]):
        for flag, want in (([], None), (["--eager"], False)):
            seen.clear()
            assert run(capsys, *cmd, *flag, "--model", ckpt, "--max-new-tokens", "3", "Hmm")[0] == 0
            assert seen and set(seen) == {want}


@pytest.mark.parametrize("make", ["missing", "empty", "config-only", "weights-only"])
def test_missing_or_incomplete_folder(ckpt, tmp_path, capsys, make):
    d = tmp_path / "m"
    if make != "missing":
        d.mkdir()
    if make == "config-only":
        shutil.copy(ckpt / "config.json", d)
    if make == "weights-only":
        shutil.copy(ckpt / "model.safetensors", d)
    rc, out, err = run(capsys, "chat", "--model", d, "hi")
    assert rc == 1 and out == ""
    assert str(d) in err and "Traceback" not in err
    for must in ("config.json", "model.safetensors", "tokenizer.json"):  # what a checkpoint folder holds
        assert must in err
    if make == "config-only":
        assert "lacks model.safetensors" in err
    if make == "weights-only":
        assert "lacks config.json" in err


def test_no_tokenizer_falls_back_to_the_bundled_one(ckpt, tmp_path, capsys):
    d = tmp_path / "m"
    d.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(ckpt / f, d)
    rc, out, err = run(capsys, "chat", "--model", d, "--no-think", "Say hi.")
    assert (rc, out) == (0, "Hi!\n")
    assert "no tokenizer.json" in err and "bundled" in err


def test_default_model(ckpt, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, "chat", "hi")
    assert rc == 1 and "weights/demo-dense" in err and "download Qwen/Qwen3-0.6B" in err and "--model" in err
    (tmp_path / "weights").mkdir()
    os.symlink(ckpt, tmp_path / "weights" / "Qwen3-0.6B")
    (tmp_path / "weights" / "demo-dense").mkdir()  # present but empty: skipped
    rc, out, err = run(capsys, "chat", "--no-think", "Say hi.")
    assert (rc, out) == (0, "Hi!\n") and "weights/Qwen3-0.6B" in err


@pytest.mark.slow
def test_python_m_minqwen3_chat(ckpt):
    """The real entry point, in a fresh interpreter: a conversation fed on stdin."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "minqwen3", "chat", "--model", str(ckpt), "--seed", "1"],
                       input="Say hi.\nAnd again.\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Hi!") == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("tokens/s") == 2
