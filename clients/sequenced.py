#!/usr/bin/env python3
"""Many clients stream sequence-numbered data at once, and each checks its echo record by record.
A server that lets two threads serve one connection at the same time sends pieces back out of
order; this says which client, where, and what came back instead.

Each client sends 8-byte records, big-endian: its own number in the top 16 bits, the record's
position in the low 48. Every byte that comes back is compared with the byte sent at that position;
at the first difference it looks for the bytes found there in what it sent: sent later (reordered),
sent earlier (repeated), or never sent by this client (crossed between connections, or garbage).

By hand:   clients/sequenced.py --port 7010 [--clients 64] [--mib 2] [--processes 2]
From tests: from clients.sequenced import stream_numbered
"""

import argparse
import array
import multiprocessing
import pathlib
import queue
import selectors
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.echo_client import connect  # noqa: E402

RECORD = 8
CHUNK = 64 << 10


def positions(count):
    """count records 0, 1, 2 ... as 8-byte big-endian numbers: client 0's stream."""
    records = array.array("Q", range(count))
    if sys.byteorder == "little":
        records.byteswap()
    return records.tobytes()


def numbered(client, size, base=None):
    """size bytes (a multiple of 8) of records (client << 48) | position, big-endian. base: client
    0's stream of at least that size, to copy instead of counting again."""
    count = size // RECORD
    data = bytearray(base[:size] if base is not None else positions(count))
    data[0::RECORD] = bytes([client >> 8 & 0xff]) * count  # the top 16 bits: the client's number
    data[1::RECORD] = bytes([client & 0xff]) * count
    return bytes(data)


class Stream:
    """One client: what it sends, how far it has sent and had echoed, and the first problem."""

    def __init__(self, address, client, size, base=None, chunk=CHUNK):
        self.client = client
        self.chunk = chunk
        self.data = numbered(client, size, base)
        self.sent = self.received = 0
        self.problem = None
        self.sock = connect(*address, timeout=5)
        self.sock.setblocking(False)

    @property
    def done(self):
        return self.problem is not None or self.received == len(self.data)

    def send_some(self):
        try:
            self.sent += self.sock.send(self.data[self.sent:self.sent + self.chunk])
        except BlockingIOError:
            pass
        except OSError as error:
            self.problem = f"sending failed after {self.sent} bytes: {error}"

    def receive_some(self):
        try:
            chunk = self.sock.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError as error:
            self.problem = f"the connection failed after {self.received} bytes echoed: {error}"
            return
        if not chunk:
            self.problem = f"the server closed the connection after echoing {self.received} of {len(self.data)} bytes"
            return
        expected = self.data[self.received:self.received + len(chunk)]
        if chunk != expected:
            self.problem = self.first_difference(chunk, expected)
        self.received += len(chunk)

    def first_difference(self, chunk, expected):
        if len(chunk) > len(expected) and chunk.startswith(expected):
            return f"got {len(chunk) - len(expected)} bytes more than were sent"
        index = next(i for i, (got, want) in enumerate(zip(chunk, expected)) if got != want)
        position = self.received + index
        piece = chunk[index:index + 2 * RECORD]
        origin = self.data.find(piece) if len(piece) == 2 * RECORD else -1
        if origin < 0:
            came = "bytes this client never sent there (another client's, or garbage)"
        else:
            came = f"the bytes this client sent at position {origin} ({origin - position:+d})"
        return f"byte {position} (record {position // RECORD}) differs: the echo holds {came}"

    def close(self):
        self.sock.close()


def stream_share(address, first, clients, size, timeout, chunk):
    """Clients first .. first + clients - 1, in this process. Returns {client: problem}."""
    base = positions(size // RECORD)
    streams = [Stream(address, client, size, base, chunk) for client in range(first, first + clients)]
    selector = selectors.DefaultSelector()
    for stream in streams:
        selector.register(stream.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, stream)
    deadline = time.monotonic() + timeout
    try:
        active = len(streams)
        while active and time.monotonic() < deadline:
            for key, mask in selector.select(timeout=1.0):
                stream = key.data
                if mask & selectors.EVENT_READ:
                    stream.receive_some()
                if mask & selectors.EVENT_WRITE and not stream.done:
                    stream.send_some()
                    if stream.sent == len(stream.data):
                        selector.modify(stream.sock, selectors.EVENT_READ, stream)
                if stream.done:
                    selector.unregister(stream.sock)
                    stream.close()
                    active -= 1
        for stream in streams:
            if not stream.done:
                stream.problem = (f"after {timeout:.0f} s only {stream.received} of {len(stream.data)} bytes "
                                  f"had come back")
        return {s.client: s.problem for s in streams if s.problem}
    finally:
        selector.close()
        for stream in streams:
            stream.close()


def _stream_in_child(results, address, first, clients, *args):
    try:
        results.put((first, stream_share(address, first, clients, *args)))
    except OSError as error:  # could not even connect (the server died, say): none of these was served
        results.put((first, {client: f"connecting failed: {error}" for client in range(first, first + clients)}))


def stream_numbered(address, clients=64, size=2 << 20, timeout=30.0, chunk=CHUNK, processes=2):
    """`clients` clients, spread over `processes` child processes, each streams `size` bytes of its
    own records (in sends of at most `chunk` bytes) while reading the echo. Several processes keep
    the server's threads busier than one Python process can. Returns {client number: what went
    wrong} for every client whose echo was not exact (empty: all exact), and the seconds it took."""
    size -= size % RECORD
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    shares = [clients // processes + (i < clients % processes) for i in range(processes)]
    firsts = [sum(shares[:i]) for i in range(processes)]
    children = [context.Process(target=_stream_in_child, daemon=True,
                                args=(results, address, first, share, size, timeout, chunk))
                for first, share in zip(firsts, shares)]
    start = time.monotonic()
    for child in children:
        child.start()
    problems, answered = {}, set()
    try:
        for _ in children:
            first, found = results.get(timeout=timeout + 10)
            problems.update(found)
            answered.add(first)
    except queue.Empty:  # every client of a process that never answered counts as not exact
        for first, share in zip(firsts, shares):
            if first not in answered:
                problems.update({client: f"its client process gave no answer within {timeout + 10:.0f} s"
                                 for client in range(first, first + share)})
    finally:
        for child in children:
            child.join(timeout=5)
            if child.is_alive():
                child.kill()
    return problems, time.monotonic() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7010)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--mib", type=float, default=2)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args()
    problems, seconds = stream_numbered((args.host, args.port), args.clients, int(args.mib * (1 << 20)),
                                        processes=args.processes)
    total = args.clients * args.mib
    print(f"{args.clients} clients streamed {total:.0f} MiB in {seconds:.1f} s: "
          f"{args.clients - len(problems)} exact, {len(problems)} not")
    for client, problem in sorted(problems.items()):
        print(f"  client {client}: {problem}")
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
