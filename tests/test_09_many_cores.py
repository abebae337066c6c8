"""Lesson 09: one event loop per worker thread, and three ways to hand the workers new connections.
The simplest promises first (threads, exit lines, signals, ports; the first two run before the
contract's, as they decide whether the server can stop at all), then the herd, the spread of
connections over the workers, and a stalled worker, each in every listener mode.

Every worker prints one line at exit, which these tests read (clients/herd.py parses it):
    worker 2: accepted=51 wakeups=204 empty_wakeups=153 listener_events=51 accept_found_nothing=0
wakeups are the times the worker's thread slept and was woken (the kernel's count); the herd shows
there, not in listener_events: a worker woken for a queue another worker has emptied is put back to
sleep inside epoll_wait, which returns nothing to the server."""

import os
import signal
import subprocess

import pytest

from clients.crowd import close_all, echo_through_all, open_many
from clients.echo_client import connect, round_trip
from clients.firehose import Flood
from clients.herd import HerdError, echo_delays, measure_server, summary, worker_counts
from clients.idle import wait_for_close
from clients.server_process import STOP_TIMEOUT, TCP_STATES, proc_tcp_sockets, wait_until
from conftest import binary_path

LESSONS = ["09"]
MODES = ["shared", "exclusive", "reuseport"]
HERD_WORKERS, HERD_CLIENTS = 4, 200
STOP_SIGNALS = {"SIGHUP": 1, "SIGINT": 2, "SIGTERM": 15}


def start_workers(start_server, lesson, workers, mode, *extra):
    return start_server(lesson, "--quiet", "--workers", str(workers), "--listener", mode, *extra)


def threads_of(pid):
    return sorted(int(task) for task in os.listdir(f"/proc/{pid}/task"))


def workers_of(pid):
    """The threads named "worker N" (the server names its workers; sanitizers add threads of their own)."""
    names = []
    for tid in threads_of(pid):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as comm:
                names.append(comm.read().strip())
        except FileNotFoundError:
            continue
    return sorted(name for name in names if name.startswith("worker "))


def stop_and_count(server, workers):
    """Stops the server (exit 0 within a second, or the test fails) and returns its workers' counts."""
    code, seconds = server.stop()
    assert code != -signal.SIGTERM, (
        "the server died of SIGTERM itself instead of exiting 0: a thread that does not block the stop "
        "signals received it, and its default action ends the process. Call watch_signals() in main before "
        "starting any thread (threads inherit the blocked mask)")
    assert code == 0 and seconds <= STOP_TIMEOUT, (
        f"after SIGTERM the server should exit 0 within {STOP_TIMEOUT} s; {server.why_it_did_not_stop(code, seconds)}. "
        f"Does every worker's epoll watch the stop eventfd, and does main write it before joining them all?")
    counts = worker_counts(server.stderr())
    assert len(counts) == workers, (
        f"at exit each of the {workers} workers should print one line 'worker N: accepted=.. wakeups=.. "
        f"empty_wakeups=.. listener_events=.. accept_found_nothing=..'; found {len(counts)} such lines in "
        f"{server.stderr()[-600:]!r}")
    return counts


# --- threads, exit lines, signals, ports ------------------------------------------------------------

@pytest.mark.basic
def test_runs_one_thread_per_worker_and_prints_each_workers_counters_at_exit(start_server, lesson):
    server = start_workers(start_server, lesson, 3, "exclusive")
    workers = wait_until(lambda: len(workers_of(server.pid)) == 3, 2.0, lambda: workers_of(server.pid))
    assert workers == ["worker 0", "worker 1", "worker 2"], (
        f"with --workers 3 the server should run a thread per worker, named 'worker 0' to 'worker 2' "
        f"(/proc/PID/task/*/comm); it runs {workers}. Is there a listener descriptor for every worker?")
    socks = open_many(server.address, 6)
    try:
        assert not echo_through_all(socks), "every client should get its echo"
        counts = stop_and_count(server, 3)
    finally:
        close_all(socks)
    accepted = sum(c["accepted"] for c in counts)
    assert accepted == 6, f"6 clients connected, but the workers' lines add up to {accepted} accepted: {counts}"


def blocked_signals(pid, tid):
    with open(f"/proc/{pid}/task/{tid}/status") as status:
        for line in status:
            if line.startswith("SigBlk:"):
                return int(line.split()[1], 16)
    return 0


