"""The API's listening socket, bound before anything says it listens.

``continuum server`` and ``continuum demo`` bind their port here first and hand the bound
socket to uvicorn, so a taken port is one clear error (naming, where the system lets us
see it, the process that holds the port) and never a server that goes on without its API.
"""

from __future__ import annotations

import errno
import socket

import psutil


class PortInUse(OSError):
    """``host:port`` is already taken; ``holder`` describes the process holding it, if known."""

    def __init__(self, host: str, port: int, holder: str | None):
        self.host, self.port, self.holder = host, port, holder
        super().__init__(errno.EADDRINUSE, f"port {port} on {host} is already in use"
                         + (f" by {holder}" if holder else ""))

    def __str__(self) -> str:
        return str(self.strerror)


def port_holder(port: int) -> str | None:
    """``pid N (command line)`` of the process listening on TCP ``port``, or None when no
    listener is visible to this user (another user's process, or no permission)."""
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.AccessDenied, OSError):
        return None
    for c in conns:
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port and c.pid:
            try:
                cmd = " ".join(" ".join(psutil.Process(c.pid).cmdline()).split())[:100]
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                cmd = "?"
            return f"pid {c.pid} ({cmd})"
    return None


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (0 = any free port) and listening: connections
    wait in its backlog until a server (uvicorn) accepts them.

    Raises:
        PortInUse: the port is taken.
        OSError: any other bind failure (e.g. an address this machine does not have).
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # not a live listener's port
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(host, port, port_holder(port)) from None
        raise
    sock.listen(2048)  # uvicorn's default backlog
    return sock

