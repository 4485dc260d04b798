"""Slot files: a slot's prompt cache on disk, in linalign's own format
(docs/slot_files.md), so that a long conversation or principle is not
prefilled again after a restart.

The engine gives each stream of a slot as its tokens, the runs of cells it
shares with an earlier stream (saved once, in that stream) and llama.cpp's
per-sequence state of the rest (``cpp/slot_state.cpp``). This module writes
them with what a restore must match (the model, the KV cache's types and
layout, the flash-attention setting, the llama.cpp release) and a SHA-256 of
everything before it, and reads them back checking all of it before anything
reaches llama.cpp: llama.cpp's state loader checks sizes, not content.
"""
from __future__ import annotations

import hashlib
import json
import mmap
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

__all__ = ["FORMAT_VERSION", "MAGIC", "SavedStream", "SlotFile", "SlotFileError", "model_fingerprint",
           "read_slot_file", "write_slot_file"]

MAGIC = b"LNALSLOT"
FORMAT_VERSION = 1
# magic, version, reserved, header length, payload length
_PREFIX = struct.Struct("<8sIIQQ")
_DIGEST_SIZE = 32  # SHA-256


class SlotFileError(ValueError):
    """A slot file that cannot be restored here: not one, truncated, corrupt,
    another format version, or saved for another model or KV layout."""


@dataclass(frozen=True)
class SavedStream:
    """One stream of a saved slot: its tokens (position i at index i), the
    ``(donor, p0, p1)`` runs whose cells are an earlier stream's, and
    llama.cpp's state of its other cells."""

    tokens: list[int]
    shared: list[tuple[int, int, int]]
    state: bytes | memoryview

    def native(self) -> tuple[list[int], list[tuple[int, int, int]], bytes | memoryview]:
        return self.tokens, self.shared, self.state


@dataclass(frozen=True)
class SlotFile:
    """What a slot file holds beyond its streams, which must match the engine
    that restores it (``layout``) and the model (``model_sha256``)."""

    model_sha256: str
    model_name: str
    layout: dict[str, Any]
    streams: list[SavedStream]
    n_bytes: int


# -- the model's fingerprint ---------------------------------------------------

# GGUF value types: the fixed sizes; 8 is a string, 9 an array
_GGUF_SIZES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_GGUF_STRING, _GGUF_ARRAY = 8, 9
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")


class _Reader:
    """A cursor over the mapped model file: offsets only, so that skipping
    the ~100,000 strings of a large vocabulary costs no file calls."""

    def __init__(self, data: Any) -> None:
        self.data = data
        self.at = 0

    def _take(self, n: int) -> int:
        at = self.at
        if n < 0 or at + n > len(self.data):
            raise SlotFileError("the model file ends inside its GGUF header")
        self.at = at + n
        return at

    def read(self, n: int) -> bytes:
        at = self._take(n)
        return bytes(self.data[at:at + n])

    def u32(self) -> int:
        return _U32.unpack_from(self.data, self._take(4))[0]

    def u64(self) -> int:
        return _U64.unpack_from(self.data, self._take(8))[0]

    def skip_string(self) -> None:
        self._take(self.u64())

    def skip_value(self, kind: int) -> None:
        if kind in _GGUF_SIZES:
            self._take(_GGUF_SIZES[kind])
        elif kind == _GGUF_STRING:
            self.skip_string()
        elif kind == _GGUF_ARRAY:
            item, n = self.u32(), self.u64()
            if item in _GGUF_SIZES:
                self._take(_GGUF_SIZES[item] * n)
            elif item == _GGUF_STRING:  # a vocabulary: the hot loop, kept to locals
                data, at, size, length = self.data, self.at, len(self.data), _U64.unpack_from
                for _ in range(n):
                    if at + 8 > size:
                        raise SlotFileError("the model file ends inside its GGUF header")
                    at += 8 + length(data, at)[0]
                self._take(at - self.at)
            else:
                for _ in range(n):
                    self.skip_value(item)
        else:
            raise SlotFileError(f"unknown GGUF value type {kind} in the model file")


