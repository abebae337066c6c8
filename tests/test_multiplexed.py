"""What every multiplexed server (lessons 02 on) adds to the contract: no client can stall
another, memory stays bounded under a client that never reads, running out of descriptors
neither crashes nor spins, and each model holds its number of connections."""

import random
import socket
import threading
import time

from clients.crowd import close_all, echo_through_all, open_many
from clients.echo_client import connect, recv_exactly, round_trip, send_until_stalled

LESSONS = ["02", "03", "04", "05", "06", "07"]

# Concurrent connections each model is held to (DESIGN.md): select stops at FD_SETSIZE.
CAPACITY = {"02": 1000, "03": 5000}
EPOLL_CAPACITY = 10000


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
        f"with 150 clients against a limit of 64 descriptors the server used {cpu_per_second:.2f} s of CPU "
        f"per second: it is spinning on a listener that stays readable (see the EMFILE part of lesson 02)")
    close_all(clients)
    with connect(*server.address) as sock:
        assert round_trip(sock, b"back") == b"back", "after the clients left, the server should serve again"


def test_idle_connections_cost_no_cpu(server):
    socks = open_many(server.address, 50)
    try:
        assert not echo_through_all(socks), "each of 50 clients should get its echo"
        cpu_per_second = server.cpu_per_second()
        assert cpu_per_second < 0.1, (
            f"with 50 connections idle, everything echoed, the server used {cpu_per_second:.2f} s of CPU per "
            f"second; it should sleep. Asking for writability (write set, POLLOUT, EPOLLOUT) on a socket "
            f"with nothing to send makes every wait return at once: ask only while output is pending")
    finally:
        close_all(socks)


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


def test_burst_of_200_clients_each_sending_256_kib_at_once(server):
    socks = open_many(server.address, 200, timeout=30)
    try:
        problems = echo_through_all(socks, size=256 << 10, timeout=60)
        assert not problems, (
            f"200 clients each sent 256 KiB at once; {len(problems)} did not get every byte back "
            f"(first: {problems[0]}). An edge-triggered server must read and accept until EAGAIN.")
    finally:
        close_all(socks)


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
