#!/usr/bin/env python3
"""Many connections at once: open them, echo through all of them, or just hold them idle.

By hand:   clients/crowd.py --port 7004 --connections 5000 --hold 30   (then watch `ss -s`)
From tests: from clients.crowd import open_many, echo_through_all, raise_fd_limit, wait_until_closed
"""

import argparse
import random
import resource
import selectors
import socket
import sys
import time


def raise_fd_limit(wanted):
    """Raises this process's soft RLIMIT_NOFILE towards `wanted` (at most the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(max(soft, wanted), hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def open_many(address, count, timeout=5.0):
    """count connected sockets, each with a timeout. Closes them all if any connect fails."""
    raise_fd_limit(count + 100)
    socks = []
    try:
        for _ in range(count):
            socks.append(socket.create_connection(address, timeout=timeout))
    except OSError:
        close_all(socks)
        raise
    return socks


def close_all(socks):
    for sock in socks:
        sock.close()


def echo_through_all(socks, size=64, timeout=10.0, seed=0):
    """Every socket sends its own random message of `size` bytes and reads its echo, all at once.

    Non-blocking and full duplex, so messages larger than the socket buffers cannot deadlock.
    Returns a list of problems, one per connection that failed (empty when every connection got
    its own bytes back exactly)."""
    rng = random.Random(seed)
    expected = {sock: rng.randbytes(size) for sock in socks}
    sent = {sock: 0 for sock in socks}
    received = {sock: bytearray() for sock in socks}
    selector = selectors.DefaultSelector()
    timeouts = {sock: sock.gettimeout() for sock in socks}
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
    problems, waiting = [], len(socks)
    deadline = time.monotonic() + timeout
    while waiting and time.monotonic() < deadline:
        for key, events in selector.select(timeout=max(0.0, deadline - time.monotonic())):
            sock = key.fileobj
            try:
                if events & selectors.EVENT_WRITE:
                    try:
                        sent[sock] += sock.send(expected[sock][sent[sock]:sent[sock] + (1 << 20)])
                    except BlockingIOError:
                        pass
                    if sent[sock] == size:
                        selector.modify(sock, selectors.EVENT_READ)
                chunk = sock.recv(1 << 20) if events & selectors.EVENT_READ else None
            except ConnectionError as error:  # reset by the server (turned away): that one failed
                problems.append(f"fd {sock.fileno()}: {error.strerror or error} after {len(received[sock])} "
                                f"of {size} bytes")
                selector.unregister(sock)
                waiting -= 1
                continue
            if chunk is not None:
                received[sock] += chunk
                if not chunk or len(received[sock]) >= size:
                    if not chunk:
                        problems.append(f"fd {sock.fileno()}: closed by the server after "
                                        f"{len(received[sock])} of {size} bytes")
                    selector.unregister(sock)
                    waiting -= 1
    selector_keys = set(key.fileobj for key in selector.get_map().values())  # still waiting
    selector.close()
    for sock in socks:
        sock.settimeout(timeouts[sock])  # back as it was: setblocking(True) would drop the timeout
    missing = [s for s in socks if s in selector_keys and len(received[s]) < size]
    problems += [f"fd {s.fileno()}: {len(received[s])} of {size} bytes back after {timeout} s"
                 for s in missing]
    problems += [f"fd {s.fileno()}: wrong bytes echoed" for s in socks
                 if len(received[s]) == size and received[s] != expected[s]]
    return problems


def wait_until_closed(socks, timeout=5.0):
    """Waits, for all sockets at once and at most `timeout`, until the server ends each connection.

    Returns one word per socket: "EOF" (the server closed it), "RST" (it reset it), or "open" (still
    open at the deadline). Bytes the server sends first are read and ignored."""
    fates = {sock: "open" for sock in socks}
    timeouts = {sock: sock.gettimeout() for sock in socks}
    selector = selectors.DefaultSelector()  # epoll: these fds may be past select()'s FD_SETSIZE too
    for sock in socks:
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    pending = len(socks)
    while pending and time.monotonic() < deadline:
        for key, _ in selector.select(timeout=max(0.0, deadline - time.monotonic())):
            try:
                if key.fileobj.recv(1 << 16):
                    continue
                fates[key.fileobj] = "EOF"
            except BlockingIOError:
                continue
            except ConnectionResetError:
                fates[key.fileobj] = "RST"
            selector.unregister(key.fileobj)
            pending -= 1
    selector.close()
    for sock in socks:
        sock.settimeout(timeouts[sock])
    return [fates[sock] for sock in socks]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--hold", type=float, default=0, help="seconds to keep them open idle")
    args = parser.parse_args()
    start = time.monotonic()
    socks = open_many((args.host, args.port), args.connections)
    print(f"opened {len(socks)} connections in {time.monotonic() - start:.2f} s")
    problems = echo_through_all(socks)
    print(f"echo through all: {'ok' if not problems else f'{len(problems)} problems, first: {problems[0]}'}")
    time.sleep(args.hold)  # the point of --hold: keep them open while you look with ss or top
    close_all(socks)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
