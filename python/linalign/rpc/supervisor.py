"""The engine of ``linalign serve --rpc`` in a child process, restarted when
it dies.

ggml-rpc aborts the process that holds the model when a worker's connection
fails, so the model lives in a child ``linalign serve`` on 127.0.0.1, and the
front (:mod:`.front`) survives it. The supervisor waits until every worker
accepts connections, starts the child, watches it, and when it exits names
the workers that no longer accept connections (the cause, most of the time),
then starts it again once they are back, with exponential backoff.
"""
from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Sequence

import httpx

from .handshake import worker_accepts_connections

__all__ = ["EngineRun", "EngineSupervisor", "end_with_parent"]

log = logging.getLogger("linalign.server.supervisor")

_FRONT_PID = "LINALIGN_FRONT_PID"  # the supervising front's pid, in the child's environment
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 8.0
_READY_POLL_S = 0.25


@dataclass
class EngineRun:
    """One life of the child: where it listens, and how it ended."""
    port: int
    process: asyncio.subprocess.Process
    client: httpx.AsyncClient
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    reason: str | None = None  # set before ``exited``


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _exit_description(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"status {returncode}"


def end_with_parent() -> None:
    """Called by the engine child at start-up: it ends (SIGTERM) with the
    front, however the front ends (Linux; elsewhere the front's shutdown
    terminates it). Set in the child itself rather than between fork and
    exec, which is unsafe in a process with threads."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        front = int(os.environ.get(_FRONT_PID, "0"))
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        if front and os.getppid() != front:  # the front ended before the call
            os.kill(os.getpid(), signal.SIGTERM)
    except (OSError, AttributeError, ValueError):
        pass


class EngineSupervisor:
    """Runs ``linalign serve ARGV`` as a child on 127.0.0.1 for as long as
    :meth:`run` runs. ``state`` is "starting", "up" or "down"; ``reason``
    says why it is not up, and ``lost_workers`` which workers it waits for."""

    def __init__(self, serve_argv: Sequence[str], endpoints: Sequence[str], *, ready_timeout_s: float = 900.0) -> None:
        self.serve_argv, self.endpoints = list(serve_argv), list(endpoints)
        self.ready_timeout_s = ready_timeout_s
        self.state = "starting"
        self.reason: str | None = "loading the model"
        self.lost_workers: list[str] = []
        self.restarts = 0
        self.retry_at: float | None = None
        self.run_now: EngineRun | None = None
        self.fatal: str | None = None  # the first start failed with every worker up: a setup error, not a fault
        self._stopping = False

    # -- what the front asks ------------------------------------------------

    def current(self) -> EngineRun | None:
        """The child to send a request to, when it is up."""
        return self.run_now if self.state == "up" else None

    def describe(self) -> dict:
        retry = None if self.retry_at is None else max(0.0, round(self.retry_at - time.monotonic(), 1))
        return {"state": self.state, "reason": self.reason, "lost_workers": self.lost_workers,
                "restarts": self.restarts, "retry_in_s": retry,
                "pid": self.run_now.process.pid if self.run_now and self.state == "up" else None}

    async def failure_of(self, run: EngineRun, wait_s: float = 5.0) -> str:
        """Why ``run`` failed a request: once it has exited, what the
        supervisor found (the lost worker); else that the connection dropped."""
        try:
            await asyncio.wait_for(run.exited.wait(), wait_s)
        except asyncio.TimeoutError:
            return "the connection to the engine dropped"
        return run.reason or "the engine stopped"

    # -- the loop -------------------------------------------------------------

    async def _lost(self) -> dict[str, str]:
        found = await asyncio.gather(*[asyncio.to_thread(worker_accepts_connections, e) for e in self.endpoints])
        return {e: why for e, why in zip(self.endpoints, found) if why is not None}

    def _down(self, reason: str, lost: dict[str, str]) -> None:
        if (self.state, self.reason) != ("down", reason):  # once, not at every retry
            log.warning("engine down: %s", reason)
        self.state, self.reason, self.lost_workers = "down", reason, sorted(lost)

    @staticmethod
    def _naming(lost: dict[str, str]) -> str:
        return ", ".join(f"RPC worker {e} is unreachable ({why})" for e, why in lost.items())

    async def run(self) -> None:
        """Until stop(), or until the very first start fails with every
        worker up (a bad model path, say: ``fatal`` says so; restarting
        would only repeat it)."""
        failures, ever_up = 0, False
        while not self._stopping:
            lost = await self._lost()
            if not lost:
                ended = await self._one_life()
                if ended == "stopped":
                    return
                ever_up = ever_up or ended == "was up"
                if not ever_up and not self.lost_workers:
                    self.fatal = self.reason
                    return
                failures = 0 if ended == "was up" else failures + 1
            else:
                self._down(self._naming(lost) + "; waiting for it to come back", lost)
                failures += 1
            delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** max(0, failures - 1))
            self.retry_at = time.monotonic() + delay
            await asyncio.sleep(delay)
            self.retry_at = None

    async def _one_life(self) -> str:
        """Starts the child and returns when it has exited: "was up" (it
        served), "failed" (it never did) or "stopped" (stop() ended it)."""
        port = _free_port()
        cmd = [sys.executable, "-m", "linalign", "serve", *self.serve_argv,
               "--host", "127.0.0.1", "--port", str(port), "--engine-child"]
        self.state, self.reason = "starting", "loading the model"
        process = await asyncio.create_subprocess_exec(*cmd, env={**os.environ, _FRONT_PID: str(os.getpid())})
        client = httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}",
                                   timeout=httpx.Timeout(None, connect=5.0))
        run = EngineRun(port=port, process=process, client=client)
        self.run_now = run
        was_up = await self._wait_ready(run)
        if was_up:
            self.state, self.reason, self.lost_workers = "up", None, []
            log.info("engine up (pid %d, port %d)", process.pid, port)
        returncode = await process.wait()
        if self._stopping:
            run.reason = "the server is shutting down"
            run.exited.set()
            await client.aclose()
            return "stopped"
        lost = await self._lost()
        how = "stopped" if was_up else "failed to start"
        run.reason = (f"the engine {how}: {self._naming(lost)}" if lost else
                      f"the engine {how} ({_exit_description(returncode)}; every RPC worker accepts connections: "
                      "see the engine's log above)")
        self._down(run.reason, lost)
        self.restarts += 1
        run.exited.set()
        # requests still streaming from it have failed by now; close it later
        asyncio.get_running_loop().call_later(10.0, lambda: asyncio.ensure_future(client.aclose()))
        return "was up" if was_up else "failed"

    async def _wait_ready(self, run: EngineRun) -> bool:
        deadline = time.monotonic() + self.ready_timeout_s
        while time.monotonic() < deadline:
            if run.process.returncode is not None:
                return False
            try:
                response = await run.client.get("/health", timeout=2.0)
                if response.status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            try:
                await asyncio.wait_for(run.process.wait(), _READY_POLL_S)
            except asyncio.TimeoutError:
                pass
        log.error("engine not ready after %.0f s: stopping it", self.ready_timeout_s)
        run.process.kill()
        return False

    async def stop(self) -> None:
        """Ends the child (SIGTERM, then SIGKILL after 10 s)."""
        self._stopping = True
        run = self.run_now
        if run is None or run.process.returncode is not None:
            return
        run.process.terminate()
        try:
            await asyncio.wait_for(run.process.wait(), 10.0)
        except asyncio.TimeoutError:
            run.process.kill()
            await run.process.wait()
