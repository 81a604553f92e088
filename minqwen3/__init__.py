"""minqwen3: Qwen3 from scratch, in plain PyTorch.

The names below are imported on first use (PEP 562), so that `python -m minqwen3 --help` answers at once instead of
loading torch first (seconds).
"""
import importlib

_WHERE = {"Qwen3": "model", "random_model": "model", "Qwen3Config": "config", "PRESETS": "config",
          "count_params": "config", "KVCache": "cache", "make_cache": "cache", "CheckpointError": "checkpoint",
          "from_pretrained": "checkpoint", "save_pretrained": "checkpoint", "generate": "generation",
          "sample": "generation", "Decoder": "generation", "ContextError": "generation", "chat": "assistant",
          "Reply": "assistant", "EARLY_STOP": "assistant", "apply_chat_template": "chat_template",
          "parse_reply": "chat_template", "Tokenizer": "tokenizer"}
__all__ = list(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
        globals()[name] = value
        return value
    if not name.startswith("__"):  # a module (minqwen3.rope, ...), as if all were imported
        try:
            return importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
