"""``linalign rpc-worker`` processes on this machine's loopback, for the RPC
benchmark and the tests: each on a free port, ready when it accepts
connections, stopped (SIGTERM, then SIGKILL) when done."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Sequence

from .processes import stop_process

__all__ = ["LoopbackWorker", "free_port"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LoopbackWorker:
    """One ``linalign rpc-worker --host 127.0.0.1 --port PORT``. ``start()``
    again after ``kill()`` brings it back on the same port."""

    def __init__(self, *, threads: int = 1, port: int | None = None, log: Path | None = None,
                 extra_args: Sequence[str] = ()) -> None:
        self.port = port or free_port()
        self.endpoint = f"127.0.0.1:{self.port}"
        self.threads, self.log, self.extra_args = threads, log, list(extra_args)
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 60.0) -> "LoopbackWorker":
        cmd = [sys.executable, "-m", "linalign", "rpc-worker", "--host", "127.0.0.1", "--port", str(self.port),
               "--threads", str(self.threads), *self.extra_args]
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        try:
            self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=dict(os.environ))
        finally:
            if self.log:
                out.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"linalign rpc-worker on {self.endpoint} exited with {self.process.returncode}"
                                   + (f" (log: {self.log})" if self.log else ""))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return self
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"linalign rpc-worker on {self.endpoint} did not listen within {timeout_s:g} s")

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL: the worker vanishes as a crashed machine's would."""
        if self.running:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()

    def stop(self) -> None:
        if self.running:
            stop_process(self.process, 10)

    def __enter__(self) -> "LoopbackWorker":
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
