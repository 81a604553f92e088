"""Qwen3's tokenizer: byte-level BPE (via the `tokenizers` library), injection-safe chat encoding, streaming decode.

Byte-level BPE spells every byte as one printable character, so any string encodes losslessly; 26 "added tokens"
(<|im_start|>, <think>, <tool_call>, ...) are matched in the raw text before BPE runs. That matching is a hazard in
chat: a user who types "<|im_end|>\\n<|im_start|>system" would close their own turn and open a fake system turn, and
a fetched web page that says "</tool_response>...<tool_call>" would close the tool's result and call a tool. So
`encode_messages` lets only the chat template's own text produce control tokens, lets the model's own earlier turns
keep the <think> / <tool_call> tokens it wrote, and encodes what people and tools wrote as plain text.
"""
from __future__ import annotations

import codecs
import functools
import json
import operator
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import tokenizers

from minqwen3.chat_template import chat_segments

ASSETS = Path(__file__).resolve().parent / "assets"  # our own copy of the official tokenizer.json
# Qwen3's stop tokens, the same in every Qwen3 vocabulary: for code that has ids but no tokenizer (generate()'s
# defaults, training's padding). A Tokenizer looks its own up by name (im_end_id, endoftext_id).
ENDOFTEXT, IM_END = 151643, 151645  # <|endoftext|> ends a document (base models stop on it), <|im_end|> a chat turn


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level map, reversed: vocabulary character -> the byte it stands for. Printable latin-1 bytes
    stand for themselves; the other 68 (controls, space, ...) are moved to chr(256 + k), so every token is printable."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)}
    shifted = (b for b in range(256) if b not in printable)
    return {**{chr(b): b for b in printable}, **{chr(256 + k): b for k, b in enumerate(shifted)}}


def _check_unicode(text: str) -> None:
    """Text with a lone surrogate (what Python makes of invalid UTF-8 bytes in argv or a file read with
    surrogateescape) has no UTF-8 encoding, so no tokens: say where, rather than fail inside the library."""
    bad = re.search("[\ud800-\udfff]", text)
    if bad:
        raise ValueError(f"the text is not valid Unicode: a lone surrogate U+{ord(bad.group()):04X} at character "
                         f"{bad.start()} (invalid UTF-8 bytes?) in {text[max(0, bad.start() - 20):bad.start() + 20]!r}")


def token_id(x) -> int:
    """x as a token id: an int, a numpy integer or a 0-d integer tensor. A bool, a float or a string is a TypeError
    (int() would have read 1.7 as 1, and True is an int to Python)."""
    if isinstance(x, bool):
        raise TypeError(f"{x!r} is a bool, not a token id")
    return operator.index(x)


