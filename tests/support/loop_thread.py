"""Run an asyncio service (start()/shutdown()) on its own event loop in a background thread.

Lets synchronous tests and fixtures use async servers such as the embedded amqtt broker
while the test body stays plain blocking code (paho clients, subprocesses, requests).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import TimeoutError as FutureTimeout
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

T = TypeVar("T")


class AsyncService(Protocol):
    async def start(self) -> Any: ...
    async def shutdown(self) -> Any: ...


S = TypeVar("S", bound=AsyncService)


class LoopThread:
    """A daemon thread running one event loop until ``close()``."""

    def __init__(self, name: str = "test-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        # Let cancelled tasks (the service's own) run their cleanup before the loop closes.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is re-raised)."""
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except FutureTimeout:
            future.cancel()
            raise TimeoutError(f"coroutine did not finish within {timeout:.0f}s") from None

    def call(self, fn: Callable[[], Awaitable[T]], timeout: float = 30.0) -> T:
        """Like ``run`` for a coroutine function, so objects that need a running loop in
        their constructor (amqtt's Broker does) are built on this loop."""

        async def invoke() -> T:
            return await fn()

        return self.run(invoke(), timeout)

    def close(self, timeout: float = 10.0) -> None:
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


class ThreadedService(Generic[S]):
    """A started service living on its own LoopThread; ``stop()`` is idempotent."""

    def __init__(self, factory: Callable[[], S], name: str = "test-service") -> None:
        self._thread = LoopThread(name)
        self.service: S | None = None

        async def build_and_start() -> S:
            service = factory()
            await service.start()
            return service

        try:
            self.service = self._thread.call(build_and_start)
        except BaseException:
            self._thread.close()
            raise

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return self._thread.run(coro, timeout)

    def stop(self, timeout: float = 30.0) -> None:
        service, self.service = self.service, None
        try:
            if service is not None:
                self._thread.run(service.shutdown(), timeout)
        finally:
            self._thread.close()

    def __enter__(self) -> ThreadedService[S]:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
