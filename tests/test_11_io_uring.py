"""Lesson 11: the echo server on io_uring. What completions change: the server says once what it
wants (a multishot accept, a multishot recv per connection) and the kernel reports each result;
many requests and results share one system call; received bytes land in provided buffers that the
server must give back; the order of sends on a socket is the server's to keep; and a connection
may be freed only after the last completion that names it.

Where io_uring is blocked (a seccomp filter, as Docker's default profile has, or the sysctl
kernel.io_uring_disabled), every lesson-11 test skips with the reason (tests/conftest.py), except
the first one below, which blocks io_uring itself to check what the server says then."""

import random
import socket
import subprocess
import threading

import pytest

from clients.crowd import close_all, echo_through_all, open_many
from clients.echo_client import (connect, first_difference, recv_exactly, recv_until_eof, round_trip,
                                 send_until_stalled)
from clients.idle import read_paced
from clients.syscall_count import StraceUnavailable, count_syscalls
from clients.server_process import busy, describe_exit, wait_until
from clients.tcp_queues import paused, server_side_unread, unacknowledged_bytes
from conftest import ROOT, binary_path

LESSONS = ["11"]


@pytest.mark.runs_where_unavailable
def test_where_io_uring_is_blocked_the_server_says_so_in_one_line_and_exits_1(pytestconfig, lesson):
    blocker = ROOT / pytestconfig.getoption("--build-dir") / "demo" / "without_io_uring"
    if not blocker.exists():
        pytest.fail(f"{blocker} does not exist: build it with `make {lesson} IMPL=...` (it builds it too)")
    server = binary_path(pytestconfig, lesson)
    try:
        result = subprocess.run([str(blocker), str(server), "--port", "0"], capture_output=True, text=True,
                                timeout=5)
    except subprocess.TimeoutExpired:
        pytest.fail("with io_uring blocked by a seccomp filter (as in a Docker container) the server did not "
                    "exit within 5 s; io_uring_queue_init fails with EPERM there: say so and exit 1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 1 and len(lines) == 1 and "io_uring" in result.stderr, (
        f"with io_uring blocked by a seccomp filter (io_uring_setup fails with EPERM, as in a Docker "
        f"container) the server should print one line naming io_uring and the reason, and exit 1 (setup "
        f"failed); it exited {result.returncode} and printed {result.stderr!r}")
    assert "EPERM" in result.stderr or "not permitted" in result.stderr, (
        f"the line should say why io_uring is unavailable (the error, EPERM here): {result.stderr!r}")
    assert result.stdout == "", f"a server that cannot run must not print its readiness line: {result.stdout!r}"


def test_each_message_comes_back_once_and_eof_ends_the_connection(server):
    rng = random.Random(1)
    with connect(*server.address) as sock:
        for size in [1, 5, 100, 4095, 4096, 4097, 20000, 3]:
            message = rng.randbytes(size)
            echo = round_trip(sock, message)
            assert echo == message, f"a {size}-byte message: {first_difference(message, echo)}"
            sock.settimeout(0.1)
            try:
                extra = sock.recv(1 << 16)
            except socket.timeout:
                extra = b""
            finally:
                sock.settimeout(5)
            assert not extra, (
                f"a {size}-byte message came back, then {len(extra)} more bytes nobody sent: a completion was "
                f"handled twice. After handling CQEs, move the CQ head past them (io_uring_cq_advance, or "
                f"io_uring_cqe_seen for each), or the next turn finds the same ones again")
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(2)
        try:
            rest = recv_until_eof(sock)
        except (AssertionError, OSError):
            pytest.fail("after the client's shutdown(SHUT_WR) the server did not close the connection within "
                        "2 s. Its recv completed with 0 (EOF) and without IORING_CQE_F_MORE: that recv has "
                        "ended. A connection still counted as having a recv in the kernel is never released "
                        "(clear conn.recv_armed for every completion without IORING_CQE_F_MORE)")
        assert rest == b"", f"after the echoes, the server sent {rest!r} before closing"


