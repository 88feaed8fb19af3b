"""The harness picks ports no outgoing connection can take before the service binds them."""

from __future__ import annotations

import socket

from agentpool_dev.procs import LOWEST_PORT, ephemeral_port_floor, free_ports


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    ports = free_ports(8)

    assert len(set(ports)) == 8
    assert all(LOWEST_PORT <= port < ephemeral_port_floor() for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free: raises if not
