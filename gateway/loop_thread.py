"""An asyncio event loop on a thread of its own, for the supervisor's planes.

The supervisor's main thread waits on its workers' pipes and sentinels (blocking calls), so
what it runs with asyncio runs beside it: the registry follower (gateway/route_link.py),
the drift plane (gateway/drift_link.py) and the rollout guard (gateway/controlplane.py).
Each runs one coroutine on a `LoopThread`; stopping cancels every task of the loop, so the
coroutine's `finally` blocks still run (on the loop) before the thread ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any


class LoopThread:
    """Runs `main()` on a new event loop in a daemon thread named `name`, from `start`
    until it returns or `stop` cancels it. `loop` takes calls from other threads
    (`loop.call_soon_threadsafe`)."""

    def __init__(self, name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> None:
        self._main = main
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        with contextlib.suppress(asyncio.CancelledError):
            self.loop.run_until_complete(self._main())
        self.loop.close()

    def stop(self) -> None:
        """Cancel every task of the loop and wait for the thread."""
        if self._thread.is_alive():

            def cancel() -> None:
                for task in asyncio.all_tasks(self.loop):
                    task.cancel()

            self.loop.call_soon_threadsafe(cancel)
            self._thread.join()
