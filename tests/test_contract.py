"""The server contract (DESIGN.md) that every lesson's server meets, run once per lesson.

Every test here also ends with the fixture's checks: the server is still alive, holds no more
descriptors than when it started, and exits 0 within a second of SIGTERM.
"""

import random
import signal
import socket
import struct
import subprocess
import threading

import pytest

from clients.echo_client import (connect, echo_stream, first_difference, recv_exactly,
                                 recv_until_eof, round_trip)
from conftest import binary_path


def rst_close(sock):
    """Closes with an RST instead of a FIN (SO_LINGER with a zero timeout), like a crashed peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_echo(expected, actual, what):
    assert actual == expected, f"{what}: the echo differs from what was sent ({first_difference(expected, actual)})"


def test_readiness_line_names_loopback_and_the_real_port(server):
    assert server.host == "127.0.0.1", "the default host must be loopback, never every interface"
    assert 0 < server.port < 65536, f"with --port 0 the line must show the port the kernel chose, not {server.port}"


def test_echoes_random_binary_data_exactly_in_random_chunks(server):
    rng = random.Random(1)
    data = rng.randbytes(1 << 20)
    with connect(*server.address) as sock:
        assert_echo(data, echo_stream(sock, data, rng), "1 MiB of random bytes in random chunks")


def test_echoes_each_small_message_without_waiting_for_more(server):
    rng = random.Random(2)
    with connect(*server.address) as sock:
        for size in [1, 2, 3, 100, 1000, 1, 4095, 4096, 4097, 1]:
            message = rng.randbytes(size)
            assert_echo(message, round_trip(sock, message), f"a {size}-byte message on its own")


def test_echoes_an_8_mib_stream_to_a_concurrent_reader(server):
    data = random.Random(3).randbytes(8 << 20)
    with connect(*server.address, timeout=20) as sock:
        assert_echo(data, echo_stream(sock, data, largest_chunk=1 << 20), "an 8 MiB stream")


def test_half_close_gets_everything_back_then_eof(server):
    data = random.Random(4).randbytes(512 << 10)
    with connect(*server.address) as sock:
        def send_then_shut():
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send_then_shut)
        sender.start()
        echoed = recv_until_eof(sock)
        sender.join()
    assert_echo(data, echoed, "after shutdown(SHUT_WR) the server must send everything still owed, then close")


def test_peer_reset_mid_echo_closes_only_that_connection(server):
    sock = connect(*server.address, timeout=0.5)
    try:
        sock.sendall(random.Random(5).randbytes(8 << 20))  # more than the buffers hold: it blocks
    except socket.timeout:
        pass
    rst_close(sock)  # the server is mid-echo; its next write meets ECONNRESET or EPIPE
    with connect(*server.address) as other:
        assert round_trip(other, b"still there?") == b"still there?", \
            "after one client reset its connection, the server must go on serving others"


def test_client_vanishing_before_reading_does_not_kill_server(server):
    for _ in range(20):
        sock = connect(*server.address)
        sock.sendall(b"x" * 100_000)
        sock.close()  # gone before reading: the server's writes hit a closed socket (SIGPIPE)
    with connect(*server.address) as sock:
        assert round_trip(sock, b"ok") == b"ok", "clients that vanished must not stop the server"


def test_quiet_server_says_nothing_about_its_connections(server):
    for index in range(3):
        with connect(*server.address) as sock:
            assert round_trip(sock, b"shh") == b"shh"
    server.wait_for_fds(server.baseline_fds)  # every connection closed on the server's side too
    assert server.stderr() == "", (
        f"started with --quiet, the server should print no per-connection messages; it printed "
        f"{server.stderr()!r}")


def test_200_connect_close_cycles_leak_no_descriptors(server):
    for index in range(200):
        with connect(*server.address) as sock:
            message = b"cycle %d" % index
            assert round_trip(sock, message) == message
    count = server.wait_for_fds(server.baseline_fds)
    assert count == server.baseline_fds, (
        f"after 200 clients connected and left, the server holds {count} descriptors; it held "
        f"{server.baseline_fds} at start. Each closed connection must close its fd.")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_a_second_even_with_a_client(start_server, lesson, sig):
    server = start_server(lesson, "--quiet")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"hi") == b"hi"
        code, seconds = server.stop(sig)
        assert code == 0 and seconds <= 1.0, \
            f"after {sig.name} the server should exit 0 within 1 s; it gave {code} after {seconds:.2f} s"
        sock.settimeout(1.0)
        assert recv_until_eof(sock) == b"", "the server's exit should close the client's connection"


# --- the command line -------------------------------------------------------------------------

def run_server(config, lesson, *args, timeout=3):
    return subprocess.run([str(binary_path(config, lesson)), *args], capture_output=True, text=True,
                          timeout=timeout)


def test_help_prints_usage_and_exits_0(pytestconfig, lesson):
    result = run_server(pytestconfig, lesson, "--help")
    assert result.returncode == 0, f"--help should exit 0, not {result.returncode}"
    assert "--port" in result.stdout and "--host" in result.stdout, "--help should describe the flags on stdout"


BAD_ARGUMENTS = [
    ["--bogus"], ["extra"], ["--port"], ["--port", "abc"], ["--port", "-1"], ["--port", "70000"],
    ["--port", "65536"], ["--port", ""], ["--port", "80x"], ["--host"], ["--host", "localhostt"],
    ["--host", "300.1.1.1"], ["--host", ""], ["--quiet=yes"], ["--port", "--quiet"],
]


@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "empty")
def test_usage_error_exits_2_with_one_line_reason(pytestconfig, lesson, args):
    result = run_server(pytestconfig, lesson, *args)
    assert result.returncode == 2, f"`server {' '.join(args)}` should exit 2 (usage error), not {result.returncode}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"a usage error should be one line on stderr, got: {result.stderr!r}"
    assert result.stdout == "", "a usage error must not print a readiness line"


def test_port_in_use_exits_1_naming_the_address(pytestconfig, lesson):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(pytestconfig, lesson, "--port", str(port))
    assert result.returncode == 1, f"binding a port in use should exit 1 (setup failed), not {result.returncode}"
    assert f"127.0.0.1:{port}" in result.stderr, f"the message should name the address; it was {result.stderr!r}"


def test_address_not_on_this_machine_exits_1(pytestconfig, lesson):
    # 192.0.2.1 is TEST-NET-1: never assigned here, so bind() fails with EADDRNOTAVAIL at once.
    result = run_server(pytestconfig, lesson, "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 1, f"an address not on this machine should exit 1, not {result.returncode}"
    assert "192.0.2.1" in result.stderr, f"the message should name the address; it was {result.stderr!r}"


def test_listens_on_ipv6_loopback_when_asked(start_server, lesson):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = start_server(lesson, "--quiet", "--host", "::1")
    with socket.create_connection(("::1", server.port), timeout=5) as sock:
        sock.sendall(b"six")
        assert recv_exactly(sock, 3) == b"six"
