#!/usr/bin/env python3
"""Lesson 09: the thundering herd and the spread of connections over workers, measured.

    python3 clients/herd.py build/solutions/09/server                  every mode, 4 workers, 200 clients
    python3 clients/herd.py build/solutions/09/server --mode shared --arrival burst

For each listener mode it starts the server, brings the clients (one at a time: each connects once
the server has accepted the one before and all its threads sleep again; or a burst: all connect
at once, then each gets an echo),
stops the server and reads the line each worker prints at exit: connections accepted, wakeups by
the listener, and wakeups that found nothing to accept. It also counts, from outside, how often
the server's worker threads went to sleep meanwhile (voluntary_ctxt_switches in /proc/PID/task/*/status):
each wakeup of a sleeping thread ends in one such switch, so the kernel's count checks the server's.
"""

import argparse
import pathlib
import re
import selectors
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.crowd import close_all, echo_through_all, open_many  # noqa: E402
from clients.echo_client import connect  # noqa: E402
from clients.server_process import STOP_TIMEOUT, Server, wait_until  # noqa: E402

MODES = ("shared", "exclusive", "reuseport")
WORKER_LINE = re.compile(r"\bworker (\d+): accepted=(\d+) wakeups=(\d+) empty_wakeups=(\d+) "
                         r"listener_events=(\d+) accept_found_nothing=(\d+)$", re.M)
FIELDS = ("accepted", "wakeups", "empty_wakeups", "listener_events", "accept_found_nothing")


class HerdError(AssertionError):
    """The server did not behave as the measurement needs; the message says what it did."""


def worker_counts(stderr):
    """[{accepted, wakeups, empty_wakeups, listener_events, accept_found_nothing}, ...] in worker
    order, from the lines the server prints at exit."""
    found = {int(m[1]): dict(zip(FIELDS, map(int, m.groups()[1:]))) for m in WORKER_LINE.finditer(stderr)}
    return [found[index] for index in sorted(found)]


def worker_threads(pid):
    """/proc paths of the server's worker threads (named "worker N"); every thread if none is named
    so. Sanitizers run threads of their own, which must not count."""
    tasks = list(pathlib.Path(f"/proc/{pid}/task").iterdir())
    named = []
    for task in tasks:
        try:
            if (task / "comm").read_text().startswith("worker "):
                named.append(task)
        except (FileNotFoundError, ProcessLookupError):
            pass
    return named or tasks


def thread_sleeps(pid):
    """{thread id: times it went to sleep so far} for every worker thread of the process."""
    sleeps = {}
    for task in worker_threads(pid):
        try:
            for line in (task / "status").read_text().splitlines():
                if line.startswith("voluntary_ctxt_switches:"):
                    sleeps[int(task.name)] = int(line.split()[1])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return sleeps


def all_asleep(pid):
    """True if every worker thread is asleep (state S in /proc/PID/task/TID/stat)."""
    for task in worker_threads(pid):
        try:
            state = (task / "stat").read_text().rpartition(")")[2].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        if state not in "SD":
            return False
    return True


def seconds_on_cpu(pid):
    """Seconds the worker threads have run on a CPU so far (field 0 of each one's schedstat)."""
    total = 0
    for task in worker_threads(pid):
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):
            pass  # the thread ended meanwhile
    return total / 1e9


def wait_until_all_asleep(pid, spinning=1.0, patience=20.0):
    """Waits until every worker thread sleeps. A thread awake that long is spinning only if it ran:
    on a loaded machine one can wait seconds for a CPU without running at all. Raises HerdError once
    the threads have spent `spinning` s on a CPU meanwhile, or after `patience` s in any case."""
    start, cpu_before = time.monotonic(), seconds_on_cpu(pid)
    while not all_asleep(pid):
        busy, waited = seconds_on_cpu(pid) - cpu_before, time.monotonic() - start
        if busy >= spinning or waited >= patience:
            raise HerdError(f"the server's threads stayed awake for {waited:.1f} s with nothing to do, "
                            f"{busy:.2f} s of it on a CPU: is a loop spinning?")
        time.sleep(0.02)


def one_at_a_time(server, count):
    """count clients, each connecting only once the server has accepted the one before and all its
    threads are asleep again: every connection meets a server at rest. Returns the open sockets."""
    baseline = server.fd_count()
    socks = []
    try:
        for index in range(count):
            try:
                wait_until_all_asleep(server.pid)
            except HerdError as error:
                raise HerdError(f"before client {index}: {error}") from None
            socks.append(connect(*server.address, timeout=5))
            held = wait_until(lambda: server.fd_count() > baseline + index, 5.0, server.fd_count)
            if held <= baseline + index:
                raise HerdError(f"client {index} connected, but within 5 s no worker accepted it (the server "
                                f"holds {held} descriptors, {baseline + index} before it came)")
        wait_until_all_asleep(server.pid)
    except BaseException:
        close_all(socks)
        raise
    return socks


def burst(server, count):
    """count clients connecting at once (the kernel queues them all), then one echo each."""
    socks = open_many(server.address, count)
    problems = echo_through_all(socks, timeout=20)
    if problems:
        close_all(socks)
        raise HerdError(f"{len(problems)} of {count} clients of the burst got no echo; first: {problems[0]}")
    return socks


