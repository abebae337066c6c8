"""Lesson 01: an iterative server serves one client at a time, and the kernel queues the rest."""

import socket
import time

import pytest

from clients.echo_client import connect, recv_exactly, round_trip
from clients.server_process import STOP_TIMEOUT, Server, ServerError, tcp_states_on_port
from conftest import binary_path

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


def test_clients_queue_in_the_backlog_while_one_is_served(server):
    first = connect(*server.address)
    assert round_trip(first, b"first") == b"first"
    # While the server is busy with the first client, the kernel completes each new handshake and
    # queues it, up to listen()'s backlog: connect() returns at once. A backlog of 1 or 2 makes
    # the kernel drop the later SYNs, and those clients wait a second or more to connect.
    start, waiting = time.monotonic(), []
    try:
        for _ in range(20):
            waiting.append(connect(*server.address, timeout=3))
        seconds = time.monotonic() - start
    except OSError as error:
        pytest.fail(f"while one client was served, connecting more failed ({error}): is listen()'s backlog "
                    f"tiny? The kernel drops the SYNs of clients past it; pass SOMAXCONN", pytrace=False)
    finally:
        first.close()
    try:
        assert seconds < 0.9, (
            f"20 clients took {seconds:.2f} s to connect while the server served another: the kernel should "
            f"queue them at once. With a tiny listen() backlog it drops their SYNs and they retry a second "
            f"later; pass SOMAXCONN")
        for index, sock in enumerate(waiting):
            assert round_trip(sock, b"queued %d" % index) == b"queued %d" % index
            sock.close()
    finally:
        for sock in waiting:
            sock.close()


def test_restarts_on_its_port_while_old_connections_wait_in_time_wait(pytestconfig, lesson):
    binary = binary_path(pytestconfig, lesson)
    first = Server(binary, ["--quiet"])
    port = first.port
    try:
        with connect(*first.address) as sock:
            assert round_trip(sock, b"before the restart") == b"before the restart"
            code, seconds = first.stop()  # the server closes first: its side of the connection waits
            assert code == 0, f"the server should exit 0 on SIGTERM; {first.why_it_did_not_stop(code, seconds)}"
            sock.settimeout(2)
            sock.recv(1)  # its FIN; closing ours now leaves the server's side in TIME_WAIT
    finally:
        first.kill()
    assert "TIME_WAIT" in tcp_states_on_port(port), "the old connection should be in TIME_WAIT"
    try:
        second = Server(binary, ["--quiet", "--port", str(port)])
    except ServerError as error:
        pytest.fail(f"restarted on port {port} while the previous run's connection waits in TIME_WAIT (60 s), "
                    f"the server failed to start: {error}. Set SO_REUSEADDR before bind()", pytrace=False)
    code, seconds = second.stop()
    assert code == 0 and seconds <= STOP_TIMEOUT
