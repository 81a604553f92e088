"""The chat and generate commands end to end, on a saved checkpoint of the rigged bigram model from test_assistant."""
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import minqwen3
from minqwen3.chat_template import apply_chat_template
from minqwen3 import cli
import minqwen3.assistant as chat_module
import minqwen3.generation as gen_module
from minqwen3 import EARLY_STOP
from minqwen3.tokenizer import ASSETS
from test_assistant import bigram_model

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
    assert out == "thinking: Hmm\n\n" + EARLY_STOP.split("</think>")[0].rstrip("\n") + "\n\nHi!\n"
    assert "thinking budget of 1 reached" in err


def test_chat_refuses_a_thinking_budget_without_thinking(ckpt, capsys):
    # --no-think never thinks, so a budget would be ignored without a word: argparse says so before any loading
    with pytest.raises(SystemExit) as e:
        run(capsys, "chat", "--model", ckpt, "--no-think", "--thinking-budget", "5", "Say hi.")
    out, err = capsys.readouterr()
    assert e.value.code == 2 and out == ""
    assert "--thinking-budget: not allowed with argument --no-think" in err


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
    assert "/exit" in err and "/think and /no_think in a message switch thinking" in err
    # the history keeps the first answer's reasoning (Reply.message()); the template leaves it out of the second
    # turn's prompt, as it comes before the last user message
    assert seen[1] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."},
                       {"role": "assistant", "content": "Hi!", "reasoning_content": "Hmm ok so"},
                       {"role": "user", "content": "Again /no_think"}]
    assert "Hmm" not in apply_chat_template(seen[1], add_generation_prompt=True)
    assert len(seen) == 2  # the empty line was skipped


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory) -> Path:
    """The bigram checkpoint with a 40-token context."""
    d = tmp_path_factory.mktemp("bigram40")
    minqwen3.save_pretrained(bigram_model(max_position_embeddings=40), d)
    shutil.copy(ASSETS / "tokenizer.json", d / "tokenizer.json")
    return d


def test_a_message_past_the_context_is_left_out_and_the_conversation_goes_on(small_ckpt, capsys, monkeypatch):
    """A message that does not fit is refused before any model work; the conversation keeps what it had, the
    next message is answered, /reset forgets the history, and the exit status says a line was refused."""
    seen = []
    real = chat_module.chat
    monkeypatch.setattr(chat_module, "chat", lambda m, t, messages, **kw: seen.append(list(messages)) or
                        real(m, t, messages, **kw))
    monkeypatch.setattr(sys, "stdin", io.StringIO("word " * 60 + "\nSay hi.\n" + "word " * 60 + "\n/reset\nSay hi.\n"))
    rc, out, err = run(capsys, "chat", "--model", small_ckpt, "--no-think")
    assert rc == 1 and out.count("Hi!") == 2
    assert err.count("this message was left out: type a shorter one") == 2
    assert err.count("or /reset to start over") == 1  # only once there is a history to forget
    assert "the model's context is 40 tokens" in err
    say_hi = [{"role": "user", "content": "Say hi."}]
    assert seen[1] == say_hi and seen[2][:2] == say_hi + [{"role": "assistant", "content": "Hi!",
                                                            "reasoning_content": ""}]
    assert seen[3] == say_hi  # after /reset


def test_a_reply_cut_by_the_context_says_so(small_ckpt, capsys):
    tok = minqwen3.Tokenizer.from_pretrained(small_ckpt)
    words = next(n for n in range(60) if len(tok.encode_messages(
        [{"role": "user", "content": "Say hi." + " x" * n}], add_generation_prompt=True, enable_thinking=False)) >= 38)
    rc, out, err = run(capsys, "chat", "--model", small_ckpt, "--no-think", "Say hi." + " x" * words)
    assert rc == 0 and "cut off: the model's context is full" in err and "--max-new-tokens" not in err


@pytest.mark.parametrize("flag, value", [("--prompt", "0"), ("--prefill", "-5"), ("--repeats", "0")])
def test_bench_flags_are_checked_before_measuring(ckpt, capsys, monkeypatch, flag, value):
    import minqwen3.bench as bench
    monkeypatch.setattr(bench, "copy_bandwidth", lambda *a: pytest.fail("measured before checking the flags"))
    rc, out, err = run(capsys, "bench", "--model", ckpt, "--device", "cpu", "--new", "2", flag, value)
    assert rc != 0 and f"{flag} {value}: must be at least" in err


