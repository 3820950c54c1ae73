"""Local TCP ports: find a free one, check that one is free, or that something listens on it."""

from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    """A port the OS says is free now (another process may still take it before we bind)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def port_open(port: int, host: str = "127.0.0.1", *, timeout: float = 0.5) -> bool:
    """Something accepts TCP connections on the port (a broker, a database, a server that has started)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
