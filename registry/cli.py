"""`modelgate registry`: register, move, list and inspect model versions; serve a store.

modelgate registry [--store DIR | --registry URL] register NAME FILE [--stage S] ...
modelgate registry ... transition NAME VERSION STAGE [--traffic P] [--keep] [--reason R]
    [--allow-signature-change]
modelgate registry ... list [NAME] | history [NAME] | show NAME VERSION [--json]
modelgate registry --store DIR serve --port P [--token-file F] [--protect-reads]
    [--upload-ttl S]

Where the registry is comes from the flags, else from the variables `modelgate serve` reads
(MODELGATE_REGISTRY, then MODELGATE_STORE), else ./modelstore. Only `register` (and `serve
--create-store`) may create a store; the other commands need one that exists.

Errors print `error: ...` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import functools
import getpass
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modelgate.registry.client import (
    RegistryClient,
    local_store,
    open_registry,
    with_artifact_facts,
)
from modelgate.registry.errors import LocationError, RegistryError
from modelgate.registry.signature import InvalidModelError
from modelgate.registry.types import (
    ModelVersion,
    Stage,
    TensorSignature,
    Transition,
    check_model_name,
    parse_version,
)
from modelgate.tls import tls_files

_STAGES = ", ".join(s.value for s in Stage)
Opener = Callable[[], RegistryClient]
DEFAULT_STORE = "modelstore"


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Attach `registry` and its subcommands to the `modelgate` parser; the parser, whose
    `handler` default the caller may replace to hand `run` the environment's settings."""
    parser = commands.add_parser(
        "registry",
        help="manage model versions and rollouts in a registry",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--store",
        help=f"embedded registry directory (default: $MODELGATE_STORE, else {DEFAULT_STORE})",
    )
    where.add_argument(
        "--registry",
        help="a registry server's or MLflow's URL instead of a directory "
        "(default: $MODELGATE_REGISTRY)",
    )
    parser.add_argument(
        "--token-file",
        dest="client_token_file",
        type=Path,
        help="API token for --registry (default: $MODELGATE_REGISTRY_TOKEN_FILE, else the "
        "token in $MODELGATE_REGISTRY_TOKEN)",
    )
    sub = parser.add_subparsers(dest="registry_command", required=True)

    register = sub.add_parser("register", help="add a new version of a model")
    register.add_argument("name")
    register.add_argument("model", type=Path, help="the .onnx file")
    register.add_argument("--stage", default="none", help=f"initial stage ({_STAGES})")
    register.add_argument("--traffic", type=float, help="percent, for canary and shadow")
    register.add_argument("--description", default="")
    register.add_argument("--tag", action="append", default=[], help="key=value, repeatable")
    register.add_argument(
        "--reference", type=Path, help="reference sample (.npy, .npz or .csv) to profile"
    )
    register.add_argument("--actor", help="who registers (default: the OS user)")
    register.add_argument("--reason", default="", help="why, for the audit trail of --stage")
    _allow_flag(register)

    transition = sub.add_parser("transition", help="move a version to another stage")
    transition.add_argument("name")
    transition.add_argument("version")
    transition.add_argument("stage", help=_STAGES)
    transition.add_argument(
        "--traffic",
        type=float,
        help="percent of live traffic (canary, required) or mirrored (shadow, default 100)",
    )
    transition.add_argument(
        "--keep",
        action="store_true",
        help="to production: move the previous production version to staging, not archived",
    )
    transition.add_argument("--actor", help="who moves it (default: the OS user)")
    transition.add_argument("--reason", default="", help="why, for the audit trail")
    _allow_flag(transition)

    listing = sub.add_parser("list", help="versions with stage, traffic and artifact sha256")
    listing.add_argument("name", nargs="?")

    history = sub.add_parser("history", help="the audit trail of stage changes")
    history.add_argument("name", nargs="?")

    show = sub.add_parser("show", help="one version in detail")
    show.add_argument("name")
    show.add_argument("version")
    show.add_argument("--json", action="store_true", help="the version as JSON")

    serve = sub.add_parser("serve", help="serve the --store directory over HTTP")
    serve.add_argument("--host", help="address to bind (default: $MODELGATE_HOST, else 127.0.0.1)")
    serve.add_argument("--port", type=int, required=True, help="0 picks a free port")
    serve.add_argument(
        "--token-file",
        dest="server_token_file",
        type=Path,
        help="the server's API tokens, one `name:secret [scope ...]` a line (scopes: admin, "
        "write[:PATTERN], read[:PATTERN]; none means admin)",
    )
    serve.add_argument("--protect-reads", action="store_true", help="require a token for reads too")
    serve.add_argument("--tls-cert-file", type=Path, help="serve HTTPS with this PEM certificate")
    serve.add_argument("--tls-key-file", type=Path, help="the PEM private key of --tls-cert-file")
    serve.add_argument(
        "--upload-ttl",
        type=float,
        default=3600.0,
        help="seconds an upload that no version was registered from is kept (default 3600)",
    )
    serve.add_argument(
        "--create-store",
        action="store_true",
        default=None,
        help="start an empty store if there is none (default: $MODELGATE_CREATE_STORE)",
    )
    parser.set_defaults(handler=run)
    return parser