@pytest.mark.parametrize("models, flags, message", [
    ([], ["--prompt", "30", "--new", "20"], "--prompt 30 + --new 20 tokens: {m}'s context is 40 tokens"),
    ([], ["--prefill", "40"], "--prefill 40: {m}'s context is 40 tokens"),
    (["Qwen3-06B"], [], "unknown model 'Qwen3-06B'"),  # a second model's typo, found before the first is measured
    (["/no/such/folder"], [], "--model /no/such/folder: no such folder"),
    ([], ["--out", "/no/such/folder/x.json"], "--out /no/such/folder/x.json: cannot write into"),
    ([], ["--out", "."], "--out .: a folder")])
def test_bench_refuses_what_it_cannot_measure_before_measuring(small_ckpt, capsys, monkeypatch, models, flags,
                                                               message):
    """A prompt and new tokens past a model's context made generate() stop early while tok/s counted every token
    (135% of the bandwidth limit on a CPU); a second model's typo or a bad --out came after the first's numbers."""
    import minqwen3.bench as bench
    monkeypatch.setattr(bench, "copy_bandwidth", lambda *a: pytest.fail("measured before checking the flags"))
    rc, out, err = run(capsys, "bench", "--model", small_ckpt, *models, "--device", "cpu", "--prompt", "8", "--new",
                       "4", *flags)
    assert rc != 0 and message.format(m=small_ckpt) in err, err


def test_bench_takes_official_names_with_their_organisation():
    from minqwen3.bench import model_context
    assert model_context("Qwen/Qwen3-8B") == ("Qwen/Qwen3-8B", 40960)


def test_bench_default_prefill_fits_the_shortest_context(small_ckpt, capsys, monkeypatch):
    import minqwen3.bench as bench
    seen = []
    monkeypatch.setattr(bench, "copy_bandwidth", lambda *a: 1e9)
    monkeypatch.setattr(bench, "matmul_rate", lambda *a: 1e9)
    def stop(*a, **kw):  # the prefill length it was given, then no measuring
        seen.append(a[5])
        raise RuntimeError("stop here")
    monkeypatch.setattr(bench, "bench_model", stop)
    run(capsys, "bench", "--model", small_ckpt, "--device", "cpu", "--prompt", "8", "--new", "4")
    assert seen == [39]  # 512 on a CPU, less than the 40-token context


def test_verify_tokens_checked_before_loading(ckpt, capsys, monkeypatch):
    import minqwen3.verify as verify
    monkeypatch.setattr(verify, "verify", lambda *a, **kw: pytest.fail("loaded before checking --tokens"))
    rc, out, err = run(capsys, "verify", ckpt, "--tokens", "0")
    assert rc != 0 and "--tokens 0: compare at least 1 greedy token" in err


def test_repl_exit_command(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("/exit\nSay hi.\n"))
    rc, out, _ = run(capsys, "chat", "--model", ckpt)
    assert rc == 0 and "Hi!" not in out


def test_generate_raw_completion(ckpt, capsys):
    rc, out, err = run(capsys, "generate", "--model", ckpt, "--temperature", "0", "--max-new-tokens", "5", "Hmm")
    assert rc == 0
    assert out == "Hmm ok so</think>\n\nHi\n"  # no template: the bigram chain from "Hmm"
    assert "5 tokens;" in err and "tokens/s" in err


def test_an_error_while_streaming_starts_on_a_line_of_its_own(ckpt, capsys, monkeypatch):
    """generate and chat PROMPT end the streamed text's line before the error's (it was glued onto the text)."""
    def fails(*a, on_token=None, **kw):
        on_token(torch.tensor([1]))
        raise OSError("the disk went away")
    monkeypatch.setattr(gen_module, "generate", fails)
    rc, out, err = run(capsys, "generate", "--model", ckpt, "Hmm")
    assert rc == 1 and out == 'Hmm"\n' and err.endswith("\nerror: the disk went away\n")


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
    """As docs/demo.md says: official weights in weights/ if there are any, else the demo model; weights/ of the
    working directory first, then the bundled one of the source tree, so chat works from any directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cli, "BUNDLED", tmp_path / "elsewhere")  # as if nothing were bundled
    rc, out, err = run(capsys, "chat", "hi")
    assert rc == 1 and "weights/demo-dense" in err and "download Qwen/Qwen3-0.6B" in err and "--model" in err
    (tmp_path / "weights").mkdir()
    os.symlink(ckpt, tmp_path / "weights" / "demo-dense")
    rc, out, err = run(capsys, "chat", "--no-think", "Say hi.")
    assert (rc, out) == (0, "Hi!\n") and "loaded weights/demo-dense" in err
    os.symlink(ckpt, tmp_path / "weights" / "Qwen3-0.6B")  # official weights win over the demo model
    rc, out, err = run(capsys, "chat", "--no-think", "Say hi.")
    assert (rc, out) == (0, "Hi!\n") and "loaded weights/Qwen3-0.6B" in err


def test_default_model_from_any_directory(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no weights/ here: the bundled demo model answers
    rc, out, err = run(capsys, "chat", "--no-think", "--temperature", "0", "--max-new-tokens", "8", "What is 2 + 3?")
    assert rc == 0 and f"loaded {ROOT / 'weights' / 'demo-dense'}" in err and out.strip()


@pytest.mark.slow
def test_python_m_minqwen3_chat(ckpt):
    """The real entry point, in a fresh interpreter: a conversation fed on stdin."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "minqwen3", "chat", "--model", str(ckpt), "--seed", "1"],
                       input="Say hi.\nAnd again.\n", capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Hi!") == 2 and "Traceback" not in r.stderr
    assert r.stderr.count("tokens/s") == 2


