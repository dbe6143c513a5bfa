"""An MLflow Model Registry as a `RegistryClient`, over MLflow's REST API with httpx.

`modelgate serve --registry mlflow+http://host:5000` reads stages from MLflow; the `mlflow`
package is never imported. How MLflow's vocabulary maps onto `Stage`:

- aliases (case-insensitive) `production`/`champion` -> PRODUCTION, `canary`/`challenger` ->
  CANARY, `shadow` -> SHADOW. A version holding several of them takes the strongest
  (production, then canary, then shadow). If `production` and `champion` name different
  versions, `production` wins and the other version is judged without that alias.
- otherwise the legacy stage: `Production` -> PRODUCTION, `Staging` -> CANARY, `Archived` ->
  ARCHIVED, `None` -> NONE. Aliases win: while an alias names a production version, versions
  in legacy `Production` are NONE; without such an alias and with several versions in legacy
  `Production`, the highest version is PRODUCTION and the others NONE (MLflow's own "latest
  version in a stage" rule).
- `traffic` comes from the version tag `modelgate.traffic` (percent, 0..100). A canary
  without it takes 0% (and a warning is logged once): a share is never guessed. A shadow
  without it mirrors 100%. A value that is not a number in 0..100 counts as 0%, with a warning.
- `sha256`: MLflow records no checksum. With a tag `modelgate.sha256` the download is verified
  against it; without, `sha256` is "" and a download is only checked to be a loadable ONNX
  model. `size` is 0 (unknown until read); `inputs`/`outputs` are empty (the gateway reads
  them from the file, `client.with_artifact_facts` fills all four in for the CLI). Only
  READY versions are listed.
- the artifact is the one `.onnx` file under the version's source, fetched through the
  server's artifact proxy (`mlflow server --serve-artifacts`). Sources `mlflow-artifacts:/`,
  `runs:/<run>/<path>` (including MLflow 3 logged models named by the run) and `models:/m-...`
  are understood; other schemes (s3://, file://) are not reachable through the proxy.

`transition` moves aliases (and legacy stages where needed, see its docstring) and records
who did it and why in the tag `modelgate.last_transition`, since MLflow keeps no audit log:
`history` therefore knows only each version's latest transition made through modelgate.
`generation` hashes what a poll reads anyway (two paged searches), so it changes with any
alias, stage, tag, description or version and never otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx

from modelgate.registry.client import HttpRegistry
from modelgate.registry.errors import (
    ArtifactIntegrityError,
    AuthError,
    ConflictError,
    InvalidRequestError,
    LocationError,
    NotFoundError,
    RegistryError,
    UnavailableError,
)
from modelgate.registry.signature import (
    InvalidModelError,
    allowed_reason,
    check_allowance,
    check_fit,
    read_signature,
)
from modelgate.registry.types import (
    SIGNATURE_CHANGE_TAG,
    ModelVersion,
    Stage,
    Transition,
    traffic_share,
)

log = logging.getLogger(__name__)

TRAFFIC_TAG = "modelgate.traffic"
SHA256_TAG = "modelgate.sha256"
TRANSITION_TAG = "modelgate.last_transition"

ALIAS_STAGES = {
    "production": Stage.PRODUCTION,
    "champion": Stage.PRODUCTION,
    "canary": Stage.CANARY,
    "challenger": Stage.CANARY,
    "shadow": Stage.SHADOW,
}
LEGACY_STAGES = {
    "production": Stage.PRODUCTION,
    "staging": Stage.CANARY,
    "archived": Stage.ARCHIVED,
    "none": Stage.NONE,
}
# The alias `transition` sets for each stage it can express with one.
_ALIAS_FOR = {Stage.PRODUCTION: "production", Stage.CANARY: "canary", Stage.SHADOW: "shadow"}
_STRENGTH = {Stage.PRODUCTION: 3, Stage.CANARY: 2, Stage.SHADOW: 1}

ERROR_BY_CODE: dict[str, type[RegistryError]] = {
    "RESOURCE_DOES_NOT_EXIST": NotFoundError,
    "INVALID_PARAMETER_VALUE": InvalidRequestError,
    "BAD_REQUEST": InvalidRequestError,
    "RESOURCE_ALREADY_EXISTS": ConflictError,
    "INVALID_STATE": ConflictError,
    "UNAUTHENTICATED": AuthError,
    "PERMISSION_DENIED": AuthError,
}


def derive_stages(aliases: dict[str, int], versions: list[dict[str, Any]]) -> dict[int, Stage]:
    """Each version's stage from the model's aliases and the versions' legacy stages."""
    aliases = {alias.lower(): v for alias, v in aliases.items()}
    production = aliases.get("production", aliases.get("champion"))
    claims: dict[int, Stage] = {}
    for alias, number in aliases.items():
        stage = ALIAS_STAGES.get(alias)
        if stage is None or (stage is Stage.PRODUCTION and number != production):
            continue
        if number not in claims or _STRENGTH[stage] > _STRENGTH[claims[number]]:
            claims[number] = stage
    legacy = {
        int(v["version"]): LEGACY_STAGES.get(str(v.get("current_stage")).lower(), Stage.NONE)
        for v in versions
    }
    legacy_production = [n for n, stage in legacy.items() if stage is Stage.PRODUCTION]
    stages: dict[int, Stage] = {}
    for number, stage in legacy.items():
        if number in claims:
            stages[number] = claims[number]
        elif stage is Stage.PRODUCTION and (
            production is not None or number != max(legacy_production)
        ):
            stages[number] = Stage.NONE
        else:
            stages[number] = stage
    return stages


