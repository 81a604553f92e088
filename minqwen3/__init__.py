"""minqwen3: Qwen3 from scratch, in plain PyTorch."""
from .cache import KVCache
from .chat import EARLY_STOP, Reply, chat
from .chat_template import apply_chat_template, parse_reply
from .checkpoint import CheckpointError, from_pretrained, save_pretrained
from .config import PRESETS, Qwen3Config, count_params
from .generate import Session, generate, sample
from .model import Qwen3
from .tokenizer import Tokenizer

__all__ = ["Qwen3", "Qwen3Config", "KVCache", "CheckpointError", "from_pretrained", "save_pretrained",
           "count_params", "PRESETS", "generate", "sample", "Session", "chat", "Reply", "EARLY_STOP",
           "apply_chat_template", "parse_reply", "Tokenizer"]
