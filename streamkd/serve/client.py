"""A small client of the daemon's HTTP API (standard library only), for scripts, notebooks,
tests and benchmarks that start a daemon and talk to it.

>>> port = free_port()
>>> 1024 <= port < 65536
True
"""

from __future__ import annotations

import http.client
import json
import socket
from typing import Any


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (for ``streamkd serve --port``)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    token: str | None = None,
    host: str = "127.0.0.1",
    timeout: float = 60,
) -> tuple[int, Any]:
    """One request to the daemon on ``host:port``: its status and decoded JSON answer."""
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request(method, path, body, headers)
        resp = conn.getresponse()
        status, data = resp.status, resp.read()
    finally:
        conn.close()
    return status, json.loads(data) if data else None


def health(port: int, **kwargs: Any) -> dict[str, Any]:
    """``GET /health`` of the daemon on ``port``."""
    return call(port, "GET", "/health", **kwargs)[1]
