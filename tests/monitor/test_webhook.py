"""The retraining webhook against a real HTTP receiver on 127.0.0.1: Standard Webhooks
signatures, retries with backoff and Retry-After, exactly one accepted delivery per event id
while the receiver fails or is down, cooldowns, and an outbox that outlives a SIGKILL."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import email.utils
import logging
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import orjson
import pytest
from prometheus_client import CollectorRegistry

from loadtest.procs import ServerProcess
from modelgate.monitor.outbox import DEAD, DELIVERED, Outbox, OutboxEvent
from modelgate.monitor.webhook import (
    DRIFT_DETECTED,
    DRIFT_RESOLVED,
    WebhookNotifier,
    WebhookSettings,
    secret_key,
    sign,
    verify,
)
from webhook_receiver import Receiver, Request

KEY = bytes(range(32))
SECRET = "whsec_" + base64.b64encode(KEY).decode()
WINDOW = {"start": 1_700_000_000.0, "end": 1_700_000_060.0, "rows": 5000}
FEATURES = [
    {
        "name": "age",
        "scores": {"psi": 0.31, "js": 0.12, "ks": 0.2},
        "thresholds": {"psi": 0.2, "js": 0.1, "ks": 0.15},
    }
]


# --- the receiver ------------------------------------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A running receiver; stopped after the test."""
    receiver = Receiver()
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


