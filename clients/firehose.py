#!/usr/bin/env python3
"""Fairness under a fast sender: one client writes 8 MiB at a time as fast as it can while a
second thread reads its echo (so backpressure never stops it), and a third client measures its
own round trips meanwhile. A server that drains one socket to EAGAIN before serving anyone else
makes the third wait for as long as the flood keeps that socket's queue full.

By hand:   clients/firehose.py --port 7005 [--hoses 2] [--round-trips 20]
"""

import argparse
import pathlib
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
