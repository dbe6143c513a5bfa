"""The retraining webhook: drift events signed the Standard Webhooks way, sent from an outbox.

When a model version starts drifting the monitor calls `WebhookNotifier.notify_drift_started`,
and `notify_drift_resolved` once it is clear again. Each call that produces an event writes it
to the durable `Outbox` (monitor/outbox.py) before returning; `WebhookNotifier.run` delivers
from there, so a receiver that is down or a gateway that is killed loses nothing.

Decisions:
- Headers: `webhook-id` (the event id, `evt_<uuid4 hex>`, made once at enqueue),
  `webhook-timestamp` (unix seconds of this attempt) and `webhook-signature`
  (`v1,<base64 HMAC-SHA256 of "id.timestamp.body">`). Every attempt reuses the id and the body
  bytes stored at enqueue, with a fresh timestamp and signature, so receivers deduplicate by id
  and their timestamp-tolerance check passes on late retries.
- Secrets: `whsec_<base64>` is decoded to the key, as the Standard Webhooks libraries do; any
  other string is used as UTF-8 bytes (unlike those libraries, which base64-decode it too:
  give receivers the `whsec_` form); bytes are the key itself. A URL without a secret is
  refused: unsigned retraining triggers are spoofable.
- Success is any 2xx. Everything else, redirects included (never followed: the signed body
  must not go to a host nobody configured), connection errors and timeouts are retried with
  exponential backoff and full jitter (a uniform wait in [0, min(max_backoff, initial *
  2^(attempt-1))]); a `Retry-After` (seconds or HTTP date) on any failed answer is the minimum
  wait. After `retry_period` from enqueue the event is `dead` and counted; a Retry-After
  reaching past that kills it at once. Delivery is at least once: an attempt the receiver
  accepted but whose answer was lost (a crash, a shutdown mid-request) is sent again, same id.
- Concurrency: one request in flight per URL, at most `max_in_flight` URLs at once (per
  process: processes sharing an outbox never send the same event at once, see Outbox);
  events of one model version leave in enqueue order (the next waits while the oldest is
  retried).
- Cooldown: a drift_detected for a model version is suppressed if the last one for that
  version was sent less than `cooldown` seconds ago, whether the drift persisted or cleared
  and came back (flapping), so call `notify_drift_started` on every window that drifts. A
  drift_resolved goes out only for an episode that had a drift_detected, to the same URL.
  The cooldown state lives in the outbox, so a restart does not re-fire.
- The outbox keeps delivered and dead events for `keep_done` seconds for inspection.
- SQLite work runs in worker threads (`asyncio.to_thread`): an fsync never stalls the loop.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import dataclasses
import email.utils
import hashlib
import hmac
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from modelgate.monitor.outbox import DriftEpisode, Outbox, OutboxEvent

log = logging.getLogger(__name__)

DRIFT_DETECTED = "model.drift_detected"
DRIFT_RESOLVED = "model.drift_resolved"

_USER_AGENT = "modelgate-webhook/1"
_IDLE_POLL = 5.0  # also picks up events other processes put in a shared outbox
_ERROR_PAUSE = 1.0
_LEASE_MARGIN = 5.0
_PRUNE_EVERY = 3600.0
_DROP_LOG_PERIOD = 60.0


def default_instance() -> str:
    """`hostname:pid`, the gateway instance named in events unless one is configured."""
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """Where and how retraining webhooks are sent. Durations are in seconds.

    `model_urls` overrides `url` per model; an empty string turns webhooks off for a model.
    """

    url: str | None = None
    secret: str | bytes | None = dataclasses.field(default=None, repr=False)
    model_urls: Mapping[str, str] = dataclasses.field(default_factory=dict)
    retry_period: float = 24 * 3600.0
    initial_backoff: float = 1.0
    max_backoff: float = 300.0
    cooldown: float = 3600.0
    timeout: float = 10.0
    instance: str = dataclasses.field(default_factory=default_instance)
    outbox_path: Path | None = None  # None: the gateway puts it next to the registry store
    keep_done: float = 7 * 24 * 3600.0
    max_in_flight: int = 8

    def __post_init__(self) -> None:
        for name in ("retry_period", "initial_backoff", "max_backoff", "timeout"):
            if not getattr(self, name) > 0:
                raise ValueError(f"webhook {name} must be positive")
        if self.cooldown < 0 or self.keep_done < 0:
            raise ValueError("webhook cooldown and keep_done must not be negative")
        if self.initial_backoff > self.max_backoff:
            raise ValueError("webhook initial_backoff must not exceed max_backoff")
        if self.max_in_flight < 1:
            raise ValueError("webhook max_in_flight must be at least 1")
        for url in (self.url, *self.model_urls.values()):
            if url:
                _check_url(url)

    def url_for(self, model: str) -> str | None:
        """The receiver for `model`'s events, or None when it has none."""
        url = self.model_urls.get(model, self.url)
        return url or None


