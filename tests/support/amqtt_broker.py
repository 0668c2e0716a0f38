"""The project's embedded amqtt broker, run in a background thread for tests."""

from __future__ import annotations

import errno
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

from tests.support.loop_thread import AsyncService, ThreadedService
from tests.support.ports import free_port, wait_for_port

BrokerFactory = Callable[[str, int], AsyncService]


def _embedded_broker(host: str, port: int) -> AsyncService:
    # Imported late: the broker module is another team's, and tests that never use this
    # fixture must still collect while it is being written.
    from broker_bridge.embedded import EmbeddedBroker

    broker: AsyncService = EmbeddedBroker(host, port)
    return broker


def _port_taken(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        # EmbeddedBroker raises ota_core's PortInUse ("... is already in use ...").
        if "already in use" in str(seen).lower():
            return True
        seen = seen.__cause__ or seen.__context__
    return False


@dataclass
class AmqttServer:
    host: str
    port: int
    _threaded: ThreadedService[AsyncService] = field(repr=False)

    @property
    def url(self) -> str:
        return f"mqtt://{self.host}:{self.port}"

    def stop(self) -> None:
        self._threaded.stop()


def start_amqtt_broker(
    factory: BrokerFactory = _embedded_broker, host: str = "127.0.0.1", timeout: float = 20.0
) -> AmqttServer:
    """Start ``factory(host, port)`` (default: broker_bridge.embedded.EmbeddedBroker) on a
    free port in its own event-loop thread, and wait until it accepts connections."""
    attempts = 3
    for attempt in range(1, attempts + 1):
        port = free_port(host)
        try:
            threaded: ThreadedService[AsyncService] = ThreadedService(
                partial(factory, host, port), name=f"amqtt-{port}"
            )
        except Exception as e:
            if attempt < attempts and _port_taken(e):
                continue
            raise
        server = AmqttServer(host, port, threaded)
        try:
            wait_for_port(host, port, timeout=timeout, what="embedded amqtt broker")
        except BaseException:
            server.stop()
            raise
        return server
    raise AssertionError("unreachable")
