"""Stopping a child process (a server, an RPC worker) the same way
wherever the benchmarks and tests start one: SIGTERM, a wait, then SIGKILL."""
from __future__ import annotations

import subprocess

__all__ = ["stop_process"]


def stop_process(process: subprocess.Popen, timeout: float) -> int | None:
    """Terminates ``process``, waits up to ``timeout`` seconds for it to
    exit, kills it if it has not, and returns its exit code. Nothing is
    sent to a process that has exited already."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode
