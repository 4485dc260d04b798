"""llama.cpp's RPC backend: endpoints, the checks before a model loads on
workers, and aligned decoding with the default model split over two
``linalign rpc-worker`` processes on loopback and the local CPU.

The loopback tests skip only where llama-cpp-python was built without
-DGGML_RPC=ON, and fail instead where LINALIGN_TEST_REQUIRE_RPC=1 (.ci/run).
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading

import pytest

import linalign
from linalign import _core
from linalign.benchmarking.rpc_workers import LoopbackWorker, free_port
from linalign.rpc import (RpcNotBuiltError, RpcVersionMismatchError, RpcWorkerBusyError, RpcWorkerUnreachableError,
                          greet_worker, parse_endpoints, protocol_version)

from conftest import LOGPROB_TOL, TOP_ENTRIES, assert_same_greedy_decoding, require_rpc_build

# -- endpoints ----------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("127.0.0.1:50052", ["127.0.0.1:50052"]),
    (" gpu-box:1 , laptop:65535", ["gpu-box:1", "laptop:65535"]),
    (["a:1", "b:2"], ["a:1", "b:2"]),
])
def test_endpoints_parse(text, expected):
    assert parse_endpoints(text) == expected


@pytest.mark.parametrize("text, message", [
    ("", "HOST:PORT"),
    ("localhost", "HOST:PORT"),
    (":50052", "HOST:PORT"),
    ("host:0", "[1, 65535]"),
    ("host:65536", "[1, 65535]"),
    ("host:http", "[1, 65535]"),
    ("[::1]:50052", "IPv6"),
    ("::1:50052", "HOST:PORT"),
    ("fe80::1:50052", "IPv6"),
    ("a:1,a:1", "twice"),
    ("a:1,,b:2", "empty entry"),
])
def test_bad_endpoints_are_a_value_error_naming_them(text, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_endpoints(text)


# -- before a model loads -----------------------------------------------------

def test_without_the_backend_rpc_is_an_error_naming_the_flag_and_the_rebuild(monkeypatch, model_path):
    monkeypatch.setattr(_core, "rpc_available", lambda: False)
    with pytest.raises(RpcNotBuiltError) as e:
        linalign.Aligner(model_path, rpc_servers="127.0.0.1:50052")
    assert "-DGGML_RPC=ON" in str(e.value) and "--no-cache-dir" in str(e.value)
    assert "llama-cpp-python==" in str(e.value)


def test_rpc_worker_without_the_backend_exits_with_the_rebuild_command(monkeypatch, capsys):
    from linalign.rpc.worker_cli import main

    monkeypatch.setattr(_core, "rpc_available", lambda: False)
    assert main(["--port", str(free_port())]) == 2
    assert "-DGGML_RPC=ON" in capsys.readouterr().err


def test_an_unreachable_worker_is_named(model_path):
    require_rpc_build()
    endpoint = f"127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(RpcWorkerUnreachableError, match=endpoint):
        linalign.Aligner(model_path, rpc_servers=[endpoint])


def test_the_cli_names_an_unreachable_worker():
    require_rpc_build()
    endpoint = f"127.0.0.1:{free_port()}"
    done = subprocess.run([sys.executable, "-m", "linalign", "hi", "--rpc", endpoint, "-n", "2"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert f"RPC worker {endpoint} is unreachable" in done.stderr


class FakeWorker:
    """A listener that answers HELLO as ``answer`` says: bytes to send, or
    None to close at once, or "silent" to accept and never answer."""

    def __init__(self, answer) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.endpoint = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.answer, self.conns = answer, []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)
        if self.answer == "silent":
            return
        conn.recv(64)
        if self.answer is not None:
            conn.sendall(self.answer)
        conn.close()

    def close(self) -> None:
        for c in self.conns:
            c.close()
        self.sock.close()


def _hello_answer(major: int, minor: int, patch: int) -> bytes:
    import struct

    return struct.pack("<Q", 28) + bytes([major, minor, patch, 0]) + bytes(24)


def test_a_worker_of_another_protocol_version_is_named_with_both_versions():
    require_rpc_build()
    ours = protocol_version()
    fake = FakeWorker(_hello_answer(ours[0] - 1, 0, 0))
    try:
        with pytest.raises(RpcVersionMismatchError) as e:
            greet_worker(fake.endpoint, timeout=5)
    finally:
        fake.close()
    message = str(e.value)
    assert fake.endpoint in message and f"{ours[0] - 1}.0.0" in message and ".".join(map(str, ours)) in message


def test_a_worker_that_drops_our_hello_is_a_version_mismatch():
    fake = FakeWorker(None)
    try:
        with pytest.raises(RpcVersionMismatchError, match="closed the connection"):
            greet_worker(fake.endpoint, timeout=5)
    finally:
        fake.close()


def test_a_busy_worker_is_named_after_a_timeout():
    fake = FakeWorker("silent")
    try:
        with pytest.raises(RpcWorkerBusyError, match=f"{fake.endpoint}.*one client at a time"):
            greet_worker(fake.endpoint, timeout=0.5)
    finally:
        fake.close()


@pytest.mark.parametrize("split, message", [
    ("1,x", "not a number"),
    ([1, -1], ">= 0"),
    ([float("nan")], "finite"),
    ([0, 0], "at least one proportion"),
])
def test_bad_tensor_splits_are_a_value_error(model_path, split, message):
    with pytest.raises(ValueError, match=message):
        linalign.Aligner(model_path, tensor_split=split)


def test_no_layers_for_the_workers_is_a_value_error(model_path):
    with pytest.raises(ValueError, match="no layer on the RPC workers"):
        linalign.Aligner(model_path, rpc_servers="127.0.0.1:50052", n_gpu_layers=0)


def test_a_borrowed_llama_takes_no_rpc_servers(reference_llama):
    with pytest.raises(ValueError, match="not with llama="):
        linalign.Aligner(llama=reference_llama, rpc_servers="127.0.0.1:50052")


# -- on two loopback workers ------------------------------------------------

# the default model has 30 layers: the last 19 and the output layer go to
# the workers (10 each), the input layer and the first 11 stay on the CPU
SPLIT_LAYERS = 20


@pytest.fixture(scope="module")
def rpc_aligner(workers, model_path):
    with linalign.Aligner(model_path, n_ctx=1024, n_threads=2, seed=0, rpc_servers=[w.endpoint for w in workers],
                          n_gpu_layers=SPLIT_LAYERS, tensor_split=[1, 1]) as a:
        yield a


def test_the_model_lies_on_the_cpu_and_both_workers(rpc_aligner, workers):
    devices = rpc_aligner.devices
    assert devices[0]["type"] == "cpu"
    remote = [d for d in devices if d["type"] == "rpc"]
    assert [d["description"] for d in remote] == [w.endpoint for w in workers]
    assert all(d["memory_total"] > 0 for d in remote)


def test_workers_are_not_registered_for_later_loads(rpc_aligner, model_path):
    """A load that names no workers, a llama_cpp.Llama's too, lists only this
    machine's devices: ggml's registry never holds the workers."""
    assert all(d["type"] != "rpc" for d in _core.local_devices())
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2) as plain:
        assert [d["type"] for d in plain.devices] == ["cpu"]


def chat_entries(response: dict) -> list[tuple]:
    """A chat completion's logprobs as assert_same_greedy_decoding takes them."""
    return [(e["token"], e["logprob"], {t["token"]: t["logprob"] for t in e["top_logprobs"]})
            for e in response["choices"][0]["logprobs"]["content"]]