def test_buffers_go_back_to_the_ring_after_every_message(start_server, lesson):
    server = start_server(lesson, "--quiet", "--buffers", "4")  # a ring of 4 provided buffers
    with connect(*server.address, timeout=2) as sock:
        for index in range(100):
            message = b"message %d " % index * 10
            try:
                echo = round_trip(sock, message)
            except (AssertionError, OSError) as error:
                pytest.fail(
                    f"with 4 provided buffers the echo stopped at message {index} ({error}): each recv "
                    f"completion takes a buffer, so the ring runs dry unless every buffer goes back once its "
                    f"bytes are copied out: io_uring_buf_ring_add, then io_uring_buf_ring_advance, which "
                    f"publishes the new tail to the kernel")
            assert echo == message, f"message {index}: {first_difference(message, echo)}"


def test_a_recv_that_found_the_ring_empty_is_armed_again(start_server, lesson):
    server = start_server(lesson, "--quiet", "--buffers", "2")  # a ring of 2 provided buffers
    socks = open_many(server.address, 50)
    advice = ("A multishot recv that finds no buffer ends with -ENOBUFS and no IORING_CQE_F_MORE: that is no "
              "error of the client's. Arm a new recv once buffers are back")
    try:
        problems = echo_through_all(socks, size=100)
        assert not problems, f"50 clients, 2 buffers: {len(problems)} got no echo ({problems[0]}). {advice}"
        # Data for all 50 while the server is stopped: when it wakes, 50 recvs find 2 buffers.
        with paused(server.pid):
            for index, sock in enumerate(socks):
                sock.sendall(b"%04d" % index * 250)
            wait_until(lambda: not any(map(unacknowledged_bytes, socks)), 2.0)
        for index, sock in enumerate(socks):
            try:
                echo = recv_exactly(sock, 1000)
            except (AssertionError, OSError) as error:
                pytest.fail(f"50 clients sent 1000 bytes each while the server was stopped; with 2 provided "
                            f"buffers, client {index} got no echo ({error}). {advice}")
            expected = b"%04d" % index * 250
            assert echo == expected, f"client {index}: {first_difference(expected, echo)}"
    finally:
        close_all(socks)


def test_idle_connections_hold_no_receive_buffer(start_server, lesson):
    # 8 buffers, 100 connections served one after another: if an idle connection kept a buffer,
    # the ninth would find none left.
    server = start_server(lesson, "--quiet", "--buffers", "8")
    socks = open_many(server.address, 100)
    try:
        for round_number in (1, 2):
            for index, sock in enumerate(socks):
                message = b"round %d, connection %d" % (round_number, index)
                try:
                    echo = round_trip(sock, message)
                except (AssertionError, OSError) as error:
                    pytest.fail(
                        f"with 8 provided buffers shared by 100 connections, connection {index} got no echo in "
                        f"round {round_number} ({error}), while the others sat idle: an idle connection must "
                        f"hold no buffer. Copy a completion's bytes into the connection's Outbox and give the "
                        f"buffer back at once")
                assert echo == message, f"connection {index}: {first_difference(message, echo)}"
    finally:
        close_all(socks)


def test_an_idle_connection_costs_under_1_kib_of_server_memory(server, memory_is_the_servers_own):
    if not memory_is_the_servers_own:
        pytest.skip("memory bounds are the plain build's to check (ASan keeps freed memory on purpose)")
    count = 3000
    rss_before = server.rss_kib()
    socks = open_many(server.address, count)
    try:
        assert not echo_through_all(socks, timeout=20), "every connection should get its echo"
        per_connection = (server.rss_kib() - rss_before) * 1024 / count
        print(f"{count} idle connections: {per_connection:.0f} bytes of server RSS each")
        assert per_connection < 1024, (
            f"each idle connection costs {per_connection:.0f} bytes of server memory; with buffers provided to "
            f"the kernel from one shared ring, and the Outbox freed once it drains, it should cost well under "
            f"1 KiB (its Conn and a list node)")
    finally:
        close_all(socks)