@pytest.mark.basic
def test_every_thread_blocks_the_stop_signals(start_server, lesson):
    server = start_workers(start_server, lesson, 4, "exclusive")
    wait_until(lambda: len(workers_of(server.pid)) == 4, 2.0)
    for tid in threads_of(server.pid):
        mask = blocked_signals(server.pid, tid)
        missing = [name for name, number in STOP_SIGNALS.items() if not mask & (1 << (number - 1))]
        assert not missing, (
            f"thread {tid} of the server does not block {', '.join(missing)} (SigBlk in /proc/{server.pid}/task/"
            f"{tid}/status): the kernel may deliver a stop signal to that thread, whose default action ends "
            f"the process at once, instead of leaving it for the signalfd. Call watch_signals() in main "
            f"before starting any thread: threads inherit the mask of the thread that starts them")


def test_default_is_one_worker_per_cpu(start_server, lesson):
    cpus = len(os.sched_getaffinity(0))
    server = start_server(lesson, "--quiet")
    workers = wait_until(lambda: len(workers_of(server.pid)) == cpus, 2.0, lambda: workers_of(server.pid))
    assert len(workers) == cpus, (
        f"without --workers the server should start one worker per CPU it may run on ({cpus} here); it "
        f"runs {len(workers)}: {workers}")
    stop_and_count(server, cpus)


@pytest.mark.parametrize("mode", MODES)
def test_sigterm_stops_every_worker_within_a_second(start_server, lesson, mode):
    server = start_workers(start_server, lesson, 4, mode)
    socks = open_many(server.address, 16)
    try:
        assert not echo_through_all(socks), "every client should get its echo"
        stop_and_count(server, 4)
    finally:
        close_all(socks)


@pytest.mark.parametrize("mode", MODES)
def test_every_reuseport_listener_is_on_the_announced_port(start_server, lesson, mode):
    server = start_workers(start_server, lesson, 4, mode)
    ports = listening_ports(server)
    expected = 4 if mode == "reuseport" else 1
    assert ports == [server.port] * expected, (
        f"in {mode} mode with 4 workers the server should listen with {expected} socket(s), all on the "
        f"announced port {server.port}; its listening sockets are on {ports}. "
        + ("With --port 0 only the first member of the group may ask for a free port: the others must "
           "bind the port it got, or each gets its own and only the announced one is ever used"
           if mode == "reuseport" else "Each worker gets a descriptor of the one listening socket (dup)"))


def listening_ports(server):
    """The local ports of the server's listening TCP sockets."""
    inodes = server.socket_inodes()
    return sorted(sock.local_port for sock in proc_tcp_sockets()
                  if TCP_STATES.get(sock.state) == "LISTEN" and sock.inode in inodes)


