"""From the drift monitor's state changes to retraining webhook events.

The monitor says when a model version starts or stops drifting; this decides where the
event goes and what it says. A version's webhook URL is, in order: its registry tag
`retrain_webhook` (it travels with the version; an empty tag turns webhooks off for it),
the serving config's `retrain_webhook` for its model, the server-wide `--retrain-webhook`.
The notifier (monitor/webhook.py) signs, stores and delivers the events.

Registry writers set the tag, the operator the rest: a tagged URL off the allow-list
`webhook_allowed_urls` (monitor/allowlist.py) is ignored as if absent, counted, and logged
once per version and URL.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter

from modelgate.gateway.core.deployments import Deployments
from modelgate.gateway.settings import ServerSettings
from modelgate.monitor.allowlist import WebhookAllowList
from modelgate.monitor.drift import DriftEvent, WindowReport
from modelgate.monitor.outbox import Outbox
from modelgate.monitor.webhook import WebhookNotifier, WebhookSettings
from modelgate.registry.types import shown

log = logging.getLogger(__name__)

WEBHOOK_TAG = "retrain_webhook"
_LOGGED_MAX = 1024


def notifier_for(
    settings: ServerSettings, registry: CollectorRegistry, store_dir: Path | None
) -> WebhookNotifier | None:
    """The retraining webhook's notifier, or None when no webhook is configured: neither a
    URL (server-wide or per model) nor a signing secret for registry-tagged URLs."""
    secret = settings.webhook_secret
    if settings.webhook_secret_file is not None:
        secret = settings.webhook_secret_file.read_text().strip()
    urls = {settings.models.monitor.retrain_webhook} | {
        m.monitor.retrain_webhook for m in settings.model_overrides.values()
    }
    if secret is None and not any(urls):
        return None
    if secret is None:
        raise ValueError(
            "a retraining webhook needs a signing secret: set MODELGATE_WEBHOOK_SECRET or "
            "--webhook-secret-file"
        )
    outbox_path = settings.webhook_outbox
    if outbox_path is None:
        if store_dir is None:
            raise ValueError(
                "with a remote registry, say where the webhook outbox lives: --webhook-outbox"
            )
        outbox_path = store_dir / "webhook-outbox.db"
    webhook = WebhookSettings(
        secret=secret,
        retry_period=settings.webhook_retry_period,
        cooldown=settings.webhook_cooldown,
        outbox_path=outbox_path,
    )
    outbox = Outbox(outbox_path, max_pending=settings.webhook_outbox_max_events)
    return WebhookNotifier(webhook, outbox, registry)


class DriftAlerts:
    """The drift monitor's `on_change`: webhook events for versions that start or stop
    drifting, a log line for everything."""

    def __init__(
        self,
        notifier: WebhookNotifier | None,
        settings: ServerSettings,
        deployments: Deployments,
        refused: Counter,
    ) -> None:
        self._notifier = notifier
        self._settings = settings
        self._deployments = deployments
        self._allowed = WebhookAllowList.parse(settings.webhook_allowed_urls)
        self._refused = refused
        self._logged: set[tuple[str, str, str]] = set()  # refused tags logged already

    async def __call__(self, event: DriftEvent) -> None:
        report = event.report
        if event.kind == "learned" or report is None:
            log.info("%s v%s: reference profile learned from live rows", event.model,
                     event.version)  # fmt: skip
            return
        if self._notifier is None:
            return
        window = _window(report)
        if event.kind in ("drifting", "still_drifting"):  # the outbox applies the cooldown
            url = self._url(event.model, event.version)
            if not url:
                return
            features = [_feature(report, name) for name in report.drifted_features]
            sent = await self._notifier.notify_drift_started(
                event.model, _number(event.version), window, features, url=url
            )
            if sent is not None:
                log.warning("%s v%s is drifting (%s): event %s queued", event.model,
                            event.version, ", ".join(report.drifted_features), sent)  # fmt: skip
        elif event.kind == "resolved":
            await self._notifier.notify_drift_resolved(event.model, _number(event.version), window)

    def _url(self, model: str, version: str) -> str:
        try:
            tags = self._deployments.get(model, version).record.tags
        except Exception:  # unloaded meanwhile: the serving config still applies
            tags = {}
        tagged = tags.get(WEBHOOK_TAG)
        if tagged is not None and (not tagged or self._allowed.allows(tagged)):
            return tagged
        if tagged is not None:
            self._refuse(model, version, tagged)
        return self._settings.for_model(model).monitor.retrain_webhook

    def _refuse(self, model: str, version: str, url: str) -> None:
        self._refused.labels(model).inc()
        key = (model, version, url)
        if key in self._logged:
            return
        if len(self._logged) >= _LOGGED_MAX:  # bounded whatever writers keep tagging
            self._logged.clear()
        self._logged.add(key)
        log.warning(
            "%s v%s: its %s tag %s is not on the webhook allow-list (webhook_allowed_urls): "
            "no event goes there; the serving config's URL applies, if any",
            model, version, WEBHOOK_TAG, shown(url, 200),
        )  # fmt: skip


def _number(version: str) -> int | str:
    """Versions are numbers in events (registry versions are 1, 2, ...)."""
    return int(version) if version.isdigit() else version


def _window(report: WindowReport) -> dict[str, Any]:
    return {
        "start": report.started_at,
        "end": report.closed_at,
        "rows": report.rows,
        "index": report.index,
        "closed_by": report.closed_by,
    }


def _feature(report: WindowReport, name: str) -> dict[str, Any]:
    score = report.feature(name)
    return {
        "name": name,
        "role": score.role,
        "scores": {
            "psi": score.psi,
            "js": score.js,
            "ks": score.ks,
            "missing_rate": score.missing_rate,
            "out_of_range_rate": score.out_of_range_rate,
        },
        "thresholds": report.thresholds,
        "reasons": list(score.reasons),
    }