@pytest.mark.parametrize("ratio", [0.0, 2.0])
def test_aligned_greedy_decoding_over_rpc_matches_the_local_run(rpc_aligner, aligner, ratio):
    """The same request, local and split over two workers and the CPU: the
    same greedy tokens within the closeness of docs/exactness.md (the graph
    is cut into other pieces, the kernels are the CPU's on both sides)."""
    runs = []
    for a in (aligner, rpc_aligner):
        a.reset()
        out = a.create_chat_completion([{"role": "user", "content": "Why is the sky blue?"}],
                                       principle="Explain it to a five-year-old child.", ratio=ratio, max_tokens=32,
                                       temperature=0.0, top_p=0.8, logprobs=True, top_logprobs=TOP_ENTRIES, seed=1)
        runs.append(chat_entries(out))
    assert len(runs[1]) == 32
    assert_same_greedy_decoding(runs[1], runs[0], LOGPROB_TOL)


def test_a_continued_conversation_reuses_the_prompt_cache_over_rpc(rpc_aligner):
    messages = [{"role": "user", "content": "Name a colour."}]
    rpc_aligner.reset()
    first = rpc_aligner.create_chat_completion(messages, principle="Answer in one word.", max_tokens=8,
                                               temperature=0.0)
    messages += [first["choices"][0]["message"], {"role": "user", "content": "And another?"}]
    second = rpc_aligner.create_chat_completion(messages, principle="Answer in one word.", max_tokens=8,
                                                temperature=0.0)
    assert second["usage"]["prompt_tokens_details"]["cached_tokens"] > 10


