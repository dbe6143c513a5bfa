"""One serving process of several (`--workers N`): a whole gateway on the shared ports.

The supervisor (gateway/supervisor.py) spawns it with settings whose HTTP and gRPC ports
it has reserved; this process listens on them with SO_REUSEPORT, serves its own metrics on
a free port for the supervisor to merge, sends its drift sketches to the supervisor's
monitor (gateway/drift_link.py), follows the stages the supervisor pushes rather than the
registry (gateway/route_link.py), and drains on SIGTERM like a lone server. When
the supervisor is gone (its end of the channel closes), it drains and exits as well.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from multiprocessing.connection import Connection

from modelgate.gateway import server
from modelgate.gateway.cli import configure_logging
from modelgate.gateway.drift_link import DriftUplink
from modelgate.gateway.route_link import RouteReceiver
from modelgate.gateway.settings import ServerSettings, SettingsError
from modelgate.listen import BindError


def serve_worker(settings: ServerSettings, index: int, channel: Connection) -> None:
    """Entry point of serving process `index`: serve until SIGTERM or the supervisor's end.

    Sends the supervisor the address of its metrics endpoint once it listens.
    """
    configure_logging(settings.log_level, process=f"worker {index}")
    uplink = DriftUplink(channel, settings.models.drift.queue_size)
    routes = RouteReceiver(uplink.enqueue)
    threading.Thread(target=_follow_supervisor, args=(channel, uplink, routes), daemon=True).start()
    try:
        server.run(
            settings,
            shared_ports=True,
            started=lambda a: uplink.post(("listening", a.metrics)),
            drift_uplink=uplink,
            pushed_routes=routes,
        )
    except (SettingsError, BindError) as exc:
        print(f"modelgate: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None


def _follow_supervisor(channel: Connection, uplink: DriftUplink, routes: RouteReceiver) -> None:
    """Hand the supervisor's messages to the route receiver or the drift uplink; drain and
    stop once the supervisor has gone (recv ends at EOF)."""
    try:
        while True:
            message = channel.recv()
            if message[0] in RouteReceiver.KINDS:
                routes.receive(message)
            else:
                uplink.receive(message)
    except (EOFError, OSError):
        os.kill(os.getpid(), signal.SIGTERM)
