"""Stops ONNX Runtime runs that outlive their time limit.

ONNX Runtime cannot be given a timeout, but a run ends, with an error, at the next node it
starts (Loop and Scan bodies included) once its `RunOptions.terminate` is set from another
thread. One daemon thread per process sets it on every run past its deadline.
"""

from __future__ import annotations

import functools
import threading
import time

import onnxruntime as ort


class RunWatchdog:
    """Terminates watched runs past their deadline, checking every `period` seconds: a run
    stops between its limit and one period later (or after its current node, whichever is
    later: a single node is never interrupted)."""

    def __init__(self, period: float = 0.1) -> None:
        self._period = period
        # id(options) -> (deadline, options); single dict operations need no lock under the GIL
        self._runs: dict[int, tuple[float, ort.RunOptions]] = {}
        self._thread: threading.Thread | None = None
        self._starting = threading.Lock()

    def watch(self, options: ort.RunOptions, seconds: float) -> None:
        """Terminate the run using `options` unless `release`d within `seconds`."""
        self._runs[id(options)] = (time.monotonic() + seconds, options)
        if self._thread is None:
            self._start()

    def release(self, options: ort.RunOptions) -> None:
        """The run using `options` is over (a terminate set after the fact is harmless)."""
        self._runs.pop(id(options), None)

    def _start(self) -> None:
        with self._starting:
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._patrol, name="run-watchdog", daemon=True
                )
                self._thread.start()

    def _patrol(self) -> None:
        while True:
            time.sleep(self._period)
            now = time.monotonic()
            for deadline, options in self._runs.copy().values():
                if deadline <= now:
                    options.terminate = True


@functools.cache
def shared_watchdog() -> RunWatchdog:
    """The process's watchdog: one thread serves every model."""
    return RunWatchdog()