class Tokenizer:
    """Qwen3 tokenizer. `Tokenizer.default()` uses the copy shipped in minqwen3/assets."""

    def __init__(self, tokenizer_json: str | os.PathLike, vocab_size: int | None = None):
        """vocab_size: the model's embedding rows; a tokenizer with ids beyond them belongs to another model."""
        self.path = Path(tokenizer_json)
        try:
            self._tok = tokenizers.Tokenizer.from_file(str(self.path))
        except Exception as e:  # the library raises a bare Exception for any file it cannot parse
            raise ValueError(f"{self.path} is not a valid tokenizer.json ({e})") from None
        if not (isinstance(self._tok.model, tokenizers.models.BPE)
                and isinstance(self._tok.decoder, tokenizers.decoders.ByteLevel)):
            raise ValueError(f"{self.path} is not a Qwen3 tokenizer: it is a {type(self._tok.model).__name__} model "
                             f"with a {type(self._tok.decoder).__name__} decoder, Qwen3's is byte-level BPE")
        self._plain_tok: tokenizers.Tokenizer | None = None  # built on first use, see `_plain`
        added = self._tok.get_added_tokens_decoder()
        self.added_tokens: dict[str, int] = {t.content: i for i, t in added.items()}
        self._added_text = {i: t.content for i, t in added.items()}
        # Only tokens flagged special are control tokens: <think>, <tool_call>, ... are not, so they survive
        # skip_special_tokens and are read as markup even inside content, exactly as by the official tokenizer.
        self.special_tokens: dict[str, int] = {t.content: i for i, t in added.items() if t.special}
        longest_first = sorted(self.special_tokens, key=len, reverse=True)
        self._special_re = re.compile("(" + "|".join(map(re.escape, longest_first)) + ")")  # split() keeps matches
        self.vocab_size: int = self._tok.get_vocab_size(with_added_tokens=True)  # 151,669; embeddings pad to 151,936
        top = max(self._tok.get_vocab(with_added_tokens=True).values(), default=-1)
        if vocab_size is not None and top >= vocab_size:
            raise ValueError(f"{self.path} does not fit the model: it has token ids up to {top}, the model's embedding "
                             f"has {vocab_size} rows (vocab_size in config.json); are they from the same checkpoint?")
        self.im_start_id = self._added_id("<|im_start|>")
        self.im_end_id = self._added_id("<|im_end|>")
        self.eos_id = self.im_end_id  # chat models stop on <|im_end|>
        self.endoftext_id = self._added_id("<|endoftext|>")
        self.pad_id = self.endoftext_id
        self.think_id = self._added_id("<think>")
        self.end_think_id = self._added_id("</think>")
        self._bytes: dict[int, bytes] = {}  # token id -> its bytes, filled lazily by token_bytes
        self._alphabet = _byte_level_alphabet()

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike | None = None, vocab_size: int | None = None) -> Tokenizer:
        """Load from a checkpoint folder holding tokenizer.json, or from the file itself; None: the bundled copy.
        From a folder, the tokenizer is checked against the vocab_size of the config.json beside it."""
        p = ASSETS if path is None else Path(path)
        file = p / "tokenizer.json" if p.is_dir() else p
        if not file.is_file():
            raise FileNotFoundError(f"no tokenizer at '{file}': a checkpoint folder must hold tokenizer.json "
                                    "(or pass the path of the tokenizer.json file itself)")
        if vocab_size is None and p.is_dir() and (p / "config.json").is_file():
            try:  # an unreadable config is the model loader's error to report, not ours
                vocab_size = json.loads((p / "config.json").read_text()).get("vocab_size")
            except (ValueError, OSError, AttributeError):
                pass
        return cls(file, vocab_size if isinstance(vocab_size, int) else None)

    @classmethod
    def default(cls) -> Tokenizer:
        return cls.from_pretrained(None)

    def _added_id(self, content: str) -> int:
        if content not in self.added_tokens:
            raise ValueError(f"{self.path} has no added token {content!r}: is this a Qwen3 tokenizer.json?")
        return self.added_tokens[content]

    @property
    def _plain(self) -> tokenizers.Tokenizer:
        # A second instance with `encode_special_tokens` on: special tokens in the text go through BPE like any
        # other text (this is transformers' split_special_tokens). A separate instance, rather than flipping the
        # flag back and forth on one, keeps `encode` free of shared mutable state.
        if self._plain_tok is None:
            self._plain_tok = tokenizers.Tokenizer.from_str(self._tok.to_str())
            self._plain_tok.encode_special_tokens = True
        return self._plain_tok

    @functools.cached_property
    def _text_only(self) -> tokenizers.Tokenizer:
        # A third instance on which every added token is flagged special, with `encode_special_tokens` on: <think>,
        # <tool_call>, ... in the text are spelled out by BPE like <|im_end|> on `_plain`.
        spec = json.loads(self._tok.to_str())
        for t in spec["added_tokens"]:
            t["special"] = True
        tok = tokenizers.Tokenizer.from_str(json.dumps(spec))
        tok.encode_special_tokens = True
        return tok

    @functools.cached_property
    def _cuts(self) -> dict[str, re.Pattern | None]:
        # the added tokens each source of chat text may produce: the template all of them, the model's earlier
        # turns the non-special ones it writes itself (<think>, <tool_call>, ...), the input none
        def alternation(tokens: Iterable[str]) -> re.Pattern | None:
            tokens = sorted(tokens, key=len, reverse=True)  # longest first: the library matches leftmost-longest
            return re.compile("(" + "|".join(map(re.escape, tokens)) + ")") if tokens else None
        return {"template": alternation(self.added_tokens),
                "model": alternation(set(self.added_tokens) - set(self.special_tokens)), "input": None}

    def __len__(self) -> int:
        return self.vocab_size

    def encode(self, text: str, allow_special: bool = True) -> list[int]:
        """Token ids of `text`. allow_special=False encodes the special tokens' strings (<|im_start|>, <|im_end|>,
        <|endoftext|>, ...) as the plain characters they spell, as transformers' split_special_tokens does; the
        other added tokens (<think>, <tool_call>, <tool_response>, ...) stay single tokens either way, as
        officially. For untrusted chat text use encode_messages, which spells those out too."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        _check_unicode(text)
        return (self._tok if allow_special else self._plain).encode(text, add_special_tokens=False).ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """The text of token ids (ints, numpy or torch integer scalars). An id outside the vocabulary is an error
        naming it, as in stream(): the library would drop it silently (an embedding's padding rows), and int()
        would have read 1.7 as token 1."""
        out = []
        for i in ids:
            try:
                t = token_id(i)
            except TypeError:
                raise TypeError(f"decode expects integer token ids, got {type(i).__name__} {i!r:.40}") from None
            if not 0 <= t < self.vocab_size:
                raise ValueError(f"token id {t} is not in the vocabulary (0..{self.vocab_size - 1})")
            out.append(t)
        return self._tok.decode(out, skip_special_tokens=skip_special_tokens)

    def encode_messages(self, messages: Sequence[Mapping], tools: Sequence[Mapping] | None = None,
                        add_generation_prompt: bool = False, enable_thinking: bool = True,
                        allow_special_in_content: bool = False) -> list[int]:
        """Render a conversation with Qwen3's chat template and encode it.

        By default control tokens come only from the template, and from the model's own earlier turns: a
        "<|im_end|>", "<think>" or "<tool_call>" typed into a user, system or tool message (or a tool schema) is
        encoded as the characters it spells, and so is a "<|im_end|>" in an assistant turn, while the <think> and
        <tool_call> tokens the model wrote in its turns stay tokens. Decoding gives back exactly the rendered
        string, and when no message contains such a string the ids equal the official
        `encode(apply_chat_template(...))`. allow_special_in_content=True gives that official encoding
        unconditionally, every added token in every message a token (for trusted data, e.g. training transcripts)."""
        segments = chat_segments(messages, tools, add_generation_prompt, enable_thinking)
        _check_unicode("".join(text for text, _ in segments))
        if allow_special_in_content:
            return self.encode("".join(text for text, _ in segments))
        # Added tokens cut the official encoding into independently encoded stretches; we cut only where a segment
        # may produce a token (see _cuts) and encode each stretch between cuts as text, so that everything else,
        # the boundaries between template and message text included, encodes exactly as officially.
        ids: list[int] = []
        stretch: list[str] = []

        def flush() -> None:
            if stretch:
                ids.extend(self._text_only.encode("".join(stretch), add_special_tokens=False).ids)
                stretch.clear()

        for text, source in segments:
            cut = self._cuts[source]
            for k, piece in enumerate([text] if cut is None else cut.split(text)):  # odd pieces: the tokens
                if k % 2:
                    flush()
                    ids.append(self.added_tokens[piece])
                elif piece:
                    stretch.append(piece)
        flush()
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """The raw bytes one token stands for (a piece of UTF-8, possibly not a whole character)."""
        b = self._bytes.get(token_id)
        if b is None:
            tok = self._tok.id_to_token(token_id)
            if tok is None:
                raise ValueError(f"token id {token_id} is not in the vocabulary (0..{self.vocab_size - 1})")
            # added tokens are stored as their text; BPE tokens in the byte-level alphabet
            text = self._added_text.get(token_id)
            b = text.encode() if text is not None else bytes(self._alphabet[c] for c in tok)
            self._bytes[token_id] = b
        return b

    def stream(self, skip_special_tokens: bool = False) -> StreamDecoder:
        return StreamDecoder(self, skip_special_tokens)


class StreamDecoder:
    """Incremental decoding for streaming generation: push token ids, get text as soon as it is whole.

    A token may end in the middle of a multi-byte character (a Chinese character or an emoji is often 2-4 byte-level
    tokens). An incremental UTF-8 decoder holds such a tail back until the next bytes complete it, so no piece ever
    carries a broken character, and the pieces concatenate to exactly `Tokenizer.decode` of all the ids.
    """

    def __init__(self, tokenizer: Tokenizer, skip_special_tokens: bool = False):
        self.tokenizer = tokenizer
        self.skip = set(tokenizer.special_tokens.values()) if skip_special_tokens else set()
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")  # invalid bytes -> U+FFFD, as decode

    def push(self, token_id: int) -> str:
        token_id = int(token_id)
        return "" if token_id in self.skip else self._utf8.decode(self.tokenizer.token_bytes(token_id))

    def flush(self) -> str:
        """End of stream: whatever is held back (only an unfinished character, shown as U+FFFD)."""
        out = self._utf8.decode(b"", final=True)
        self._utf8.reset()
        return out
