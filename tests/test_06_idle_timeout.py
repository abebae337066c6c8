"""Lesson 06: idle connections are closed on time, active ones never, whatever their number, and a
server with nothing due sleeps instead of polling. Short timeouts keep the file to a few seconds.

Activity means bytes moving in either direction: a byte received, or echo the client accepted.
So a client that keeps reading what it is owed is not cut short while it drains, and one that
neither sends nor reads is closed even if the server still owes it data."""

import os
import random
import statistics
import subprocess
import time

import pytest

from clients.crowd import close_all, open_many
from clients.echo_client import connect, round_trip, send_until_stalled
from clients.idle import IdleCrowd, wait_for_close
from clients.tcp_namespace import NamespaceUnavailable, measure_in_namespace
from conftest import binary_path

LESSONS = ["06"]

TIMEOUT = 0.5


def tolerance(timeout):
    """How late a close may come (the README's contract): 0.2 s or 20% of the timeout, whichever is more."""
    return max(0.2, 0.2 * timeout)


def start_with_timeout(start_server, lesson, timeout):
    return start_server(lesson, "--quiet", "--idle-timeout", str(timeout))


def assert_closed_on_time(closed_at, quiet_since, timeout, what):
    assert closed_at is not None, (
        f"{what}: the server never closed it; it should close a connection idle for --idle-timeout "
        f"{timeout} s within {tolerance(timeout):.1f} s of that deadline")
    idle = closed_at - quiet_since
    assert idle >= timeout, (
        f"{what}: closed after {idle:.3f} s of silence, before its {timeout} s timeout: an idle "
        f"connection must get the whole timeout (is the deadline computed from the last activity?)")
    assert idle <= timeout + tolerance(timeout), (
        f"{what}: closed after {idle:.3f} s of silence; with --idle-timeout {timeout} it should close "
        f"within {tolerance(timeout):.1f} s of the deadline (does epoll_wait sleep until the next deadline?)")


def test_idle_client_is_closed_after_its_timeout_counted_from_its_last_byte(start_server, lesson):
    server = start_with_timeout(start_server, lesson, TIMEOUT)
    with connect(*server.address) as sock:
        try:
            assert round_trip(sock, b"first") == b"first"
        except (AssertionError, OSError) as error:
            pytest.fail(f"a new client's first message got no echo ({error}): with --idle-timeout {TIMEOUT} the "
                        f"server closed it at once. Is the timeout kept in whole seconds (0.5 becomes 0)? Is a new "
                        f"connection's deadline now + timeout?", pytrace=False)
        # Half a timeout of silence, then one more byte: the deadline must move with it.
        assert wait_for_close(sock, TIMEOUT / 2) is None, (
            f"closed within half of its --idle-timeout {TIMEOUT}: is the deadline now + timeout? Is the timeout "
            f"kept in whole seconds (0.5 becomes 0)?")
        last_send = time.monotonic()
        assert round_trip(sock, b"last") == b"last"
        closed_at = wait_for_close(sock, TIMEOUT + tolerance(TIMEOUT) + 2)
    assert_closed_on_time(closed_at, last_send, TIMEOUT, "a client silent after its last echo")


def test_client_that_never_sends_is_closed_after_its_timeout(start_server, lesson):
    server = start_with_timeout(start_server, lesson, TIMEOUT)
    quiet_since = time.monotonic()
    with connect(*server.address) as sock:
        closed_at = wait_for_close(sock, TIMEOUT + tolerance(TIMEOUT) + 2)
    assert_closed_on_time(closed_at, quiet_since, TIMEOUT, "a client that connected and never sent")


def test_client_sending_a_byte_every_third_of_the_timeout_is_never_closed(start_server, lesson):
    server = start_with_timeout(start_server, lesson, TIMEOUT)
    with connect(*server.address) as active, connect(*server.address) as idle:
        quiet_since = time.monotonic()
        idle_closed_at = None
        while time.monotonic() - quiet_since < 4 * TIMEOUT:
            # Pace the active client by waiting a third of the timeout for the idle one to close;
            # once it has, the active client itself is what must stay open for that long.
            if idle_closed_at is None:
                idle_closed_at = wait_for_close(idle, TIMEOUT / 3)
            else:
                assert wait_for_close(active, TIMEOUT / 3) is None, (
                    f"the active client was closed {time.monotonic() - quiet_since:.2f} s in, though its "
                    f"last byte was under {TIMEOUT / 3:.2f} s ago")
            try:
                echo = round_trip(active, b"!")
            except (AssertionError, OSError) as error:
                pytest.fail(f"a client sending one byte every {TIMEOUT / 3:.2f} s was cut off "
                            f"{time.monotonic() - quiet_since:.2f} s in ({error}); any byte received must "
                            f"push its deadline back by the whole --idle-timeout {TIMEOUT}")
            assert echo == b"!"
    assert_closed_on_time(idle_closed_at, quiet_since, TIMEOUT, "the idle client beside the active one")


