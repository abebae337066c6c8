"""Lesson 03: poll() has no FD_SETSIZE, but every call still hands the kernel the whole pollfd
array, however few connections are active: the work per call grows with the connections held."""

import re
import select
import shutil
import signal
import socket
import struct
import subprocess

import pytest

from clients.crowd import close_all, echo_through_all, open_many
from clients.echo_client import connect, round_trip

LESSONS = ["03"]

FD_SETSIZE = 1024
STRACE_ATTACH_TIMEOUT = 5.0


def assert_holds_all(server, clients):
    expected = server.baseline_fds + clients
    held = server.wait_for_fds(expected)
    assert held == expected, (
        f"with {clients} clients connected the server holds {held} descriptors; it should have "
        f"accepted and kept them all, {expected} in all (poll has no FD_SETSIZE limit)")


def test_clients_past_fd_setsize_are_served(server):
    socks = open_many(server.address, 1100)
    try:
        assert_holds_all(server, 1100)
        problems = echo_through_all(socks, timeout=30)
        assert not problems, (
            f"{len(problems)} of 1100 connections failed to echo (first: {problems[0]}); those with fds "
            f">= {FD_SETSIZE} are exactly what select() could not watch and poll() can")
    finally:
        close_all(socks)


def reset_by_peer(events):
    """The revents poll() gives, for `events`, on our end of a connection whose peer sent an RST."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        peer = socket.create_connection(listener.getsockname(), timeout=5)
        ours, _ = listener.accept()
    with ours:
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()  # linger 0: an RST instead of a FIN
        poller = select.poll()
        poller.register(ours, events)
        ready = poller.poll(5000)
        return ready[0][1] if ready else 0


@pytest.mark.parametrize("asked", ["POLLIN", "POLLOUT"])
def test_a_reset_connection_reports_the_event_asked_for_so_errors_need_no_case(lesson, asked):
    revents = reset_by_peer(getattr(select, asked))
    assert revents & getattr(select, asked), (
        f"after an RST, a socket polled for {asked} should report {asked} (with POLLERR|POLLHUP), so "
        f"the read or write the server does next meets the error; it reported {revents:#x}")


def test_a_reset_connection_asked_for_nothing_still_reports_pollerr_and_pollhup(lesson):
    revents = reset_by_peer(0)
    assert revents & select.POLLHUP and revents & select.POLLERR, (
        f"POLLERR|POLLHUP come even unasked (events = 0), which is why a connection that wants nothing "
        f"must leave the array rather than stay with events = 0; it reported {revents:#x}")


def parse_poll_calls(trace):
    """(nfds, ready) for every completed poll or ppoll call in strace's output."""
    calls = []
    for line in trace.splitlines():
        match = re.match(r"p?poll\(\[.*\], (\d+), .*\) = (\d+)", line)
        if match:
            calls.append((int(match.group(1)), int(match.group(2))))
    return calls


def test_every_poll_call_passes_the_whole_array_even_for_one_active_client(server, tmp_path):
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (`make deps` installs it)")
    close_all(open_many(server.address, 100))  # gone again: their entries must leave the array too
    server.settle()
    idle = open_many(server.address, 500)
    active = connect(*server.address)
    entries = 2 + len(idle) + 1  # the listener and the signalfd, the idle clients, the active one
    try:
        assert_holds_all(server, len(idle) + 1)
        trace_file = tmp_path / "poll.trace"
        tracer = subprocess.Popen(["strace", "-e", "trace=poll,ppoll", "-o", str(trace_file), "-p", str(server.pid)],
                                  stderr=subprocess.PIPE, text=True)
        try:
            # strace says "Process N attached" once it traces; only then are the round trips seen.
            attached, _, _ = select.select([tracer.stderr], [], [], STRACE_ATTACH_TIMEOUT)
            line = tracer.stderr.readline() if attached else ""
            if "attached" not in line:
                pytest.skip(f"strace could not attach to the server (ptrace not allowed here?): {line!r}")
            for index in range(20):
                assert round_trip(active, b"ping %d" % index) == b"ping %d" % index
        finally:
            tracer.send_signal(signal.SIGINT)  # strace detaches and the server runs on
            tracer.wait(timeout=5)
        calls = parse_poll_calls(trace_file.read_text())
        # About one call per round trip; the call in progress when strace attached may not show.
        assert len(calls) >= 10, f"strace saw only {len(calls)} complete poll calls for 20 round trips: {calls}"
        short = [nfds for nfds, _ in calls if nfds != entries]
        assert not short, (
            f"every poll call should pass all {entries} entries (the listener, the signalfd and every connection, "
            f"idle or not) and no more: 100 clients came and went before, and their entries should be gone "
            f"(filled by the last entry, not left as holes); some calls passed {short[:5]}")
        assert max(ready for _, ready in calls) == 1, (
            f"only the active client was ever ready, yet calls reported {max(r for _, r in calls)} ready: "
            f"does every connection ask for POLLOUT, with nothing to send? (an idle socket is always writable)")
    finally:
        close_all(idle + [active])