async def until(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    """Wait until `condition()` holds; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


# --- the notifier ------------------------------------------------------------------------------


def fast(url: str | None, **changes: object) -> WebhookSettings:
    """Settings with backoffs short enough for tests."""
    base = WebhookSettings(
        url=url, secret=SECRET, initial_backoff=0.05, max_backoff=0.2, timeout=2.0,
        instance="test-gateway:1",
    )  # fmt: skip
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def delivering(
    settings: WebhookSettings, outbox: Outbox, registry: CollectorRegistry | None = None
) -> AsyncIterator[WebhookNotifier]:
    """A notifier whose delivery loop runs for the duration of the block, always closed."""
    notifier = WebhookNotifier(settings, outbox, registry or CollectorRegistry())
    task = asyncio.create_task(notifier.run())
    try:
        yield notifier
    finally:
        await notifier.close()
        await task


@pytest.fixture
def outbox(tmp_path: Path) -> Outbox:
    return Outbox(tmp_path / "webhooks.db")


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def deliveries(registry: CollectorRegistry, outcome: str) -> float:
    return sample(registry, "modelgate_webhook_deliveries_total", outcome=outcome)


def assert_authentic(request: Request, secret: str | bytes = SECRET) -> None:
    h = request.headers
    assert h["content-type"] == "application/json"
    assert verify(
        secret, h["webhook-id"], h["webhook-timestamp"], request.body, h["webhook-signature"]
    )


# --- signatures and the event ----------------------------------------------------------------


async def test_event_is_signed_and_shaped_as_documented(receiver: Receiver, outbox: Outbox) -> None:
    async with delivering(fast(receiver.url), outbox) as notifier:
        event_id = await notifier.notify_drift_started("churn", 3, WINDOW, FEATURES)
        await until(lambda: len(receiver.accepted()) == 1)
    (request,) = receiver.requests
    assert_authentic(request)
    h = request.headers
    assert h["webhook-id"] == event_id and event_id is not None and event_id.startswith("evt_")
    assert abs(int(h["webhook-timestamp"]) - time.time()) < 10

    body = orjson.loads(request.body)
    assert body["id"] == event_id
    assert body["type"] == DRIFT_DETECTED
    assert body["timestamp"].endswith("Z")
    assert body["data"] == {
        "model": "churn",
        "version": 3,
        "window": {
            "start": "2023-11-14T22:13:20.000Z",
            "end": "2023-11-14T22:14:20.000Z",
            "rows": 5000,
        },
        "features": FEATURES,
        "instance": "test-gateway:1",
    }

    # Tampering with anything signed, another secret or a stale timestamp fails.
    stamp, signature = h["webhook-timestamp"], h["webhook-signature"]
    assert not verify(SECRET, event_id, stamp, request.body + b" ", signature)
    assert not verify(SECRET, "evt_other", stamp, request.body, signature)
    assert not verify(SECRET, event_id, int(stamp) + 1, request.body, signature)
    other_secret = "whsec_" + base64.b64encode(b"x" * 32).decode()
    assert not verify(other_secret, event_id, stamp, request.body, signature)
    assert not verify(SECRET, event_id, stamp, request.body, signature, now=int(stamp) + 301)
    # Several signatures (a receiver rotating secrets) pass if one matches.
    assert verify(SECRET, event_id, stamp, request.body, f"v1,Zm9v {signature}")


async def test_the_standardwebhooks_library_verifies_our_events(
    receiver: Receiver, outbox: Outbox
) -> None:
    standardwebhooks = pytest.importorskip("standardwebhooks")
    async with delivering(fast(receiver.url), outbox) as notifier:
        await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES)
        await until(lambda: len(receiver.accepted()) == 1)
    (request,) = receiver.requests
    payload = standardwebhooks.Webhook(SECRET).verify(request.body, request.headers)
    assert payload["type"] == DRIFT_DETECTED
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook("whsec_" + base64.b64encode(b"y" * 32).decode()).verify(
            request.body, request.headers
        )


def test_secret_forms(outbox: Outbox) -> None:
    assert secret_key(SECRET) == KEY
    assert secret_key(SECRET.rstrip("=")) == KEY  # unpadded base64 too
    assert secret_key("plain text secret") == b"plain text secret"
    assert secret_key(KEY) == KEY
    assert sign(SECRET, "evt_1", 1700000000, b"{}") == sign(KEY, "evt_1", "1700000000", b"{}")
    for empty in ("", b"", "whsec_"):
        with pytest.raises(ValueError):
            secret_key(empty)
    with pytest.raises(ValueError, match="no webhook secret"):
        WebhookNotifier(WebhookSettings(url="http://127.0.0.1:9/"), outbox, CollectorRegistry())
    with pytest.raises(ValueError, match="http:// or https://"):
        WebhookSettings(url="ftp://example.com/", secret=SECRET)
    assert SECRET not in repr(WebhookSettings(secret=SECRET))


# --- delivery ----------------------------------------------------------------------------------


async def test_failed_answers_are_retried_with_the_same_id_and_body(
    receiver: Receiver, outbox: Outbox
) -> None:
    receiver.answer(503, 400, (302, {"location": "/elsewhere"}), 500)
    registry = CollectorRegistry()
    async with delivering(fast(receiver.url), outbox, registry) as notifier:
        event_id = await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES)
        await until(lambda: len(receiver.accepted()) == 1)
        await until(lambda: sample(registry, "modelgate_webhook_outbox_pending") == 0)
    assert [r.status for r in receiver.requests] == [503, 400, 302, 500, 200]
    assert {r.id for r in receiver.requests} == {event_id}
    assert {r.body for r in receiver.requests} == {receiver.requests[0].body}
    assert {r.path for r in receiver.requests} == {"/hooks"}  # the redirect was not followed
    for request in receiver.requests:
        assert_authentic(request)

    assert event_id is not None
    stored = outbox.get(event_id)
    assert stored is not None
    assert (stored.status, stored.attempts, stored.last_error) == (DELIVERED, 5, None)
    assert stored.payload == receiver.requests[0].body
    assert deliveries(registry, "retry") == 4
    assert deliveries(registry, "delivered") == 1
    assert sample(registry, "modelgate_webhook_events_total", type=DRIFT_DETECTED) == 1


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_retry_after_is_the_minimum_wait(
    receiver: Receiver, outbox: Outbox, form: str
) -> None:
    # An HTTP date has whole seconds: three from now, cut to the second, is still over two
    # ahead when the first request leaves (one is not, after a slow start).
    in_three = email.utils.formatdate(time.time() + 3, usegmt=True)
    value = "1" if form == "seconds" else in_three
    receiver.answer((429, {"retry-after": value}))
    async with delivering(fast(receiver.url), outbox) as notifier:
        await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES)
        await until(lambda: len(receiver.accepted()) == 1)
    first, second = receiver.requests
    assert (first.status, second.status) == (429, 200)
    assert second.at - first.at >= 0.95  # backoff alone would retry within 0.05 s


async def test_receiver_down_then_up_gets_every_event_exactly_once(outbox: Outbox) -> None:
    receiver = Receiver()  # not listening yet: connections are refused
    registry = CollectorRegistry()
    try:
        async with delivering(fast(receiver.url), outbox, registry) as notifier:
            ids = [
                await notifier.notify_drift_started(model, version, WINDOW, FEATURES)
                for model in ("churn", "fraud")
                for version in (1, 2)
            ]
            ids.append(await notifier.notify_drift_resolved("churn", 1, WINDOW))
            await until(lambda: deliveries(registry, "retry") >= 10)
            assert sample(registry, "modelgate_webhook_outbox_pending") == 5
            receiver.start()
            await until(lambda: len(receiver.accepted()) == 5)
            await asyncio.sleep(0.5)  # room for a duplicate to show up
        assert sorted(r.id for r in receiver.accepted()) == sorted(map(str, ids))  # each once
        # One model version's events leave in order: detected before resolved.
        versions = [(r.data["model"], r.data["version"], r.id) for r in receiver.accepted()]
        churn_1 = [
            event_id for model, version, event_id in versions if (model, version) == ("churn", 1)
        ]
        assert churn_1 == [ids[0], ids[4]]
        assert outbox.pending_count() == 0
        assert deliveries(registry, "delivered") == 5
    finally:
        receiver.stop()


async def test_an_event_is_dead_after_the_retry_period(receiver: Receiver, outbox: Outbox) -> None:
    receiver.answer(*[500] * 1000)
    registry = CollectorRegistry()
    # 1.5 s: room for a retry after the 0.05 s backoff even when the first attempt is slow
    async with delivering(fast(receiver.url, retry_period=1.5), outbox, registry) as notifier:
        event_id = await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES)
        await until(lambda: deliveries(registry, "dead") == 1)
        # A Retry-After reaching past the retry period gives up at once.
        receiver.answer((503, {"retry-after": "3600"}))
        late = await notifier.notify_drift_started("churn", 2, WINDOW, FEATURES)
        await until(lambda: deliveries(registry, "dead") == 2)
        # The gauge follows at the delivery loop's next turn, not with the dead mark itself.
        await until(lambda: sample(registry, "modelgate_webhook_outbox_pending") == 0)
    assert event_id is not None and late is not None
    dead = outbox.get(event_id)
    assert dead is not None and dead.status == DEAD and dead.last_error == "HTTP 500 ok"
    assert dead.attempts >= 2
    assert len(receiver.by_id(late)) == 1
    assert receiver.accepted() == []
    assert outbox.pending_count() == 0


def test_claims_keep_order_per_version_and_lease_events_across_processes(
    outbox: Outbox,
) -> None:
    def event(name: str, version: str, url: str = "http://a/") -> OutboxEvent:
        return OutboxEvent(name, DRIFT_DETECTED, "m", version, url, b"{}", created=100.0)

    for e in (event("a", "1"), event("b", "1"), event("c", "2"), event("d", "3", "http://b/")):
        outbox.add(e)
    # One per URL and per model version, oldest first: "b" waits behind "a", "c" for the URL.
    assert [e.id for e in outbox.claim_due(now=100.0, lease=10.0)] == ["a", "d"]
    # Another process sharing the outbox does not get the leased ones.
    assert [e.id for e in outbox.claim_due(now=101.0, lease=10.0)] == ["c"]
    assert outbox.claim_due(now=102.0, lease=10.0) == []
    assert outbox.next_due() == 110.0
    # A lease that runs out (its process died) makes the event due again.
    (again,) = outbox.claim_due(now=110.0, lease=10.0, skip_urls=["http://b/"])
    assert (again.id, again.attempts) == ("a", 2)
    outbox.mark_delivered("a", now=111.0)
    assert [e.id for e in outbox.claim_due(now=200.0, lease=10.0)] == ["b", "d"]
    outbox.release("b", now=200.0)
    assert [(e.id, e.attempts) for e in outbox.claim_due(now=200.0, lease=1.0)] == [("b", 1)]
    for event_id in ("b", "c", "d"):
        outbox.mark_dead(event_id, "test")
    assert outbox.pending_count() == 0
    assert outbox.prune(before=101.0) == 4 and outbox.events() == []


# --- cooldown and episodes ---------------------------------------------------------------------


async def test_cooldown_suppresses_a_repeat_for_the_same_version_only(
    receiver: Receiver, outbox: Outbox
) -> None:
    registry = CollectorRegistry()
    async with delivering(fast(receiver.url), outbox, registry) as notifier:
        first = await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES)
        assert first is not None
        assert await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES) is None
        other = await notifier.notify_drift_started("churn", 2, WINDOW, FEATURES)
        assert other is not None
        resolved = await notifier.notify_drift_resolved("churn", 1, WINDOW)
        assert resolved is not None
        assert await notifier.notify_drift_resolved("churn", 1, WINDOW) is None  # already clear
        # Drift coming back within the cooldown stays quiet, and so does its end.
        assert await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES) is None
        assert await notifier.notify_drift_resolved("churn", 1, WINDOW) is None
        await until(lambda: len(receiver.accepted()) == 3)
    assert receiver.accepted()[0].id == first
    assert {r.id for r in receiver.accepted()} == {first, other, resolved}
    assert sample(registry, "modelgate_webhook_events_total", type=DRIFT_DETECTED) == 2
    assert sample(registry, "modelgate_webhook_events_total", type=DRIFT_RESOLVED) == 1

    (body,) = [orjson.loads(r.body) for r in receiver.accepted() if r.id == resolved]
    assert body["type"] == DRIFT_RESOLVED
    assert body["data"]["detected_event"] == first
    assert body["data"]["window"] == {
        "start": "2023-11-14T22:13:20.000Z", "end": "2023-11-14T22:14:20.000Z", "rows": 5000,
    }  # fmt: skip
    assert (body["data"]["version"], body["data"]["instance"]) == (1, "test-gateway:1")

    # The cooldown is in the outbox: a restarted notifier does not fire again ...
    async with delivering(fast(receiver.url), outbox) as notifier:
        assert await notifier.notify_drift_started("churn", 2, WINDOW, FEATURES) is None
    # ... and without one every new episode is announced.
    async with delivering(fast(receiver.url, cooldown=0), outbox) as notifier:
        assert await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES) is not None


async def test_urls_per_model_and_resolved_goes_where_detected_went(
    receiver: Receiver, outbox: Outbox
) -> None:
    settings = fast(None, model_urls={"fraud": receiver.url + "/fraud", "churn": ""})
    async with delivering(settings, outbox) as notifier:
        assert await notifier.notify_drift_started("churn", 1, WINDOW, FEATURES) is None
        assert await notifier.notify_drift_started("other", 1, WINDOW, FEATURES) is None
        assert await notifier.notify_drift_resolved("never-seen", 1, WINDOW) is None
        # An explicit URL (a registry tag) wins over the settings.
        tagged = receiver.url + "/tagged"
        assert await notifier.notify_drift_started("other", 2, WINDOW, FEATURES, url=tagged)
        assert await notifier.notify_drift_started("fraud", 1, WINDOW, FEATURES)
        assert await notifier.notify_drift_resolved("other", 2, WINDOW)
        await until(lambda: len(receiver.accepted()) == 3)
    paths = sorted((r.path, orjson.loads(r.body)["type"]) for r in receiver.accepted())
    assert paths == [
        ("/hooks/fraud", DRIFT_DETECTED),
        ("/hooks/tagged", DRIFT_DETECTED),
        ("/hooks/tagged", DRIFT_RESOLVED),
    ]


# --- a killed process ---------------------------------------------------------------------------

_PROCESS = """
import asyncio, json, sys
from prometheus_client import CollectorRegistry
from modelgate.monitor.outbox import Outbox
from modelgate.monitor.webhook import WebhookNotifier, WebhookSettings

async def main(path, url, secret, count):
    settings = WebhookSettings(url=url, secret=secret, initial_backoff=0.05, max_backoff=0.2,
                               timeout=2.0)
    notifier = WebhookNotifier(settings, Outbox(path), CollectorRegistry())
    window = {"start": 0, "end": 60, "rows": 10}
    features = [{"name": "x", "scores": {"psi": 1.0}, "thresholds": {"psi": 0.2}}]
    ids = [await notifier.notify_drift_started("m", v, window, features) for v in range(count)]
    print("enqueued", json.dumps(ids), flush=True)
    await notifier.run()

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
"""


async def test_pending_events_survive_sigkill_and_go_out_once_from_a_new_process(
    tmp_path: Path,
) -> None:
    repo = Path(__file__).resolve().parents[2]
    path = tmp_path / "webhooks.db"
    receiver = Receiver()  # down while the first process runs
    argv = [sys.executable, "-c", _PROCESS, str(path), receiver.url, SECRET]
    first = ServerProcess([*argv, "6"], tmp_path / "first.log", cwd=repo)
    try:
        line = await asyncio.to_thread(first.wait_for_line, r"enqueued (\[.*\])", 30.0)
        ids = orjson.loads(line.group(1))
        await asyncio.sleep(0.5)  # it keeps retrying against the closed port
        os.kill(first.pid, signal.SIGKILL)
        assert first.stop() == -signal.SIGKILL
    finally:
        first.stop()
    assert len(set(ids)) == 6
    assert {e.id for e in Outbox(path).events("pending")} == set(ids)

    receiver.start()
    second = ServerProcess([*argv, "0"], tmp_path / "second.log", cwd=repo)
    try:
        await until(lambda: len(receiver.accepted()) >= 6, timeout=30.0)
        await asyncio.sleep(0.5)  # room for a duplicate to show up
    finally:
        second.stop()
        receiver.stop()
    assert sorted(r.id for r in receiver.accepted()) == sorted(ids)
    for request in receiver.accepted():
        assert_authentic(request)
    assert Outbox(path).pending_count() == 0


async def test_a_full_outbox_drops_new_events_counts_and_logs_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A receiver down for long: the outbox keeps `max_pending` events, drops the rest with
    a metric and one log line, and the dropped drift_detected is tried again later."""
    receiver = Receiver()  # not listening yet
    registry = CollectorRegistry()
    outbox = Outbox(tmp_path / "webhooks.db", max_pending=3)
    caplog.set_level(logging.WARNING, logger="modelgate.monitor.webhook")
    try:
        async with delivering(fast(receiver.url), outbox, registry) as notifier:
            ids = [
                await notifier.notify_drift_started(f"m{i}", 1, WINDOW, FEATURES) for i in range(6)
            ]
            assert [i is not None for i in ids] == [True] * 3 + [False] * 3
            assert outbox.pending_count() == 3
            dropped = "modelgate_webhook_events_dropped_total"
            assert sample(registry, dropped, type="model.drift_detected") == 3
            full = [r for r in caplog.records if "webhook outbox full" in r.getMessage()]
            assert len(full) == 1  # one line, not one per event
            assert "dropped 1 event(s), the last a model.drift_detected of m3 v1" in (
                full[0].getMessage()
            )
            receiver.start()
            await until(lambda: len(receiver.accepted()) == 3)
            # Room again: the version whose event was dropped is announced on its next window.
            assert await notifier.notify_drift_started("m3", 1, WINDOW, FEATURES) is not None
            await until(lambda: len(receiver.accepted()) == 4)
        assert sorted(r.data["model"] for r in receiver.accepted()) == ["m0", "m1", "m2", "m3"]
    finally:
        receiver.stop()


def test_the_outbox_holds_at_least_one_event(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one"):
        Outbox(tmp_path / "webhooks.db", max_pending=0)
