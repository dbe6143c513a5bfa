"""`modelgate registry`: register model versions and list them in an embedded store."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from registry.signature import InvalidModelError
from registry.store import RegistryError, RegistryStore
from registry.types import ModelVersion, Stage


def add_parser(commands: Any) -> None:
    """Attach `registry` and its subcommands to the `modelgate` parser."""
    parser = commands.add_parser("registry", help="manage the embedded model registry")
    parser.add_argument("--store", default="modelstore", help="registry directory")
    sub = parser.add_subparsers(dest="registry_command", required=True)

    register = sub.add_parser("register", help="add a new version of a model")
    register.add_argument("name")
    register.add_argument("model", type=Path, help="the .onnx file")
    register.add_argument("--stage", default="none", help="initial stage (default none)")
    register.add_argument("--description", default="")
    register.add_argument("--tag", action="append", default=[], help="k=v, repeatable")

    listing = sub.add_parser("list", help="models, versions, stages and artifact sha256")
    listing.add_argument("name", nargs="?")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    store = RegistryStore(args.store)
    try:
        if args.registry_command == "register":
            return _register(store, args)
        return _list(store, args.name)
    except (RegistryError, InvalidModelError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _register(store: RegistryStore, args: argparse.Namespace) -> int:
    tags = {}
    for item in args.tag:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--tag takes key=value, got {item!r}")
        tags[key] = value
    version = store.register(
        args.name,
        args.model.read_bytes(),
        stage=Stage.parse(args.stage),
        description=args.description,
        tags=tags,
    )
    print(_line(version))
    return 0


def _list(store: RegistryStore, name: str | None) -> int:
    versions = store.list_versions(name)
    if name is not None and not versions:
        raise RegistryError(f"unknown model {name!r}")
    print(f"{'MODEL':<20} {'VERSION':>7}  {'STAGE':<10}  {'SHA256':<64}  SIZE")
    for version in versions:
        print(_line(version))
    return 0


def _line(v: ModelVersion) -> str:
    return f"{v.name:<20} {v.version:>7}  {v.stage.value:<10}  {v.sha256}  {v.size}"