def test_version_lists_a_workers_devices(tmp_path):
    require_rpc_build()
    with LoopbackWorker(threads=1, log=tmp_path / "worker.log") as worker:
        done = subprocess.run([sys.executable, "-m", "linalign", "--version", "--rpc", worker.endpoint],
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "RPC backend: built, protocol" in done.stdout
    assert "CPU [cpu]" in done.stdout and f"[rpc]: {worker.endpoint}" in done.stdout


def test_a_worker_another_process_holds_is_named_busy(rpc_aligner, workers, model_path):
    """This process holds both workers (rpc_aligner); another process that
    wants one is told so instead of waiting forever."""
    script = (f"import linalign; linalign.Aligner({str(model_path)!r}, rpc_servers=[{workers[0].endpoint!r}])")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "RpcWorkerBusyError" in done.stderr and f"{workers[0].endpoint} accepted the connection" in done.stderr


def test_rpc_worker_names_a_port_in_use():
    require_rpc_build()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "linalign", "rpc-worker", "--port", str(port)],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot listen on 127.0.0.1:{port}" in done.stderr


def test_rpc_worker_names_an_unknown_device():
    require_rpc_build()
    done = subprocess.run([sys.executable, "-m", "linalign", "rpc-worker", "--port", str(free_port()),
                           "--device", "NoSuchGPU0"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "no device named 'NoSuchGPU0'" in done.stderr and "CPU" in done.stderr


def test_rpc_worker_warns_off_loopback():
    """Bound beyond loopback, the worker says the protocol has no
    authentication and how to tunnel it (here it then stops at a bad device)."""
    require_rpc_build()
    done = subprocess.run([sys.executable, "-m", "linalign", "rpc-worker", "--host", "0.0.0.0", "--port",
                           str(free_port()), "--device", "NoSuchGPU0"], capture_output=True, text=True, timeout=60)
    assert "no authentication" in done.stderr and "ssh -N -L" in done.stderr


def test_a_second_model_on_the_same_worker_shares_its_connection(rpc_aligner, workers, model_path):
    """ggml-rpc keeps one connection per worker per process: a second model
    on a worker this process already uses is not refused as busy."""
    with linalign.Aligner(model_path, n_ctx=256, n_threads=2, rpc_servers=[workers[0].endpoint]) as second:
        out = second.create_completion("Q: Name a colour.\nA:", max_tokens=4, temperature=0.0)
        assert out["usage"]["completion_tokens"] > 0
    assert workers[0].endpoint in _core.rpc_held()  # rpc_aligner still holds it
