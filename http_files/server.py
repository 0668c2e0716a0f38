"""Running the ASGI app under uvicorn with our own process lifetime."""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

import uvicorn


class GracefulServer(uvicorn.Server):
    """A uvicorn server whose signals only ask it to stop.

    Plain uvicorn re-raises SIGTERM/SIGINT after its own shutdown, which kills
    the process before ``ota run`` can stop the bridge and flush its pending
    registry writes. The caller owns the process; the exit code stays 0.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {
            sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)
        }
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