# ---------------------------------------------------------------------------------------------- issue 11
def one_line_error(rc: int, err: str, *needles: str) -> None:
    assert rc != 0 and "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for n in needles:
        assert n in lines[0], (n, err)


@pytest.mark.parametrize("argv, needles", [
    (["chat", "--device", "tpu", "hi"], ["--device", "tpu"]),
    (["chat", "--device", "cuda:banana", "hi"], ["--device", "cuda:banana"]),
    (["chat", "--device", "cuda", "hi"], ["--device cuda", "CUDA is not available"]),
    (["generate", "--device", "cuda:1", "hi"], ["--device cuda:1"]),
    (["chat", ""], ["PROMPT is empty"]),
    (["chat", "  \n"], ["PROMPT is empty"]),
    (["generate", ""], ["PROMPT is empty"]),
    (["chat", "bad \udcff byte"], ["PROMPT", "UTF-8", "0xff"]),
    (["chat", "--system", "\udce9t\udce9", "hi"], ["--system", "UTF-8", "0xe9"]),
    (["generate", "lone \ud800 surrogate"], ["PROMPT", "UTF-8"]),
    (["chat", "--temperature", "nan", "hi"], ["temperature", "nan"]),
    (["chat", "--presence-penalty", "inf", "hi"], ["presence_penalty", "inf"]),
    (["chat", "--max-new-tokens", "-1", "hi"], ["max_new_tokens", "-1"]),
    (["chat", "--thinking-budget", "-5", "hi"], ["thinking_budget", "-5"]),
    (["generate", "--seed", "-1", "hi"], ["seed", "-1"]),
    (["generate", "--seed", str(2**64), "hi"], ["seed", str(2**64)]),
])
def test_errors_are_one_line(ckpt, capsys, argv, needles):
    if "CUDA is not available" in needles or argv[2:3] == ["cuda:1"]:
        import torch
        if torch.cuda.device_count() > (1 if argv[2:3] == ["cuda:1"] else 0):
            pytest.skip("this machine has the device")
    rc, out, err = run(capsys, *argv[:-1], "--model", ckpt, argv[-1])
    one_line_error(rc, err, *needles)
    assert "loaded" not in err and out == ""  # refused before loading anything


def test_a_file_where_a_folder_is_expected(ckpt, capsys):
    for cmd in (["chat", "--model", ckpt / "config.json", "hi"], ["generate", "--model", ckpt / "model.safetensors",
                                                                   "hi"]):
        rc, out, err = run(capsys, *cmd)
        one_line_error(rc, err, str(cmd[2]), "is a file, not a checkpoint folder")


