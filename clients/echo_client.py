#!/usr/bin/env python3
"""An echo client for people and for tests (standard library only).

By hand, like nc:       clients/echo_client.py --port 7001          (type lines, see them echoed)
Round-trip times:       clients/echo_client.py --port 7001 --count 100 --message hello
From tests:             from clients.echo_client import connect, round_trip, echo_stream
"""

import argparse
import random
import select
import socket
import statistics
import sys
import threading
import time

DEFAULT_TIMEOUT = 5.0


class EchoError(AssertionError):
    """The server did not echo what it should have; the message says what happened instead."""


class ClosedBeforeEcho(EchoError):
    """The server closed the connection (EOF) before it had echoed everything."""


def connect(host="127.0.0.1", port=7001, timeout=DEFAULT_TIMEOUT):
    """A connected TCP socket with a timeout, so no test can hang on a silent server."""
    sock = socket.create_connection((host, port), timeout=timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def send_all(sock, data):
    sock.sendall(data)


def recv_exactly(sock, size):
    """Exactly size bytes, or EchoError saying how many arrived before EOF or the timeout."""
    chunks, received = [], 0
    while received < size:
        try:
            chunk = sock.recv(min(size - received, 1 << 20))
        except socket.timeout:
            stalled = f"the server echoed {received} of {size} bytes, then nothing" if received else \
                "the server echoed nothing"
            raise EchoError(f"waited {sock.gettimeout()} s: {stalled} (it should echo every byte it receives. "
                            f"Bytes left unread after a readiness report, edge-triggered? Reading stopped for "
                            f"backpressure and never resumed?)") from None
        if not chunk:
            raise ClosedBeforeEcho(f"server closed the connection after echoing {received} of {size} bytes "
                                   f"(it should echo everything before closing)")
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock):
    """Everything until the server closes its side; EchoError if it goes quiet for the socket's
    timeout first."""
    chunks = []
    while True:
        try:
            chunk = sock.recv(1 << 20)
        except socket.timeout:
            got = sum(map(len, chunks))
            raise EchoError(f"waited {sock.gettimeout()} s for the server to close the connection after "
                            f"{got} bytes; it neither sent more nor closed (EOF)") from None
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def round_trip(sock, data):
    """Sends data and returns the echo (which tests compare with data)."""
    send_all(sock, data)
    return recv_exactly(sock, len(data))


def random_chunks(data, rng, largest=65536):
    """data cut into pieces of random size (1..largest), so the server sees every chunking."""
    offset = 0
    while offset < len(data):
        size = rng.randint(1, largest)
        yield data[offset:offset + size]
        offset += size


def echo_stream(sock, data, rng=None, largest_chunk=65536):
    """Sends data in random chunks while a second thread reads the echo; returns what came back.

    Reading concurrently matters: a client that sends megabytes before reading fills both socket
    buffers and deadlocks against any correct echo server."""
    rng = rng or random.Random(0)
    result = {}

    def reader():
        try:
            result["data"] = recv_exactly(sock, len(data))
        except Exception as error:  # handed to the caller below
            result["error"] = error

    thread = threading.Thread(target=reader, daemon=True)
    thread.start()
    for chunk in random_chunks(data, rng, largest_chunk):
        sock.sendall(chunk)
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["data"]


def send_until_stalled(sock, data, stall=0.5):
    """Sends data without reading any echo, until the server stops taking bytes for `stall`
    seconds (it applies backpressure) or all is sent. Returns how many bytes went out."""
    sent, timeout = 0, sock.gettimeout()
    sock.setblocking(False)
    try:
        while sent < len(data):
            _, writable, _ = select.select([], [sock], [], stall)
            if not writable:
                break
            try:
                sent += sock.send(data[sent:sent + (1 << 20)])
            except BlockingIOError:
                pass
    finally:
        sock.settimeout(timeout)  # as it was: setblocking(True) would drop the timeout for good
    return sent


def first_difference(expected, actual, others=()):
    """A sentence naming the first byte where the echo differs, for assertion messages; and, when
    the wrong bytes were sent elsewhere, where: later or earlier in the same stream (the echo came
    back reordered, or in part twice), or by another client (others: what the others sent)."""
    index = next((i for i, (want, got) in enumerate(zip(expected, actual)) if want != got), None)
    if index is None:
        return f"length is {len(actual)}, should be {len(expected)}"
    where = f"byte {index} is {actual[index]:#04x}, should be {expected[index]:#04x}"
    window = actual[index:index + 32]
    found = expected.find(window)
    if len(window) < 16 or (found >= 0 and expected.find(window, found + 1) >= 0):
        return where  # too short, or sent more than once: cannot tell where it came from
    if found > index:
        return (f"{where}; the bytes there were sent later, from byte {found}: the echo came back out of "
                f"order, or a receive buffer was overwritten before its bytes were copied out")
    if found >= 0:
        return f"{where}; the bytes there were sent earlier, from byte {found}: part of the echo came back twice"
    for number, other in enumerate(others):
        if other is not expected and (found := other.find(window)) >= 0:
            return f"{where}; the bytes there are client {number}'s, from its byte {found}"
    return where


def interactive(sock):
    """Sends each line typed and prints what comes back."""
    for line in sys.stdin.buffer:
        print(round_trip(sock, line).decode(errors="replace"), end="", flush=True)


def measure(sock, message, count):
    times = []
    for _ in range(count):
        start = time.perf_counter()
        echo = round_trip(sock, message)
        times.append((time.perf_counter() - start) * 1e6)
        if echo != message:
            sys.exit(f"wrong echo: {first_difference(message, echo)}")
    times.sort()
    print(f"{count} round trips of {len(message)} bytes: p50 {statistics.median(times):.0f} us, "
          f"p99 {times[int(0.99 * (count - 1))]:.0f} us, max {times[-1]:.0f} us")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7001)
    parser.add_argument("--count", type=int, help="send --message this many times, print round-trip times")
    parser.add_argument("--message", default="hello", help="what --count sends (default: hello)")
    args = parser.parse_args()
    try:
        with connect(args.host, args.port, timeout=None if args.count is None else DEFAULT_TIMEOUT) as sock:
            if args.count is None:
                interactive(sock)
            else:
                measure(sock, args.message.encode(), args.count)
    except (OSError, EchoError) as error:
        sys.exit(f"echo_client: {error}")


if __name__ == "__main__":
    main()
