"""The HTTP front of ``linalign serve --rpc``: it stays up while the engine,
a supervised child ``linalign serve`` (:mod:`.supervisor`), dies with an RPC
worker and comes back.

Every request goes through to the child as it came (streams included). When
the engine is down, or dies under a request:

* a request gets 503 with an OpenAI-style error naming the lost worker
  (``code`` ``"engine_down"``, ``Retry-After``);
* a stream that has begun (its 200 went out) ends with that error as its
  last event, as the server reports any failure inside a stream;
* ``GET /health`` answers 503 with ``status`` ``"down"`` (or
  ``"starting"``), the same error, and ``engine``: its state, the reason,
  ``lost_workers``, ``restarts`` and ``retry_in_s``. When up, it is the
  engine's own /health (its ``devices`` included) plus ``engine``.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sys
from typing import Any, AsyncIterator, Sequence

import httpx
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..server.schema import error_body
from .supervisor import EngineRun, EngineSupervisor

__all__ = ["create_front", "serve_supervised"]

log = logging.getLogger("linalign.server.front")

# hop-by-hop headers (RFC 9110 7.6.1) and those the proxy sets itself
_REQUEST_SKIP = {"host", "content-length", "connection", "keep-alive", "transfer-encoding", "upgrade", "te"}
_RESPONSE_SKIP = {"content-length", "connection", "keep-alive", "transfer-encoding", "date", "server"}
_METHODS = ["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD"]


def _down_error(message: str) -> dict[str, Any]:
    return error_body(message, type="server_error", code="engine_down")


def _unavailable(supervisor: EngineSupervisor, message: str | None = None) -> JSONResponse:
    text = message or f"the engine is {supervisor.state}: {supervisor.reason}"
    return JSONResponse(_down_error(text), status_code=503, headers={"Retry-After": "1"})


def create_front(supervisor: EngineSupervisor) -> FastAPI:
    """The front's application; ``supervisor.run()`` runs for its lifespan."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        task = asyncio.create_task(supervisor.run())
        app.state.supervisor_task = task
        try:
            yield
        finally:
            await supervisor.stop()
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    app = FastAPI(title="linalign (supervised)", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.get("/health")
    async def health() -> Response:
        run = supervisor.current()
        if run is not None:
            try:
                response = await run.client.get("/health", timeout=5.0)
                body = response.json()
                body["engine"] = supervisor.describe()
                return JSONResponse(body, status_code=response.status_code)
            except (httpx.TransportError, ValueError):
                pass  # it is dying: the supervisor will say why
        state = supervisor.state if supervisor.state != "up" else "down"
        message = f"the engine is {state}: {supervisor.reason or 'the connection to it dropped'}"
        return JSONResponse({"status": state, "engine": supervisor.describe(), **_down_error(message)},
                            status_code=503, headers={"Retry-After": "1"})

    @app.api_route("/{path:path}", methods=_METHODS)
    async def proxy(request: Request, path: str) -> Response:
        run = supervisor.current()
        if run is None:
            return _unavailable(supervisor)
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _REQUEST_SKIP]
        outgoing = run.client.build_request(request.method, request.url.path, params=request.url.query,
                                            headers=headers, content=await request.body())
        try:
            response = await run.client.send(outgoing, stream=True)
        except httpx.TransportError:
            return _unavailable(supervisor, await supervisor.failure_of(run))
        out_headers = {k: v for k, v in response.headers.items() if k.lower() not in _RESPONSE_SKIP}
        if not response.headers.get("content-type", "").startswith("text/event-stream"):
            # whole bodies only: an engine dying mid-body is a 503, never a truncated answer
            try:
                body = b"".join([chunk async for chunk in response.aiter_raw()])
            except httpx.TransportError:
                return _unavailable(supervisor, await supervisor.failure_of(run))
            finally:
                await response.aclose()
            return Response(body, status_code=response.status_code, headers=out_headers)
        return StreamingResponse(_relay(supervisor, run, response), status_code=response.status_code,
                                 headers=out_headers)

    return app


async def _relay(supervisor: EngineSupervisor, run: EngineRun, response: httpx.Response) -> AsyncIterator[bytes]:
    """An engine's event stream, ended by an error event if the engine dies."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.TransportError:
        reason = await supervisor.failure_of(run)
        log.warning("a stream failed: %s", reason)
        # a blank line first: the event the engine was writing may be cut short
        yield f"\n\ndata: {json.dumps(_down_error(reason))}\n\n".encode()
    finally:
        await response.aclose()


def serve_supervised(serve_argv: Sequence[str], endpoints: Sequence[str], *, host: str, port: int,
                     log_level: str) -> int:
    """Runs the front on host:port over a supervised engine started with
    ``linalign serve SERVE_ARGV`` (the user's arguments; the child's own
    address is appended). Returns the exit status."""
    import uvicorn

    supervisor = EngineSupervisor(serve_argv, endpoints)
    app = create_front(supervisor)
    config = uvicorn.Config(app, host=host, port=port, log_level=log_level,
                            access_log=log_level in ("info", "debug"), timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)

    async def main() -> None:
        serving = asyncio.create_task(server.serve())
        while not serving.done():
            task = getattr(app.state, "supervisor_task", None)
            if task is not None and task.done() and supervisor.fatal:
                server.should_exit = True
            await asyncio.sleep(0.2)
        await serving

    print(f"linalign serve: http://{host}:{port}, its engine supervised in a child process over RPC workers "
          f"{', '.join(endpoints)} (restarted when it dies)", flush=True)
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
    if supervisor.fatal:
        print(f"linalign serve: {supervisor.fatal}", file=sys.stderr, flush=True)
        return 1
    return 0 if server.started else 1
