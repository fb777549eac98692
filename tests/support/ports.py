"""Free TCP (and optionally UDP) ports on 127.0.0.1.

The ports are released before they are returned, so another process could take one in
between; on a test machine that race is rare and shows up as a clear "address in use"
in the process log.
"""

from __future__ import annotations

import contextlib
import socket

LOOPBACK = "127.0.0.1"


def _udp_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind((LOOPBACK, port))
        except OSError:
            return False
    return True


def free_ports(count: int, *, udp: bool = False) -> list[int]:
    """Return ``count`` distinct free loopback TCP ports; with ``udp``, free for UDP too.

    Alertmanager's cluster gossip (memberlist) listens on TCP and UDP on one port, hence ``udp``.
    """
    if count < 1:
        raise ValueError("count must be at least 1")
    ports: list[int] = []
    with contextlib.ExitStack() as held:
        # Hold every socket until all are chosen so that one call never returns a port twice.
        attempts = 0
        while len(ports) < count:
            attempts += 1
            if attempts > count * 50:
                raise RuntimeError(f"could not find {count} free loopback ports")
            sock = held.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((LOOPBACK, 0))
            port = int(sock.getsockname()[1])
            if udp and not _udp_free(port):
                continue
            ports.append(port)
    return ports


def free_port(*, udp: bool = False) -> int:
    """Return one free loopback TCP port (and UDP port with ``udp``)."""
    return free_ports(1, udp=udp)[0]
