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

from modelgate.gateway.settings import (
    BatchSettings,
    RuntimeSettings,
    ServerSettings,
    build_settings,
    load_config_file,
)


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    """Flags for every `ServerSettings` field; unset flags fall back to MODELGATE_* vars."""
    d = ServerSettings()
    b = BatchSettings()
    r = RuntimeSettings()
    add = parser.add_argument
    add(
        "--config",
        type=Path,
        help="TOML file of settings; [models.NAME] tables set per-model batching/runtime",
    )
    add("--store", type=str, help=f"embedded registry directory (default {d.store})")
    add(
        "--registry",
        help="where models come from instead of --store: a directory, http://host:port "
        "(a `modelgate registry serve`) or mlflow+http://host:port",
    )
    add("--registry-token-file", type=Path, help="bearer token for the registry server or MLflow")
    add(
        "--poll-interval",
        type=float,
        help=f"seconds between registry change checks (default {d.poll_interval})",
    )
    add(
        "--routing-key-header",
        help="HTTP header / gRPC metadata whose value pins a caller to one version "
        f"(default {d.routing_key_header})",
    )
    add(
        "--shadow-max-inflight",
        type=int,
        help="mirrored requests in flight per shadow version before copies are dropped "
        f"(default {d.shadow_max_inflight})",
    )
    add("--host", help=f"address to bind (default {d.host})")
    add("--http-port", type=int, help=f"HTTP port, 0 picks one (default {d.http_port})")
    add("--grpc-port", type=int, help=f"gRPC port, 0 picks one (default {d.grpc_port})")
    add("--metrics-port", type=int, help=f"Prometheus port (default {d.metrics_port})")
    add("--max-body-bytes", type=int, help=f"request size limit (default {d.max_body_bytes})")
    add(
        "--grpc-workers",
        choices=("shared", "thread"),
        help="gRPC on the HTTP server's loop, or on its own loop in a thread "
        f"(default {d.grpc_workers})",
    )
    add(
        "--drain-delay",
        type=float,
        help="seconds a stopping server reports not-ready but still serves, so load "
        f"balancers can take it out of rotation (default {d.drain_delay})",
    )
    add("--drain-seconds", type=float, help=f"graceful drain limit (default {d.drain_seconds})")
    add("--log-level", help=f"logging level (default {d.log_level})")
    add("--max-batch-size", type=int, help=f"rows per batch, 1 = off (default {b.max_batch_size})")
    add("--max-delay-us", type=int, help=f"max wait for a fuller batch (default {b.max_delay_us})")
    add("--max-queue", type=int, help=f"rows that may wait (default {b.max_queue})")
    add(
        "--inline-max-us",
        type=int,
        help="batches expected to take at most this long run on the event loop, longer ones "
        f"on a worker thread; 0: always the thread (default {b.inline_max_us})",
    )
    add(
        "--monitoring",
        type=_on_off,
        metavar="on|off",
        help="drift monitoring of every model (default on; per model in the config file)",
    )
    add(
        "--retrain-webhook",
        metavar="URL",
        help="where drift events are POSTed (per model: config file or the registry tag "
        "retrain_webhook); signed with MODELGATE_WEBHOOK_SECRET or --webhook-secret-file",
    )
    add("--webhook-secret-file", type=Path, help="file holding the webhook signing secret")
    add(
        "--webhook-outbox",
        type=Path,
        help="SQLite file of undelivered events (default: webhook-outbox.db in the store)",
    )
    add(
        "--webhook-cooldown",
        type=float,
        help=f"seconds before a drifting version fires again (default {d.webhook_cooldown:g})",
    )
    add("--intra-op-threads", type=int, help=f"ORT threads per run (default {r.intra_op_threads})")
    add(
        "--graph-optimization",
        choices=("disable", "basic", "extended", "all"),
        help=f"ORT graph optimisation (default {r.graph_optimization})",
    )


def _on_off(value: str) -> bool:
    if value.lower() in ("on", "true", "1", "yes"):
        return True
    if value.lower() in ("off", "false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected on or off, got {value!r}")


def _settings(args: argparse.Namespace) -> ServerSettings:
    overrides: dict[str, Any] = dict(vars(args))
    config_path = overrides.pop("config", None)
    if overrides.get("store") is not None:
        overrides["store"] = Path(overrides["store"])
    try:
        config = load_config_file(config_path) if config_path is not None else None
        return build_settings(overrides, config=config)
    except (OSError, ValueError, TypeError) as exc:
        raise SystemExit(f"modelgate: invalid settings: {exc}") from None


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    from modelgate.gateway import server

    settings = _settings(args)
    _configure_logging(settings.log_level)
    server.run(settings)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from modelgate.gateway import demo

    settings = _settings(args)
    _configure_logging(settings.log_level)
    demo.run(settings)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelgate", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="serve the production models of a registry")
    _add_server_flags(serve)
    serve.set_defaults(handler=_serve)

    demo = commands.add_parser("demo", help="train a small model, register it and serve it")
    _add_server_flags(demo)
    demo.set_defaults(handler=_demo)

    from modelgate.registry import cli as registry_cli

    registry_cli.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = args.handler
    del args.handler, args.command
    return int(handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