def test_2000_idle_clients_are_all_closed_near_their_deadlines(start_server, lesson):
    timeout, count = 2.0, 2000
    server = start_with_timeout(start_server, lesson, timeout)
    with IdleCrowd(server.address, count) as crowd:
        crowd.open()
        crowd.wait(until=crowd.last_quiet() + timeout + tolerance(timeout) + 2)
        delays = crowd.close_delays(timeout)
        still_open = crowd.still_open()
    report = (f"earliest {delays[0] * 1000:+.1f} ms, latest {delays[-1] * 1000:+.1f} ms relative to the "
              f"deadline" if delays else "none closed")
    print(f"{count} idle connections, --idle-timeout {timeout}: {report}")
    assert not still_open, (
        f"{still_open} of {count} idle connections were still open 2 s past the tolerance ({report}): "
        f"every idle connection must be closed, however many there are")
    assert delays[0] >= 0, (
        f"a connection was closed {-delays[0] * 1000:.1f} ms before its deadline ({report}): the "
        f"server must never close a connection that has not been idle for the whole timeout")
    assert delays[-1] <= tolerance(timeout), (
        f"the latest close came {delays[-1] * 1000:.0f} ms after its deadline ({report}); it should be "
        f"within {tolerance(timeout) * 1000:.0f} ms: a server that checks a slice of its connections "
        f"per wakeup falls further behind the more connections it has")


def test_a_client_gone_before_its_deadline_leaves_nothing_behind_to_expire(start_server, lesson):
    server = start_with_timeout(start_server, lesson, TIMEOUT)
    for index in range(20):
        with connect(*server.address) as sock:
            assert round_trip(sock, b"bye %d" % index) == b"bye %d" % index
    assert server.settle(), f"the server kept the connections ({server.change_since_start()})"
    time.sleep(TIMEOUT + tolerance(TIMEOUT))  # the measurement: their old deadlines pass meanwhile
    assert server.alive(), (
        f"20 clients left before their idle deadlines; when the deadlines passed, {server.how_it_ended()}. "
        f"Closing a connection must cancel its timer, or the timer later closes a connection that is gone")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"still here") == b"still here", "after the old deadlines the server should serve on"


def test_finding_the_due_connections_does_not_scan_every_connection(start_server, lesson):
    """Each wakeup looks at the earliest deadline only. A server that walks every connection to
    find the due ones pays for all of them on every message of every client.

    Two servers side by side, one beside 10000 idle connections and one alone, take turns at
    batches of round trips, both on one CPU: whatever else runs there then slows both alike. On
    different CPUs, one of them could sit beside a busy neighbour for the whole measurement, its
    caches cold at every wakeup, at 3 to 4 times the cost. What counts is the extra cost beside
    the crowd (the median over the pairs of batches) against a round trip alone at its cheapest."""
    crowded, alone = (start_with_timeout(start_server, lesson, 60) for _ in range(2))
    cpu = max(os.sched_getaffinity(crowded.pid))
    for server in (crowded, alone):
        os.sched_setaffinity(server.pid, {cpu})
    crowd = open_many(crowded.address, 10000)
    try:
        assert crowded.wait_for_fds(crowded.baseline_fds + 10000) == crowded.baseline_fds + 10000
        with connect(*crowded.address) as beside_crowd, connect(*alone.address) as by_itself:
            pairs = [(cpu_per_round_trip(crowded, beside_crowd), cpu_per_round_trip(alone, by_itself))
                     for _ in range(16)]
    finally:
        close_all(crowd)
    pairs = pairs[1:]  # the first pair warms up: the first round trips after a change cost several times the rest
    extra = statistics.median(crowded_cost - alone_cost for crowded_cost, alone_cost in pairs)
    cheapest = min(alone_cost for _, alone_cost in pairs)
    print(f"server CPU per round trip: {cheapest * 1e6:.1f} us alone at the cheapest, {extra * 1e6:+.1f} us "
          f"beside 10000 idle connections")
    assert extra < cheapest / 2, (
        f"beside 10000 idle connections a round trip cost the server {extra * 1e6:.1f} us more CPU than alone "
        f"(the median of {len(pairs)} pairs of batches), where a round trip alone costs {cheapest * 1e6:.1f} us: "
        f"each wakeup seems to look at every connection. Keep the deadlines in order and look only at the "
        f"front (IdleTimers::first_due)")


