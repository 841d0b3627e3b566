"""A free TCP port on loopback: for the demo's server, the benches' peers and the tests' servers.

    port = free_port()       # the OS picked it; free now, so start the server on it soon

One helper where five copies were (serving/demo.py, bench/load.py, tests). Binding port 0
asks the OS for a free one; the socket closes at once, so a port is free when returned,
not reserved: a racing process could take it, which on one machine's loopback does not
happen in practice.
"""
from __future__ import annotations

import socket


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
