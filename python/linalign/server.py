"""``linalign serve``: an OpenAI-compatible HTTP server whose requests carry
their own principle.

    linalign serve [--model PATH] [--host 127.0.0.1] [--port 8000] [--n-ctx N]
                   [--n-gpu-layers N] [--api-key KEY] [--parallel N] [--queue N]

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (OpenAI's
request and response shapes; ``stream`` as Server-Sent Events ending in
``data: [DONE]``), ``GET /v1/models``, ``GET /health`` (never needs the key).

Extra request fields:

* ``principle`` (string): absent or empty means plain decoding. In chat it is
  appended to the system message of stream P (see :mod:`linalign.chat`).
  In completions, stream P is ``principle + "\\n\\n" + prompt`` and stream B
  is ``prompt``.
* ``alignment_ratio`` (number, default 2.0): the step ``r`` of
  ``l_p + r * (l_p - l_0)``.
* ``base_prompt`` (completions only): stream B's prompt, replacing the
  plain ``prompt`` (P is still ``prompt``, prefixed with the principle if
  one is given). With neither a principle nor a base_prompt both streams
  see the same text: plain decoding.

Sampling defaults are the Aligner's (temperature 0.8, top_p 0.8, top_k 40);
``max_tokens`` defaults to 16 for completions and to the context for chat.
``response_format`` ``json_object`` (or ``json_schema``) constrains the
output with a GBNF grammar.

Concurrency: ``--parallel`` slots, each an :meth:`Aligner.fork` with its own
context over the shared weights, decode one request each, in worker
threads (the native decode releases the GIL); up to ``--queue`` more
requests wait in line, and the next one is answered 503. A client that
disconnects frees its slot after at most one more decode step.
"""
from __future__ import annotations

import argparse
import json
import logging
import secrets
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Sequence, TypeVar

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .aligner import Aligner, AlignerClosedError
from .server_pool import QueueFullError, SlotPool
from .server_schema import ApiError, ChatCompletionRequest, CompletionRequest, error_body, param_of_error, parse_request

__all__ = ["create_app", "main"]

log = logging.getLogger("linalign.server")
T = TypeVar("T")
_DISCONNECT_POLL_S = 0.1


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


class _SlotStreamingResponse(StreamingResponse):
    """A streaming response that gives its slot back however the stream ends:
    finished, failed, or the client gone (before or after the first chunk)."""

    def __init__(self, content: AsyncIterator[str], release: Callable[[], None]) -> None:
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._release = release

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def _unless_disconnected(request: Request, fn: Callable[[], Awaitable[T]],
                               on_disconnect: Callable[[], None] | None = None) -> T:
    """Awaits fn(); if the client disconnects first, calls on_disconnect and
    cancels fn (a worker thread finishes its current step first), then
    raises _ClientGone."""
    result: list[T] = []
    error: Exception | None = None
    gone = False
    async with anyio.create_task_group() as tasks:
        async def watch() -> None:
            nonlocal gone
            while not await request.is_disconnected():
                await anyio.sleep(_DISCONNECT_POLL_S)
            gone = True
            if on_disconnect is not None:
                on_disconnect()
            tasks.cancel_scope.cancel()

        tasks.start_soon(watch)
        try:
            result.append(await fn())
        except Exception as e:  # raised as itself below, not wrapped in an ExceptionGroup
            error = e
        tasks.cancel_scope.cancel()
    if gone or (error is None and not result):
        raise _ClientGone()
    if error is not None:
        raise error
    return result[0]


def _next_or_none(chunks: Iterator[dict[str, Any]]) -> dict[str, Any] | None:
    return next(chunks, None)


def _collect(chunks: Iterator[dict[str, Any]], stop: threading.Event) -> list[dict[str, Any]]:
    out = []
    for chunk in chunks:
        out.append(chunk)
        if stop.is_set():
            raise _ClientGone()
    return out


def _text_of(chunk: dict[str, Any]) -> str:
    choice = chunk["choices"][0]
    return choice["text"] if "text" in choice else choice["delta"].get("content", "")


