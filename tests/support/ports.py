"""Free ports and waiting for listeners, for tests that start real servers."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago.

    Another process can take it before the caller binds it; starters that bind
    later (``start_mosquitto``, ``start_amqtt_broker``) retry with a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_port(
    host: str,
    port: int,
    *,
    timeout: float = 20.0,
    alive: Callable[[], bool] | None = None,
    what: str = "server",
) -> None:
    """Block until ``host:port`` accepts TCP connections.

    ``alive`` is polled too, so a server that died at start-up fails fast instead of
    after the whole timeout. Raises ``RuntimeError`` (callers add their logs).
    """
    deadline = time.monotonic() + timeout
    while True:
        if alive is not None and not alive():
            raise RuntimeError(f"{what} exited before listening on {host}:{port}")
        if port_accepts(host, port):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not listen on {host}:{port} within {timeout:.0f}s")
        time.sleep(0.05)
