"""Lesson 04: level-triggered epoll. Sockets are registered once and the kernel keeps the list, so
a ping-pong message costs one read and one send and no epoll_ctl; EPOLLOUT is armed only while
output is pending, because level triggering reports a socket with room on every wait."""

import random

import pytest

from clients.echo_client import connect, recv_exactly, round_trip, send_until_stalled
from clients.server_process import busy, describe_exit
from clients.syscall_count import StraceUnavailable, count_syscalls, ping_pong, reads_per_ping_pong
from conftest import binary_path

LESSONS = ["04"]

ROUND_TRIPS = 1000
# Set-up and tear-down calls around the round trips: the loader's reads, the EOF read, the
# listener's and the connection's EPOLL_CTL_ADD, the connection's EPOLL_CTL_DEL.
SLACK = 10


def test_epollout_is_disarmed_once_backed_up_output_drains(server):
    data = random.Random(7).randbytes(16 << 20)
    with connect(*server.address, timeout=10) as sock:
        # Sending without reading backs the server's output up: it must arm EPOLLOUT (and drop
        # EPOLLIN, backpressure). Reading it all back drains that output.
        sent = send_until_stalled(sock, data)
        assert sent < len(data), (
            "the server took 16 MiB without the client reading: no backpressure? While echo is backed "
            "up, stop reading (drop EPOLLIN) and ask for writability (EPOLLOUT) instead, in the kernel's "
            "interest list (EPOLL_CTL_MOD), not only in the connection's own record of what it watches")
        assert recv_exactly(sock, sent) == data[:sent], "every byte sent should come back, in order"
        cpu_per_second = server.cpu_per_second()
        assert cpu_per_second < 0.1, (
            f"idle after its output drained, the server {busy(cpu_per_second)}. "
            f"Its socket has room again, so a level-triggered EPOLLOUT still armed is reported by every "
            f"epoll_wait: a busy loop. Disarm EPOLLOUT (EPOLL_CTL_MOD) once the output buffer is empty")
        assert round_trip(sock, b"still here") == b"still here", \
            "after the backlog drained the server should read from the client again (EPOLLIN back on)"


def test_a_ping_pong_message_costs_one_read(server):
    reads = reads_per_ping_pong(server, ROUND_TRIPS)
    assert reads <= ROUND_TRIPS + SLACK, (
        f"{ROUND_TRIPS} round trips cost the server {reads} read() calls; one per message is enough: "
        f"level-triggered, a socket with more to read is simply reported again")


def test_a_ping_pong_message_costs_one_send_and_no_epoll_ctl(pytestconfig, lesson):
    try:
        counts, code = count_syscalls(binary_path(pytestconfig, lesson), ping_pong(ROUND_TRIPS))
    except StraceUnavailable as reason:
        pytest.skip(str(reason))
    assert code == 0, f"the server under strace should exit 0 after SIGTERM, not {describe_exit(code)}"
    sends = counts.get("sendto", 0) + counts.get("write", 0)
    assert sends <= ROUND_TRIPS + SLACK, (
        f"{ROUND_TRIPS} round trips cost {sends} send/write calls; one per message is the floor: write "
        f"the echo straight back, and buffer only what the socket refuses")
    assert counts.get("epoll_ctl", 0) <= 4, (
        f"{ROUND_TRIPS} round trips on one connection cost {counts.get('epoll_ctl', 0)} epoll_ctl calls; "
        f"the kernel keeps the interest list, so ADD once (listener, signalfd, connection) and DEL once suffice, "
        f"and EPOLL_CTL_MOD only when what the connection wants changes, which ping-pong never does")