def model_fingerprint(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a GGUF file's header: its metadata and tensor infos (names,
    shapes, types, offsets), not the weights. Two files with the same
    fingerprint lay out the same tensors under the same metadata."""
    with open(path, "rb") as f:
        try:
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file cannot be mapped
            raise SlotFileError(f"{path} is not a GGUF file") from None
    with data:
        r = _Reader(data)
        if r.read(4) != b"GGUF":
            raise SlotFileError(f"{path} is not a GGUF file")
        version = r.u32()
        if version < 2:
            raise SlotFileError(f"{path}: GGUF version {version} is not supported")
        n_tensors, n_kv = r.u64(), r.u64()
        for _ in range(n_kv):
            r.skip_string()
            r.skip_value(r.u32())
        for _ in range(n_tensors):
            r.skip_string()
            n_dims = r.u32()
            r._take(8 * n_dims + 4 + 8)  # dims, type, offset
        with memoryview(data) as view, view[:r.at] as header:
            return hashlib.sha256(header).hexdigest()


# -- writing ------------------------------------------------------------------

def write_slot_file(path: str | os.PathLike[str], *, model_sha256: str, model_name: str, layout: dict[str, Any],
                    streams: Sequence[SavedStream]) -> int:
    """Writes a slot file atomically (a temporary file in the same folder,
    then renamed over ``path``: a reader never sees half a file, and a
    symbolic link at ``path`` is replaced, not followed). Returns its size."""
    path = Path(path)
    header = {
        "model": {"sha256": model_sha256, "name": model_name},
        "layout": layout,
        "streams": [{"tokens": list(s.tokens), "shared": [list(r) for r in s.shared], "state_bytes": len(s.state)}
                    for s in streams],
    }
    header_bytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    payload_len = sum(len(s.state) for s in streams)
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, 0, len(header_bytes), payload_len)
    digest = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            for part in (prefix, header_bytes, *(s.state for s in streams)):
                digest.update(part)
                f.write(part)
            f.write(digest.digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return len(prefix) + len(header_bytes) + payload_len + _DIGEST_SIZE


# -- reading ------------------------------------------------------------------

def read_slot_file(path: str | os.PathLike[str]) -> SlotFile:
    """Reads and checks a slot file's framing, checksum and header; raises
    SlotFileError for anything amiss (and FileNotFoundError for no file).
    Whether it matches an engine is :func:`check_matches`'s question."""
    data = memoryview(Path(path).read_bytes())
    name = Path(path).name
    if len(data) < _PREFIX.size + _DIGEST_SIZE:
        if bytes(data[:len(MAGIC)]) != MAGIC[:len(data)]:
            raise SlotFileError(f"{name} is not a linalign slot file")
        raise SlotFileError(f"{name} is truncated ({len(data)} bytes)")
    magic, version, reserved, header_len, payload_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise SlotFileError(f"{name} is not a linalign slot file")
    if version != FORMAT_VERSION:
        raise SlotFileError(f"{name} is slot file format version {version}; this linalign reads version "
                            f"{FORMAT_VERSION} only: save the slot again with this version")
    expected = _PREFIX.size + header_len + payload_len + _DIGEST_SIZE
    if reserved != 0 or expected != len(data):
        what = "truncated" if expected > len(data) else "corrupt"
        raise SlotFileError(f"{name} is {what}: its header says {expected} bytes, the file has {len(data)}")
    body = data[:-_DIGEST_SIZE]
    if hashlib.sha256(body).digest() != bytes(data[-_DIGEST_SIZE:]):
        raise SlotFileError(f"{name} is corrupt: its SHA-256 does not match its content")
    header_end = _PREFIX.size + header_len
    try:
        header = json.loads(bytes(data[_PREFIX.size:header_end]).decode("utf-8"))
        model, layout, entries = header["model"], header["layout"], header["streams"]
        if not (isinstance(model, dict) and isinstance(layout, dict) and isinstance(entries, list)):
            raise TypeError("wrong types")
        streams, offset = [], header_end
        for entry in entries:
            tokens, shared, n_state = entry["tokens"], entry["shared"], entry["state_bytes"]
            if not (_ints(tokens) and isinstance(shared, list) and all(_ints(r) and len(r) == 3 for r in shared)
                    and _ints([n_state]) and n_state >= 0):
                raise TypeError("wrong types")
            streams.append(SavedStream(list(tokens), [tuple(r) for r in shared], data[offset:offset + n_state]))
            offset += n_state
        if offset != header_end + payload_len:
            raise ValueError("the streams' states do not fill the payload")
        return SlotFile(str(model["sha256"]), str(model["name"]), layout, streams, len(data))
    except (KeyError, TypeError, ValueError) as e:  # a checksum that matches a bad header: a bad writer
        raise SlotFileError(f"{name} has a header this linalign cannot read ({e})") from None


def _ints(values: Any) -> bool:
    return isinstance(values, list) and all(type(v) is int for v in values)


def check_matches(saved: SlotFile, *, model_sha256: str, model_name: str, layout: dict[str, Any],
                  name: str) -> None:
    """Raises SlotFileError when ``saved`` was written for another model or
    another KV layout than the engine's (``layout``): llama.cpp would refuse
    another V layout, and may read another model's cache as garbage."""
    if saved.model_sha256 != model_sha256:
        raise SlotFileError(f"{name} was saved with another model ({saved.model_name}, GGUF header sha256 "
                            f"{saved.model_sha256[:12]}...) than this one ({model_name}, {model_sha256[:12]}...)")
    for key, value in layout.items():
        if saved.layout.get(key) != value:
            raise SlotFileError(f"{name} was saved with {key} = {saved.layout.get(key)!r}; this engine has "
                                f"{value!r}, and a state saved with another KV layout cannot be restored")
