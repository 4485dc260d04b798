"""``POST /slots/{id_slot}?action=save|restore|erase``: llama-server's slot
file endpoints and response shapes, over linalign's own file format
(docs/slot_files.md), in the folder ``--slot-save-path`` names.

Without ``--slot-save-path`` every action is a 501, as llama-server answers.
Bad input is a 400 with ``param``: a slot id that is not one of the slots
(``id_slot``), an unknown ``action``, a body that is not a JSON object, a
file name that is not a plain name in the folder (a path separator, ``..``,
a leading dot, NUL or another control character, more than 255 bytes:
``filename``). Nothing is written outside the folder: a save goes to a
temporary file in it, renamed over the name. A file that cannot be restored
(not a slot file, truncated, corrupt, another format version, model or KV
layout, more cells than the pool) or does not exist is a 400 on
``filename``. A slot that runs a request is a 409 (``slot_busy``): the
request is well formed, it conflicts with the slot's state now and can be
sent again once the slot is idle (llama-server instead defers the action
until then; here the handler does not hold a connection open for it). The
work runs on a worker thread, under the engine's lock: the event loop never
waits for a decode step.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any, Callable

from fastapi import FastAPI, Request

from ..aligner import Aligner
from ..engine import EngineClosedError, SlotBusyError, SlotFileError
from .schema import ApiError

__all__ = ["add_slot_routes", "check_slot_filename"]

_ACTIONS = ("save", "restore", "erase")
_MAX_NAME_BYTES = 255
NOT_SUPPORTED = "This server does not support slots action. Start it with `--slot-save-path`"


def check_slot_filename(name: Any) -> str:
    """``name`` if it is a plain file name (see the module); else a 400 on ``filename``."""
    def refuse(why: str) -> ApiError:
        return ApiError(400, f"Invalid filename: {why}", param="filename", code="invalid_filename")
    if not isinstance(name, str) or not name:
        raise refuse("'filename' must be a non-empty string")
    if any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise refuse("it holds NUL or another control character")
    if "/" in name or "\\" in name or ":" in name:
        raise refuse("it must be a name in the slot folder, not a path")
    if name.startswith("."):
        raise refuse("it must not start with a dot ('..', hidden and temporary files)")
    if name != name.strip():
        raise refuse("it must not start or end with white space")
    try:
        if len(name.encode("utf-8")) > _MAX_NAME_BYTES:
            raise refuse(f"it is longer than {_MAX_NAME_BYTES} bytes")
    except UnicodeEncodeError:
        raise refuse("it is not valid UTF-8 text") from None
    return name


def add_slot_routes(app: FastAPI, aligner: Aligner, *, slot_dir: Path | None, n_slots: int,
                    check_key: Callable[[Request], None]) -> None:
    """Adds ``POST /slots/{id_slot}`` to ``app``; ``slot_dir`` None: 501."""
    if slot_dir is not None:
        _ = aligner.model_fingerprint  # hashed at start-up, not inside the first save or restore

    @app.post("/slots/{id_slot}")
    async def slot_action(id_slot: str, request: Request) -> dict[str, Any]:
        check_key(request)
        if slot_dir is None:
            raise ApiError(501, NOT_SUPPORTED, type="not_supported_error", code="not_supported")
        slot = int(id_slot) if id_slot.isascii() and id_slot.isdigit() and len(id_slot) < 6 else -1
        if not 0 <= slot < n_slots:
            raise ApiError(400, f"Invalid slot ID: {id_slot!r} is not one of the slots 0 to {n_slots - 1}",
                           param="id_slot", code="invalid_slot")
        action = request.query_params.get("action")
        if action not in _ACTIONS:
            raise ApiError(400, f"Invalid action: {action!r}; expected one of {', '.join(_ACTIONS)}",
                           param="action")
        if action == "erase":
            n_erased = await _run(aligner.engine.erase_slot, slot)
            return {"id_slot": slot, "n_erased": n_erased}
        try:
            body = json.loads(await request.body() or b"null")
        except (ValueError, UnicodeDecodeError):
            body = None
        if not isinstance(body, dict):
            raise ApiError(400, "the body must be a JSON object: {\"filename\": \"...\"}")
        name = check_slot_filename(body.get("filename"))
        path = slot_dir / name
        if path.parent != slot_dir:  # cannot happen after the checks above: the last guard on writes
            raise ApiError(400, "Invalid filename", param="filename", code="invalid_filename")
        if action == "save":
            result = await _run(aligner.save_state, path, slot=slot)
            return {"id_slot": slot, "filename": name, "n_saved": result["n_saved"],
                    "n_written": result["n_written"], "timings": {"save_ms": result["ms"]},
                    "linalign": {"streams": result["streams"], "shared_tokens": result["shared"]}}
        result = await _run(aligner.load_state, path, slot=slot)
        return {"id_slot": slot, "filename": name, "n_restored": result["n_restored"],
                "n_read": result["n_read"], "timings": {"restore_ms": result["ms"]},
                "linalign": {"streams": result["streams"], "shared_tokens": result["shared"]}}


async def _run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn`` on a worker thread (it takes the engine's lock), its errors as answers."""
    try:
        return await asyncio.to_thread(fn, *args, **kwargs)
    except SlotBusyError as e:
        raise ApiError(409, str(e), param="id_slot", code="slot_busy") from None
    except SlotFileError as e:
        raise ApiError(400, str(e), param="filename", code="invalid_slot_file") from None
    except FileNotFoundError:
        raise ApiError(400, "no such slot file in the slot folder", param="filename", code="file_not_found") from None
    except IsADirectoryError:
        raise ApiError(400, "that name is a folder in the slot folder", param="filename",
                       code="invalid_filename") from None
    except EngineClosedError as e:
        raise ApiError(503, str(e), type="server_error") from None
