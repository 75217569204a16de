"""Shared by the bench scripts: a free port on loopback for a server to use."""

import socket


def free_port():
    """A port nothing listens on at this moment (the kernel picks it)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port