def _response_from_chunks(chunks: list[dict[str, Any]], model_id: str) -> dict[str, Any]:
    last = chunks[-1]
    text = "".join(_text_of(c) for c in chunks)
    finish = last["choices"][0]["finish_reason"]
    if last["object"] == "text_completion":
        obj, choice = "text_completion", {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
    else:
        obj = "chat.completion"
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
    return {"id": last["id"], "object": obj, "created": last["created"], "model": model_id,
            "choices": [choice], "usage": last["usage"]}


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def create_app(pool: SlotPool, *, model_id: str, api_key: str | None = None) -> FastAPI:
    """The FastAPI application serving ``pool``'s Aligners."""
    app = FastAPI(title="linalign", docs_url=None, redoc_url=None, openapi_url=None)
    created = int(time.time())

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return _error_response(error)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if error.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(error.detail), type=kind), status_code=error.status_code)

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error serving %s", request.url.path)
        return JSONResponse(error_body(f"internal error: {type(error).__name__}: {error}", type="server_error"),
                            status_code=500)

    def check_key(request: Request) -> None:
        if api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(token.strip().encode(), api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "slots_total": pool.total, "slots_idle": pool.idle, "queued": pool.queued}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        return {"object": "list",
                "data": [{"id": model_id, "object": "model", "created": created, "owned_by": "linalign"}]}

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, ChatCompletionRequest, Aligner.create_chat_completion)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, CompletionRequest, Aligner.create_completion)

    async def complete(request: Request, schema: type, method: Callable[..., Iterator[dict[str, Any]]]) -> Any:
        """Both endpoints: authorise, validate the body against ``schema``, and
        serve ``method`` (an Aligner method, always streamed internally)."""
        check_key(request)
        body = parse_request(await request.body(), schema)
        kwargs = body.aligner_kwargs()
        return await serve(request, lambda a: method(a, stream=True, **kwargs),
                           stream=body.stream, include_usage=body.include_usage)

    async def serve(request: Request, start: Callable[[Aligner], Iterator[dict[str, Any]]], *,
                    stream: bool, include_usage: bool) -> Any:
        try:
            aligner = await _unless_disconnected(request, pool.acquire)
        except QueueFullError as e:
            raise ApiError(503, str(e), type="server_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except _ClientGone:
            return JSONResponse(error_body("client disconnected"), status_code=499)

        def begin(aligner: Aligner) -> Iterator[dict[str, Any]]:
            # llama.cpp's logits on a quantized model depend on how the
            # cached positions were batched (a reused prefix first computed
            # one token at a time moves the default Q4_1 model's logits by up
            # to ~0.5), so a reused cache would make an answer depend on what
            # the slot served before. Every request starts from an empty
            # cache: reproducible for a given seed.
            aligner.engine.clear()
            return start(aligner)

        try:
            # prefills both streams: bad sampling values and over-long prompts fail here
            chunks = await anyio.to_thread.run_sync(begin, aligner)
        except (ValueError, TypeError) as e:
            pool.release(aligner)
            raise ApiError(400, str(e), param=param_of_error(str(e))) from None
        except AlignerClosedError as e:
            pool.release(aligner)
            raise ApiError(503, str(e), type="server_error") from None
        except BaseException:
            pool.release(aligner)
            raise

        def release() -> None:
            chunks.close()
            pool.release(aligner)

        if stream:
            return _SlotStreamingResponse(_events(chunks, model_id, include_usage), release)
        stop = threading.Event()
        try:
            collected = await _unless_disconnected(
                request, lambda: anyio.to_thread.run_sync(_collect, chunks, stop), on_disconnect=stop.set)
        except _ClientGone:
            return JSONResponse(error_body("client disconnected"), status_code=499)
        finally:
            release()
        return _response_from_chunks(collected, model_id)

    return app


async def _events(chunks: Iterator[dict[str, Any]], model_id: str, include_usage: bool) -> AsyncIterator[str]:
    """The SSE stream; each chunk is decoded in a worker thread."""
    usage = None
    last = None
    try:
        while (chunk := await anyio.to_thread.run_sync(_next_or_none, chunks)) is not None:
            usage = chunk.pop("usage", usage)
            chunk["model"] = model_id
            if include_usage:
                chunk["usage"] = None
            last = chunk
            yield _sse(chunk)
    except Exception as e:
        log.exception("error while streaming")
        yield _sse(error_body(f"internal error: {type(e).__name__}: {e}", type="server_error"))
        return
    if include_usage and last is not None:
        yield _sse({**last, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="linalign serve", description="OpenAI-compatible server with per-request "
                                "principles (linear alignment).")
    p.add_argument("--model", help="GGUF file (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--n-ctx", type=int, default=4096, help="context window per slot, in tokens (default 4096)")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to a GPU (-1: all)")
    p.add_argument("--api-key", help="require 'Authorization: Bearer KEY' (also read from LINALIGN_API_KEY)")
    p.add_argument("--parallel", type=int, default=1, help="requests decoded at once (default 1)")
    p.add_argument("--queue", type=int, default=16, help="requests that may wait for a slot (default 16)")
    p.add_argument("--log-level", default="warning", choices=["critical", "error", "warning", "info", "debug"])
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of ``linalign serve``; returns the exit status."""
    import os

    import uvicorn

    parser = _parser()
    args = parser.parse_args(list(argv))
    if not 0 <= args.port <= 65535:
        parser.error(f"--port must be in [0, 65535], got {args.port}")
    if args.parallel < 1:
        parser.error(f"--parallel must be >= 1, got {args.parallel}")
    if args.queue < 0:
        parser.error(f"--queue must be >= 0, got {args.queue}")
    api_key = args.api_key or os.environ.get("LINALIGN_API_KEY") or None
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s")

    try:
        first = Aligner(args.model, n_ctx=args.n_ctx, n_gpu_layers=args.n_gpu_layers)
    except (OSError, ValueError, TypeError, RuntimeError) as e:
        print(f"linalign serve: cannot load the model: {e}", flush=True)
        return 1
    aligners = [first] + [first.fork() for _ in range(args.parallel - 1)]
    pool = SlotPool(aligners, queue_size=args.queue)
    model_id = Path(first.model_path).name
    app = create_app(pool, model_id=model_id, api_key=api_key)
    print(f"linalign serve: {model_id} on http://{args.host}:{args.port} "
          f"(parallel {args.parallel}, queue {args.queue}, n_ctx {args.n_ctx}"
          f"{', API key required' if api_key else ''})", flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            access_log=args.log_level in ("info", "debug"), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    try:
        server.run()
    except SystemExit as e:  # uvicorn exits when it cannot bind
        return int(e.code or 1)
    finally:
        pool.close()
    return 0 if server.started else 1
