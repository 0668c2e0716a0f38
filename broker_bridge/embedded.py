"""The embedded MQTT broker ``ota run`` starts: amqtt 0.12 on one plain TCP listener.

It is the zero-setup development default, so it allows anonymous clients and
speaks MQTT 3.1.1 only (amqtt has no MQTT 5): the bridge connects to it with
protocol 3.1.1. Production deployments point ``OTA_BROKER_URL`` at Mosquitto,
which adds MQTT 5, per-device ACLs and size limits.

Only the anonymous-auth plugin is loaded: amqtt's default set also logs every
packet and publishes ``$SYS`` statistics, which costs throughput for nothing
here.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import socket
from typing import Any

from amqtt.broker import Broker
from amqtt.errors import BrokerError

from ota_core.errors import PortInUse, ServiceUnavailable

log = logging.getLogger(__name__)

_QUIET_LOGGERS = ("amqtt", "transitions")


class _DropStartupTraceback(logging.Filter):
    # amqtt logs a full traceback before raising when a listener cannot bind; we
    # raise a plain PortInUse/ServiceUnavailable instead, so that record is noise.
    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != "Broker startup failed"


def broker_config(host: str, port: int) -> dict[str, Any]:
    """amqtt 0.12 configuration: one TCP listener, anonymous clients allowed."""
    bind_host = f"[{host}]" if ":" in host else host
    return {
        "listeners": {"default": {"type": "tcp", "bind": f"{bind_host}:{port}"}},
        "plugins": {
            "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True},
        },
    }


def _port_in_use(host: str, port: int) -> PortInUse:
    other = 18830 if port != 18830 else 18831
    return PortInUse(
        f"MQTT port {port} on {host} is already in use (another broker, or another `ota run`?). "
        f"Choose another port with OTA_MQTT_PORT={other} or `ota run --mqtt-port {other}`, "
        "or use a running broker with OTA_BROKER_URL=mqtt://host:port."
    )


def check_port_free(host: str, port: int) -> None:
    """Raise PortInUse when ``host:port`` cannot be bound (probe the way asyncio binds)."""
    try:
        infos = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise ServiceUnavailable(
            f"cannot listen on {host}:{port}: {host!r} is not a usable address ({e.strerror})"
        ) from e
    for family, kind, proto, _name, address in infos:
        with socket.socket(family, kind, proto) as probe:
            # asyncio.start_server sets SO_REUSEADDR too, so TIME_WAIT leftovers are fine.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise _port_in_use(host, port) from e
                raise ServiceUnavailable(
                    f"cannot listen on {host}:{port}: {e.strerror}. Choose another port with "
                    "OTA_MQTT_PORT or --mqtt-port."
                ) from e


def _address_in_use(error: BaseException) -> bool:
    seen: BaseException | None = error
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno == errno.EADDRINUSE:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class EmbeddedBroker:
    """amqtt broker on ``host:port``. ``start()`` and ``shutdown()`` run on the caller's loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._broker: Broker | None = None

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in {"0.0.0.0", "::", ""} else self.host
        return f"mqtt://{host}:{self.port}"

    async def start(self) -> None:
        """Listen; raise PortInUse (plain message, no traceback) when the port is taken."""
        if self._broker is not None:
            return
        for name in _QUIET_LOGGERS:
            # amqtt logs every connection at INFO; keep it to warnings unless asked.
            quiet = logging.getLogger(name)
            if quiet.level == logging.NOTSET:
                quiet.setLevel(logging.WARNING)
        check_port_free(self.host, self.port)
        # Broker() needs the running loop, so it is built here and not in __init__.
        broker = Broker(broker_config(self.host, self.port))
        startup_log = logging.getLogger("amqtt.broker")
        drop = _DropStartupTraceback()
        startup_log.addFilter(drop)
        try:
            await broker.start()
        except BrokerError as e:
            # Someone took the port between the probe and the bind.
            if _address_in_use(e):
                raise _port_in_use(self.host, self.port) from e
            raise ServiceUnavailable(f"the embedded MQTT broker could not start: {e}") from e
        finally:
            startup_log.removeFilter(drop)
        self._broker = broker
        log.info("embedded MQTT broker listening url=%s protocol=3.1.1", self.url)

    async def shutdown(self) -> None:
        broker, self._broker = self._broker, None
        if broker is None:
            return
        with contextlib.suppress(BrokerError):  # already stopping: nothing left to do
            await broker.shutdown()
        log.info("embedded MQTT broker stopped url=%s", self.url)
