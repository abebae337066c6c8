"""What every multiplexed server (lessons 02 on) adds to the contract: no client can stall
another, memory stays bounded under a client that never reads, running out of descriptors
neither crashes nor spins, and each model holds its number of connections."""

import random
import socket
import threading
import time

import pytest

from clients.crowd import close_all, echo_through_all, open_many
from clients.echo_client import connect, recv_exactly, recv_until_eof, round_trip, send_until_stalled
from clients.server_process import busy, wait_until
from clients.tcp_namespace import NamespaceUnavailable, measure_in_namespace
from clients.tcp_queues import bytes_waiting, server_side_queues
from conftest import binary_path

LESSONS = ["02", "03", "04", "05", "06", "07", "09"]

# Concurrent connections each model is held to (README.md, the contract): select stops at FD_SETSIZE.
CAPACITY = {"02": 1000, "03": 5000}
EPOLL_CAPACITY = 10000
LESSONS.append("10")  # lesson 10, a thread pool on one epoll (a line of its own: others add theirs)
LESSONS.append("11")  # lesson 11, io_uring


def test_idle_connections_cost_no_cpu(server):
    socks = open_many(server.address, 50)
    try:
        assert not echo_through_all(socks), "each of 50 clients should get its echo"
        cpu_per_second = server.cpu_per_second()
        assert cpu_per_second < 0.1, (
            f"with 50 connections idle, everything echoed, the server {busy(cpu_per_second)}; it should "
            f"sleep. Asking for writability (write set, POLLOUT, EPOLLOUT) on a socket with nothing to send makes "
            f"every wait return at once: ask only while output is pending")
    finally:
        close_all(socks)


def in_tcp_namespace(pytestconfig, lesson, **what):
    """tcp_namespace.measure_in_namespace for this lesson's server, or a skip saying why not."""
    try:
        return measure_in_namespace(binary_path(pytestconfig, lesson), **what)
    except NamespaceUnavailable as reason:
        pytest.skip(f"needs a private network namespace for small TCP send buffers: {reason}")


def test_one_message_bigger_than_the_socket_buffers_comes_back_whole(pytestconfig, lesson):
    found = in_tcp_namespace(pytestconfig, lesson, scenario="one-message")
    assert found["echo_exact"], (
        f"through TCP send buffers of 16 KiB, one 64 KiB message came back {found['echoed']} bytes long: the "
        f"socket took part of the echo and the server never sent the rest. Once a turn leaves echo pending, "
        f"the next wait must ask for writability: decide what a connection waits for after serving it, "
        f"not before")
    assert found["exit_code"] == 0, f"the server should exit 0 on SIGTERM, not {found['exit_code']}"


def test_idle_and_flooding_clients_do_not_delay_a_third(server):
    idle = connect(*server.address)
    flooder = connect(*server.address)
    sent = send_until_stalled(flooder, random.Random(1).randbytes(16 << 20))
    with connect(*server.address, timeout=2) as third:
        slowest = 0.0
        for index in range(20):
            start = time.monotonic()
            assert round_trip(third, b"ping %d" % index) == b"ping %d" % index
            slowest = max(slowest, time.monotonic() - start)
    assert slowest < 0.5, (
        f"with one client idle and one that pushed {sent >> 20} MiB without reading, a third client's "
        f"slowest round trip took {slowest:.3f} s; no client should be able to stall another (< 0.5 s)")
    close_all([idle, flooder])