@pytest.mark.parametrize("mode", MODES)
def test_a_second_instance_on_the_same_port_exits_1(start_server, pytestconfig, lesson, mode):
    first = start_workers(start_server, lesson, 2, "reuseport")
    second = subprocess.Popen([str(binary_path(pytestconfig, lesson)), "--quiet", "--port", str(first.port),
                               "--workers", "2", "--listener", mode],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = second.communicate(timeout=3)
        code = second.returncode
    except subprocess.TimeoutExpired:
        second.kill()
        out, err = second.communicate()
        code = None
    assert code == 1, (
        f"a second copy of the server ({mode} mode) on port {first.port}, which a first copy in reuseport mode "
        f"holds, should exit 1 (setup failed: the port is in use); "
        + (f"it started instead ({out.strip()!r}), and the kernel would split new clients between the two "
           f"processes. SO_REUSEPORT lets any socket of the same user that also sets it join the group: bind a "
           f"probe socket without SO_REUSEPORT first, and exit 1 if that fails"
           if code is None else f"it exited {code}: {err.strip()!r}"))
    assert f"127.0.0.1:{first.port}" in err, f"the message should name the address; it was {err!r}"
    with connect(*first.address) as sock:
        assert round_trip(sock, b"still mine") == b"still mine", "the first copy should go on serving"


def test_each_worker_closes_its_own_idle_connections_on_time(start_server, lesson):
    server = start_workers(start_server, lesson, 4, "reuseport", "--idle-timeout", "0.5")
    socks = open_many(server.address, 24)  # hashed over the 4 workers' listeners
    try:
        assert not echo_through_all(socks), "every client should get its echo"
        late = [index for index, sock in enumerate(socks) if wait_for_close(sock, 0.5 + 1.5) is None]
        assert not late, (
            f"with --idle-timeout 0.5, {len(late)} of 24 idle clients spread over 4 workers were still open 2 s "
            f"later: each worker's loop must keep its own connections' deadlines (lesson 06's reactor)")
    finally:
        close_all(socks)


# --- the herd -------------------------------------------------------------------------------------------

HERD_LIMITS = {"shared": (2.5, None), "exclusive": (None, 1.6), "reuseport": (None, 1.6)}


@pytest.mark.parametrize("mode", MODES)
def test_herd_one_connection_wakes_every_worker_only_in_shared_mode(start_server, lesson, mode):
    server = start_workers(start_server, lesson, HERD_WORKERS, mode)
    try:
        found = measure_server(server, "one-at-a-time", HERD_CLIENTS)
    except HerdError as error:
        pytest.fail(str(error), pytrace=False)
    s = summary(found)
    print(f"{mode}: {s['per_accept']:.2f} wakeups per accepted connection by the server's count, "
          f"{s['sleeps_per_accept']:.2f} from /proc; {s['empty']} wakeups took no client; accepted per worker "
          f"{[w['accepted'] for w in found['workers']]}")
    assert s["accepted"] == HERD_CLIENTS, f"{HERD_CLIENTS} clients connected, the workers accepted {s['accepted']}"
    assert abs(s["per_accept"] - s["sleeps_per_accept"]) <= 0.5, (
        f"the workers' lines say {s['per_accept']:.2f} wakeups per connection, but the kernel counted "
        f"{s['sleeps_per_accept']:.2f} (voluntary_ctxt_switches of every thread in /proc/PID/task/*/status): "
        f"wakeups should be each worker thread's voluntary context switches over its loop"
        + (", read once the worker's thread has ended: were the lines printed before join()?" if s["wakeups"] == 0 else ""))
    low, high = HERD_LIMITS[mode]
    if low is not None:
        assert s["per_accept"] >= low, (
            f"shared mode, {HERD_WORKERS} workers, clients arriving one at a time: {s['per_accept']:.2f} wakeups "
            f"per connection; every worker's epoll holds the listener, so each connection should wake all "
            f"{HERD_WORKERS} (at least {low}). Is EPOLLEXCLUSIVE set in shared mode?")
    if high is not None:
        assert s["per_accept"] <= high, (
            f"{mode} mode, {HERD_WORKERS} workers, clients arriving one at a time: {s['per_accept']:.2f} wakeups "
            f"per connection; it should be about 1 (at most {high}). "
            + ("Is the listener added to each epoll with EPOLLIN | EPOLLEXCLUSIVE?" if mode == "exclusive" else
               "Does each worker watch only its own listener of the group?"))


# --- the spread of connections over the workers ---------------------------------------------------------

def shares(counts):
    total = sum(c["accepted"] for c in counts)
    return [c["accepted"] / total for c in counts]


@pytest.mark.parametrize("arrival", ["one-at-a-time", "burst"])
def test_reuseport_spreads_connections_over_every_worker(start_server, lesson, arrival):
    server = start_workers(start_server, lesson, HERD_WORKERS, "reuseport")
    found = measure_server(server, arrival, HERD_CLIENTS)
    accepted = [w["accepted"] for w in found["workers"]]
    print(f"reuseport, {arrival}: accepted per worker {accepted}")
    assert min(shares(found["workers"])) >= 0.10, (
        f"reuseport, {HERD_CLIENTS} clients {arrival.replace('-', ' ')}: accepted per worker {accepted}. The "
        f"kernel hashes each connection's addresses and ports to one listener of the group, so each of "
        f"{HERD_WORKERS} workers should get about a quarter (at least 10%). Does every worker watch its own listener?")


def test_exclusive_hands_connections_arriving_one_at_a_time_to_the_first_idle_worker(start_server, lesson):
    server = start_workers(start_server, lesson, HERD_WORKERS, "exclusive")
    found = measure_server(server, "one-at-a-time", HERD_CLIENTS)
    accepted = [w["accepted"] for w in found["workers"]]
    print(f"exclusive, one at a time: accepted per worker {accepted}")
    assert shares(found["workers"])[0] >= 0.8, (
        f"exclusive, {HERD_CLIENTS} clients arriving one at a time, each while every worker sleeps: accepted per "
        f"worker {accepted}. The kernel walks the listener's wait queue in the order the workers' epolls "
        f"joined it and wakes the first one with a thread asleep, so worker 0 (set up first) should take "
        f"nearly all (at least 80%)")


@pytest.mark.parametrize("mode", ["shared", "exclusive"])
def test_a_burst_is_served_whoever_takes_it(start_server, lesson, mode):
    server = start_workers(start_server, lesson, HERD_WORKERS, mode)
    found = measure_server(server, "burst", HERD_CLIENTS)  # raises if a client got no echo
    print(f"{mode}, burst: accepted per worker {[w['accepted'] for w in found['workers']]}")
    assert sum(w["accepted"] for w in found["workers"]) == HERD_CLIENTS


# --- a stalled worker -----------------------------------------------------------------------------------

STALL = 2.5
STALL_CLIENTS = 40


@pytest.mark.parametrize("mode", MODES)
def test_a_stalled_worker_delays_its_clients_only_in_reuseport_mode(start_server, lesson, mode):
    server = start_workers(start_server, lesson, HERD_WORKERS, mode, "--stall-worker", str(STALL))
    delays = echo_delays(server.address, STALL_CLIENTS, timeout=STALL + 5)
    lost = [index for index, delay in enumerate(delays) if delay is None]
    assert not lost, f"{len(lost)} of {STALL_CLIENTS} clients got no echo at all within {STALL + 5} s"
    waited = [delay for delay in delays if delay > 1.0]
    print(f"{mode}: {len(waited)} of {STALL_CLIENTS} clients waited for the stalled worker")
    if mode == "reuseport":
        assert waited, (
            f"reuseport with worker 0 stalled for {STALL} s: no client waited, yet the kernel hashes about a "
            f"quarter of them to worker 0's own queue, which nobody else takes from. Does --stall-worker stall "
            f"worker 0, and does each worker have its own listener?")
    else:
        assert not waited, (
            f"{mode} mode with worker 0 stalled for {STALL} s: {len(waited)} clients waited more than 1 s; with "
            f"one shared queue the other workers should take them")


# --- faults, with many workers ----------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_sigterm_under_a_flood_stops_every_worker_within_a_second(start_server, lesson, mode):
    server = start_workers(start_server, lesson, 4, mode)
    with Flood(server.address, 40) as flood:
        assert flood.wait_until_streaming(ramp=0.5), "the flood's clients got no echo: is the server echoing?"
        stop_and_count(server, 4)


@pytest.mark.parametrize("mode", MODES)
def test_out_of_descriptors_with_four_workers_neither_crashes_nor_spins(start_server, lesson, mode):
    server = start_server(lesson, "--quiet", "--workers", "4", "--listener", mode, nofile=64)
    clients = open_many(server.address, 150)
    try:
        # Which clients get a descriptor depends on which worker reaches its queue first: count them.
        served = len(clients) - len(echo_through_all(clients, timeout=5))
        assert served >= 20, (
            f"{mode} mode, 4 workers, a limit of 64 descriptors: only {served} of 150 clients got their echo; "
            f"the 40 or so that fit under the limit should be served, the rest turned away")
        cpu = server.cpu_per_second()
        assert server.alive(), "the server died when it ran out of file descriptors (EMFILE)"
        assert cpu < 0.3, (
            f"{mode} mode, 4 workers, 150 clients against a limit of 64 descriptors: {cpu:.2f} s of CPU per "
            f"second. Each worker's Acceptor has its own spare descriptor, and another thread can take the "
            f"slot a spare frees: that Acceptor must rest, not spin")
    finally:
        close_all(clients)
    # The workers close their connections concurrently: until they have, a new client may still
    # meet EMFILE and be turned away. Serving again once descriptors are free is the promise.
    assert server.settle(), (
        f"after the clients left, the server does not hold what it held at start ({server.change_since_start()}). "
        f"If a spare (/dev/null) is gone: another thread can take the slot a spare frees to turn a client away; "
        f"the Acceptor must take its spare back once descriptors free up, not only when the next client comes, "
        f"or the next time it runs out it has none")
    with connect(*server.address) as sock:
        assert round_trip(sock, b"back") == b"back", "after the clients left, the server should serve again"
