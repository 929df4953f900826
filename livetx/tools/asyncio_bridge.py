"""An asyncio event loop on a thread of its own, driven from the reactor with Deferreds.

The MCP SDK is written for anyio on asyncio; livetx runs on whatever reactor
twistd chose. Rather than make every server run Twisted's asyncio reactor
(docs/tools.md has the measurements behind this choice), the SDK gets its
own loop on one thread. The reactor hands it coroutines and gets Deferreds
back; cancelling such a Deferred cancels the coroutine's task, which is how
an interrupt reaches a running MCP call.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from typing import Any, Awaitable, Callable, Coroutine, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

T = TypeVar("T")

#: Seconds :meth:`AsyncioThread.stop` waits for the loop's tasks to wind down.
STOP_GRACE = 10.0


class AsyncioThread:
    """One asyncio loop on a daemon thread; every method but :meth:`call` is thread-safe."""

    def __init__(self, reactor: Any, name: str = "livetx-asyncio") -> None:
        self._reactor = reactor
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Run ``coroutine`` on the loop; a future any thread may wait on (start-up does)."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop)

    def call(self, start: Callable[[], Coroutine[Any, Any, T]]) -> Deferred[T]:
        """The result of ``start()`` run on the loop, as a Deferred fired on the reactor.

        Cancelling the Deferred cancels the task on the loop; the Deferred
        fails with ``CancelledError`` at once, whatever the task still does.
        """
        future = self.submit(start())

        def cancel(_: Deferred[T]) -> None:
            future.cancel()

        d: Deferred[T] = Deferred(cancel)

        def done(future: concurrent.futures.Future[T]) -> None:
            self._reactor.callFromThread(_settle, d, future)

        future.add_done_callback(done)
        return d

    def stop(self, closing: Callable[[], Awaitable[None]]) -> Deferred[None]:
        """Run ``closing()`` on the loop, then stop the loop and let its thread end."""
        def stopped(result: Any) -> Any:
            self.loop.call_soon_threadsafe(self.loop.stop)
            return result

        async def bounded() -> None:
            await asyncio.wait_for(closing(), STOP_GRACE)

        return self.call(bounded).addBoth(stopped)


def _settle(d: Deferred[T], future: concurrent.futures.Future[T]) -> None:
    if d.called:  # cancelled from the reactor already
        return
    if future.cancelled():
        d.errback(Failure(CancelledError()))
        return
    error = future.exception()
    if error is not None:
        d.errback(Failure(error))
    else:
        d.callback(future.result())
