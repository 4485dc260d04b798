"""``linalign bench --rpc loopback``: the RPC hop's benchmark runs end to
end on two workers it starts itself, and its proxy counts what crosses it."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading

from linalign.benchmarking.counting_proxy import CountingProxy

from test_rpc import require_rpc_build


def test_the_counting_proxy_counts_both_ways():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)

        def echo() -> None:
            conn, _ = server.accept()
            with conn:
                conn.sendall(conn.recv(100) * 2)
        threading.Thread(target=echo, daemon=True).start()
        with CountingProxy(f"127.0.0.1:{server.getsockname()[1]}") as proxy:
            host, port = proxy.endpoint.split(":")
            with socket.create_connection((host, int(port))) as client:
                client.sendall(b"12345")
                got = b""
                while len(got) < 10:
                    got += client.recv(100)
            assert got == b"1234512345"
            assert (proxy.sent, proxy.received) == (5, 10)


def test_bench_rpc_loopback_reports_every_configuration(tmp_path):
    require_rpc_build()
    out = tmp_path / "rpc.json"
    done = subprocess.run([sys.executable, "-m", "linalign", "bench", "--rpc", "loopback", "--max-tokens", "4",
                           "--reps", "1", "--rounds", "1", "--threads", "2", "--worker-threads", "1", "--quiet",
                           "--json", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    doc = json.loads(out.read_text())
    assert set(doc["results"]) == {"local", "1 worker", "2 workers"}
    for name in ("1 worker", "2 workers"):
        wire = doc["results"][name]["wire"]
        assert wire["bytes_per_decode_step"] > 0 and wire["load_bytes"] > 10 * 2**20  # the weights crossed it
    assert "B/step" in done.stdout