def loadgen_workload(pytestconfig, connections, messages, report):
    path = ROOT / pytestconfig.getoption("--build-dir") / "clients" / "loadgen"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it with `make loadgen` (make 11 builds it too)")

    def workload(address):
        result = subprocess.run([str(path), "--port", str(address[1]), "--connections", str(connections),
                                 "--warmup", "0", "--duration", "60", "--messages", str(messages),
                                 "--timeout", "5"], capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, f"loadgen failed: {result.stderr.strip()}"
        report["messages"] = int(result.stdout.split('"total_messages": ')[1].split(",")[0])
    return workload


def test_100_connections_cost_under_half_a_syscall_per_message(pytestconfig, lesson):
    report = {}
    try:
        counts, code = count_syscalls(binary_path(pytestconfig, lesson),
                                      loadgen_workload(pytestconfig, 100, 20000, report))
    except StraceUnavailable as reason:
        pytest.skip(str(reason))
    assert code == 0, f"the server under strace should exit 0 after SIGTERM, not {describe_exit(code)}"
    total, messages = sum(counts.values()), report["messages"]
    top = ", ".join(f"{name} {calls}" for name, calls in sorted(counts.items(), key=lambda i: -i[1])[:4])
    print(f"100 connections, {messages} messages: {total} syscalls ({total / messages:.3f} per message): {top}")
    assert total / messages <= 0.5, (
        f"100 connections in ping-pong, {messages} messages echoed: the server made {total} system calls, "
        f"{total / messages:.2f} per message ({top}). Every recv and send is a request in the ring; one "
        f"io_uring_enter should submit all those prepared during a batch of completions and wait for the "
        f"next batch. Is something submitting each request on its own (io_uring_submit after each prep)?")


def streams_at_once(address, datas, rcvbuf=None, pace=None):
    """Each data through its own connection at once, each read back by its own thread (at `pace`
    bytes per second if given, through a receive buffer of rcvbuf bytes if given); the echoes."""
    echoes = [b""] * len(datas)
    errors = []

    def one(index, data):
        try:
            with socket.socket() as sock:
                if rcvbuf:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect()
                sock.settimeout(10)
                sock.connect(address)
                sender = threading.Thread(target=send_then_shut, args=(index, sock, data), daemon=True)
                sender.start()
                echoes[index] = read_paced(sock, pace) if pace else recv_all(sock)
                sender.join(timeout=10)
        except OSError as error:
            errors.append(f"client {index}: {error}")

    def send_then_shut(index, sock, data):
        try:
            sock.sendall(data)
            sock.shutdown(socket.SHUT_WR)
        except OSError as error:
            errors.append(f"client {index}, sending: {error}")

    threads = [threading.Thread(target=one, args=item) for item in enumerate(datas)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return echoes, errors


def recv_all(sock):
    chunks = []
    while chunk := sock.recv(1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def test_no_client_ever_receives_another_clients_bytes(start_server, lesson):
    server = start_server(lesson, "--quiet", "--buffers", "16")
    # Connections that send, then close: each ends its recv with an EOF completion, which takes no
    # buffer. A server that "gives back" a buffer there puts one in the ring twice.
    for index in range(40):
        with connect(*server.address) as sock:
            assert round_trip(sock, b"short-lived %d" % index) == b"short-lived %d" % index
            sock.shutdown(socket.SHUT_WR)
            sock.recv(16)
    datas = [random.Random(100 + n).randbytes(1 << 20) for n in range(8)]
    echoes, errors = streams_at_once(server.address, datas)
    assert not errors, f"clients streaming at once failed: {errors[0]}"
    for number, (data, echo) in enumerate(zip(datas, echoes)):
        assert echo == data, (
            f"8 clients each streamed 1 MiB of its own random bytes at once; client {number}'s echo differs: "
            f"{first_difference(data, echo, datas)}. A provided buffer was in the ring twice and two recvs "
            f"filled it at once: give a buffer back only for a completion with IORING_CQE_F_BUFFER, and only "
            f"once (an EOF or error completion has taken none, and its id bits read 0)")


def test_echo_keeps_its_order_and_every_byte_behind_a_slow_reader(start_server, lesson):
    server = start_server(lesson, "--quiet")
    # Small client receive buffers and reading slower than sending: once the server's send buffer
    # is full (4 MiB here), its sends wait for room and complete short, while new bytes arrive.
    datas = [random.Random(200 + n).randbytes(6 << 20) for n in range(3)]
    echoes, errors = streams_at_once(server.address, datas, rcvbuf=64 << 10, pace=12 << 20)
    assert not errors, f"3 slow readers each sending 6 MiB: {errors[0]}"
    for number, (data, echo) in enumerate(zip(datas, echoes)):
        assert echo == data, (
            f"3 clients each sent 6 MiB and read its echo slowly; client {number}'s echo differs: "
            f"{first_difference(data, echo, datas)}. Keep one send in flight per socket (two can complete out "
            f"of order), and when a send completes short (res < length), send the rest before "
            f"anything queued behind it")


def test_backpressure_cancels_the_recv_and_leaves_the_bytes_in_the_kernel(server,
                                                                          memory_is_the_servers_own):
    data = random.Random(3).randbytes(48 << 20)
    rss_before = server.rss_kib()
    with connect(*server.address, timeout=10) as sock:
        sent = send_until_stalled(sock, data)
        growth_mib = (server.rss_kib() - rss_before) / 1024
        unread = server_side_unread(server.port, sock)
        print(f"took {sent / 2**20:.1f} MiB from a client that did not read; {unread >> 10} KiB wait unread "
              f"in the server's receive queue; RSS grew {growth_mib:.1f} MiB")
        advice = ("a multishot recv goes on receiving until it ends or is cancelled: once the echo owed "
                  "reaches the high-water mark (Outbox::over_high_water), cancel it (io_uring_prep_cancel64 "
                  "with its user_data), and arm a new one when the echo has drained below the mark")
        assert sent < len(data) and unread > 0, (
            f"a client sent {sent >> 20} of {len(data) >> 20} MiB without reading, and the server's receive "
            f"queue holds {unread} bytes: the server kept receiving. {advice}")
        if memory_is_the_servers_own:
            assert growth_mib < 8, (f"the server's memory grew {growth_mib:.1f} MiB behind a client that "
                                    f"does not read: {advice}")
        rest = threading.Thread(target=sock.sendall, args=(data[sent:],))
        rest.start()
        echo = recv_exactly(sock, len(data))
        rest.join()
    assert echo == data, f"once the client reads again, every byte must come back: {first_difference(data, echo)}"


def test_out_of_descriptors_the_accept_is_armed_again_without_spinning(start_server, lesson):
    server = start_server(lesson, "--quiet", nofile=32)
    clients = open_many(server.address, 60)  # the kernel completes each handshake; the server cannot take all
    try:
        assert round_trip(clients[0], b"first") == b"first", "the first client, within the limit, must be served"
        cpu = server.cpu_per_second()
        assert cpu < 0.3, (
            f"out of descriptors with 60 clients against a limit of 32, the server {busy(cpu)}. A multishot "
            f"accept that fails with -EMFILE ends, and one armed again at once fails again at once, forever: turn the queued clients away (the Acceptor's spare descriptor), then wait for "
            f"the listener to be readable (a poll request) before arming the accept again")
    finally:
        close_all(clients)
    try:
        with connect(*server.address, timeout=2) as sock:
            echo = round_trip(sock, b"back")
    except (AssertionError, OSError) as error:
        pytest.fail(f"after the clients left, a new client got no echo ({error}): the multishot accept ended "
                    f"with -EMFILE (a completion without IORING_CQE_F_MORE) and was never armed again")
    assert echo == b"back"


def test_close_with_a_recv_armed_sends_no_fin_until_the_recv_is_cancelled(pytestconfig, lesson):
    """The kernel alone, no server: why close_when_released cancels a connection's requests and
    waits for their last completions before it closes the socket."""
    demo = ROOT / pytestconfig.getoption("--build-dir") / "demo" / "close_with_recv_armed"
    if not demo.exists():
        pytest.fail(f"{demo} does not exist: build it with `make {lesson} IMPL=...` (it builds it too)")
    result = subprocess.run([str(demo)], capture_output=True, text=True, timeout=10)
    assert result.returncode == 0, f"{demo.name} failed: {result.stderr.strip()}"
    armed, cancelled = result.stdout.splitlines()
    print(result.stdout.strip())
    assert "no FIN" in armed, (
        f"{armed}. Expected no FIN: an armed io_uring request holds its own reference to the socket, so "
        f"close() drops only the descriptor (has this kernel changed?)")
    assert "saw its FIN" in cancelled, f"{cancelled}. Once no request holds the socket, close() sends a FIN"
