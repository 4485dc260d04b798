"""Parsing ``--rpc HOST:PORT[,HOST:PORT...]`` and ``rpc_servers=[...]``.

ggml-rpc splits an endpoint at its first colon, so a host is a name or an
IPv4 address; an IPv6 address cannot be given (name it in /etc/hosts).
"""
from __future__ import annotations

from typing import Iterable

__all__ = ["parse_endpoint", "parse_endpoints", "MAX_WORKERS"]

MAX_WORKERS = 16  # GGML_RPC_MAX_SERVERS in ggml-rpc.h


def parse_endpoint(text: str) -> tuple[str, int]:
    """``"host:port"`` as (host, port); ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise TypeError(f"an RPC worker is a 'HOST:PORT' string, got {type(text).__name__}")
    host, sep, port = text.strip().partition(":")
    if not sep or not host:
        raise ValueError(f"RPC worker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:50052")
    if ":" in port or host.startswith("["):
        raise ValueError(f"RPC worker {text!r}: llama.cpp's RPC backend takes no IPv6 address; give a host name "
                         "or an IPv4 address")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"RPC worker {text!r}: the port must be a number in [1, 65535]")
    if any(c.isspace() for c in host):
        raise ValueError(f"RPC worker {text!r}: the host has white space in it")
    return host, int(port)


def parse_endpoints(value: str | Iterable[str]) -> list[str]:
    """A comma-separated string or a list of endpoints, each checked, as
    normalised ``"host:port"`` strings; duplicates are a ValueError (one
    worker serves one client: the second connection would wait forever)."""
    if isinstance(value, str) and not value.strip():
        raise ValueError("no RPC worker given: expected HOST:PORT[,HOST:PORT...]")
    items = value.split(",") if isinstance(value, str) else list(value)
    if len(items) > MAX_WORKERS:
        raise ValueError(f"at most {MAX_WORKERS} RPC workers (llama.cpp's GGML_RPC_MAX_SERVERS), got {len(items)}")
    endpoints = []
    for item in items:
        if isinstance(item, str) and not item.strip() and isinstance(value, str):
            raise ValueError(f"--rpc {value!r}: an empty entry between commas")
        host, port = parse_endpoint(item)
        endpoint = f"{host}:{port}"
        if endpoint in endpoints:
            raise ValueError(f"RPC worker {endpoint} is given twice")
        endpoints.append(endpoint)
    if not endpoints:
        raise ValueError("no RPC worker given")
    return endpoints