def _check_url(url: str) -> str:
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a webhook URL must be http:// or https://, not {url!r}")
    return url


# --- signing ----------------------------------------------------------------------------------


def secret_key(secret: str | bytes) -> bytes:
    """The HMAC key of a secret: `whsec_<base64>` decoded, other strings as UTF-8, bytes as is."""
    if isinstance(secret, bytes):
        key = secret
    elif secret.startswith("whsec_"):
        try:
            key = base64.b64decode(secret.removeprefix("whsec_") + "==", validate=False)
        except binascii.Error as exc:
            raise ValueError(f"the whsec_ secret is not valid base64: {exc}") from None
    else:
        key = secret.encode()
    if not key:
        raise ValueError("the webhook secret is empty")
    return key


def sign(secret: str | bytes, msg_id: str, timestamp: int | str, body: bytes) -> str:
    """The `webhook-signature` value: `v1,<base64 HMAC-SHA256 of "id.timestamp.body">`."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    secret: str | bytes,
    msg_id: str,
    timestamp: int | str,
    body: bytes,
    signature: str,
    *,
    tolerance: float | None = 300.0,
    now: float | None = None,
) -> bool:
    """Whether a request is authentic: one of the space-separated `v1,` signatures matches
    (compared in constant time) and the timestamp is within `tolerance` seconds of `now`."""
    try:
        stamp = int(timestamp)
    except ValueError:
        return False
    if tolerance is not None and abs((time.time() if now is None else now) - stamp) > tolerance:
        return False
    expected = sign(secret, msg_id, stamp, body).encode()
    found = False
    for candidate in signature.split():
        found |= hmac.compare_digest(candidate.encode(), expected)
    return found


# --- events -----------------------------------------------------------------------------------


def _iso(moment: float | datetime | str) -> str:
    if isinstance(moment, str):
        return moment
    if isinstance(moment, datetime):
        when = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    else:
        when = datetime.fromtimestamp(float(moment), UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _window(window: Mapping[str, Any]) -> dict[str, Any]:
    """`start` and `end` (epoch seconds, datetimes or ISO strings) as ISO 8601 UTC, `rows` as
    an int; other keys (row offsets, say) pass through."""
    missing = {"start", "end", "rows"} - window.keys()
    if missing:
        raise ValueError(f"the drift window lacks {sorted(missing)}")
    return {
        **window,
        "start": _iso(window["start"]),
        "end": _iso(window["end"]),
        "rows": int(window["rows"]),
    }


def _event(
    type_: str, model: str, version: int | str, url: str, data: dict[str, Any], now: float
) -> OutboxEvent:
    event_id = "evt_" + uuid.uuid4().hex
    body = {"id": event_id, "type": type_, "timestamp": _iso(now), "data": data}
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return OutboxEvent(event_id, type_, model, str(version), url, payload, now)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


# --- the notifier -----------------------------------------------------------------------------


class WebhookNotifier:
    """Turns drift changes into outbox events and delivers them (`run`), with metrics in
    `registry`. Not thread-safe: use it from one event loop."""

    def __init__(
        self, settings: WebhookSettings, outbox: Outbox, registry: CollectorRegistry
    ) -> None:
        configured = settings.url or any(settings.model_urls.values())
        if configured and settings.secret is None:
            raise ValueError("a webhook URL is configured but no webhook secret")
        self.settings = settings
        self.outbox = outbox
        self._key = secret_key(settings.secret) if settings.secret is not None else None
        self._wake = asyncio.Event()
        self._closing = False
        self._stopped: asyncio.Event | None = None
        self._client: httpx.AsyncClient | None = None
        self._events = Counter(
            "modelgate_webhook_events",
            "Webhook events enqueued, by type.",
            ["type"],
            registry=registry,
        )
        self._deliveries = Counter(
            "modelgate_webhook_deliveries",
            "Webhook delivery attempts by outcome (delivered, retry, dead: given up).",
            ["outcome"],
            registry=registry,
        )
        self._pending = Gauge(
            "modelgate_webhook_outbox_pending",
            "Webhook events in the outbox waiting for delivery.",
            registry=registry,
        )
        self._dropped = Counter(
            "modelgate_webhook_events_dropped",
            "Webhook events dropped because the outbox held its maximum of pending events.",
            ["type"],
            registry=registry,
        )
        self._drops_unlogged = 0
        self._drop_logged_at: float | None = None
        outbox.on_drop = self._drop

    async def notify_drift_started(
        self,
        model: str,
        version: int | str,
        window: Mapping[str, Any],
        features: Sequence[Mapping[str, Any]],
        *,
        url: str | None = None,
    ) -> str | None:
        """Enqueue a `model.drift_detected` event; its id, or None when the model has no URL
        or the version's cooldown suppresses it. `window` holds `start`, `end` and `rows`;
        each feature `name`, `scores` and `thresholds`. `url` (e.g. from a registry tag)
        overrides the settings; an empty one turns the event off."""
        target = self.settings.url_for(model) if url is None else url or None
        if target is None:
            return None
        _check_url(target)
        self._need_key()
        if not all("name" in feature for feature in features):
            raise ValueError("every drifted feature needs a name")
        now = time.time()
        data = {
            "model": model,
            "version": version,
            "window": _window(window),
            "features": [dict(feature) for feature in features],
            "instance": self.settings.instance,
        }
        event = _event(DRIFT_DETECTED, model, version, target, data, now)
        sent = await asyncio.to_thread(
            self.outbox.drift_started, event, cooldown=self.settings.cooldown, now=now
        )
        if not sent:
            return None
        self._enqueued(DRIFT_DETECTED)
        return event.id

    async def notify_drift_resolved(
        self, model: str, version: int | str, window: Mapping[str, Any]
    ) -> str | None:
        """Record that the version is clear; enqueue a `model.drift_resolved` event (to where
        the episode's drift_detected went) and return its id if that episode had one."""
        now = time.time()
        clean = _window(window)

        def build(episode: DriftEpisode) -> OutboxEvent:
            assert episode.url is not None and episode.detected_event is not None
            data = {
                "model": model,
                "version": version,
                "window": clean,
                "detected_event": episode.detected_event,
                "drifting_since": _iso(episode.since if episode.since is not None else now),
                "instance": self.settings.instance,
            }
            return _event(DRIFT_RESOLVED, model, version, episode.url, data, now)

        event = await asyncio.to_thread(
            self.outbox.drift_resolved, model, str(version), build, now=now
        )
        if event is None:
            return None
        self._enqueued(DRIFT_RESOLVED)
        return event.id

    def _drop(self, event: OutboxEvent) -> None:
        """Count an event the full outbox dropped; log at most one line a minute about it."""
        self._dropped.labels(event.type).inc()
        self._drops_unlogged += 1
        now = time.monotonic()
        if self._drop_logged_at is not None and now - self._drop_logged_at < _DROP_LOG_PERIOD:
            return
        log.warning(
            "webhook outbox full (%d pending events, webhook_outbox_max_events): dropped %d "
            "event(s), the last a %s of %s v%s; is the receiver down?",
            self.outbox.max_pending, self._drops_unlogged, event.type, event.model,
            event.version,
        )  # fmt: skip
        self._drops_unlogged, self._drop_logged_at = 0, now

    def _need_key(self) -> bytes:
        if self._key is None:
            raise ValueError("a webhook URL is configured but no webhook secret")
        return self._key

    def _enqueued(self, type_: str) -> None:
        self._events.labels(type_).inc()
        self._wake.set()

    async def run(self) -> None:
        """Deliver due events until `close`, starting with those a previous process left."""
        self._stopped = asyncio.Event()
        self._client = self._client or httpx.AsyncClient(
            timeout=self.settings.timeout,
            follow_redirects=False,
            headers={"user-agent": _USER_AGENT},
        )
        in_flight: dict[str, asyncio.Task[None]] = {}
        last_prune = 0.0
        try:
            while not self._closing:
                self._wake.clear()
                try:
                    now = time.time()
                    if now - last_prune >= _PRUNE_EVERY:
                        before = now - self.settings.keep_done
                        await asyncio.to_thread(self.outbox.prune, before=before)
                        last_prune = now
                    claimed = await asyncio.to_thread(
                        self.outbox.claim_due,
                        now=now,
                        lease=self.settings.timeout + _LEASE_MARGIN,
                        skip_urls=tuple(in_flight),
                        limit=self.settings.max_in_flight - len(in_flight),
                    )
                    for event in claimed:
                        in_flight[event.url] = self._start(event, in_flight)
                    self._pending.set(await asyncio.to_thread(self.outbox.pending_count))
                    due = await asyncio.to_thread(self.outbox.next_due)
                    # Due at the claim yet not claimed: its URL is busy; a finished delivery
                    # wakes the loop.
                    wait = _IDLE_POLL if due is None or due <= now else due - time.time()
                except Exception:
                    log.exception("webhook outbox unavailable; retrying")
                    wait = _ERROR_PAUSE
                if wait > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), min(wait, _IDLE_POLL))
        finally:
            await self._stop(in_flight)

    def _start(
        self, event: OutboxEvent, in_flight: dict[str, asyncio.Task[None]]
    ) -> asyncio.Task[None]:
        task = asyncio.create_task(self._deliver(event), name=f"webhook {event.id}")

        def done(_: asyncio.Task[None]) -> None:
            in_flight.pop(event.url, None)
            self._wake.set()

        task.add_done_callback(done)
        return task

    async def _stop(self, in_flight: dict[str, asyncio.Task[None]], grace: float = 5.0) -> None:
        tasks = list(in_flight.values())
        if tasks:
            _, late = await asyncio.wait(tasks, timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()
            self._client = None
        if self._stopped is not None:
            self._stopped.set()

    async def close(self) -> None:
        """Stop `run` (in-flight attempts get a few seconds, then go back to the outbox)."""
        self._closing = True
        self._wake.set()
        if self._stopped is not None:
            await self._stopped.wait()
        elif self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _deliver(self, event: OutboxEvent) -> None:
        try:
            error, retry_after = await self._attempt(event)
        except asyncio.CancelledError:
            # Shutdown: give the claim back at once (a quick local write) instead of leaving
            # the event leased until the next process may take it.
            self.outbox.release(event.id, now=time.time())
            raise
        try:
            if error is None:
                await asyncio.to_thread(self.outbox.mark_delivered, event.id, now=time.time())
                self._deliveries.labels("delivered").inc()
            else:
                await self._failed(event, error, retry_after)
        except Exception:
            log.exception("webhook %s: could not record the outcome", event.id)

    async def _attempt(self, event: OutboxEvent) -> tuple[str | None, float | None]:
        """POST the event once: None on success, else the error and any Retry-After wait."""
        assert self._client is not None
        try:
            stamp = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": event.id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(self._need_key(), event.id, stamp, event.payload),
            }
            async with (
                asyncio.timeout(self.settings.timeout),
                self._client.stream(
                    "POST", event.url, content=event.payload, headers=headers
                ) as response,
            ):
                if response.is_success:
                    return None, None
                snippet = b""
                async for chunk in response.aiter_bytes():
                    snippet += chunk
                    if len(snippet) >= 200:
                        break
                text = snippet[:200].decode(errors="replace").strip()
                wait = _retry_after(response.headers.get("retry-after"), time.time())
                return f"HTTP {response.status_code} {text}".strip(), wait
        except TimeoutError:
            return f"no answer within {self.settings.timeout:g} s", None
        except Exception as exc:  # any failure to deliver is retried, never fatal to the loop
            return f"{type(exc).__name__}: {exc}", None

    async def _failed(self, event: OutboxEvent, error: str, retry_after: float | None) -> None:
        now = time.time()
        deadline = event.created + self.settings.retry_period
        cap = min(
            self.settings.max_backoff,
            self.settings.initial_backoff * 2.0 ** min(max(event.attempts - 1, 0), 60),
        )
        wait = random.uniform(0.0, cap)
        if retry_after is not None:
            wait = max(wait, retry_after)
        if now >= deadline or (retry_after is not None and now + retry_after > deadline):
            await asyncio.to_thread(self.outbox.mark_dead, event.id, error)
            self._deliveries.labels("dead").inc()
            log.warning(
                "webhook %s to %s given up after %d attempts: %s",
                event.id, event.url, event.attempts, error,
            )  # fmt: skip
            return
        await asyncio.to_thread(self.outbox.retry_at, event.id, min(now + wait, deadline), error)
        self._deliveries.labels("retry").inc()
        log.info(
            "webhook %s to %s failed (%s); retrying in %.1f s", event.id, event.url, error, wait
        )
