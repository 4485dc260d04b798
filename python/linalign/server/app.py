"""The routes of ``linalign serve``.

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (OpenAI's
request and response shapes; ``stream`` as Server-Sent Events ending in
``data: [DONE]``), ``GET /v1/models`` (the model, and one id
``<model>:<name>`` per preset, see :mod:`.presets`), ``GET /metrics``
(Prometheus' text format, :mod:`.metrics`; behind the key unless
``metrics_public``), ``GET /health`` and ``GET /`` (a page to try it,
``static/index.html``; neither needs the key), and ``POST
/slots/{id_slot}?action=save|restore|erase`` (slot files, with
``--slot-save-path``: :mod:`.slot_routes`).

``model``: absent, the model's id, or any id without a colon is the model
with no preset (llama-server's convention: clients that send ``gpt-4o`` by
default work); ``<model>:<name>`` is a preset (its principle, ratio and
sampling defaults, for the fields the request leaves out); any other id with
a colon is a 404 (``model_not_found``). The model's entry in ``/v1/models``
lists the request fields each endpoint takes, and those accepted without
effect; any other field is a 400 naming it (:mod:`.request_fields`).

``logprobs`` (chat: ``logprobs: true`` and ``top_logprobs`` 0-20;
completions: ``logprobs`` 0-20) in OpenAI's shapes, streamed too: each chunk
carries the entries of the tokens whose text it completes. Each entry has a
``linalign`` object (what the alignment changed); see :mod:`linalign.logprobs`.

Extra request fields:

* ``principle`` (string): absent or empty means plain decoding. In chat it is
  appended to the system message of stream P (see :mod:`linalign.chat`).
  In completions, stream P is ``principle + "\\n\\n" + prompt`` and stream B
  is ``prompt`` (each principle's stream, and a negative principle's, alike).
* ``alignment_ratio`` (``"auto"``, the default: set per token from the
  streams' divergence, docs/auto_ratio.md; or a number): the step ``r`` of
  ``l_p + r * (l_p - l_0)``. A response's ``linalign.mean_ratio`` is the
  mean step size applied.
* ``echo_guard`` (bool, default true) and ``echo_guard_n`` (default 4): no
  alignment boost for a token that would continue copying the principle
  (see :class:`linalign.SamplingOptions`).
* ``negative_principle`` (string): stream B gets it instead of no
  principle (toward ``principle``, away from this one; alone: away only).
* ``principles`` (list of ``{"text", "ratio"}``, 1 to ``--max-principles``;
  a ratio may be ``"auto"``):
  several principles, one stream each, composed as
  ``l_B + sum_i (1 + r_i) (l_i - l_B)`` (see :mod:`linalign.principles`);
  not with ``principle`` or ``alignment_ratio``.
* ``base_prompt`` (completions only): stream B's prompt, replacing the
  plain ``prompt`` (P is still ``prompt``, prefixed with the principle if
  one is given).

Sampling defaults are SamplingOptions' (temperature 0.8, top_p 0.8, top_k
40); ``max_tokens`` defaults to 16 for completions and to the context for
chat. ``response_format`` ``json_object`` (or ``json_schema``) constrains the
output with a GBNF grammar. Chat takes ``tools``, ``tool_choice`` and
``parallel_tool_calls`` as OpenAI does, and ``align_tool_calls`` (default
false: the alignment does not steer a call's arguments); see docs/tools.md
and :mod:`linalign.tool_calls`. ``usage.prompt_tokens_details.cached_tokens``
counts the prompt tokens of the principled stream taken from a slot's cache.
"""
from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from ..aligner import Aligner
from ..engine import EngineClosedError, Generation
from ..logprobs import TokenLogprob
from ..responses import ChatChunks, CompletionChunks, chunks_of, collect_chat, collect_completion
from .metrics import CONTENT_TYPE, ServerMetrics
from .presets import Presets, UnknownModelError
from .scheduler import QueueFullError, Scheduler, Ticket
from .slot_routes import add_slot_routes
from .schema import ApiError, ChatCompletionRequest, CompletionRequest, error_body, parse_request, supported_fields

