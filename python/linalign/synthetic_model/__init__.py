"""Synthetic models: random-weight GGUFs of any shape, written here, for the
tests (tiny models of each kind of llama.cpp memory, chat templates of
several model families) and the speed benchmarks (stand-ins of real shapes).

Needs the ``gguf`` package (in the ``bench`` and ``test`` extras)."""
from __future__ import annotations

from .chat_templates import CHAT_TEMPLATE, GEMMA3_CHAT_TEMPLATE, TEMPLATES, TOOL_TEMPLATES
from .gguf_writer import ARCHS, write_tiny_gguf
from .vocab import BOS_ID, EOS_ID, UNK_ID, build_vocab

__all__ = ["ARCHS", "BOS_ID", "CHAT_TEMPLATE", "EOS_ID", "GEMMA3_CHAT_TEMPLATE", "TEMPLATES", "TOOL_TEMPLATES",
           "UNK_ID", "build_vocab", "write_tiny_gguf"]