def test_invalid_utf8_on_stdin_is_refused_and_the_conversation_goes_on(ckpt):
    """Bytes that are not UTF-8, typed or piped into a conversation: that line is refused in one line, the next one
    is answered, and the exit status says a line was refused."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "minqwen3", "chat", "--model", str(ckpt), "--no-think"],
                       input=b"caf\xe9?\n\xff\xfe\nSay hi.\n", capture_output=True, env=env, timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 1 and "Traceback" not in err, err
    assert err.count("error: this line is not valid UTF-8") == 2 and "0xe9" in err and "0xff" in err
    assert r.stdout.decode().count("Hi!") == 1
    # and in argv (Python reads it as lone surrogates)
    r = subprocess.run([sys.executable, "-m", "minqwen3", "chat", "--model", str(ckpt), b"caf\xe9?"],
                       capture_output=True, env=env, timeout=300)
    one_line_error(r.returncode, r.stderr.decode(), "PROMPT is not valid UTF-8", "0xe9")


def test_every_flag_shows_its_default(capsys):
    parser = cli.build_parser()
    subs = next(a for a in parser._actions if isinstance(a, __import__("argparse")._SubParsersAction)).choices
    checked = 0
    for name, sub in subs.items():
        for action in sub._actions:
            if not action.option_strings or action.nargs == 0 or action.required:  # positionals, switches, --help
                continue
            assert action.help and "default" in action.help, f"{name} {action.option_strings[0]}: {action.help!r}"
            checked += 1
    assert checked >= 25
    with pytest.raises(SystemExit):
        cli.main(["chat", "--help"])
    out = capsys.readouterr().out
    assert "(default: 4096" in out and "(default: auto)" in out and "0.95 thinking, 0.8 non-thinking" in out


@pytest.mark.slow
def test_help_does_not_import_torch():
    """--help answers without loading torch (seconds); asked in a fresh interpreter."""
    code = ("import sys, runpy; sys.argv = ['minqwen3', 'chat', '--help']\n"
            "try:\n    runpy.run_module('minqwen3', run_name='__main__')\nexcept SystemExit:\n    pass\n"
            "print('torch' in sys.modules)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0 and r.stdout.strip().endswith("False"), r.stdout + r.stderr
    assert "--thinking-budget" in r.stdout


# ---------------------------------------------------------------------------------------------- Ctrl-C
@pytest.fixture(scope="module")
def endless(tmp_path_factory) -> Path:
    """A checkpoint that thinks forever ("Hmm ok Hmm ok ..."), for a reply long enough to interrupt."""
    d = tmp_path_factory.mktemp("endless")
    minqwen3.save_pretrained(bigram_model({198: 151667, 151667: 80022, 80022: 5394, 5394: 80022}), d)
    shutil.copy(ASSETS / "tokenizer.json", d / "tokenizer.json")
    return d


class Running:
    """python -m minqwen3 in a subprocess, its output collected as it comes, for sending it signals."""

    def __init__(self, *argv: str):
        import threading
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        self.p = subprocess.Popen([sys.executable, "-m", "minqwen3", *map(str, argv)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        self.out, self.err = bytearray(), bytearray()
        for stream, buf in ((self.p.stdout, self.out), (self.p.stderr, self.err)):
            threading.Thread(target=lambda s=stream, b=buf: [b.extend(c) for c in iter(lambda: s.read1(), b"")],
                             daemon=True).start()

    def wait_for(self, what: str, where: str = "err", timeout: float = 240) -> None:
        end = time.monotonic() + timeout
        while what.encode() not in getattr(self, where):
            assert self.p.poll() is None and time.monotonic() < end, (self.out, self.err)
            time.sleep(0.05)

    def interrupt(self) -> tuple[int, str, str]:
        self.p.send_signal(signal.SIGINT)
        rc = self.p.wait(timeout=120)
        time.sleep(0.2)  # the reader threads take the rest
        return rc, self.out.decode(), self.err.decode()


def quiet_130(rc: int, err: str) -> None:
    assert rc == 130, (rc, err)
    assert "Traceback" not in err and "KeyboardInterrupt" not in err and "error" not in err, err


@pytest.mark.slow
@pytest.mark.parametrize("after", [0.3, 0.6, 1.0, 1.5])  # importing torch and numpy, then reading the checkpoint
def test_ctrl_c_while_loading(ckpt, after):
    """An interrupt raised inside an import could be swallowed by library code and leave numpy.linalg half-imported,
    to fail later as a RecursionError: while loading, Ctrl-C must leave at once (cli.leave_on_ctrl_c)."""
    r = Running("chat", "--model", ckpt)
    time.sleep(after)  # starting Python, importing torch, reading the checkpoint
    assert r.p.poll() is None
    rc, out, err = r.interrupt()
    quiet_130(rc, err)
    assert "chat: /exit" not in err  # it had not got as far as the prompt


@pytest.mark.slow
def test_ctrl_c_at_the_prompt(ckpt):
    r = Running("chat", "--model", ckpt, "--no-think")
    r.wait_for("chat: /exit")
    r.p.stdin.write(b"Say hi.\n")
    r.p.stdin.flush()
    r.wait_for("tokens/s")  # one turn answered, the prompt shown again
    rc, out, err = r.interrupt()
    quiet_130(rc, err)
    assert out.count("Hi!") == 1


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["one-shot", "generate"])
def test_ctrl_c_during_a_one_shot_reply(endless, mode):
    argv = ["chat", "--model", endless, "--temperature", "0", "Think."] if mode == "one-shot" else \
        ["generate", "--model", endless, "--temperature", "0", "Hmm"]
    r = Running(*argv)
    r.wait_for("Hmm okHmm okHmm ok", where="out")
    rc, out, err = r.interrupt()
    quiet_130(rc, err)
    assert out.endswith("\n")  # the reply's line is ended (and a colour reset, on a terminal)


@pytest.mark.slow
def test_readme_python_snippet_runs_offline():
    """The README's Python snippet, as written, from the repository's root, with no network: it must run."""
    import re
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert blocks and "from_pretrained" in blocks[0]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    r = subprocess.run([sys.executable, "-c", blocks[0]], cwd=ROOT, capture_output=True, text=True, env=env,
                       timeout=600)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.stdout.strip()  # the reasoning and the answer were printed
