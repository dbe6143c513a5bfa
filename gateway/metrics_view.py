"""One `/metrics` view over several serving processes: their expositions, merged.

The supervisor reads each worker's own metrics endpoint when it is scraped and adds the
samples up, so nothing is recorded twice and the request path does no extra work (the
alternative, prometheus-client's multiprocess mode, puts a file-backed lock on every
recorded value; docs/performance.md). How each kind of sample merges is decided here:
counters and histograms are summed over the workers, as are the gauges in
`ADDITIVE_GAUGES`; the other gauges describe a state every worker sees alike (a model
loaded, a traffic share, a drift score) and take the largest value; `_created` timestamps
take the earliest.
"""

from __future__ import annotations

import concurrent.futures
import logging
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)

ADDITIVE_GAUGES = frozenset({"modelgate_queue_depth_rows", "modelgate_workers"})
SCRAPE_TIMEOUT = 2.0

_Key = tuple[str, tuple[tuple[str, str], ...]]


def merge(expositions: Iterable[str]) -> list[Metric]:
    """The metric families of several text expositions, merged as the module says."""
    families: dict[str, Metric] = {}
    values: dict[str, dict[_Key, float]] = {}
    for text in expositions:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
                values[family.name] = {}
            combine = _combiner(family)
            samples = values[family.name]
            for s in family.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                old = samples.get(key)
                samples[key] = s.value if old is None else combine(s.name, old, s.value)
    for name, merged in families.items():
        for (sample, labels), value in values[name].items():
            merged.add_sample(sample, dict(labels), value)
    return list(families.values())


def _combiner(family: Metric) -> Callable[[str, float, float], float]:
    additive = family.type != "gauge" or family.name in ADDITIVE_GAUGES

    def combine(sample: str, old: float, new: float) -> float:
        if sample.endswith("_created"):
            return min(old, new)
        return old + new if additive else max(old, new)

    return combine


def fetch(url: str) -> str:
    """One worker's exposition."""
    with urllib.request.urlopen(url, timeout=SCRAPE_TIMEOUT) as reply:
        text: str = reply.read().decode()
        return text


class WorkersView(Collector):
    """A collector whose samples are the merged expositions of the URLs `urls()` names
    (read concurrently at each scrape) and of the supervisor's own `registry`; a worker that
    does not answer in time is left out of that scrape (a restarting one: its counts start
    again from zero)."""

    def __init__(self, urls: Callable[[], Sequence[str]], registry: CollectorRegistry) -> None:
        self._urls = urls
        self._registry = registry
        self._pool = concurrent.futures.ThreadPoolExecutor(4, thread_name_prefix="scrape")

    def collect(self) -> Iterator[Metric]:
        yield from self.families()

    def families(self) -> list[Metric]:
        """The merged families, read now."""
        texts = [generate_latest(self._registry).decode()]
        for url, future in [(url, self._pool.submit(fetch, url)) for url in self._urls()]:
            try:
                texts.append(future.result())
            except Exception as exc:  # a worker between lives; the next scrape has it
                log.debug("metrics of %s: %s", url, exc)
        return merge(texts)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