def test_many_clients_connecting_at_once_are_all_accepted(server):
    socks = []
    errors = []

    def connect_some():
        for _ in range(100):
            try:
                socks.append(socket.create_connection(server.address, timeout=5))
            except OSError as error:
                errors.append(error)

    threads = [threading.Thread(target=connect_some) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    try:
        assert not errors, f"connecting failed: {errors[0]}"
        assert not echo_through_all(socks), "every connection of a burst should be accepted and served"
    finally:
        close_all(socks)


def test_burst_of_200_clients_each_sending_256_kib_at_once(server):
    socks = open_many(server.address, 200, timeout=30)
    try:
        problems = echo_through_all(socks, size=256 << 10, timeout=60)
        assert not problems, (
            f"200 clients each sent 256 KiB at once; {len(problems)} did not get every byte back "
            f"(first: {problems[0]}). Each readiness report must lead to a read (edge-triggered: reads until "
            f"EAGAIN, or a turn queued for later) and the listener's to accepts until EAGAIN")
    finally:
        close_all(socks)


def test_client_that_never_reads_gets_backpressure_and_loses_nothing(server, lesson):
    data = random.Random(2).randbytes(64 << 20)
    rss_before = server.rss_kib()
    with connect(*server.address, timeout=10) as sock:
        sent = send_until_stalled(sock, data)
        growth_mib = (server.rss_kib() - rss_before) / 1024
        print(f"lesson {lesson}: took {sent / 2**20:.1f} MiB from a client that did not read, RSS grew {growth_mib:.1f} MiB")
        assert sent < len(data), "the server took all 64 MiB without the client reading: where did it go?"
        assert growth_mib < 16, (
            f"a client pushed {sent >> 20} MiB without reading and the server's memory grew {growth_mib:.1f} MiB; "
            f"it should stop reading from a client whose unsent echo is above a bound (backpressure)")
        rest = threading.Thread(target=sock.sendall, args=(data[sent:],))
        rest.start()
        echoed = recv_exactly(sock, len(data))
        rest.join()
    assert echoed == data, "once the client reads again, every byte must arrive, in order"


def test_fin_while_the_server_holds_echo_of_its_own_gets_all_of_it(server):
    """The client reads nothing until the server's send buffer in the kernel is full and part of the
    echo has to wait in the server's own output buffer; then it half-closes. The server reads that
    FIN while it still owes those bytes: it must sleep until the socket has room (a FIN is readable
    for good, so it must stop asking to read), then send every byte before it closes."""
    rng, sent = random.Random(8), bytearray()
    with connect(*server.address, timeout=5) as sock:
        for _ in range(40):  # 10 MiB at most; the kernel's buffers (4 MiB here) fill before
            piece = rng.randbytes(256 << 10)
            sock.sendall(piece)
            sent += piece
            all_read = lambda: server_side_queues(server.port, sock)[1] == 0  # noqa: E731
            if not wait_until(all_read, 0.3, all_read):  # polled gently: /proc/net/tcp costs CPU
                break  # the server stopped reading: backpressure, its own buffer is full
            # Nothing read here yet, so the echo is in our receive queue, in the server's send
            # queue, or in the server's own output buffer (or, for a moment, on its way between
            # the two queues: so it must stay missing from them for a while).
            def held_by_the_server():
                return len(sent) - bytes_waiting(sock) - server_side_queues(server.port, sock)[0]
            if held_by_the_server() > 0 and wait_until(lambda: False, 0.02, held_by_the_server) > 0:
                break
        sock.shutdown(socket.SHUT_WR)
        cpu = server.cpu_per_second(0.5)  # the client reads nothing meanwhile: nothing can move
        assert cpu < 0.3, (
            f"after the client's FIN, owed echo it cannot take yet, the server {busy(cpu)}. A FIN makes the "
            f"socket readable for good (read() returns 0 again and again): turn read interest off at EOF, or "
            f"every wait returns at once")
        try:
            echoed = recv_until_eof(sock)
        except AssertionError as error:
            pytest.fail(f"after half-closing with echo still owed, the client got no EOF: {error}", pytrace=False)
    assert len(echoed) == len(sent), (
        f"the client sent {len(sent) >> 10} KiB, half-closed, and got {len(echoed) >> 10} KiB back before EOF: "
        f"the server closed when the FIN arrived, though its own output buffer still held echo. On FIN, "
        f"stop reading, send everything still owed, then close (finished(), not peer_done)")
    assert echoed == sent, "every byte came back, but not in order"


def test_memory_stays_bounded_behind_a_steady_slow_reader(pytestconfig, lesson, memory_is_the_servers_own):
    if not memory_is_the_servers_own:
        pytest.skip("memory bounds are the plain build's to check (ASan keeps freed memory on purpose)")
    found = in_tcp_namespace(pytestconfig, lesson, scenario="slow-reader", seconds=2.0)
    print(f"lesson {lesson}: slow reader, {found['echoed_mib']:.0f} MiB echoed, RSS grew {found['growth_mib']:.1f} MiB")
    assert found["echo_exact"], "behind a slow reader the echo came back wrong: bytes lost or reordered"
    assert found["growth_mib"] < 4, (
        f"a client that reads steadily but slower than it sends made the server's memory grow "
        f"{found['growth_mib']:.1f} MiB in 2 s ({found['echoed_mib']:.0f} MiB echoed). Its output never drains "
        f"completely, so a buffer that frees sent bytes only once it is empty grows by every byte echoed: "
        f"discard sent bytes before appending (at most the high-water mark plus one read)")
    assert found["exit_code"] == 0, f"the server should exit 0 on SIGTERM, not {found['exit_code']}"


def test_running_out_of_descriptors_neither_crashes_nor_spins(start_server, lesson):
    server = start_server(lesson, "--quiet", nofile=64)
    clients = open_many(server.address, 150)
    # Give the server a moment to meet EMFILE, then measure its CPU over a whole second:
    # a loop that spins on the still-readable listener burns close to 1 s of CPU per second.
    assert round_trip(clients[0], b"x") == b"x", "the first client, within the limit, should be served"
    cpu_per_second = server.cpu_per_second()
    print(f"lesson {lesson}: out of descriptors with 150 clients, {cpu_per_second:.3f} s of CPU per second")
    assert server.alive(), "the server died when it ran out of file descriptors (EMFILE)"
    assert cpu_per_second < 0.3, (
        f"with 150 clients against a limit of 64 descriptors the server {busy(cpu_per_second)}: it is "
        f"spinning on a listener that stays readable (see the EMFILE part of lesson 02)")
    close_all(clients)
    server.settle()  # with worker threads (09) closes finish concurrently
    with connect(*server.address) as sock:
        assert round_trip(sock, b"back") == b"back", "after the clients left, the server should serve again"


def test_holds_its_capacity_of_concurrent_connections_all_echoing(server, lesson, memory_is_the_servers_own):
    count = CAPACITY.get(lesson, EPOLL_CAPACITY)
    rss_before = server.rss_kib()
    socks = open_many(server.address, count)
    try:
        problems = echo_through_all(socks, timeout=30)
        assert not problems, f"{len(problems)} of {count} concurrent connections failed to echo; first: {problems[0]}"
        per_connection = (server.rss_kib() - rss_before) * 1024 / count
        print(f"lesson {lesson}: {count} connections, {per_connection:.0f} bytes of RSS per idle connection")
        assert per_connection < 2048 or not memory_is_the_servers_own, (
            f"each idle connection costs {per_connection:.0f} bytes of server memory; no buffer should exist "
            f"until a connection has unsent data")
    finally:
        close_all(socks)