__all__ = ["create_app"]

log = logging.getLogger("linalign.server")
_DISCONNECT_POLL_S = 0.1
# HTTP status nginx uses for a client that closed the connection: never sent, only logged
_CLIENT_CLOSED = 499
PLAYGROUND = Path(__file__).resolve().parent / "static" / "index.html"


class _ClientGone(Exception):
    """The client disconnected before its answer was ready."""


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


async def _wait(ticket: Ticket, request: Request | None, until: Callable[[], bool]) -> None:
    """Waits for news on ``ticket`` until ``until()`` holds; with a request,
    raises _ClientGone once its client has disconnected (checked every
    _DISCONNECT_POLL_S, however busy the stream)."""
    loop = asyncio.get_running_loop()
    next_check = loop.time() + _DISCONNECT_POLL_S
    while not until():
        ticket.changed.clear()
        if until():
            return
        if request is None:
            await ticket.changed.wait()
            continue
        try:
            await asyncio.wait_for(ticket.changed.wait(), max(next_check - loop.time(), 0.001))
        except asyncio.TimeoutError:
            pass
        if loop.time() >= next_check:
            next_check = loop.time() + _DISCONNECT_POLL_S
            if await request.is_disconnected():
                raise _ClientGone() from None


def _drain(ticket: Ticket) -> Iterator[tuple[str, list[TokenLogprob]]]:
    """The text deltas available now, each with the logprob entries of the
    tokens it completes (the engine thread appends them)."""
    gen = ticket.gen
    while (delta := gen.pop_chunk()) is not None:
        yield delta


async def _deltas(ticket: Ticket, request: Request | None) -> AsyncIterator[tuple[str, list[TokenLogprob]]]:
    gen = ticket.gen
    loop = asyncio.get_running_loop()
    next_check = loop.time() + _DISCONNECT_POLL_S
    while True:
        for delta in _drain(ticket):
            yield delta
        if gen.done and not gen.has_delta:
            break
        if request is not None and loop.time() >= next_check:
            # tokens may come faster than _wait would ever time out
            next_check = loop.time() + _DISCONNECT_POLL_S
            if await request.is_disconnected():
                raise _ClientGone()
        await _wait(ticket, request, lambda: gen.has_delta or gen.done)
    if gen.error is not None:
        raise gen.error


class _ResponseCounter:
    """ASGI middleware: counts every response by path and status (a stream's
    status is the one its headers went out with)."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # an exception before any response: what the client gets

        async def send_noting_status(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)
        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            self.metrics.count_response(scope["path"], status)


def _gauges(aligner: Aligner, scheduler: Scheduler) -> dict[str, tuple[str, Callable[[], float]]]:
    """What ``/metrics`` reads at scrape time, none of it under the engine's lock."""
    def engine() -> Any:  # the loop's engine now: an Aligner may make it again
        return scheduler.engine
    return {
        "linalign_slots_total": ("Slots (--parallel).", lambda: scheduler.total),
        "linalign_slots_busy": ("Slots holding a request.", lambda: engine().n_busy),
        "linalign_queue_length": ("Requests waiting for a slot.", lambda: scheduler.queued_now),
        "linalign_requests_waiting_for_room": ("Requests holding a slot while they wait for room in the KV pool "
                                               "(preempted ones).", lambda: engine().n_waiting),
        "linalign_kv_cells_total": ("KV cells of the context.", lambda: engine().n_cells_total),
        "linalign_kv_cells_used": ("KV cells the streams hold (shared cells once; idle slots' prompt caches "
                                   "included).", lambda: engine().n_cells_used),
        "linalign_kv_cells_free": ("KV cells no stream holds.", lambda: engine().n_cells_total - engine().n_cells_used),
        "linalign_kv_cells_idle": ("Of the used cells, those of idle slots' prompt caches (freed when needed).",
                                   lambda: engine().n_cells_idle),
    }