class MlflowRegistry(HttpRegistry):
    """The MLflow tracking server at `base_url` (`http(s)://host:port`) as a model registry.

    `token` is sent as `Authorization: Bearer`. Blocking, like every `RegistryClient`; one
    instance may be shared between threads. `page_size` is for tests of paging.
    """

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 10.0,
        page_size: int = 1000,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self._page_size = page_size
        self._warned: set[tuple[str, int, str]] = set()
        headers = {"authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=f"{self.base_url}/api/2.0/",
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
        )

    # --- reads ------------------------------------------------------------------------------

    def generation(self) -> str:
        """A hash of every model's aliases and every version's stage, tags and status."""
        models, versions = self._snapshot(None)
        state = (
            sorted((m["name"], m.get("last_updated_timestamp"), _aliases(m)) for m in models),
            sorted(
                (
                    v["name"],
                    int(v["version"]),
                    v.get("current_stage"),
                    v.get("status"),
                    v.get("description", ""),
                    v.get("last_updated_timestamp"),
                    sorted(_tags(v).items()),
                )
                for v in versions
            ),
        )
        return hashlib.sha256(json.dumps(state).encode()).hexdigest()[:32]

    def list_versions(self, name: str | None = None) -> list[ModelVersion]:
        """Every READY version (of `name`, or of all models), ordered by name then version."""
        models, versions = self._snapshot(name)
        by_model: dict[str, list[dict[str, Any]]] = {}
        for v in versions:
            by_model.setdefault(v["name"], []).append(v)
        result: list[ModelVersion] = []
        for model in models:
            own = by_model.get(model["name"], [])
            stages = derive_stages(_aliases_by_name(model), own)
            result.extend(
                self._version(v, stages[int(v["version"])])
                for v in own
                if v.get("status", "READY") == "READY"
            )
        return sorted(result, key=lambda mv: (mv.name, mv.version))

    def get(self, name: str, version: int) -> ModelVersion:
        for mv in self.list_versions(name):
            if mv.version == version:
                return mv
        raise NotFoundError(f"model {name!r} has no version {version} in MLflow")

    def read_artifact(self, version: ModelVersion) -> bytes:
        """The version's one `.onnx` file, through MLflow's artifact proxy, verified."""
        directory = self._artifact_directory(version.name, version.version)
        found = sorted(self._onnx_files(directory))
        where = f"version {version.version} of {version.name!r} ({directory})"
        if len(found) != 1:
            what = "no .onnx file" if not found else f"{len(found)} .onnx files: {found}"
            raise RegistryError(f"{where} has {what}; modelgate needs exactly one")
        response = self._send("GET", f"mlflow-artifacts/artifacts/{quote(found[0])}")
        data = response.content
        if version.sha256:
            actual = hashlib.sha256(data).hexdigest()
            if actual != version.sha256.lower():
                raise ArtifactIntegrityError(
                    f"{where}: {found[0]} has sha256 {actual}, the tag {SHA256_TAG} says "
                    f"{version.sha256}"
                )
        else:
            try:
                read_signature(data)
            except InvalidModelError as exc:
                raise ArtifactIntegrityError(f"{where}: {found[0]} is not loadable: {exc}") from exc
        return data

    def history(self, name: str | None = None) -> list[Transition]:
        """What the `modelgate.last_transition` tags know: each version's latest transition
        made through modelgate, oldest first. Changes made in MLflow itself are not seen."""
        transitions = []
        for mv in self.list_versions(name):
            raw = mv.tags.get(TRANSITION_TAG)
            if raw is None:
                continue
            try:
                transitions.append(Transition.from_json(json.loads(raw)))
            except (ValueError, KeyError, TypeError):
                log.warning("unreadable %s tag on %s v%d", TRANSITION_TAG, mv.name, mv.version)
        return sorted(transitions, key=lambda t: t.at)

    # --- writes -----------------------------------------------------------------------------

    def register(
        self,
        name: str,
        model: bytes | Path,
        *,
        stage: Stage = Stage.NONE,
        traffic: float | None = None,
        description: str = "",
        tags: dict[str, str] | None = None,
        reference: dict[str, Any] | None = None,
        actor: str = "",
        reason: str = "",
        allow_signature_change: bool = False,
    ) -> ModelVersion:
        """Refused: MLflow is the source of truth for versions."""
        raise RegistryError(
            "register models through MLflow (e.g. mlflow.onnx.log_model(..., "
            "registered_model_name=...)); modelgate only reads and stages them there"
        )

    def transition(
        self,
        name: str,
        version: int,
        stage: Stage,
        *,
        traffic: float | None = None,
        actor: str = "",
        reason: str = "",
        keep: bool = False,
        allow_signature_change: bool = False,
    ) -> ModelVersion:
        """Move a version to `stage` with MLflow aliases, so that `get` then reports `stage`.

        To canary, shadow or production, the version's signature must fit the production
        version's (both files are read to compare them), or the change be allowed with a
        reason: then the version gets the tag `modelgate.signature_change` (the reason),
        which gateways need to route it. Alias moves made in MLflow itself are not checked
        here; gateways refuse to route a canary or shadow that does not fit.

        PRODUCTION/CANARY/SHADOW set the alias `production`/`canary`/`shadow` on the version
        (MLflow moves it from the previous holder in one step) after writing the traffic tag
        (by `types.traffic_share`'s rules), so a watcher never sees a canary without its
        share; the version's other modelgate aliases are then removed, and a stale traffic
        tag of a version leaving canary/shadow is deleted. A new production version archives
        the previous one (its aliases removed, legacy stage `Archived`) unless `keep`, which
        only takes the production aliases away from it. ARCHIVED removes the version's
        aliases and sets the legacy stage `Archived`; NONE removes them and resets a legacy
        stage to `None`. STAGING has no MLflow form (MLflow's Staging means canary here) and
        is refused.
        """
        if stage is Stage.STAGING:
            raise InvalidRequestError(
                "MLflow has no modelgate 'staging': its legacy Staging stage means canary here"
            )
        share = traffic_share(stage, traffic)
        check_allowance(allow_signature_change, reason)
        model = self._get_json("mlflow/registered-models/get", {"name": name})["registered_model"]
        aliases = _aliases_by_name(model)
        before = {mv.version: mv for mv in self.list_versions(name)}
        if version not in before:
            raise NotFoundError(f"model {name!r} has no version {version} in MLflow")
        changed = self._check_signature(before, version, stage, allow_signature_change)
        if stage is Stage.CANARY and share is not None:
            # The version holding `canary` loses it when it moves here, so its share goes too.
            leaving = {n for a, n in aliases.items() if a.lower() == "canary"}
            others = sum(
                mv.traffic or 0.0
                for mv in before.values()
                if mv.stage is Stage.CANARY and mv.version != version and mv.version not in leaving
            )
            if others + share > 100.0:
                raise ConflictError(
                    f"canary shares of {name!r} would add up to {others + share:g}%, over 100%"
                )
        if changed:  # before the alias moves, so that a gateway routes the version at once
            self._set_tag(name, version, SIGNATURE_CHANGE_TAG, reason)
            reason = allowed_reason(changed, reason)
        if share is not None:
            self._set_tag(name, version, TRAFFIC_TAG, f"{share:g}")
        elif TRAFFIC_TAG in before[version].tags:
            self._delete_tag(name, version, TRAFFIC_TAG)
        alias = _ALIAS_FOR.get(stage)
        if alias is not None:
            self._set_alias(name, alias, version)
        for held, number in aliases.items():
            if number == version and held.lower() in ALIAS_STAGES and held != alias:
                self._delete_alias(name, held)
        if stage in (Stage.ARCHIVED, Stage.NONE):
            self._set_legacy_stage(name, version, "Archived" if stage is Stage.ARCHIVED else "None")
        at = time.time()
        if stage is Stage.PRODUCTION:
            for old in before.values():
                if old.version == version:
                    continue
                for held, number in aliases.items():
                    # `production` has moved already; a `champion` elsewhere must not linger.
                    kind = ALIAS_STAGES.get(held.lower())
                    if number == old.version and kind is Stage.PRODUCTION and held != alias:
                        self._delete_alias(name, held)
                if old.stage is Stage.PRODUCTION and not keep:
                    self._archive(name, old, aliases, actor, f"replaced by version {version}", at)
        self._record(name, version, before[version].stage, stage, share, actor, reason, at)
        return self.get(name, version)

    # --- transition steps -------------------------------------------------------------------

    def _check_signature(
        self, versions: dict[int, ModelVersion], version: int, stage: Stage, allow: bool
    ) -> tuple[str, ...]:
        """`signature.check_fit` against the production version, read from both files."""
        if stage not in (Stage.CANARY, Stage.SHADOW, Stage.PRODUCTION):
            return ()
        production = next(
            (v for v in versions.values() if v.stage is Stage.PRODUCTION and v.version != version),
            None,
        )
        if production is None:
            return ()
        theirs, ours = (self._signed(v) for v in (production, versions[version]))
        return check_fit(
            theirs, ours, name=ours.name, version=version,
            production_version=production.version, allow=allow,
        )  # fmt: skip

    def _signed(self, version: ModelVersion) -> ModelVersion:
        """`version` with the signature of its file (MLflow's records have none)."""
        try:
            inputs, outputs = read_signature(self.read_artifact(version))
        except InvalidModelError as exc:
            raise ArtifactIntegrityError(f"{version.name} v{version.version}: {exc}") from exc
        return dataclasses.replace(version, inputs=inputs, outputs=outputs)

    def _archive(
        self,
        name: str,
        old: ModelVersion,
        aliases: dict[str, int],
        actor: str,
        reason: str,
        at: float,
    ) -> None:
        """The previous production version: every modelgate alias off, legacy stage Archived."""
        for held, number in aliases.items():
            kind = ALIAS_STAGES.get(held.lower())
            if number == old.version and kind is not None and kind is not Stage.PRODUCTION:
                self._delete_alias(name, held)
        self._set_legacy_stage(name, old.version, "Archived")
        self._record(name, old.version, old.stage, Stage.ARCHIVED, None, actor, reason, at)

    def _record(
        self,
        name: str,
        version: int,
        from_stage: Stage,
        to_stage: Stage,
        traffic: float | None,
        actor: str,
        reason: str,
        at: float,
    ) -> None:
        entry = Transition(name, version, from_stage, to_stage, traffic, actor, at, reason)
        self._set_tag(name, version, TRANSITION_TAG, json.dumps(entry.to_json()))

    def _set_tag(self, name: str, version: int, key: str, value: str) -> None:
        body = {"name": name, "version": str(version), "key": key, "value": value}
        self._send("POST", "mlflow/model-versions/set-tag", json=body)

    def _delete_tag(self, name: str, version: int, key: str) -> None:
        body = {"name": name, "version": str(version), "key": key}
        self._send("DELETE", "mlflow/model-versions/delete-tag", json=body)

    def _set_alias(self, name: str, alias: str, version: int) -> None:
        body = {"name": name, "alias": alias, "version": str(version)}
        self._send("POST", "mlflow/registered-models/alias", json=body)

    def _delete_alias(self, name: str, alias: str) -> None:
        self._send("DELETE", "mlflow/registered-models/alias", json={"name": name, "alias": alias})

    def _set_legacy_stage(self, name: str, version: int, stage: str) -> None:
        """Set MLflow's (deprecated but still served) stage, unless it already is `stage`."""
        params = {"name": name, "version": str(version)}
        current = self._get_json("mlflow/model-versions/get", params)["model_version"]
        if current.get("current_stage", "None") == stage:
            return
        body = {**params, "stage": stage, "archive_existing_versions": False}
        self._send("POST", "mlflow/model-versions/transition-stage", json=body)

    # --- reading MLflow ---------------------------------------------------------------------

    def _snapshot(self, name: str | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The registered models (with aliases) and their versions: two paged searches."""
        if name is None:
            models = list(self._pages("mlflow/registered-models/search", "registered_models", {}))
            versions = list(self._pages("mlflow/model-versions/search", "model_versions", {}))
            return models, versions
        try:
            model = self._get_json("mlflow/registered-models/get", {"name": name})
        except NotFoundError:
            return [], []
        quoted = _quoted(name)
        params = {"filter": f"name = {quoted}"} if quoted else {}
        versions = [
            v
            for v in self._pages("mlflow/model-versions/search", "model_versions", params)
            if v["name"] == name
        ]
        return [model["registered_model"]], versions

    def _pages(self, path: str, key: str, params: dict[str, str]) -> Iterator[dict[str, Any]]:
        token = ""
        while True:
            page_params = {**params, "max_results": str(self._page_size)}
            if token:
                page_params["page_token"] = token
            page = self._get_json(path, page_params)
            yield from page.get(key, [])
            token = page.get("next_page_token", "")
            if not token:
                return

    def _version(self, raw: dict[str, Any], stage: Stage) -> ModelVersion:
        tags = _tags(raw)
        name, number = raw["name"], int(raw["version"])
        traffic: float | None = None
        if stage in (Stage.CANARY, Stage.SHADOW):
            traffic = self._traffic(name, number, stage, tags.get(TRAFFIC_TAG))
        return ModelVersion(
            name=name,
            version=number,
            sha256=tags.get(SHA256_TAG, "").strip().lower(),
            size=0,
            stage=stage,
            created=int(raw.get("creation_timestamp", 0)) / 1000.0,
            description=raw.get("description") or "",
            tags=tags,
            traffic=traffic,
        )

    def _traffic(self, name: str, version: int, stage: Stage, raw: str | None) -> float:
        if raw is None:
            if stage is Stage.SHADOW:
                return 100.0
            self._warn_once(name, version, f"canary without a {TRAFFIC_TAG} tag takes 0%")
            return 0.0
        try:
            share = float(raw)
        except ValueError:
            share = -1.0
        if not 0.0 <= share <= 100.0:
            self._warn_once(name, version, f"{TRAFFIC_TAG}={raw!r} is not a share in 0..100: 0%")
            return 0.0
        return share

    def _warn_once(self, name: str, version: int, message: str) -> None:
        key = (name, version, message)
        if key not in self._warned:
            self._warned.add(key)
            log.warning("MLflow model %r version %d: %s", name, version, message)

    def _artifact_directory(self, name: str, version: int) -> str:
        """The artifact proxy's path of the version's files (no scheme, no leading slash)."""
        params = {"name": name, "version": str(version)}
        uri = self._get_json("mlflow/model-versions/get-download-uri", params)["artifact_uri"]
        if uri.startswith("runs:/"):
            uri = self._run_artifact_uri(uri)
        parts = urlsplit(uri)
        if parts.scheme != "mlflow-artifacts":
            raise RegistryError(
                f"version {version} of {name!r} lives at {uri}, which MLflow's artifact proxy "
                "does not serve: log models to a server started with --serve-artifacts"
            )
        return parts.path.strip("/")

    def _run_artifact_uri(self, uri: str) -> str:
        """`runs:/<run>/<path>` as the run's artifact URI, or (MLflow 3) as the artifact URI
        of the model that run logged under the name `<path>`, as MLflow's client resolves it."""
        run_id, _, path = uri.removeprefix("runs:/").strip("/").partition("/")
        info = self._get_json("mlflow/runs/get", {"run_id": run_id})["run"]["info"]
        run_uri = f"{info['artifact_uri'].rstrip('/')}/{path}".rstrip("/")
        if not path or self._listing(urlsplit(run_uri).path.strip("/")):
            return run_uri
        model_name, _, rest = path.partition("/")
        if not _quoted(model_name):
            return run_uri
        body = {
            "experiment_ids": [info["experiment_id"]],
            "filter": f"name = {_quoted(model_name)}",
        }
        try:
            page = self._send("POST", "mlflow/logged-models/search", json=body).json()
        except (NotFoundError, LocationError):  # an MLflow 2 server: no logged models
            return run_uri
        for model in page.get("models", []):
            if model["info"].get("source_run_id") == run_id:
                return f"{model['info']['artifact_uri'].rstrip('/')}/{rest}".rstrip("/")
        return run_uri

    def _listing(self, path: str) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = self._get_json(
            "mlflow-artifacts/artifacts", {"path": path}
        ).get("files", [])
        return files

    def _onnx_files(self, directory: str, depth: int = 4) -> Iterator[str]:
        """Paths (from the proxy's root) of the `.onnx` files under `directory`."""
        for entry in self._listing(directory):
            path = f"{directory}/{entry['path'].rsplit('/', 1)[-1]}"
            if entry.get("is_dir"):
                if depth > 0:
                    yield from self._onnx_files(path, depth - 1)
            elif path.lower().endswith(".onnx"):
                yield path

    def _get_json(self, path: str, params: dict[str, str]) -> dict[str, Any]:
        document: dict[str, Any] = self._send("GET", path, params=params).json()
        return document

    def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, path, params=params, json=json)
        except httpx.TransportError as exc:
            raise self._unreachable(self.base_url, exc) or UnavailableError(
                f"MLflow at {self.base_url} unreachable: {exc!r}"
            ) from exc
        if response.is_success:
            return response
        raise _error(response, f"{method} {self.base_url}/api/2.0/{path}", self.base_url)


