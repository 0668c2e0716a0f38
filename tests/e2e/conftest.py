from __future__ import annotations

import socket

import pytest


@pytest.fixture
def free_port_pair() -> tuple[int, int]:
    """Two distinct free TCP ports on 127.0.0.1."""
    sockets = [socket.socket() for _ in range(2)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return tuple(s.getsockname()[1] for s in sockets)  # type: ignore[return-value]
    finally:
        for s in sockets:
            s.close()
