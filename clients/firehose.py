#!/usr/bin/env python3
"""Fairness under a fast sender: one client writes 8 MiB at a time as fast as it can while a
second thread reads its echo (so backpressure never stops it), and a third client measures its
own round trips meanwhile. A server that drains one socket to EAGAIN before serving anyone else
makes the third wait for as long as the flood keeps that socket's queue full.

By hand:   clients/firehose.py --port 7005 [--hoses 2] [--round-trips 20]
From tests: from clients.firehose import Flood, round_trips_during_flood
"""

import argparse
import multiprocessing
import pathlib
import selectors
import socket
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.echo_client import connect, round_trip  # noqa: E402


def flood(address, stop):
    """Sends and reads at full speed on one connection until stop is set."""
    with connect(*address, timeout=10) as sock:
        def drain():
            sink = bytearray(8 << 20)
            while not stop.is_set():
                try:
                    if sock.recv_into(sink) == 0:
                        return
                except OSError:
                    return
        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        block = bytes(8 << 20)
        while not stop.is_set():
            try:
                sock.sendall(block)
            except OSError:
                return


STREAMING = 8 << 20  # echo bytes after which a flood counts as under way


class Flood:
    """`count` connections that all stream at once for as long as the `with` block lasts: each
    sends whenever its socket has room and reads whatever echo has come. They are spread over
    `processes` child processes, so that together they outrun the server: its waits then always
    find ready descriptors and never sleep, which is the load under which a stop signal must still
    work. (One Python process alone is slower than the server, which then sleeps now and then.)

        with Flood(server.address, 100) as flood:
            assert flood.wait_until_streaming()
            ...
    """

    def __init__(self, address, count, processes=2, block=256 << 10):
        context = multiprocessing.get_context("fork")
        self.stop, self.echoed = context.Event(), context.Value("q", 0)
        shares = [count // processes + (i < count % processes) for i in range(processes)]
        self.children = [context.Process(target=self._stream, args=(address, share, block), daemon=True)
                         for share in shares]

    def __enter__(self):
        for child in self.children:
            child.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for child in self.children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()

    def wait_until_streaming(self, timeout=5.0, ramp=1.0):
        """Waits until the first STREAMING bytes of echo came back (False if not within timeout),
        then `ramp` seconds more: TCP's windows grow over the first second or so, and only then
        do the server's receive queues stay full between its waits."""
        deadline = time.monotonic() + timeout
        while self.echoed.value < STREAMING:
            if time.monotonic() > deadline or not any(child.is_alive() for child in self.children):
                return False
            time.sleep(0.01)  # the counter lives in other processes: polled
        time.sleep(ramp)  # the ramp is the point: a flood at full strength, not a wait for an event
        return True

    def _stream(self, address, count, block):
        """In a child process: `count` connections, each sending `block` and draining its echo."""
        data, sink = bytes(block), bytearray(1 << 20)
        socks = [socket.create_connection(address, timeout=5) for _ in range(count)]
        with selectors.DefaultSelector() as selector:
            for sock in socks:
                sock.setblocking(False)
                selector.register(sock, selectors.EVENT_READ | selectors.EVENT_WRITE)
            while not self.stop.is_set() and selector.get_map():
                for key, events in selector.select(0.1):
                    received = move_bytes(key.fileobj, events, data, sink)
                    if received is None:
                        selector.unregister(key.fileobj)
                    elif received:
                        with self.echoed.get_lock():
                            self.echoed.value += received
        for sock in socks:
            sock.close()


def move_bytes(sock, events, data, sink):
    """One send and one receive as the socket allows; the bytes received, None once it is over."""
    received = 0
    try:
        if events & selectors.EVENT_WRITE:
            sock.send(data)
        if events & selectors.EVENT_READ:
            received = sock.recv_into(sink)
            if received == 0:
                return None
    except BlockingIOError:
        pass
    except OSError:
        return None
    return received


def round_trips_during_flood(address, hoses=1, count=20, settle=0.5):
    """Round-trip times (seconds) of a third client while `hoses` clients flood the server."""
    stop = threading.Event()
    floods = [threading.Thread(target=flood, args=(address, stop), daemon=True) for _ in range(hoses)]
    for thread in floods:
        thread.start()
    time.sleep(settle)  # let the floods reach full speed before measuring
    times = []
    try:
        with connect(*address, timeout=10) as sock:
            for index in range(count):
                start = time.monotonic()
                round_trip(sock, b"ping %d" % index)
                times.append(time.monotonic() - start)
    finally:
        stop.set()
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--hoses", type=int, default=1)
    parser.add_argument("--round-trips", type=int, default=20)
    args = parser.parse_args()
    times = sorted(round_trips_during_flood((args.host, args.port), args.hoses, args.round_trips))
    print(f"{len(times)} round trips during a flood by {args.hoses} client(s): "
          f"median {times[len(times) // 2] * 1e3:.2f} ms, worst {times[-1] * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
