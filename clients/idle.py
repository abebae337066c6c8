#!/usr/bin/env python3
"""Idle clients: connections that go quiet, and the moment the server closes each one.

By hand:   clients/idle.py --port 7006 --connections 2000 --timeout 5
           (against a server started with --idle-timeout 5: prints how long after its deadline
           each connection was closed, earliest and latest)
From tests: from clients.idle import IdleCrowd, read_paced, wait_for_close
"""

import argparse
import pathlib
import selectors
import socket
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.crowd import raise_fd_limit  # noqa: E402


def closed_by_peer(sock):
    """Reads what is there; True once the server has closed (EOF or reset). Echo is discarded."""
    try:
        return sock.recv(1 << 16) == b""
    except (BlockingIOError, socket.timeout):
        return False
    except ConnectionError:
        return True


def wait_for_close(sock, timeout):
    """The time.monotonic() at which the server closed sock, or None if it was still open after
    `timeout` seconds. Anything the server sends meanwhile (an echo) is read and dropped."""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        while (left := deadline - time.monotonic()) > 0:
            if selector.select(left):
                seen = time.monotonic()  # before recv, so reading costs nothing in the measurement
                if closed_by_peer(sock):
                    return seen
    return None


def read_paced(sock, bytes_per_second, on_chunk=lambda: None):
    """Reads until EOF (or a reset), never faster than bytes_per_second on average: a client that
    sends nothing but keeps taking its echo. Calls on_chunk() after every read; returns the bytes."""
    received, start = bytearray(), time.monotonic()
    try:
        while chunk := sock.recv(1 << 20):
            received += chunk
            on_chunk()
            ahead = len(received) / bytes_per_second - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)  # the pace is the point: slower than the server could send
    except ConnectionResetError:
        pass  # the server gave up on us; the caller sees the missing bytes
    return bytes(received)


class IdleCrowd:
    """`count` connections that send nothing once connected. For each it records when it went
    quiet (just before connect(), the earliest moment the server can have seen it) and when the
    server closed it, so close_delays() can say how far from its deadline each close came."""

    def __init__(self, address, count, check_every=50, connect_timeout=5.0):
        self.address, self.count = address, count
        self.check_every = check_every  # while opening, look for closes after this many connects
        self.connect_timeout = connect_timeout
        self.quiet_since = {}  # socket -> monotonic time its last (only) activity began
        self.closed_at = {}    # socket -> monotonic time the client saw EOF or RST
        self.selector = selectors.DefaultSelector()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def open(self):
        raise_fd_limit(self.count + 100)
        for index in range(self.count):
            quiet_since = time.monotonic()
            sock = socket.create_connection(self.address, timeout=self.connect_timeout)
            sock.setblocking(False)
            self.quiet_since[sock] = quiet_since
            self.selector.register(sock, selectors.EVENT_READ)
            if index % self.check_every == 0:
                self.collect(0)  # early deadlines may pass while we are still opening
        return self

    def collect(self, timeout):
        """Records every close seen within `timeout` seconds (0: only those already there)."""
        ready = self.selector.select(timeout)
        seen = time.monotonic()
        for key, _ in ready:
            if closed_by_peer(key.fileobj):
                self.closed_at[key.fileobj] = seen
                self.selector.unregister(key.fileobj)

    def wait(self, until):
        """Collects closes until every connection is closed or time.monotonic() reaches `until`."""
        while len(self.closed_at) < len(self.quiet_since) and (left := until - time.monotonic()) > 0:
            self.collect(left)

    def last_quiet(self):
        return max(self.quiet_since.values())

    def still_open(self):
        return len(self.quiet_since) - len(self.closed_at)

    def close_delays(self, timeout):
        """For each closed connection: seconds between its deadline (quiet_since + timeout) and the
        close the client saw. Negative would mean the server closed it before its deadline."""
        return sorted(self.closed_at[s] - self.quiet_since[s] - timeout for s in self.closed_at)

    def close(self):
        self.selector.close()
        for sock in self.quiet_since:
            sock.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--timeout", type=float, required=True, help="the server's --idle-timeout")
    args = parser.parse_args()
    with IdleCrowd((args.host, args.port), args.connections) as crowd:
        crowd.open()
        print(f"opened {args.connections} idle connections; waiting for the server to close them")
        crowd.wait(until=crowd.last_quiet() + args.timeout * 2 + 5)
        delays = crowd.close_delays(args.timeout)
    if not delays:
        sys.exit(f"none of {args.connections} connections was closed within twice the timeout plus 5 s")
    print(f"{len(delays)} of {args.connections} closed; relative to each one's deadline: "
          f"earliest {delays[0] * 1000:+.1f} ms, median {delays[len(delays) // 2] * 1000:+.1f} ms, "
          f"latest {delays[-1] * 1000:+.1f} ms")
    sys.exit(0 if len(delays) == args.connections else 1)


if __name__ == "__main__":
    main()