def measure_server(server, arrival, count):
    """Brings count clients to a running server, stops it, and returns what it saw:
    {"workers": [...], "sleeps": voluntary context switches of all its threads meanwhile, "code": exit code}."""
    before = thread_sleeps(server.pid)
    socks = (one_at_a_time if arrival == "one-at-a-time" else burst)(server, count)
    try:
        after = thread_sleeps(server.pid)
        code, seconds = server.stop()
    finally:
        close_all(socks)
    if code != 0 or seconds > STOP_TIMEOUT:
        raise HerdError(f"after SIGTERM the server should exit 0 within {STOP_TIMEOUT} s; it gave {code} "
                        f"after {seconds:.2f} s")
    return {"workers": worker_counts(server.stderr()), "code": code,
            "sleeps": sum(after.get(tid, 0) - before.get(tid, 0) for tid in after)}


def summary(found):
    """Totals and ratios of one measurement: wakeups per accepted connection, and each worker's share."""
    workers = found["workers"]
    accepted = sum(w["accepted"] for w in workers)
    wakeups = sum(w["wakeups"] for w in workers)
    empty = sum(w["empty_wakeups"] for w in workers)
    return {"accepted": accepted, "wakeups": wakeups, "empty": empty,
            "per_accept": wakeups / accepted if accepted else float("inf"),
            "sleeps_per_accept": found["sleeps"] / accepted if accepted else float("inf"),
            "shares": [w["accepted"] / accepted if accepted else 0.0 for w in workers]}


def echo_delays(address, count, timeout=10.0):
    """Opens count connections, sends one small message on each at once, and returns how long each
    waited for its echo, in seconds (None for those still waiting after timeout). A worker that
    stalls shows as the clients that wait for it."""
    socks = open_many(address, count)
    try:
        selector = selectors.DefaultSelector()
        start = time.monotonic()
        for index, sock in enumerate(socks):
            sock.sendall(b"%06d" % index)
            sock.setblocking(False)
            selector.register(sock, selectors.EVENT_READ, index)
        delays = [None] * count
        received = [b""] * count
        while selector.get_map() and time.monotonic() - start < timeout:
            for key, _ in selector.select(timeout=0.1):
                index = key.data
                received[index] += key.fileobj.recv(64)
                if len(received[index]) >= 6 or not received[index]:
                    delays[index] = time.monotonic() - start if received[index] == b"%06d" % index else None
                    selector.unregister(key.fileobj)
        selector.close()
        return delays
    finally:
        close_all(socks)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary", help="lesson 09's server, e.g. build/solutions/09/server")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--mode", choices=MODES, action="append", help="default: all three")
    parser.add_argument("--arrival", choices=("one-at-a-time", "burst"), action="append",
                        help="default: both")
    parser.add_argument("--stall", type=float, metavar="SECONDS",
                        help="instead: start each mode with --stall-worker SECONDS and time 40 clients' echoes")
    args = parser.parse_args()
    if args.stall:
        print(f"{args.workers} workers, worker 0 stalled for {args.stall} s; 40 clients send at once")
        for mode in args.mode or MODES:
            server = Server(pathlib.Path(args.binary), ["--quiet", "--workers", str(args.workers), "--listener", mode,
                                                        "--stall-worker", str(args.stall)])
            try:
                delays = echo_delays(server.address, 40, timeout=args.stall + 5)
            finally:
                server.stop()
            waited = sorted(d for d in delays if d is not None and d > args.stall / 2)
            lost = sum(d is None for d in delays)
            print(f"{mode:10} {len(waited):2d} of 40 waited for the stalled worker"
                  + (f" ({waited[0]:.2f} to {waited[-1]:.2f} s)" if waited else "")
                  + (f"; {lost} got no echo" if lost else "")
                  + f"; the others' slowest echo took {max((d for d in delays if d is not None and d <= args.stall / 2), default=0):.3f} s")
        return
    print(f"{args.workers} workers, {args.clients} clients. wakeups: the server's count (its threads' voluntary "
          f"context switches, at exit); /proc: the same counted from outside (voluntary_ctxt_switches of the worker threads); events: the listener "
          f"events epoll returned to the server, and how many of those found the queue empty")
    print(f"{'mode':10} {'arrival':14} {'wakeups/accept':>14} {'empty':>6} {'/proc':>6} {'events':>7} {'empty':>6}"
          f"  accepted per worker")
    for mode in args.mode or MODES:
        for arrival in args.arrival or ("one-at-a-time", "burst"):
            server = Server(pathlib.Path(args.binary), ["--quiet", "--workers", str(args.workers), "--listener", mode])
            found = measure_server(server, arrival, args.clients)
            s = summary(found)
            events = sum(w["listener_events"] for w in found["workers"])
            nothing = sum(w["accept_found_nothing"] for w in found["workers"])
            per_worker = " ".join(f"{w['accepted']:4d}" for w in found["workers"])
            print(f"{mode:10} {arrival:14} {s['per_accept']:14.2f} {s['empty']:6d} {s['sleeps_per_accept']:6.2f} "
                  f"{events:7d} {nothing:6d}  {per_worker}")


if __name__ == "__main__":
    main()
