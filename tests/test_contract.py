"""The server contract (README.md, "Every server's contract") that every lesson's server meets,
run once per lesson. The tests marked `basic` come first in `make check-NN`: it starts and says
so, it echoes one byte, then more, it stops on a signal, its command line; the rest after the
lesson's own tests.

Every test here also ends with the fixture's checks: the server is still alive, holds no more
descriptors than when it started, and exits 0 within a second of SIGTERM.
"""

import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time

import pytest

from clients.echo_client import (ClosedBeforeEcho, connect, echo_stream, first_difference, recv_exactly,
                                 recv_until_eof, round_trip, send_until_stalled)
from clients.server_process import STOP_TIMEOUT, wait_until
from clients.tcp_queues import paused, process_state
from conftest import binary_path


def rst_close(sock):
    """Closes with an RST instead of a FIN (SO_LINGER with a zero timeout), like a crashed peer."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def assert_echo(expected, actual, what):
    assert actual == expected, f"{what}: the echo differs from what was sent ({first_difference(expected, actual)})"


@pytest.mark.basic
def test_readiness_line_names_loopback_and_the_real_port(server):
    assert server.host == "127.0.0.1", "the default host must be loopback, never every interface"
    assert 0 < server.port < 65536, f"with --port 0 the line must show the port the kernel chose, not {server.port}"


@pytest.mark.basic
def test_echoes_a_single_byte(server):
    with connect(*server.address) as sock:
        sock.sendall(b"!")
        failure = None
        try:
            echoed = recv_exactly(sock, 1)
        except (AssertionError, OSError) as error:
            failure = (f"the server accepted the connection but did not echo one byte ({error}); what it said is "
                       f"below, under 'server 0 stderr'")
        if failure:
            pytest.fail(failure, pytrace=False)
        assert echoed == b"!", f"one byte sent, {echoed!r} came back"
        sock.settimeout(0.3)  # how long extra bytes get to show up: an echo takes well under 1 ms
        try:
            extra = sock.recv(1 << 16)
        except socket.timeout:
            extra = b""
    assert not extra, (
        f"one byte sent, and after its echo {len(extra)} more bytes came back ({extra[:16]!r}...): the server "
        f"echoes more than it read. Write back the n bytes read() returned, not the whole buffer (io_uring: a "
        f"completion's res bytes, each completion handled once)")


@pytest.mark.basic
def test_echoes_each_small_message_without_waiting_for_more(server):
    rng = random.Random(2)
    with connect(*server.address) as sock:
        for size in [1, 2, 3, 100, 1000, 1, 4095, 4096, 4097, 1]:
            message = rng.randbytes(size)
            assert_echo(message, round_trip(sock, message), f"a {size}-byte message on its own")


@pytest.mark.basic
def test_ten_clients_connecting_at_once_are_all_served(server):
    with connect(*server.address) as first:
        assert round_trip(first, b"first") == b"first"
    server.settle()
    wait_until(lambda: process_state(server.pid) == "S", 2.0)  # asleep in its wait for events
    socks = []
    try:
        with paused(server.pid):  # all ten wait in the listener's queue when the server wakes: one readiness
            for _ in range(10):
                socks.append(connect(*server.address, timeout=2))
    except OSError as error:
        for sock in socks:
            sock.close()
        pytest.fail(f"while the server was busy (stopped), client {len(socks) + 1} of 10 could not connect "
                    f"({error}): the kernel queues connections up to listen()'s backlog; is the backlog tiny? "
                    f"Pass SOMAXCONN", pytrace=False)
    try:
        for index, sock in enumerate(socks):
            message = b"client %d" % index
            failure = None
            try:
                echoed = round_trip(sock, message)
            except (ConnectionError, ClosedBeforeEcho) as error:  # a reset, or an EOF
                failure = (f"10 clients connected at once; the server closed client {index}'s connection "
                           f"before echoing ({error}): serving or closing one connection, did it touch "
                           f"another one's socket?")
            except (AssertionError, OSError) as error:
                failure = (f"10 clients connected at once; client {index} got no echo ({error}). Its connection "
                           f"may still wait in the listener's queue: one report that the listener is ready can "
                           f"stand for many connections: accept until EAGAIN before waiting again")
            if failure:
                pytest.fail(failure, pytrace=False)
            assert echoed == message
            sock.close()  # lesson 01 serves the next one only once this one has left
    finally:
        for sock in socks:
            sock.close()


@pytest.mark.basic
def test_echoes_everything_to_a_client_that_reads_only_after_sending(server):
    """More than the kernel's buffers hold (the client's small receive buffer, the server's send
    buffer of up to 4 MiB) goes out before the client reads a byte: part of the echo has to wait
    in the server, which must send it once the socket has room again."""
    data = random.Random(10).randbytes(8 << 20)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 << 10)
        sock.settimeout(5)
        sock.connect(server.address)
        sent = send_until_stalled(sock, data, stall=0.3)
        failure = None
        try:
            # Nothing more is sent until all of it is back: no new input can wake the server.
            echoed = recv_exactly(sock, sent)
            rest = threading.Thread(target=sock.sendall, args=(data[sent:],), daemon=True)
            rest.start()
            echoed += recv_exactly(sock, len(data) - sent)
            rest.join(timeout=5)
        except AssertionError as error:
            failure = (f"the client sent {sent >> 10} KiB before reading anything, then read: {error}. Echo "
                       f"the socket refused waits in the server: ask for writability (write set, POLLOUT, "
                       f"EPOLLOUT) while any is pending, send it when the socket has room, and then read again "
                       f"what waited meanwhile (no new readiness will announce it)")
    if failure:
        pytest.fail(failure, pytrace=False)
    assert_echo(data, echoed, "a client that read only after sending")


@pytest.mark.basic
def test_echoes_random_binary_data_exactly_in_random_chunks(server):
    rng = random.Random(1)
    data = rng.randbytes(1 << 20)
    with connect(*server.address) as sock:
        assert_echo(data, echo_stream(sock, data, rng), "1 MiB of random bytes in random chunks")


@pytest.mark.basic
def test_half_close_gets_everything_back_then_eof(server):
    data = random.Random(4).randbytes(512 << 10)
    with connect(*server.address) as sock:
        def send_then_shut():
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        sender = threading.Thread(target=send_then_shut, daemon=True)
        sender.start()
        echoed = recv_until_eof(sock)
        sender.join(timeout=5)
    assert_echo(data, echoed, "after shutdown(SHUT_WR) the server must send everything still owed, then close")


@pytest.mark.basic
def test_echoes_an_8_mib_stream_to_a_concurrent_reader(server):
    data = random.Random(3).randbytes(8 << 20)
    with connect(*server.address, timeout=20) as sock:
        assert_echo(data, echo_stream(sock, data, largest_chunk=1 << 20), "an 8 MiB stream")


@pytest.mark.basic
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_exits_0_within_a_second_even_with_a_client(start_server, lesson, sig):
    server = start_server(lesson, "--quiet")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"hi") == b"hi"
        code, seconds = server.stop(sig)
        assert code == 0 and seconds <= 1.0, \
            f"after {sig.name} the server should exit 0 within 1 s; {server.why_it_did_not_stop(code, seconds)}"
        sock.settimeout(1.0)
        assert recv_until_eof(sock) == b"", "the server's exit should close the client's connection"


@pytest.mark.basic
def test_sighup_stops_the_server_like_sigterm(start_server, lesson):
    server = start_server(lesson, "--quiet")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"hi") == b"hi"
        code, seconds = server.stop(signal.SIGHUP)
    assert code == 0 and seconds <= STOP_TIMEOUT, (
        f"SIGHUP (the terminal that started the server went away) should stop it like SIGTERM, exit 0 "
        f"within {STOP_TIMEOUT} s; {server.why_it_did_not_stop(code, seconds)}")


@pytest.mark.basic
def test_sigusr1_prints_one_status_line_and_the_server_goes_on(start_server, lesson):
    server = start_server(lesson, "--quiet")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"before") == b"before"
        os.kill(server.pid, signal.SIGUSR1)
        if lesson != "01":  # the blocking server ignores it: it has one client and nothing to count
            said = wait_until(lambda: "status:" in server.stderr(), 2.0, server.stderr)
            assert said.count("status:") == 1, (
                f"SIGUSR1 should make the server print one status line on stderr (even with --quiet); "
                f"its stderr was {said!r}")
        assert server.alive(), f"SIGUSR1 killed the server (exit {server.proc.poll()}); it should report and go on"
        assert round_trip(sock, b"after") == b"after", "after SIGUSR1 the server should go on serving"


# --- the command line -------------------------------------------------------------------------

def run_server(config, lesson, *args, timeout=3):
    """Runs the server to its exit; one still running after `timeout` s is killed, returncode None."""
    try:
        return subprocess.run([str(binary_path(config, lesson)), *args], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stderr or b"").decode(errors="replace")
        return subprocess.CompletedProcess(expired.cmd, None, "", output)


@pytest.mark.basic
def test_help_prints_usage_and_exits_0(pytestconfig, lesson):
    result = run_server(pytestconfig, lesson, "--help")
    assert result.returncode == 0, f"--help should exit 0, not {result.returncode}"
    assert "--port" in result.stdout and "--host" in result.stdout, "--help should describe the flags on stdout"


BAD_ARGUMENTS = [
    ["--bogus"], ["extra"], ["--port"], ["--port", "abc"], ["--port", "-1"], ["--port", "70000"],
    ["--port", "65536"], ["--port", ""], ["--port", "80x"], ["--host"], ["--host", "localhostt"],
    ["--host", "300.1.1.1"], ["--host", ""], ["--quiet=yes"], ["--port", "--quiet"],
]


@pytest.mark.basic
@pytest.mark.parametrize("args", BAD_ARGUMENTS, ids=lambda a: " ".join(a) or "empty")
def test_usage_error_exits_2_with_one_line_reason(pytestconfig, lesson, args):
    result = run_server(pytestconfig, lesson, *args)
    assert result.returncode == 2, f"`server {' '.join(args)}` should exit 2 (usage error), not {result.returncode}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, f"a usage error should be one line on stderr, got: {result.stderr!r}"
    assert result.stdout == "", "a usage error must not print a readiness line"


@pytest.mark.basic
def test_port_in_use_exits_1_naming_the_address(pytestconfig, lesson):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_server(pytestconfig, lesson, "--port", str(port))
    assert result.returncode == 1, (
        f"binding a port in use should exit 1 (setup failed), not {result.returncode}" +
        (": the server ran on (is bind()'s result checked? listen() on an unbound socket picks a port)"
         if result.returncode is None else ""))
    assert f"127.0.0.1:{port}" in result.stderr, f"the message should name the address; it was {result.stderr!r}"


@pytest.mark.basic
def test_address_not_on_this_machine_exits_1(pytestconfig, lesson):
    # 192.0.2.1 is TEST-NET-1: never assigned here, so bind() fails with EADDRNOTAVAIL at once.
    result = run_server(pytestconfig, lesson, "--host", "192.0.2.1", "--port", "0")
    assert result.returncode == 1, f"an address not on this machine should exit 1, not {result.returncode}"
    assert "192.0.2.1" in result.stderr, f"the message should name the address; it was {result.stderr!r}"


# --- after the lesson's own tests: rude clients, chatter, leaks, IPv6 -------------------------

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


def test_peer_reset_before_the_server_reads_closes_only_that_connection(server):
    failure = None
    try:
        for index in range(20):
            sock = connect(*server.address)
            if index % 2:
                sock.sendall(b"x" * 1000)  # the others send nothing: the server's first read fails
            rst_close(sock)  # the server's read() meets ECONNRESET (after the bytes, or instead)
        with connect(*server.address) as other:
            echoed = round_trip(other, b"still there?")
    except (AssertionError, OSError) as error:
        failure = f"after clients sent a few bytes and reset their connections, the next client failed ({error})"
    if failure and not server.alive():
        pytest.fail(f"{failure}: {server.how_it_ended()}. read() failing with ECONNRESET ends that connection, "
                    f"never the server", pytrace=False)
    if failure:
        pytest.fail(f"{failure}, though the server still runs: when it closed the connections that were reset, "
                    f"did it close another one instead?", pytrace=False)
    assert echoed == b"still there?"


def test_stops_and_continues_mid_write_lose_no_byte(server):
    """Ctrl-Z, then fg: SIGSTOP and SIGCONT, again and again while the server writes to a client that
    reads slowly. A write() that had written part of its bytes when the stop came returns early with
    that count, and epoll_wait fails with EINTR, though no handler ran."""
    data = random.Random(9).randbytes(4 << 20)
    done = threading.Event()

    def stop_and_continue_until_done():
        while not done.is_set():
            with paused(server.pid):
                pass
            done.wait(0.01)

    with connect(*server.address, timeout=10) as sock:
        sender = threading.Thread(target=lambda: sock.sendall(data), daemon=True)
        stopper = threading.Thread(target=stop_and_continue_until_done, daemon=True)
        sender.start()
        stopper.start()
        try:
            echoed = read_slowly(sock, len(data))
        finally:
            done.set()
            stopper.join(timeout=5)
        sender.join(timeout=5)
    assert len(echoed) == len(data), (
        f"while the server was stopped and continued again and again (SIGSTOP, SIGCONT: Ctrl-Z, fg) as it "
        f"wrote, {len(echoed)} of {len(data)} bytes came back. A write() cut short by a stop returns how much "
        f"it wrote: write the rest. A wait cut short fails with EINTR: wait again")
    assert_echo(data, echoed, "after SIGSTOP and SIGCONT mid-write")
    assert server.alive(), f"after SIGSTOP and SIGCONT {server.how_it_ended()}: EINTR is no reason to stop"


def read_slowly(sock, size, piece=16 << 10):
    """Up to size bytes, a piece at a time with a pause after each, so that the server's writes
    keep finding a little room and block again; stops early if the echo stalls for the timeout."""
    received = bytearray()
    try:
        while len(received) < size:
            chunk = sock.recv(min(piece, size - len(received)))
            if not chunk:
                break
            received += chunk
            time.sleep(0.0005)  # the pace is the point: a slow reader
    except socket.timeout:
        pass
    return bytes(received)


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
    server.settle()  # every connection closed on the server's side too
    assert server.stderr() == "", (
        f"started with --quiet, the server should print no per-connection messages; it printed "
        f"{server.stderr()!r}")


def test_200_connect_close_cycles_leak_no_descriptors(server):
    for index in range(200):
        with connect(*server.address) as sock:
            message = b"cycle %d" % index
            assert round_trip(sock, message) == message
    assert server.settle(), (
        f"after 200 clients connected and left, the server holds {server.fd_count()} descriptors; it held "
        f"{server.baseline_fds} at start ({server.change_since_start()}). Each closed connection must close its fd.")


def test_listens_on_ipv6_loopback_when_asked(start_server, lesson):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    server = start_server(lesson, "--quiet", "--host", "::1")
    with socket.create_connection(("::1", server.port), timeout=5) as sock:
        sock.sendall(b"six")
        assert recv_exactly(sock, 3) == b"six"