def _allow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="to canary, shadow or production: accept inputs/outputs that differ from the "
        "production version's (needs --reason, recorded in the audit trail)",
    )


@dataclass(frozen=True, slots=True)
class _Where:
    """The registry a command works on, and the flag or variable that named it."""

    location: str
    named_by: str
    store: Path | None  # the directory, for a store


def run(args: argparse.Namespace, environment: Mapping[str, Any] | None = None) -> int:
    """Carry out one `modelgate registry` command; 2 with a message on stderr when it fails.

    `environment`: the settings the `MODELGATE_*` variables give (`store`, `registry`,
    `registry_token_file`, `registry_token`, `host`, `create_store`), read by the gateway's
    settings module; a flag wins over them.
    """
    environment = environment or {}
    try:
        where = _where(args, environment)
        if args.registry_command == "serve":
            return _serve(args, where, environment)
        # Opened by the command once its own input checks out: a failed `register` leaves
        # no new store behind.
        opener = functools.partial(_open, args, where, environment)
        command = {
            "register": _register,
            "transition": _transition,
            "list": _list,
            "history": _history,
            "show": _show,
        }[args.registry_command]
        status = command(opener, args)
        sys.stdout.flush()  # here, where a closed pipe can still be handled
        return status
    except BrokenPipeError:
        # Registry I/O fails as RegistryError or httpx errors: a broken pipe is stdout's.
        return _reader_gone()
    except (RegistryError, InvalidModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _reader_gone() -> int:
    """stdout's reader left (`modelgate registry list | head`): end quietly, with the status
    of a command that SIGPIPE stopped, as `yes | head` does."""
    # The interpreter flushes stdout again on exit and would complain about the pipe.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
    return 128 + signal.SIGPIPE


def _where(args: argparse.Namespace, environment: Mapping[str, Any]) -> _Where:
    """A flag, else MODELGATE_REGISTRY, else MODELGATE_STORE, else the default: the order
    `modelgate serve` follows, so both see the same registry in the same environment."""
    if args.store is not None:
        location, named_by = args.store, "--store"
    elif args.registry is not None:
        location, named_by = args.registry, "--registry"
    elif environment.get("registry"):
        location, named_by = str(environment["registry"]), "MODELGATE_REGISTRY"
    elif environment.get("store") is not None:
        location, named_by = str(environment["store"]), "MODELGATE_STORE"
    else:
        location, named_by = DEFAULT_STORE, "--store"
    return _Where(location, named_by, local_store(location))


def _open(
    args: argparse.Namespace, where: _Where, environment: Mapping[str, Any]
) -> RegistryClient:
    if where.store is not None:
        if args.client_token_file is not None:
            raise ValueError(
                f"--token-file is for a registry server or MLflow, not for the store {where.store}"
            )
        try:
            # Only `register` starts a store: reading one that is not there is a mistake.
            return open_registry(where.location, create=args.registry_command == "register")
        except LocationError as exc:
            raise LocationError(f"{exc} ({_fix_store(where)})") from None
    if args.client_token_file is not None:
        token: str | None = _read_file(args.client_token_file, "token file").decode().strip()
    elif environment.get("registry_token_file") is not None:
        token = _read_file(environment["registry_token_file"], "token file").decode().strip()
    else:
        token = environment.get("registry_token")
    return open_registry(where.location, token=token)


def _fix_store(where: _Where) -> str:
    """What to do about a store that is not there."""
    quoted = f"'{where.location}'" if " " in where.location else where.location
    if where.named_by.startswith("--"):
        fix = f"pass the right {where.named_by}"
    else:
        fix = f"set {where.named_by} to the right one"
    return f"create one with `modelgate registry --store {quoted} register NAME FILE` or {fix}"


def _serve(args: argparse.Namespace, where: _Where, environment: Mapping[str, Any]) -> int:
    if where.store is None:
        raise ValueError(
            f"serve needs a store directory, not {where.location} (from {where.named_by})"
        )
    if not args.upload_ttl > 0:  # NaN too
        raise ValueError(f"--upload-ttl is a positive number of seconds, not {args.upload_ttl}")
    create = args.create_store
    if create is None:
        create = bool(environment.get("create_store", False))
    try:
        open_registry(where.location, create=create)
    except LocationError as exc:
        raise LocationError(f"{exc} ({_fix_store(where)}, or pass --create-store)") from None
    from modelgate.registry import server

    server.run(
        where.store,
        host=args.host or environment.get("host") or "127.0.0.1",
        port=args.port,
        token_file=args.server_token_file,
        protect_reads=args.protect_reads,
        upload_ttl=args.upload_ttl,
        tls=tls_files(
            args.tls_cert_file,
            args.tls_key_file,
            settings=("--tls-cert-file", "--tls-key-file", ""),
        ),
    )
    return 0


def _register(opener: Opener, args: argparse.Namespace) -> int:
    check_model_name(args.name)  # before reading, profiling and uploading anything
    tags: dict[str, str] = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--tag takes key=value, got {item!r}")
        tags[key.strip()] = value
    model = _read_file(args.model, "model file")
    reference = None
    if args.reference is not None:
        from modelgate.registry.reference import reference_profile, reference_warning

        reference = reference_profile(model, args.reference)
        warning = reference_warning(reference)
        if warning is not None:
            print(f"warning: {warning}", file=sys.stderr)
    version = opener().register(
        args.name,
        model,
        stage=Stage.parse(args.stage),
        traffic=args.traffic,
        description=args.description,
        tags=tags,
        reference=reference,
        actor=args.actor or _os_user(),
        reason=args.reason,
        allow_signature_change=args.allow_signature_change,
    )
    _print(_aligned([_version_cells(version)], _VERSION_RIGHT))
    return 0


def _transition(opener: Opener, args: argparse.Namespace) -> int:
    registry = opener()
    registry.transition(
        args.name,
        parse_version(args.version),
        Stage.parse(args.stage),
        traffic=args.traffic,
        actor=args.actor or _os_user(),
        reason=args.reason,
        keep=args.keep,
        allow_signature_change=args.allow_signature_change,
    )
    # The whole model afterwards: a promotion also moves the previous production version.
    _print_versions(registry, registry.list_versions(args.name))
    return 0


def _list(opener: Opener, args: argparse.Namespace) -> int:
    registry = opener()
    versions = registry.list_versions(args.name)
    if args.name is not None and not versions:
        raise RegistryError(f"unknown model {args.name!r}")
    _print_versions(registry, versions)
    return 0


def _history(opener: Opener, args: argparse.Namespace) -> int:
    registry = opener()
    if args.name is not None and not registry.list_versions(args.name):
        raise RegistryError(f"unknown model {args.name!r}")
    header = ("TIME", "MODEL", "VERSION", "FROM", "TO", "TRAFFIC", "ACTOR", "REASON")
    rows = [header, *(_history_cells(t) for t in registry.history(args.name))]
    _print(_aligned(rows, right=frozenset({2, 5})))
    return 0


def _show(opener: Opener, args: argparse.Namespace) -> int:
    registry = opener()
    version, problem = _with_facts(registry, registry.get(args.name, parse_version(args.version)))
    if args.json:
        print(json.dumps(version.to_json(), indent=2, sort_keys=True))
        return 0
    print(describe(version, problem))
    return 0


def _with_facts(registry: RegistryClient, version: ModelVersion) -> tuple[ModelVersion, str]:
    """`version` with its artifact's sha256, size and signature where the registry keeps
    none (MLflow), and why they are missing when the artifact cannot be read ("" if not)."""
    try:
        return with_artifact_facts(registry, version), ""
    except (RegistryError, InvalidModelError) as exc:
        return version, f"the artifact cannot be read: {exc}"


def describe(v: ModelVersion, problem: str = "") -> str:
    """`show`'s text: the version's fields, signature and a summary of its reference profile;
    `problem` says why the artifact's facts are unknown."""
    stage = v.stage.value + (f" ({_traffic(v.traffic)}%)" if v.traffic is not None else "")
    tags = ", ".join(f"{k}={val}" for k, val in sorted(v.tags.items())) or "-"
    unknown = [f"  unknown: {problem}"] if problem else []
    lines = [
        f"model:        {v.name}",
        f"version:      {v.version}",
        f"stage:        {stage}",
        f"created:      {_time(v.created)}",
        f"sha256:       {v.sha256 or '-'}",
        f"size:         {f'{v.size} bytes' if v.size else '-'}",
        f"description:  {v.description or '-'}",
        f"tags:         {tags}",
        "inputs:",
        *(_signature(s) for s in v.inputs),
        *unknown,
        "outputs:",
        *(_signature(s) for s in v.outputs),
        *unknown,
    ]
    if v.reference is None:
        lines.append("reference:    none")
    else:
        lines += _reference_summary(v.reference)
    return "\n".join(lines)


def _reference_summary(reference: dict[str, Any]) -> list[str]:
    inputs, outputs = reference.get("inputs", []), reference.get("outputs", [])
    lines = [
        f"reference:    {reference.get('rows')} rows, {len(inputs)} input features, "
        f"{len(outputs)} output columns",
        *_calibration_summary(reference.get("calibration")),
        f"  {'FEATURE':<24} {'KIND':<11} {'MISSING':>7}  {'BINS':>4}  SUMMARY",
    ]
    for feature in [*inputs, *outputs]:
        if feature.get("kind") == "numeric":
            stats = [feature.get(k) for k in ("min", "max", "mean", "std")]
            summary = (
                "min {:.4g} max {:.4g} mean {:.4g} std {:.4g}".format(*stats)
                if None not in stats
                else "no values"
            )
        else:
            top = zip(feature.get("categories", []), feature.get("proportions", []), strict=False)
            summary = " ".join(f"{c}:{p:.0%}" for c, p in list(top)[:5])
            other = feature.get("proportions", [0])[-1]
            summary = f"{summary} other:{other:.0%}".strip()
        lines.append(
            f"  {feature.get('name', '?'):<24} {feature.get('kind', '?'):<11} "
            f"{feature.get('missing_rate', 0):>7.1%}  {len(feature.get('proportions', [])):>4}  "
            f"{summary}"
        )
    return lines


def _calibration_summary(calibration: dict[str, Any] | None) -> list[str]:
    """The calibrated thresholds' settings and range, or why there are none."""
    if not isinstance(calibration, dict):
        return ["  thresholds:  fixed (a profile from before calibration)"]
    limits: dict[str, list[float]] = {}
    for feature in calibration.get("thresholds", []):
        for name, value in feature.items():
            if value is not None:
                limits.setdefault(name, []).append(value)
    spans = ", ".join(f"{n} {min(v):.3g}-{max(v):.3g}" for n, v in limits.items())
    least = calibration.get("min_reference_rows")
    return [
        f"  thresholds:  calibrated for windows of {calibration.get('window_rows')} rows at "
        f"{calibration.get('false_alarm_rate'):g} false alarms per feature and window",
        f"               {spans}; smallest useful reference: "
        f"{'none for windows this small' if least is None else f'{least} rows'}",
    ]


_VERSION_RIGHT = frozenset({1, 4, 5})  # VERSION, TRAFFIC and SIZE: numbers


def _print_versions(registry: RegistryClient, versions: list[ModelVersion]) -> None:
    rows: list[Sequence[str]] = [("MODEL", "VERSION", "STAGE", "SHA256", "TRAFFIC", "SIZE")]
    for version in versions:
        described, problem = _with_facts(registry, version)
        if problem:
            print(f"note: {version.name} v{version.version}: {problem}", file=sys.stderr)
        rows.append(_version_cells(described))
    _print(_aligned(rows, _VERSION_RIGHT))


def _version_cells(v: ModelVersion) -> tuple[str, ...]:
    traffic = _traffic(v.traffic) if v.traffic is not None else "-"
    size = str(v.size) if v.size else "-"
    return (v.name, str(v.version), v.stage.value, v.sha256 or "-", traffic, size)


def _history_cells(t: Transition) -> tuple[str, ...]:
    traffic = _traffic(t.traffic) if t.traffic is not None else "-"
    return (
        _time(t.at), t.name, str(t.version), t.from_stage.value, t.to_stage.value, traffic,
        t.actor or "-", t.reason or "-",
    )  # fmt: skip


def _aligned(rows: Sequence[Sequence[str]], right: frozenset[int]) -> list[str]:
    """`rows` as lines of columns two spaces apart, each as wide as its widest cell
    (numbers in the `right` columns aligned right); no cell is ever cut."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(
            cell.rjust(width) if i in right else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        for row in rows
    ]


def _print(lines: list[str]) -> None:
    print("\n".join(lines))


def _signature(s: TensorSignature) -> str:
    return f"  {s.name:<24} {s.datatype:<6} {list(s.shape)}"


def _traffic(percent: float) -> str:
    return f"{percent:g}"


def _time(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


def _read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ValueError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise ValueError(f"{what} {path} is a directory") from None


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"
