"""Following a registry: poll its change counter, read its records when it moved.

One `RegistryWatch` runs per follower: in a lone gateway inside `Deployments.follow`; under
a supervisor (`--workers N`) once, in the supervisor (gateway/route_link.py), which hands
the records to every worker. A failing registry is retried with exponential backoff and
jitter while the gateway serves what it has; the log says only what changes: the first
failure of a streak and the recovery, never one line per failed poll (the
`modelgate_registry_polls` counter counts every one). The error is kept as one line with
any credentials of a URL masked (`error`): requests and workers are told it while nothing
is routed yet.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
from collections.abc import Callable

from prometheus_client import Counter

from modelgate.registry.client import RegistryClient
from modelgate.registry.errors import UnavailableError
from modelgate.registry.types import ModelVersion

log = logging.getLogger(__name__)

POLL_BACKOFF_MAX = 30.0  # longest wait between registry reads while they fail
_ERROR_CHARS = 300  # of an error as it is repeated to clients
_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")  # user:password@ in a URL

# Takes the registry's generation and its records (every stage).
Apply = Callable[[str, list[ModelVersion]], None]


class RegistryWatch:
    """Polls a registry's generation every `interval` seconds and applies its records
    whenever the generation moved (or `again()` asks for a fresh read)."""

    def __init__(self, registry: RegistryClient, interval: float, polls: Counter) -> None:
        self._registry = registry
        self._interval = interval
        self._polls = polls  # labelled by outcome: ok, error
        self._generation: str | None = None
        self.read = False  # whether the registry was read (and applied) once
        self.error = ""  # why the last read failed ("" when it did not)

    async def refresh(self, apply: Apply) -> None:
        """Read the registry once and apply what it holds."""
        generation = await asyncio.to_thread(self._registry.generation)
        records = await asyncio.to_thread(self._registry.list_versions)
        apply(generation, records)
        self._generation = generation  # only once applied: a failed apply is retried
        self.read = True

    async def run(
        self,
        apply: Apply,
        again: Callable[[], bool] = lambda: False,
        trouble: Callable[[str], None] = lambda error: None,
    ) -> None:
        """Read the registry, then poll its generation and apply on change, until
        cancelled; before the first read succeeds nothing is applied. `trouble` hears each
        new `error`, and "" when the registry reads again."""
        delay = 0.0  # the first read at once
        failures = 0
        while True:
            if delay > 0:
                await asyncio.sleep(delay * random.uniform(0.9, 1.1))
            try:
                if not self.read:
                    await self.refresh(apply)
                else:
                    generation = await asyncio.to_thread(self._registry.generation)
                    if generation != self._generation or again():
                        await self.refresh(apply)
            except Exception as exc:  # the registry's problem must never stop serving
                self._polls.labels("error").inc()
                delay = min(max(delay * 2, self._interval), POLL_BACKOFF_MAX)
                error = _said(exc)
                if error != self.error:
                    self.error = error
                    trouble(error)
                if failures == 0:
                    self._log_failure(exc)
                failures += 1
                continue
            self._polls.labels("ok").inc()
            if failures:
                log.info("registry readable again after %d failed attempt(s)", failures)
            if self.error:
                self.error = ""
                trouble("")
            failures, delay = 0, self._interval

    def _log_failure(self, exc: Exception) -> None:
        level = logging.WARNING if isinstance(exc, UnavailableError) else logging.ERROR
        if self.read:
            what = "registry poll failed; serving the versions loaded"
        else:
            what = "registry not readable yet; not ready until it is"
        log.log(
            level,
            "%s: %s (retrying with backoff up to %g s; logged again when it recovers)",
            what,
            self.error,
            POLL_BACKOFF_MAX,
        )


def _said(exc: Exception) -> str:
    """An error as it is repeated: its first line, a URL's credentials masked, bounded."""
    lines = str(exc).strip().splitlines()
    text = _USERINFO.sub("***@", lines[0] if lines else type(exc).__name__)
    return text if len(text) <= _ERROR_CHARS else text[:_ERROR_CHARS] + "..."
