"""The Python face of the native engine: one llama_context whose sequences
are a pool of slots, stepped in one batched decode (see ``cpp/engine.h``).

Nothing outside this package touches ``linalign._core.Engine``.
"""
from .batched import BatchedEngine, EngineClosedError, SlotBusyError, flash_attn_type
from .generation import Generation, GenerationRequest
from .loop import EngineLoop, run_on_engine_thread
from .slot_files import SlotFileError

__all__ = ["BatchedEngine", "EngineClosedError", "EngineLoop", "Generation", "GenerationRequest", "SlotBusyError", "SlotFileError",
           "flash_attn_type"]
