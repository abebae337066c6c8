#!/usr/bin/env python3
"""Counts the system calls an echo server makes while clients talk to it: the server runs under
`strace -f -c` (strace is its parent, so no ptrace permission is needed beyond that).

By hand:   clients/syscall_count.py build/solutions/05/server --round-trips 2000 [-- --workers 1]
From tests: from clients.syscall_count import count_syscalls, ping_pong, reads_made_by
"""

import argparse
import os
import pathlib
import re
import select
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.echo_client import connect, round_trip  # noqa: E402
from clients.server_process import split_server_flags  # noqa: E402

READY_TIMEOUT = 10.0  # strace slows start-up a little


class StraceUnavailable(Exception):
    """strace is missing or may not trace here (no ptrace in this container, say)."""


def reads_made_by(pid):
    """How many read() calls process pid has made so far (syscr in /proc/PID/io): a counter the
    kernel keeps anyway, so reading it costs the server nothing, unlike tracing every call."""
    with open(f"/proc/{pid}/io") as io:
        for line in io:
            if line.startswith("syscr:"):
                return int(line.split()[1])
    raise LookupError(f"/proc/{pid}/io has no syscr line")


def reads_per_ping_pong(server, round_trips, size=64):
    """The read() calls the server makes while one client does `round_trips` round trips of `size`
    bytes. AssertionError if it counted fewer reads than messages: syscr sees read() and readv()
    but not recv(), so a server reading with recv() cannot be measured this way."""
    with connect(*server.address) as sock:
        assert round_trip(sock, b"warm up") == b"warm up"
        before = reads_made_by(server.pid)
        for index in range(round_trips):
            message = b"%0*d" % (size, index)
            assert round_trip(sock, message) == message, "the echo differs from what was sent"
        reads = reads_made_by(server.pid) - before
    assert reads >= round_trips, (
        f"{round_trips} round trips counted only {reads} read() calls: /proc/PID/io counts read() and "
        f"readv(), not recv(); read the socket with read() so this test can see the server's reads")
    return reads


def parse_summary(text):
    """{syscall: calls} from the table `strace -c` prints."""
    counts = {}
    for line in text.splitlines():
        match = re.match(r"\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)\s+(?:\d+\s+)?(\w+)\s*$", line)
        if match and match.group(2) != "total":
            counts[match.group(2)] = int(match.group(1))
    return counts


def server_pid_under(tracer_pid):
    with open(f"/proc/{tracer_pid}/task/{tracer_pid}/children") as children:
        return int(children.read().split()[0])


def count_syscalls(binary, workload, args=("--quiet",)):
    """Starts binary under strace, runs workload((host, port)), stops the server with SIGTERM.
    Returns ({syscall: calls} over the server's whole life, the server's exit code)."""
    with tempfile.NamedTemporaryFile(mode="r", suffix=".strace") as summary:
        try:
            # LeakSanitizer cannot work under ptrace and would fail a SAN=1 build's exit code.
            env = {**os.environ, "ASAN_OPTIONS": os.environ.get("ASAN_OPTIONS", "") + ":detect_leaks=0"}
            tracer = subprocess.Popen(["strace", "-f", "-c", "-o", summary.name, str(binary), "--port", "0", *args],
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        except FileNotFoundError:
            raise StraceUnavailable("strace is not installed (`make deps` installs it)") from None
        server_pid = None
        try:
            ready, _, _ = select.select([tracer.stdout], [], [], READY_TIMEOUT)
            line = tracer.stdout.readline().decode(errors="replace") if ready else ""
            if not line.startswith("listening on "):
                tracer.kill()
                raise StraceUnavailable(f"the server under strace printed {line!r}, not its readiness line: "
                                        f"{tracer.communicate()[1].decode(errors='replace')[-500:]}")
            server_pid = server_pid_under(tracer.pid)
            host, _, port = line[len("listening on "):].strip().rpartition(":")
            workload((host.strip("[]"), int(port)))
            os.kill(server_pid, signal.SIGTERM)
            code = tracer.wait(timeout=10)  # strace exits with its tracee's exit code
        finally:
            if tracer.poll() is None:
                # Killing strace alone would detach the server and leave it running: kill it first.
                if server_pid is not None:
                    os.kill(server_pid, signal.SIGKILL)
                tracer.kill()
                tracer.wait()
        return parse_summary(summary.read()), code


def ping_pong(round_trips, size=64):
    """A workload: one connection, round_trips messages of size bytes, each sent after the last echo."""
    def workload(address):
        message = b"m" * size
        with connect(*address) as sock:
            for _ in range(round_trips):
                if round_trip(sock, message) != message:
                    raise AssertionError("the echo differs from the message")
    return workload


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary")
    parser.add_argument("--round-trips", type=int, default=2000)
    parser.epilog = "After --, flags for the server: syscall_count.py BINARY --round-trips 1000 -- --workers 1"
    own, server_flags = split_server_flags(sys.argv[1:])
    args = parser.parse_args(own)
    counts, code = count_syscalls(args.binary, ping_pong(args.round_trips), args=("--quiet", *server_flags))
    for name, calls in sorted(counts.items(), key=lambda item: -item[1]):
        print(f"{calls:8d}  {name}  ({calls / args.round_trips:.2f} per round trip)")
    sys.exit(0 if code == 0 else 1)


if __name__ == "__main__":
    main()