def cpu_per_round_trip(server, sock, count=200):
    before = server.schedstat_seconds(fields=(0,))  # time on a CPU, in nanoseconds
    for index in range(count):
        assert round_trip(sock, b"%06d" % index) == b"%06d" % index
    return (server.schedstat_seconds(fields=(0,)) - before) / count


def test_1000_idle_connections_with_a_long_timeout_cost_no_cpu_and_no_wakeups(start_server, lesson):
    server = start_with_timeout(start_server, lesson, 60)
    socks = open_many(server.address, 1000)
    try:
        settled = server.wait_for_fds(server.baseline_fds + 1000)
        accepted = settled - server.baseline_fds
        assert accepted == 1000, f"the server accepted {accepted} of 1000 connections"
        assert round_trip(socks[-1], b"x") == b"x"  # the last event; from here on nothing happens
        cpu_before, wakeups_before = server.cpu_seconds(), server.status_field("voluntary_ctxt_switches")
        start = time.monotonic()
        time.sleep(3.0)  # the measurement itself: a server polling every second wakes 2 or 3 times
        seconds = time.monotonic() - start
        cpu = server.cpu_seconds() - cpu_before
        wakeups = server.status_field("voluntary_ctxt_switches") - wakeups_before
    finally:
        close_all(socks)
    print(f"1000 idle connections, --idle-timeout 60: {wakeups} wakeups, "
          f"{cpu * 1000:.0f} ms of CPU in {seconds:.1f} s")
    assert wakeups <= 1, (
        f"with 1000 idle connections and the next deadline 60 s away, the server woke {wakeups} times in "
        f"{seconds:.1f} s; it should sleep in epoll_wait until the next deadline, not poll on an interval")
    assert cpu < 0.05, (
        f"the server used {cpu:.2f} s of CPU in {seconds:.1f} s with nothing to do: it should be asleep")


def test_half_closed_client_still_draining_its_echo_is_not_cut_short(pytestconfig, lesson):
    """The client sends 640 KiB, half-closes, and from then on only reads, at 256 KiB/s, through
    send buffers of 16 KiB (a private network namespace): for the last second or so the server
    reads nothing and only writes what it owes, as fast as the client takes it. Bytes still
    move, so the connection is not idle."""
    try:
        found = measure_in_namespace(binary_path(pytestconfig, lesson), "drain-after-fin",
                                     ["--idle-timeout", str(TIMEOUT)], pace=256 << 10)
    except NamespaceUnavailable as reason:
        pytest.skip(f"needs a private network namespace for small TCP send buffers: {reason}")
    assert found["echo_exact"], (
        f"a half-closed client reading its echo at 256 KiB/s got {found['echoed']} of {found['sent']} bytes before "
        f"the server closed, {found['seconds']:.1f} s in: a connection whose bytes still move is not idle. Echo "
        f"the client takes is activity too, not only bytes received")


def test_client_that_neither_sends_nor_reads_is_closed_though_still_owed_data(start_server, lesson):
    server = start_with_timeout(start_server, lesson, TIMEOUT)
    with connect(*server.address) as sock:
        send_until_stalled(sock, random.Random(7).randbytes(16 << 20), stall=0.1)
        stalled = time.monotonic()
        count = server.wait_for_fds(server.baseline_fds, timeout=TIMEOUT + tolerance(TIMEOUT) + 2)
        seconds = time.monotonic() - stalled
    assert count == server.baseline_fds, (
        f"a client that stopped reading and sending was still connected {seconds:.1f} s later: with no "
        f"bytes moving either way, it is idle, however much echo the server still holds for it")
    assert seconds <= TIMEOUT + tolerance(TIMEOUT), (
        f"a stalled client was closed {seconds:.2f} s after it stalled; --idle-timeout is {TIMEOUT} s")


@pytest.mark.parametrize("value", ["0", "-1", "soon", "1e9"])
def test_bad_idle_timeout_is_a_usage_error(pytestconfig, lesson, value):
    result = subprocess.run([str(binary_path(pytestconfig, lesson)), "--port", "0", "--idle-timeout", value],
                            capture_output=True, text=True, timeout=5)
    assert result.returncode == 2 and "--idle-timeout" in result.stderr, (
        f"--idle-timeout {value!r} should exit 2 with a one-line reason naming the flag; "
        f"got exit {result.returncode}, stderr {result.stderr.strip()!r}")
