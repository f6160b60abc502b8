"""``legato.client.sync``: the client for synchronous code — scripts, notebooks, a Django view.

    from legato.client.sync import connect

    with connect("nats://localhost:4222", creds="me.nk") as legato:
        run = legato.start("daily-sales", {"day": "2026-01-31"})
        print(legato.get_run(run.instance_id).status)

Every coroutine method of ``legato.client.LegatoClient`` is here as a plain method with the same
arguments, typed reply and exceptions; an async iterator (``iter_runs``, and the event subscriptions)
becomes a plain iterator. The async client runs on an event loop of its own in a background thread, so
this works where a loop is already running (Jupyter) — where ``asyncio.run`` would refuse — and one
connection serves every call. ``close()`` (or leaving the ``with`` block) stops the thread.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Self, TypeVar

from legato.client.client import LegatoClient as AsyncLegatoClient

T = TypeVar("T")

CLOSE_TIMEOUT = 10.0


class _LoopThread:
    """An event loop running forever in a daemon thread; coroutines are handed to it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name="legato-client-loop", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and wait for its result (its exception is raised here)."""
        if threading.current_thread() is self.thread:
            coro.close()
            raise RuntimeError("legato.client.sync: called from its own event loop (use the async client)")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        """Stop the loop and wait for its thread."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(CLOSE_TIMEOUT)
        if not self.thread.is_alive():
            self.loop.close()


class LegatoClient:
    """A synchronous ``LegatoClient``: the same methods, arguments, replies and errors, without ``await``."""

    def __init__(self, client: AsyncLegatoClient, runner: _LoopThread) -> None:
        self._client = client
        self._runner = runner

    @classmethod
    def connect(cls, url: str, **options: Any) -> LegatoClient:
        """Connect like ``legato.client.LegatoClient.connect`` (same keyword arguments)."""
        runner = _LoopThread()
        try:
            client = runner.run(AsyncLegatoClient.connect(url, **options))
        except BaseException:
            runner.stop()
            raise
        return cls(client, runner)

    @property
    def client(self) -> AsyncLegatoClient:
        """The async client underneath (use it only from coroutines run by ``run``)."""
        return self._client

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the async client (e.g. a method this wrapper does not know) and return
        its result."""
        return self._runner.run(coro)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if inspect.iscoroutinefunction(attr):
            return self._blocking(attr)
        if inspect.isasyncgenfunction(attr):
            return self._iterating(attr)
        return attr

    def _blocking(self, method: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
        def call(*args: Any, **kwargs: Any) -> T:
            result = self._runner.run(method(*args, **kwargs))
            if isinstance(result, AsyncIterator):  # a subscription returned by a coroutine
                return self._drain(result)  # type: ignore[return-value]
            return result

        call.__name__ = method.__name__
        call.__doc__ = method.__doc__
        return call

    def _iterating(self, method: Callable[..., AsyncIterator[T]]) -> Callable[..., Iterator[T]]:
        def call(*args: Any, **kwargs: Any) -> Iterator[T]:
            return self._drain(method(*args, **kwargs))

        call.__name__ = method.__name__
        call.__doc__ = method.__doc__
        return call

    def _drain(self, items: AsyncIterator[T]) -> Iterator[T]:
        """An async iterator as a plain one: each ``next`` waits for the next item on the loop."""

        async def step() -> tuple[bool, T | None]:
            try:
                return True, await anext(items)
            except StopAsyncIteration:
                return False, None

        try:
            while True:  # ends with the async iterator
                more, item = self._runner.run(step())
                if not more:
                    return
                yield item  # type: ignore[misc]
        finally:
            closer = getattr(items, "aclose", None)
            if closer is not None and not self._runner.loop.is_closed():
                self._runner.run(closer())

    def close(self) -> None:
        """Close the connection and stop the background loop (idempotent)."""
        if self._runner.loop.is_closed():
            return
        try:
            self._runner.run(self._client.close())
        finally:
            self._runner.stop()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def connect(url: str, **options: Any) -> LegatoClient:
    """A connected synchronous client (``with connect(...) as legato:`` closes it)."""
    return LegatoClient.connect(url, **options)


__all__ = ["LegatoClient", "connect"]