def _error(response: httpx.Response, what: str, base_url: str) -> RegistryError:
    try:
        body = response.json()
        code, message = str(body.get("error_code", "")), str(body.get("message", ""))
    except (ValueError, AttributeError):
        code, message = "", response.text[:200]
    text = f"{what}: {response.status_code} {code} {message}".rstrip()
    if response.status_code >= 500 or response.status_code == 429:
        return UnavailableError(text)
    if response.status_code in (401, 403):
        return AuthError(text)
    if code in ERROR_BY_CODE:
        return ERROR_BY_CODE[code](text)
    if response.status_code == 404:
        # MLflow names every 404 of its API with an error code; a bare one is another
        # server (a modelgate registry, a gateway, a typo'd port) or a path MLflow lacks.
        return LocationError(
            f"{base_url} is not an MLflow tracking server: {what} answered 404 "
            f"(a modelgate registry server is {base_url} without mlflow+)"
        )
    return RegistryError(text)


def _tags(raw: dict[str, Any]) -> dict[str, str]:
    return {t["key"]: t.get("value", "") for t in raw.get("tags", [])}


def _aliases(model: dict[str, Any]) -> list[tuple[str, int]]:
    return sorted((a["alias"], int(a["version"])) for a in model.get("aliases", []))


def _aliases_by_name(model: dict[str, Any]) -> dict[str, int]:
    return dict(_aliases(model))


def _quoted(value: str) -> str:
    """`value` as a string literal of MLflow's search filters ("" if it cannot be quoted)."""
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    return ""
