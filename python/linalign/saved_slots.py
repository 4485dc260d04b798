"""Saving and restoring an Aligner's prompt cache: a slot's KV, every
stream's, in linalign's slot file format (docs/slot_files.md), checked
against this model before anything is touched (linalign.engine.slot_files).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from .engine import BatchedEngine
from .engine.slot_files import model_fingerprint

__all__ = ["SavedSlots"]


class SavedSlots:
    """:class:`~linalign.Aligner`'s slot files; it gives ``model_path`` and
    ``_require_open()`` (its engine)."""

    model_path: Path
    _require_open: Callable[[], BatchedEngine]
    _model_sha256: str | None = None

    @property
    def model_fingerprint(self) -> str:
        """SHA-256 of the model file's GGUF header (metadata and tensor
        layout), which a slot file must match; hashed once, on first use."""
        if self._model_sha256 is None:
            self._model_sha256 = model_fingerprint(self.model_path)
        return self._model_sha256

    def _model_identity(self) -> dict[str, str]:
        return {"model_sha256": self.model_fingerprint, "model_name": self.model_path.name}

    def save_state(self, path: str | os.PathLike[str], *, slot: int = 0) -> dict[str, Any]:
        """Saves a slot's prompt cache (every stream's KV, a prefix the streams
        share once) to ``path`` in linalign's slot file format
        (docs/slot_files.md), written atomically.

        Returns ``n_saved`` (the tokens of the slot's principled stream),
        ``n_written`` (bytes), ``streams`` (tokens per stream), ``shared``
        (tokens saved once for two streams) and ``ms``. Raises
        linalign.engine.SlotBusyError while the slot runs a request.
        """
        return self._require_open().save_slot(slot, path, **self._model_identity())

    def load_state(self, path: str | os.PathLike[str], *, slot: int = 0) -> dict[str, Any]:
        """Restores a slot's prompt cache from a file :meth:`save_state`
        wrote, in place of what the slot cached: the next call that shares a
        prefix with it prefills only the rest (``cached_tokens``).

        Everything is checked before the KV cache is touched: a file that is
        not a slot file, truncated, corrupt, of another format version, or
        saved for another model (a hash of its GGUF header and tensor
        layout), KV cache types, flash-attention setting or layout raises
        linalign.engine.SlotFileError (a ValueError), as does one that holds
        more KV cells than the pool. SlotBusyError: the slot runs a request,
        or the running requests hold the room it needs. Returns
        ``n_restored`` (the principled stream's tokens), ``n_read``,
        ``streams``, ``shared`` and ``ms``.
        """
        return self._require_open().restore_slot(slot, path, **self._model_identity())
