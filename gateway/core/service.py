"""The inference service: the one interface both front ends call."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from typing import Any, NoReturn

from modelgate.gateway.core.access import Access
from modelgate.gateway.core.admission import Admission
from modelgate.gateway.core.deployments import Deployment, Deployments
from modelgate.gateway.core.errors import ErrorCode, InferenceError, invalid
from modelgate.gateway.core.runtime import OnnxModel
from modelgate.gateway.core.shadow import ShadowMirror
from modelgate.gateway.core.statistics import merged_statistics, version_statistics
from modelgate.gateway.core.types import (
    InferRequest,
    InferResponse,
    ModelConfig,
    ModelMetadata,
    ModelStatistics,
    RepositoryEntry,
    Tensor,
    TensorSpec,
)
from modelgate.gateway.core.validation import model_feeds
from modelgate.monitor.monitor import DriftMonitor

# What the other serving processes count for (model or all, version or all).
PeerStatistics = Callable[[str | None, str | None], Awaitable[list[ModelStatistics]]]
# The drift report of the monitor that judges this process's sketches (model, version);
# None when it does not watch the version.
JudgedReport = Callable[[str, str], Awaitable[dict[str, Any] | None]]

PLATFORM = "onnxruntime_onnx"
# Protocol extensions both front ends advertise in server metadata (Triton's names).
EXTENSIONS = (
    "binary_tensor_data",
    "model_configuration",
    "model_repository",
    "statistics",
    "v1_predict",
)
# A version's lifecycle state as Triton's repository index names it, with the reason given
# when there is no error to tell.
_INDEX_STATE = {
    "READY": ("READY", ""),
    "LOADING": ("LOADING", ""),
    "DRAINING": ("UNLOADING", "draining"),
    "UNLOADED": ("UNAVAILABLE", "unloaded"),
    "FAILED": ("UNAVAILABLE", "failed to load"),
}


def _server_version() -> str:
    try:
        return package_version("modelgate")
    except PackageNotFoundError:
        return "0.0.0+unknown"


class InferenceService:
    """Readiness, metadata and inference for every served model, protocol-neutral."""

    def __init__(
        self,
        deployments: Deployments,
        mirror: ShadowMirror,
        monitor: DriftMonitor | None = None,
        name: str = "modelgate",
        admission: Admission | None = None,
        access: Access | None = None,
    ) -> None:
        self._deployments = deployments
        # Front ends check callers' tokens with it before reading a request; None: no
        # tokens needed (core/access.py).
        self.access = access
        # Front ends `enter` it before reading or decoding an inference request, and
        # `leave` once it is answered: the work in flight stays bounded (core/admission.py).
        self.admission = admission if admission is not None else Admission(2**31)
        self._mirror = mirror
        self._monitor = monitor
        self.name = name
        self.version = _server_version()
        self.extensions = EXTENSIONS
        self._accepting = True
        # The other serving processes' statistics, when this is one of several.
        self.peer_statistics: PeerStatistics | None = None
        # Where drift is judged, when not here: the supervisor's monitor (one of several).
        self.judged_report: JudgedReport | None = None

    # --- health -------------------------------------------------------------------------------

    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready to take traffic: not draining, and the readiness rule holds (see
        `core.readiness`: by default, startup has settled)."""
        return self._accepting and self._deployments.readiness().ready

    def begin_drain(self) -> None:
        """Report not-ready so load balancers stop sending; requests still get served."""
        self._accepting = False

    def model_ready(self, name: str, version: str | None) -> bool:
        """Whether the version (without one: the production version) takes requests. A model
        or version the gateway does not serve is not ready rather than an error, on both
        protocols, as in Triton: ready is a yes/no question."""
        try:
            return self._deployments.get(name, version).ready
        except InferenceError:
            return False

    # --- metadata -----------------------------------------------------------------------------

    def model_metadata(self, name: str, version: str | None) -> ModelMetadata:
        deployment = self._loaded(name, version)
        assert deployment.model is not None
        return ModelMetadata(
            name=name,
            versions=tuple(d.version for d in self._deployments.versions_of(name)),
            platform=PLATFORM,
            inputs=deployment.model.inputs,
            outputs=deployment.model.outputs,
            status=tuple(self._deployments.status(name)),
        )

    def model_config(self, name: str, version: str | None) -> ModelConfig:
        """Triton's model configuration; with batching, dims leave out the batch dimension."""
        deployment = self._loaded(name, version)
        model = deployment.model
        assert model is not None
        if not model.batchable:
            return ModelConfig(name, PLATFORM, 0, model.inputs, model.outputs)
        max_batch = self._deployments.batch_settings(name).max_batch_size
        return ModelConfig(
            name, PLATFORM, max_batch, _without_batch(model.inputs), _without_batch(model.outputs)
        )

    async def drift_report(self, name: str, version: str | None) -> dict[str, Any]:
        """The drift monitor's view of a version (without one: the production version): its
        reference, rows seen, and the last windows' per-feature scores and thresholds. With
        `judged_report` set, the view of the monitor that judges every process's traffic."""
        deployment = self._deployments.get(name, version)
        report = None
        if self._monitor is not None:
            report = self._monitor.report(name, deployment.version)
        if report is not None and self.judged_report is not None:
            # This process watches the version; the judge may not have heard so yet.
            report = await self.judged_report(name, deployment.version) or report
        if report is None:
            raise InferenceError(
                ErrorCode.NOT_FOUND,
                f"model {name!r} version {deployment.version} is not monitored "
                f"({deployment.state.value.lower()}, or monitoring is off for it)",
            )
        return report

    # --- statistics and repository extensions -----------------------------------------------

    def model_statistics(self, name: str | None, version: str | None) -> list[ModelStatistics]:
        """Cumulative statistics of one version, of every version of `name` the gateway
        holds, or (no name) of every model's."""
        if not name:
            deployments = [d for n in self._deployments.names() for d in self._versions(n)]
        elif version is None:
            deployments = self._versions(name)
        else:
            deployments = [self._deployments.get(name, version)]
        return [version_statistics(d.metrics) for d in deployments]

    async def statistics(self, name: str | None, version: str | None) -> list[ModelStatistics]:
        """`model_statistics` of every serving process: with `peer_statistics` set (by a
        worker of several), the other workers' counts are added."""
        own = self.model_statistics(name, version)  # the unknown-model error comes from here
        if self.peer_statistics is None:
            return own
        return merged_statistics([own, await self.peer_statistics(name, version)])

    def repository_index(self, ready_only: bool = False) -> list[RepositoryEntry]:
        """Every model version the gateway holds, with Triton's name for its state."""
        entries = []
        for name in self._deployments.names():
            for status in self._deployments.status(name):
                state, reason = _INDEX_STATE.get(status.state, (status.state, ""))
                if ready_only and state != "READY":
                    continue
                entries.append(RepositoryEntry(name, status.version, state, status.error or reason))
        return entries

    def change_repository(self, action: str, name: str) -> NoReturn:
        """Triton's model load/unload: refused, since the registry decides what is served."""
        raise InferenceError(
            ErrorCode.UNIMPLEMENTED,
            f"cannot {action} model {name!r} through the inference API: models are deployed "
            "by moving their versions between stages in the registry "
            "(`modelgate registry transition`)",
        )

    def _versions(self, name: str) -> list[Deployment]:
        """`name`'s versions in version order; the unknown-model error for a model the
        gateway does not serve."""
        versions = self._deployments.versions_of(name)
        if not versions:
            self._deployments.status(name)  # raises that error when `name` is unknown
        return sorted(versions, key=lambda d: int(d.version))

    def _loaded(self, name: str, version: str | None) -> Deployment:
        deployment = self._deployments.get(name, version)
        if deployment.model is None:
            why = f": {deployment.error}" if deployment.error else ""
            raise InferenceError(
                ErrorCode.UNAVAILABLE,
                f"model {name!r} version {deployment.version} is "
                f"{deployment.state.value.lower()}{why}",
            )
        return deployment

    # --- inference ----------------------------------------------------------------------------

    def uses_routing_key(self, model: str) -> bool:
        """Whether a routing key can change which version answers `model` (its traffic is
        split): front ends where reading the key costs something read it only then."""
        return self._deployments.split(model)

    async def infer(self, request: InferRequest) -> InferResponse:
        """Route, validate, queue into the version's micro-batcher and answer `request`;
        live requests the primary answered are mirrored to the model's shadows.

        Raises `InferenceError`; the front end maps its code to the wire status.
        """
        started = time.monotonic()
        deployment, shadows = self._deployments.resolve(
            request.model, request.version, request.routing_key
        )
        outcome = "OK"
        try:
            model = deployment.model
            batcher = deployment.batcher
            assert model is not None and batcher is not None
            feeds, rows = model_feeds(request.inputs, model)
            wanted = _output_indices(request.outputs, model)
            deadline = None if request.timeout is None else started + request.timeout
            # The queue budget counts from here: a request that waited on a busy event
            # loop after this is refused rather than computed (core/batcher.py).
            results = batcher.try_now(feeds, rows, deadline, started)
            if results is None:
                results = await batcher.submit(feeds, rows, deadline, started)
            if shadows:
                self._mirror.mirror(request.inputs, deployment, results, shadows)
            specs = model.outputs
            if wanted is None:
                outputs = [
                    Tensor(s.name, s.datatype, r) for s, r in zip(specs, results, strict=True)
                ]
            else:
                outputs = [Tensor(specs[i].name, specs[i].datatype, results[i]) for i in wanted]
            return InferResponse(request.model, deployment.version, outputs, request.id)
        except InferenceError as exc:
            outcome = exc.code.value
            raise
        finally:
            deployment.metrics.request_done(request.protocol, outcome, time.monotonic() - started)


def _without_batch(specs: tuple[TensorSpec, ...]) -> tuple[TensorSpec, ...]:
    return tuple(TensorSpec(s.name, s.datatype, s.shape[1:]) for s in specs)


def _output_indices(requested: list[str] | None, model: OnnxModel) -> list[int] | None:
    """Where the requested outputs are among the model's; None for all of them, in order
    (no request, or the usual one naming them all)."""
    if not requested or requested == model.output_names:
        return None
    try:
        return [model.output_index[name] for name in requested]
    except KeyError as exc:
        known = ", ".join(model.output_names)
        raise invalid(f"unknown output {exc.args[0]!r} (model outputs: {known})") from None
