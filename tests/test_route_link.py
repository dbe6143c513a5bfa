"""Stage changes over several workers (gateway/route_link.py): the supervisor's decision
who is sent what and when each worker switches, and a worker's gateway that prepares what
is pushed without routing it until told to switch."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from pathlib import Path

import pytest

import modelzoo
from modelgate.gateway.route_link import PEER_WAIT, SWITCH_LEAD, Message, RouteReceiver, RouteSync
from modelgate.gateway.server import Gateway
from modelgate.gateway.settings import ServerSettings
from modelgate.registry.store import RegistryStore
from modelgate.registry.types import ModelVersion, Stage

RECORDS: list[ModelVersion] = []  # what is pushed does not matter to the decision


def _kinds(sends: list[tuple[int, Message]]) -> list[tuple[int, str, str]]:
    return sorted((worker, m[0], m[1]) for worker, m in sends)


def _serving(sync: RouteSync, workers: list[int], now: float) -> None:
    """`workers` joined, prepared and switched to generation "1"."""
    sync.read("1", RECORDS)
    for worker in workers:
        sync.joined(worker)
    sync.due(now)
    for worker in workers:
        sync.prepared(worker, "1", now)
    sync.due(now)


def test_every_worker_prepares_then_all_switch_at_one_moment_ahead() -> None:
    sync = RouteSync()
    _serving(sync, [0, 1], 10.0)
    sync.read("2", RECORDS)
    assert _kinds(sync.due(11.0)) == [(0, "routes", "2"), (1, "routes", "2")]
    sync.prepared(0, "2", 11.5)
    assert sync.due(11.5) == []  # worker 1 still loads: nobody switches
    sync.prepared(1, "2", 11.6)
    sends = sync.due(11.6)
    assert _kinds(sends) == [(0, "switch", "2"), (1, "switch", "2")]
    assert {m[2] for _, m in sends} == {11.6 + SWITCH_LEAD}  # the same moment for both
    assert sync.due(12.0) == []


def test_a_slow_worker_holds_the_others_back_only_so_long(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sync = RouteSync()
    _serving(sync, [0, 1], 10.0)
    sync.read("2", RECORDS)
    sync.due(11.0)
    sync.prepared(0, "2", 11.0)
    assert sync.due(11.0 + PEER_WAIT - 0.1) == []
    with caplog.at_level(logging.WARNING):
        sends = sync.due(11.0 + PEER_WAIT)
    assert _kinds(sends) == [(0, "switch", "2"), (1, "switch", "2")]
    assert "without worker(s) 1: not prepared in time" in caplog.text


def test_a_dead_worker_is_not_waited_for_and_a_new_one_starts_from_the_current_stages() -> None:
    sync = RouteSync()
    _serving(sync, [0, 1], 10.0)
    sync.read("2", RECORDS)
    sync.due(11.0)
    sync.prepared(0, "2", 11.1)
    sync.left(1)
    assert _kinds(sync.due(11.2)) == [(0, "switch", "2")]
    # Its replacement is sent the current records, and switches once it has prepared them,
    # at once: it serves nothing yet, nobody to wait for.
    sync.joined(1)
    assert _kinds(sync.due(15.0)) == [(1, "routes", "2")]
    assert sync.due(15.5) == []
    sync.prepared(1, "2", 16.0)
    assert [(w, m) for w, m in sync.due(16.0)] == [(1, ("switch", "2", 16.0))]


def test_a_newer_generation_while_preparing_is_sent_and_switched_to_instead() -> None:
    sync = RouteSync()
    _serving(sync, [0, 1], 10.0)
    sync.read("2", RECORDS)
    sync.due(11.0)
    sync.prepared(0, "2", 11.1)
    sync.read("3", RECORDS)
    assert _kinds(sync.due(11.2)) == [(0, "routes", "3"), (1, "routes", "3")]
    sync.prepared(1, "2", 11.3)  # too late: "2" is not switched to any more
    assert sync.due(11.3) == []
    sync.prepared(0, "3", 11.4)
    sync.prepared(1, "3", 11.5)
    assert _kinds(sync.due(11.5)) == [(0, "switch", "3"), (1, "switch", "3")]


def test_a_failed_load_is_retried_on_every_worker_in_one_round_after_the_backoff() -> None:
    sync = RouteSync()
    sync.read("1", RECORDS)
    sync.joined(0)
    sync.joined(1)
    sync.due(10.0)
    sync.prepared(0, "1", 10.0, failed=True)
    sync.prepared(1, "1", 10.1, failed=True)
    sync.due(10.1)  # both switch (serving what loaded); the failed version waits
    assert sync.due(11.9) == []
    sends = sync.due(12.0)  # 2 s after the first failure, as a lone gateway's backoff
    assert _kinds(sends) == [(0, "routes", "1 retry 1"), (1, "routes", "1 retry 1")]
    sync.prepared(0, "1 retry 1", 12.5)
    assert sync.due(12.5) == []  # worker 1 still loads: the loaded version waits for it
    sync.prepared(1, "1 retry 1", 12.7)
    sends = sync.due(12.7)
    assert _kinds(sends) == [(0, "switch", "1 retry 1"), (1, "switch", "1 retry 1")]
    assert {m[2] for _, m in sends} == {12.7 + SWITCH_LEAD}
    assert sync.due(100.0) == []  # nothing failed: no more rounds


def test_retries_back_off_and_a_new_generation_starts_afresh() -> None:
    sync = RouteSync()
    _serving(sync, [0], 10.0)
    sync.prepared(0, "1", 10.0, failed=True)
    assert _kinds(sync.due(12.0)) == [(0, "routes", "1 retry 1")]
    sync.prepared(0, "1 retry 1", 12.1, failed=True)
    sync.due(12.1)
    assert sync.due(16.0) == []  # the second retry waits 4 s
    assert _kinds(sync.due(16.1)) == [(0, "routes", "1 retry 2")]
    sync.read("2", RECORDS)  # a new generation is prepared with every failed version again
    assert _kinds(sync.due(16.2)) == [(0, "routes", "2")]
    sync.prepared(0, "2", 16.3, failed=True)
    sync.due(16.3)
    assert _kinds(sync.due(18.3)) == [(0, "routes", "2 retry 1")]


def test_workers_are_told_the_registry_error_each_time_it_changes() -> None:
    sync = RouteSync()
    sync.joined(0)
    assert sync.due(1.0) == []
    sync.registry_failed("registry http://***@127.0.0.1:9 is unreachable")
    assert sync.due(1.1) == [(0, ("registry", "registry http://***@127.0.0.1:9 is unreachable"))]
    assert sync.due(1.2) == []
    sync.joined(1)  # a worker that starts during the outage is told too
    assert sync.due(1.3) == [(1, ("registry", "registry http://***@127.0.0.1:9 is unreachable"))]
    sync.registry_failed("")
    assert sorted(sync.due(1.4)) == [(0, ("registry", "")), (1, ("registry", ""))]


async def _until(check: object, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def test_a_worker_loads_what_is_pushed_and_routes_it_only_at_the_switch(
    tmp_path: Path,
) -> None:
    store = RegistryStore(tmp_path / "store", create=True)
    store.register("clf", modelzoo.classifier(), stage=Stage.PRODUCTION, actor="t")
    store.register("clf", modelzoo.classifier(), actor="t")
    settings = ServerSettings(
        store=store.root, host="127.0.0.1", http_port=0, grpc_port=0, metrics_port=0,
        drain_delay=0.0, drain_seconds=5.0,
    )  # fmt: skip
    told: list[Message] = []
    receiver = RouteReceiver(told.append)
    gw = Gateway(settings, store, pushed_routes=receiver)
    await gw.start()
    try:
        deployments = gw.deployments
        receiver.receive(("routes", "g1", store.list_versions("clf")))
        await _until(lambda: ("prepared", "g1", False) in told)
        # Loaded, but nothing is routed before the switch: not ready, the name not known.
        assert [(d.version, d.ready) for d in deployments.all()] == [("1", True)]
        assert not gw.deployments.synced
        assert not gw.deployments.readiness().ready
        receiver.receive(("switch", "g1", time.monotonic()))
        await _until(lambda: gw.deployments.synced)
        assert [(s.version, s.traffic) for s in deployments.status("clf")] == [("1", 100.0)]

        store.transition("clf", 2, Stage.CANARY, traffic=30.0, actor="t")
        receiver.receive(("routes", "g2", store.list_versions("clf")))
        await _until(lambda: ("prepared", "g2", False) in told)
        status = {s.version: s for s in deployments.status("clf")}
        assert status["2"].state == "READY" and status["2"].traffic is None  # not yet
        assert status["1"].traffic == 100.0
        at = time.monotonic() + 0.3
        receiver.receive(("switch", "g2", at))
        await _until(lambda: dataclasses.asdict(deployments.status("clf")[1])["traffic"])
        assert time.monotonic() >= at  # not before its moment
        assert [(s.version, s.traffic) for s in deployments.status("clf")] == [
            ("1", 70.0),
            ("2", 30.0),
        ]
    finally:
        await gw.stop()
