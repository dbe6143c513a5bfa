"""The `modelgate` command: parses flags into settings and hands over, nothing else.

modelgate demo                       train, register and serve a small model
modelgate serve --store DIR          serve a registry's models, following its stage changes
modelgate registry --store DIR ...   register, move (stage changes), list and serve versions
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from modelgate import __version__
from modelgate.gateway.settings import (
    SETTINGS,
    ServerSettings,
    Setting,
    SettingsError,
    build_settings,
    load_config_file,
    registry_command_environment,
)
from modelgate.listen import BindError


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    """A flag for every setting but secrets (`SETTINGS`); unset flags fall through to the
    MODELGATE_* variables, the config file and the defaults. Flags stay text here: the
    settings parse and check them like variables, naming the flag when a value is wrong."""
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="TOML file of settings; [models.NAME] tables hold per-model settings",
    )
    for s in SETTINGS.values():
        if s.flag is not None:
            parser.add_argument(s.flag, metavar=_metavar(s), help=_help(s))


_SETTINGS_EPILOG = (
    "Every flag is also a variable (--max-batch-size: MODELGATE_MAX_BATCH_SIZE) and a config "
    "file key (max_batch_size); a flag wins over the variable, the variable over the file. "
    "The webhook secret has no flag (command lines are visible to other users): set "
    "MODELGATE_WEBHOOK_SECRET, webhook_secret in the config file, or --webhook-secret-file."
)


def _metavar(s: Setting) -> str:
    if s.rules.choices:
        return "{" + ",".join(s.rules.choices) + "}"
    if s.kind is bool:
        return "on|off"
    return {int: "N", float: "X", Path: "PATH"}.get(s.kind, "TEXT")


def _help(s: Setting) -> str:
    if s.default is None or s.default == "":
        return s.rules.help.replace("%", "%%")
    if s.kind is bool:
        default = "on" if s.default else "off"
    else:
        default = f"{s.default:g}" if s.kind is float else str(s.default)
    # argparse %-formats help texts.
    return f"{s.rules.help} (default {default})".replace("%", "%%")


def _settings(args: argparse.Namespace) -> ServerSettings:
    overrides: dict[str, Any] = dict(vars(args))
    config_path = overrides.pop("config", None)
    config = load_config_file(config_path) if config_path is not None else None
    return build_settings(overrides, config=config, config_path=config_path)


def configure_logging(level: str, *, process: str = "") -> None:
    """Log lines to stderr at `level`; `process` names a serving process among several."""
    where = f"{process} " if process else ""
    logging.basicConfig(
        level=level.upper(),
        format=f"%(asctime)s %(levelname)s {where}%(name)s: %(message)s",
        stream=sys.stderr,
    )
    # httpx logs every request at INFO: one line per registry poll, all day long.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from modelgate.gateway import server

    settings = _settings(args)
    configure_logging(settings.log_level)
    if settings.worker_count() > 1:
        from modelgate.gateway import supervisor

        return supervisor.run(settings)
    server.run(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from modelgate.gateway import demo

    settings = _settings(args)
    configure_logging(settings.log_level)
    demo.run(settings)
    return 0


def _registry(args: argparse.Namespace) -> int:
    from modelgate.registry import cli as registry_cli

    # The same MODELGATE_* variables as `serve`: the registry package never reads them.
    return registry_cli.run(args, registry_command_environment())


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgate", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"modelgate {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="serve the production models of a registry", epilog=_SETTINGS_EPILOG
    )
    _add_server_flags(serve)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser(
        "demo", help="train a small model, register it and serve it", epilog=_SETTINGS_EPILOG
    )
    _add_server_flags(demo)
    demo.set_defaults(handler=_demo)

    from modelgate.registry import cli as registry_cli

    registry_cli.add_parser(commands).set_defaults(handler=_registry)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    del args.handler, args.command
    try:
        return int(handler(args) or 0)
    except (SettingsError, BindError) as exc:
        # A user's mistake: one line that says what to change, no traceback.
        print(f"modelgate: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
