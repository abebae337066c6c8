#!/usr/bin/env python3
"""A soak under random faults: many concurrent clients doing a random mix of polite and rude
things to one server for a bounded time, checking that every polite client got exactly its bytes.

    clients/soak.py build/solutions/05/server --seconds 60 --clients 64
    clients/soak.py build/solutions/0[2-7]/server --seconds 10       (one table row per server)

The mix: echo of random binary data in random chunks, half-close, an abrupt RST mid-transfer,
connect-and-vanish, and slow readers. Afterwards the server must be alive, hold the descriptors it
started with, have stayed within a memory bound, and exit 0 on SIGTERM. Exit code 1 on any failure.
"""

import argparse
import asyncio
import pathlib
import random
import socket
import struct
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.server_process import STOP_TIMEOUT, Server  # noqa: E402

IO_TIMEOUT = 20.0
RSS_BOUND_MIB = 64  # growth allowed over the start; backpressure keeps each client's share small


class Tally:
    def __init__(self):
        self.connections = self.bytes_verified = self.faults = 0
        self.failures = []


async def send_in_random_chunks(writer, data, rng, then_half_close):
    offset = 0
    while offset < len(data):
        size = rng.randint(1, 65536)
        writer.write(data[offset:offset + size])
        await writer.drain()
        offset += size
    if then_half_close:
        writer.write_eof()  # shutdown(SHUT_WR): the server owes us the rest, then EOF


async def read_exactly(reader, size, chunk=1 << 20, pause=0.0):
    parts, got = [], 0
    while got < size:
        part = await reader.read(min(chunk, size - got))
        if not part:
            break
        parts.append(part)
        got += len(part)
        if pause:
            await asyncio.sleep(pause)  # a slow reader: the server must buffer, then push back
    return b"".join(parts)


def reset(writer):
    """Closes with RST (SO_LINGER 0) instead of FIN, like a crashed or killed peer."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def polite_echo(address, rng, tally, half_close, slow):
    data = rng.randbytes(rng.choice([1, 100, 4096, 65536, 300_000, 1 << 20]))
    reader, writer = await asyncio.open_connection(*address)
    sender = asyncio.ensure_future(send_in_random_chunks(writer, data, rng, half_close))
    # If the read side fails first, the sender's own error is expected noise: mark it as seen.
    sender.add_done_callback(lambda task: task.cancelled() or task.exception())
    try:
        echoed = await read_exactly(reader, len(data), chunk=4096 if slow else 1 << 20,
                                    pause=0.002 if slow else 0.0)
        await sender
        if half_close and await reader.read(1) != b"":
            tally.failures.append("half-close: no EOF after everything owed was echoed")
    finally:
        sender.cancel()
        writer.close()
    if echoed != data:
        tally.failures.append(f"{'half-close' if half_close else 'slow' if slow else 'echo'}: "
                              f"got {len(echoed)} of {len(data)} bytes back"
                              f"{', wrong bytes' if len(echoed) == len(data) else ''}")
    else:
        tally.bytes_verified += len(data)


async def rude(address, rng, tally, kind):
    reader, writer = await asyncio.open_connection(*address)
    tally.faults += 1
    if kind == "rst":  # reset mid-transfer, with echo bytes still in flight
        writer.write(rng.randbytes(rng.randint(1, 1 << 20)))
        await asyncio.sleep(rng.random() * 0.01)  # so the reset lands at a random point
        reset(writer)
    elif kind == "vanish":  # connect, maybe send, close without reading anything back
        if rng.random() < 0.5:
            writer.write(rng.randbytes(rng.randint(1, 100_000)))
        writer.close()


async def one_client(address, rng, tally):
    kind = rng.choices(["echo", "half-close", "slow", "rst", "vanish"], weights=[4, 2, 1, 2, 2])[0]
    tally.connections += 1
    try:
        if kind in ("rst", "vanish"):
            await rude(address, rng, tally, kind)
        else:
            await asyncio.wait_for(polite_echo(address, rng, tally, kind == "half-close", kind == "slow"),
                                   IO_TIMEOUT)
    except (asyncio.TimeoutError, OSError) as error:
        if kind not in ("rst", "vanish"):
            tally.failures.append(f"{kind}: {type(error).__name__} {error}")


async def worker(address, seed, deadline, tally):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        await one_client(address, rng, tally)


async def watch_memory(server, deadline, peak):
    while time.monotonic() < deadline:
        peak[0] = max(peak[0], server.rss_kib())
        await asyncio.sleep(0.1)  # sampling period of the memory watch


async def soak_running(server, seconds, clients, seed):
    tally = Tally()
    peak = [server.rss_kib()]
    deadline = time.monotonic() + seconds
    await asyncio.gather(watch_memory(server, deadline, peak),
                         *(worker(server.address, seed + i, deadline, tally) for i in range(clients)))
    return tally, peak[0]


def soak(binary, seconds, clients, seed, rss_bound_mib=RSS_BOUND_MIB):
    """Soaks one server; returns (row for the table, list of failures). rss_bound_mib=None skips
    the memory bound (under AddressSanitizer, whose quarantine keeps freed memory on purpose)."""
    server = Server(pathlib.Path(binary), ["--quiet"])
    rss_start = server.rss_kib()
    try:
        tally, rss_peak = asyncio.run(soak_running(server, seconds, clients, seed))
        failures = tally.failures
        if not server.alive():
            failures.append(f"the server died (exit code {server.proc.returncode})")
        else:
            if not server.settle():
                failures.append(f"fd leak: {server.fd_count()} descriptors after the soak, {server.baseline_fds} at "
                                f"start ({server.change_since_start()})")
            growth = (rss_peak - rss_start) / 1024
            if rss_bound_mib is not None and growth > rss_bound_mib:
                failures.append(f"memory grew {growth:.0f} MiB (bound {rss_bound_mib} MiB)")
            code, took = server.stop()
            if code != 0 or took > STOP_TIMEOUT:
                failures.append(f"SIGTERM gave exit {code} after {took:.2f} s (want 0 within {STOP_TIMEOUT} s)")
    finally:
        server.kill()
    row = (str(binary), tally.connections, tally.bytes_verified, tally.faults,
           (rss_peak - rss_start) / 1024, len(failures))
    return row, failures


def print_table(rows):
    print(f"{'server':<34} {'connections':>11} {'MiB verified':>12} {'faults':>7} {'RSS +MiB':>8} {'failures':>8}")
    for name, connections, verified, faults, growth, failures in rows:
        print(f"{name:<34} {connections:>11} {verified / (1 << 20):>12.1f} {faults:>7} {growth:>8.1f} {failures:>8}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("servers", nargs="+", help="server binaries to soak, one after another")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--clients", type=int, default=64, help="concurrent clients")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rows, all_failures = [], []
    for binary in args.servers:
        row, failures = soak(binary, args.seconds, args.clients, args.seed)
        rows.append(row)
        all_failures += [f"{binary}: {failure}" for failure in failures]
    print_table(rows)
    for failure in all_failures[:20]:
        print("FAILED", failure)
    sys.exit(1 if all_failures else 0)


if __name__ == "__main__":
    main()
