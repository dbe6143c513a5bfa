"""`modelgate registry`: register, move, list and inspect model versions; serve a store.

modelgate registry [--store DIR | --registry URL] register NAME FILE [--stage S] ...
modelgate registry ... transition NAME VERSION STAGE [--traffic P] [--keep] [--reason R]
    [--allow-signature-change]
modelgate registry ... list [NAME] | history [NAME] | show NAME VERSION [--json]
modelgate registry --store DIR serve --port P [--token-file F] [--protect-reads]

Errors print `error: ...` on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from modelgate.registry.client import RegistryClient, open_registry
from modelgate.registry.errors import RegistryError
from modelgate.registry.signature import InvalidModelError
from modelgate.registry.types import ModelVersion, Stage, TensorSignature, Transition

TOKEN_ENV = "MODELGATE_REGISTRY_TOKEN"
_STAGES = ", ".join(s.value for s in Stage)


def add_parser(commands: Any) -> None:
    """Attach `registry` and its subcommands to the `modelgate` parser."""
    parser = commands.add_parser(
        "registry",
        help="manage model versions and rollouts in a registry",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--store", default="modelstore", help="embedded registry directory")
    where.add_argument("--registry", help="a registry server's URL instead of a directory")
    parser.add_argument(
        "--token-file",
        dest="client_token_file",
        type=Path,
        help=f"API token for --registry (default: ${TOKEN_ENV})",
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
    transition.add_argument("version", type=int)
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
    show.add_argument("version", type=int)
    show.add_argument("--json", action="store_true", help="the version as JSON")

    serve = sub.add_parser("serve", help="serve the --store directory over HTTP")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, required=True, help="0 picks a free port")
    serve.add_argument(
        "--token-file", dest="server_token_file", type=Path, help="the server's API tokens"
    )
    serve.add_argument("--protect-reads", action="store_true", help="require a token for reads too")
    parser.set_defaults(handler=run)


def _allow_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--allow-signature-change",
        action="store_true",
        help="to canary, shadow or production: accept inputs/outputs that differ from the "
        "production version's (needs --reason, recorded in the audit trail)",
    )


def run(args: argparse.Namespace) -> int:
    """Carry out one `modelgate registry` command; 2 with a message on stderr when it fails."""
    try:
        if args.registry_command == "serve":
            return _serve(args)
        registry = _open(args)
        command = {
            "register": _register,
            "transition": _transition,
            "list": _list,
            "history": _history,
            "show": _show,
        }[args.registry_command]
        status = command(registry, args)
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


def _open(args: argparse.Namespace) -> RegistryClient:
    if args.registry is None:
        if args.client_token_file is not None:
            raise ValueError("--token-file is for --registry URL, not for --store")
        return open_registry(args.store)
    token = os.environ.get(TOKEN_ENV)
    if args.client_token_file is not None:
        token = _read_file(args.client_token_file, "token file").decode().strip()
    return open_registry(args.registry, token=token)


def _serve(args: argparse.Namespace) -> int:
    if args.registry is not None:
        raise ValueError("serve needs a --store directory, not --registry")
    from modelgate.registry import server

    server.run(
        Path(args.store),
        host=args.host,
        port=args.port,
        token_file=args.server_token_file,
        protect_reads=args.protect_reads,
    )
    return 0


def _register(registry: RegistryClient, args: argparse.Namespace) -> int:
    tags: dict[str, str] = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--tag takes key=value, got {item!r}")
        tags[key.strip()] = value
    model = _read_file(args.model, "model file")
    reference = None
    if args.reference is not None:
        from modelgate.registry.reference import reference_profile

        reference = reference_profile(model, args.reference)
    version = registry.register(
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
    print(_row(version))
    return 0


def _transition(registry: RegistryClient, args: argparse.Namespace) -> int:
    registry.transition(
        args.name,
        args.version,
        Stage.parse(args.stage),
        traffic=args.traffic,
        actor=args.actor or _os_user(),
        reason=args.reason,
        keep=args.keep,
        allow_signature_change=args.allow_signature_change,
    )
    # The whole model afterwards: a promotion also moves the previous production version.
    _print_versions(registry.list_versions(args.name))
    return 0


def _list(registry: RegistryClient, args: argparse.Namespace) -> int:
    versions = registry.list_versions(args.name)
    if args.name is not None and not versions:
        raise RegistryError(f"unknown model {args.name!r}")
    _print_versions(versions)
    return 0


def _history(registry: RegistryClient, args: argparse.Namespace) -> int:
    if args.name is not None and not registry.list_versions(args.name):
        raise RegistryError(f"unknown model {args.name!r}")
    records = registry.history(args.name)
    print(
        f"{'TIME':<20}  {'MODEL':<20} {'VERSION':>7}  {'FROM':<10}  {'TO':<10}  "
        f"{'TRAFFIC':>7}  {'ACTOR':<16}  REASON"
    )
    for t in records:
        print(_history_row(t))
    return 0


def _show(registry: RegistryClient, args: argparse.Namespace) -> int:
    version = registry.get(args.name, args.version)
    if args.json:
        print(json.dumps(version.to_json(), indent=2, sort_keys=True))
        return 0
    print(describe(version))
    return 0


def describe(v: ModelVersion) -> str:
    """`show`'s text: the version's fields, signature and a summary of its reference profile."""
    stage = v.stage.value + (f" ({_traffic(v.traffic)}%)" if v.traffic is not None else "")
    tags = ", ".join(f"{k}={val}" for k, val in sorted(v.tags.items())) or "-"
    lines = [
        f"model:        {v.name}",
        f"version:      {v.version}",
        f"stage:        {stage}",
        f"created:      {_time(v.created)}",
        f"sha256:       {v.sha256}",
        f"size:         {v.size} bytes",
        f"description:  {v.description or '-'}",
        f"tags:         {tags}",
        "inputs:",
        *(_signature(s) for s in v.inputs),
        "outputs:",
        *(_signature(s) for s in v.outputs),
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


def _print_versions(versions: list[ModelVersion]) -> None:
    print(f"{'MODEL':<20} {'VERSION':>7}  {'STAGE':<10}  {'SHA256':<64}  {'TRAFFIC':>7}  SIZE")
    for version in versions:
        print(_row(version))


def _row(v: ModelVersion) -> str:
    traffic = _traffic(v.traffic) if v.traffic is not None else "-"
    return f"{v.name:<20} {v.version:>7}  {v.stage.value:<10}  {v.sha256}  {traffic:>7}  {v.size}"


def _history_row(t: Transition) -> str:
    traffic = _traffic(t.traffic) if t.traffic is not None else "-"
    return (
        f"{_time(t.at):<20}  {t.name:<20} {t.version:>7}  {t.from_stage.value:<10}  "
        f"{t.to_stage.value:<10}  {traffic:>7}  {t.actor or '-':<16}  {t.reason or '-'}"
    )


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
