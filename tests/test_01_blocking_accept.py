"""Lesson 01: an iterative server serves one client at a time, and the kernel queues the rest."""

import socket

import pytest

from clients.echo_client import connect, recv_exactly, round_trip

LESSONS = ["01"]


def test_second_client_waits_until_the_first_leaves(server):
    first = connect(*server.address)
    assert round_trip(first, b"first") == b"first"

    # The kernel completes the handshake for the second client and queues it (the backlog),
    # so connect() succeeds; but the server is inside serve_client() for the first client and
    # does not call accept() again until that client leaves.
    second = connect(*server.address, timeout=0.5)
    second.sendall(b"second")
    with pytest.raises(socket.timeout):
        echoed = second.recv(100)
        pytest.fail(f"the second client got {echoed!r} back while the first was still connected; "
                    f"an iterative server should not serve it yet (is the echo loop the solution's?)")

    first.close()
    second.settimeout(2.0)
    assert recv_exactly(second, 6) == b"second", \
        "once the first client left, the server should accept the second and echo what it had sent"
    second.close()


def test_serves_clients_one_after_another(server):
    for index in range(5):
        with connect(*server.address) as sock:
            message = b"client %d" % index
            assert round_trip(sock, message) == message
