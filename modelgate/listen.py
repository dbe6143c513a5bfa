"""Listening sockets, and the one clear error when a port cannot be had.

The gateway (HTTP, gRPC, metrics) and the registry server bind ports a user chose; when one
is taken, the user needs the setting, the address and what to do, not `[Errno 98]`.
"""

from __future__ import annotations

import errno
import socket


class BindError(OSError):
    """A port could not be bound; the message names the setting, the address and the fix."""


def address(host: str, port: int) -> str:
    """`host:port`, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen(
    host: str, port: int, *, setting: str, flag: str, backlog: int, shared: bool = False
) -> socket.socket:
    """A non-blocking TCP socket listening on host:port (0 picks a free port); `shared`: with
    SO_REUSEPORT, beside the other serving processes of one server (see `reserve`).

    The socket is bound to its port by number, port 0 included (a free port is found
    first): Linux lets go of a port the kernel picked once its socket stops listening, and
    the gateway's HTTP socket stops listening for a while under overload
    (gateway/frontends/http_connections.py), then listens again on the same port.

    Raises BindError naming `setting` and, as the way out, `flag`.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    attempts = _FREE_PORT_ATTEMPTS if port == 0 else 1
    while True:
        try:
            chosen = _free_port(family, host) if port == 0 else port
            return _listening(family, host, chosen, backlog=backlog, shared=shared)
        except (OSError, OverflowError) as exc:
            attempts -= 1
            if attempts and isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
                continue  # another process took the free port first
            raise bind_error(host, port, setting=setting, flag=flag, cause=exc) from None


_FREE_PORT_ATTEMPTS = 5


def _listening(
    family: socket.AddressFamily, host: str, port: int, *, backlog: int, shared: bool
) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def _free_port(family: socket.AddressFamily, host: str) -> int:
    """A port free on `host` now (the kernel's pick)."""
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        port: int = probe.getsockname()[1]
        return port


def reserve(host: str, port: int, *, setting: str, flag: str) -> socket.socket:
    """Hold host:port for serving processes that will each listen on it with `shared`.

    A plain bind first: it fails, with the one clear line, when any other socket holds the
    port, a sharing one included (SO_REUSEPORT alone would quietly join another server's
    group). The socket returned is bound with SO_REUSEPORT but never listens, so the kernel
    hands it no connections; it keeps the port (and the number port 0 picked) while
    serving processes come and go.
    """
    probe = listen(host, port, setting=setting, flag=flag, backlog=1)
    port = probe.getsockname()[1]
    probe.close()
    sock = socket.socket(probe.family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise bind_error(host, port, setting=setting, flag=flag, cause=exc) from None
    return sock


def bind_error(
    host: str, port: int, *, setting: str, flag: str, cause: BaseException | None = None
) -> BindError:
    """The error for a failed bind of host:port; `cause` None means: find out by trying."""
    if cause is None:
        # A library that only says "failed to bind" (gRPC): a plain bind tells why.
        try:
            listen(host, port, setting=setting, flag=flag, backlog=1).close()
        except BindError as exc:
            return exc
        return BindError(f"cannot bind {setting} {address(host, port)}; choose another with {flag}")
    code = cause.errno if isinstance(cause, OSError) else None
    if isinstance(cause, socket.gaierror):
        reason = f"unknown host {host!r}; choose another with --host"
    elif code == errno.EADDRINUSE:
        reason = (
            "address already in use; stop the other process or choose another port with "
            f"{flag} (0 picks a free one)"
        )
    elif code == errno.EACCES:
        reason = f"permission denied (ports below 1024 need privileges); choose another with {flag}"
    elif code == errno.EADDRNOTAVAIL:
        reason = "not an address of this machine; choose another with --host"
    elif isinstance(cause, OverflowError):
        reason = f"a port is a number from 0 to 65535; choose another with {flag}"
    else:
        reason = f"{getattr(cause, 'strerror', None) or cause}; choose another port with {flag}"
    return BindError(f"cannot bind {setting} {address(host, port)}: {reason}")