def create_app(aligner: Aligner, scheduler: Scheduler, *, model_id: str, api_key: str | None = None,
               presets: Presets | None = None, metrics_public: bool = False,
               slot_save_path: Path | None = None) -> FastAPI:
    """The FastAPI application serving ``aligner``'s model through
    ``scheduler``, and ``presets`` (their base id must be ``model_id``);
    ``metrics_public``: ``GET /metrics`` needs no key; ``slot_save_path``:
    the folder of slot files (None: the slot actions answer 501)."""
    app = FastAPI(title="linalign", docs_url=None, redoc_url=None, openapi_url=None)
    metrics = ServerMetrics(_gauges(aligner, scheduler))
    app.add_middleware(_ResponseCounter, metrics=metrics)
    created = int(time.time())
    presets = presets if presets is not None else Presets(model_id)
    devices = aligner.devices  # read once: an RPC device's memory is a round trip to its worker
    if presets.base_id != model_id:
        raise ValueError(f"the presets are of model {presets.base_id!r}, not {model_id!r}")

    @app.exception_handler(ApiError)
    async def on_api_error(request: Request, error: ApiError) -> JSONResponse:
        return JSONResponse(error.body(), status_code=error.status, headers=error.headers)

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
        engine = scheduler.engine
        # decode_calls: engine steps; forward_passes: the graphs llama.cpp ran
        # for them (null unless the server was started with --count-passes,
        # whose eval callback slows a GPU). kv_cells_used counts a cell streams share once, and
        # includes kv_cells_idle, the idle slots' prompt caches (freed when a
        # request needs room); waiting: requests holding a slot until the pool
        # has room (preempted ones, which resume before anything queued)
        return {"status": "ok", "slots_total": scheduler.total, "slots_idle": scheduler.idle,
                "queued": scheduler.queued, "decode_calls": engine.n_decode_calls,
                "forward_passes": engine.n_forward_passes,
                "kv_layout": "pool" if engine.kv_unified else "per-stream",
                "kv_cells_total": engine.n_cells_total, "kv_cells_used": engine.n_cells_used,
                "kv_cells_idle": engine.n_cells_idle, "waiting": engine.n_waiting,
                "preemptions": engine.n_preemptions, "devices": devices}

    @app.get("/metrics")
    async def prometheus_metrics(request: Request) -> Response:
        if not metrics_public:
            check_key(request)
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        # the page asks for the key itself; it holds nothing secret
        return HTMLResponse(PLAYGROUND.read_text(encoding="utf-8"), headers={"Cache-Control": "no-cache"})

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        check_key(request)
        data = [{"id": model_id, "object": "model", "created": created, "owned_by": "linalign",
                 "linalign": {"request_fields": supported_fields()}}]
        data += [{"id": id_, "object": "model", "created": created, "owned_by": "linalign",
                  "linalign": preset.describe()} for id_, preset in presets]
        return {"object": "list", "data": data}

    add_slot_routes(app, aligner, slot_dir=slot_save_path, n_slots=scheduler.total, check_key=check_key)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        return await complete(request, ChatCompletionRequest, ChatChunks, collect_chat)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Any:
        return await complete(request, CompletionRequest, CompletionChunks, collect_completion)

    async def complete(request: Request, schema: type, builder: type[CompletionChunks], collect: Callable) -> Any:
        """Both endpoints: authorise, validate, queue, then stream or collect."""
        check_key(request)
        arrived = time.monotonic()
        try:
            raw = await request.body()
        except ClientDisconnect:
            log.info("client disconnected while sending its request")
            return Response(status_code=_CLIENT_CLOSED)
        body = parse_request(raw, schema)
        try:
            preset = presets.resolve(body.model)
        except UnknownModelError as e:
            raise ApiError(404, str(e), type="not_found_error", param="model", code="model_not_found") from None
        gen_request = body.generation_request(aligner, preset)
        answered_as = body.model if preset is not None else model_id
        want = gen_request.want_logprobs

        def chunk_builder() -> CompletionChunks:
            if builder is ChatChunks:
                return ChatChunks(answered_as, logprobs=want, tool_format=gen_request.tool_format)
            return CompletionChunks(answered_as, logprobs=want, text_offset=body.text_offset())
        try:
            ticket = scheduler.submit(gen_request, asyncio.get_running_loop())
        except QueueFullError as e:
            raise ApiError(503, str(e), type="server_error", code="queue_full", headers={"Retry-After": "1"}) from None
        except (ValueError, TypeError) as e:  # refused before it queued (engine.check)
            raise ApiError(400, str(e)) from None
        def observe(gen: Any) -> None:
            if gen is not None:
                metrics.observe_generation(gen, arrived, body.principles_composed)
        if body.stream:
            # the headers go out now: a stream waits for its slot (and for the
            # decode step in progress) inside the body, never before it starts
            return StreamingResponse(_events(ticket, chunk_builder(), body.include_usage, observe),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            await _wait(ticket, request, lambda: ticket.settled)
        except _ClientGone:
            ticket.cancel()
            scheduler.wake()
            log.info("client disconnected while waiting for a slot")
            return Response(status_code=_CLIENT_CLOSED)
        except BaseException:
            ticket.cancel()
            raise
        if ticket.error is not None:
            error = ticket.error
            if isinstance(error, (ValueError, TypeError)):
                raise ApiError(400, str(error)) from None
            if isinstance(error, (QueueFullError, EngineClosedError)):
                raise ApiError(503, str(error), type="server_error") from None
            raise error

        gen = ticket.gen
        try:
            deltas = [delta async for delta in _deltas(ticket, request)]
        except _ClientGone:
            gen.cancel()
            scheduler.wake()
            log.info("client disconnected before its answer was ready")
            return Response(status_code=_CLIENT_CLOSED)
        finally:
            if not gen.done:
                gen.cancel()
            observe(gen)
        return collect(chunks_of(chunk_builder(), iter(deltas), gen), answered_as, logprobs_asked=want is not None)

    return app


async def _events(ticket: Ticket, builder: CompletionChunks, include_usage: bool,
                  observe: Callable[[Generation | None], None]) -> AsyncIterator[str]:
    """The SSE stream: the first chunk at once, then the text once the
    request has a slot. However it ends (finished, failed, or the client
    gone, which closes this generator) the request leaves its queue or slot,
    and ``observe`` gets its Generation (None: it never had a slot)."""
    def event(chunk: dict[str, Any]) -> str:
        if include_usage:
            chunk["usage"] = None  # OpenAI's shape: usage comes in a chunk of its own at the end
        return _sse(chunk)

    try:
        first = builder.first()
        if first is not None:
            yield event(first)
        await _wait(ticket, None, lambda: ticket.settled)
        if ticket.error is not None:  # the engine could not start it (checked input seldom gets here)
            error = ticket.error
            kind = "invalid_request_error" if isinstance(error, (ValueError, TypeError)) else "server_error"
            yield _sse(error_body(str(error), type=kind))
            return
        async for text, entries in _deltas(ticket, None):
            chunk = builder.delta(text, entries)
            if chunk is not None:  # None: text held back (it may open a tool call)
                yield event(chunk)
        for chunk in builder.tail():
            yield event(chunk)
    except Exception as e:  # noqa: BLE001 - the stream has begun: report in-band
        log.exception("error while streaming")
        yield _sse(error_body(f"internal error: {type(e).__name__}: {e}", type="server_error"))
        return
    finally:
        if ticket.gen is None or not ticket.gen.done:
            ticket.cancel()
        observe(ticket.gen)
    gen = ticket.gen
    last = builder.last(gen)
    usage = last.pop("usage")
    yield event(last)
    if include_usage:
        yield _sse({**last, "choices": [], "usage": usage})
    yield "data: [DONE]\n\n"
