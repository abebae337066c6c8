#!/usr/bin/env python3
"""Scenarios that need TCP buffers of a chosen size, so each runs in a private network namespace
(unshare) whose net.ipv4.tcp_wmem / tcp_rmem it sets: on this host the send buffer grows to 4 MiB at
once, which hides what small buffers show, and a new connection's receive window starts small,
which keeps a burst from arriving whole while the server is stopped.

- slow-reader (16-128 KiB send buffers): one client sends as fast as the server takes its bytes
  and reads the echo steadily, but slower. The server's output never drains completely, and a
  buffer that keeps sent bytes until it is empty grows by every byte echoed.
- one-message (16 KiB send buffers): a 64 KiB message, sent while the server is stopped, is read
  whole; the socket takes part of its echo and the server must ask for writability to send the
  rest; a server that decides what to wait for before serving a connection, not after, waits for
  input that never comes.
- drain-after-fin (16 KiB send buffers): the client half-closes and reads its echo slowly; lesson
  06's idle timer must count the server's writes as activity.
- burst-while-stopped (4 MiB receive buffers): a burst of 2.5 turns (lesson 05's fairness bound)
  waits whole in the server's socket while it is stopped, so one edge announces all of it.

By hand (as root, or where unprivileged user namespaces are allowed):
    clients/tcp_namespace.py build/solutions/05/server --seconds 10
    clients/tcp_namespace.py build/solutions/03/server --scenario one-message
    clients/tcp_namespace.py build/solutions/06/server --scenario drain-after-fin --pace 262144 -- --idle-timeout 0.5
    clients/tcp_namespace.py build/solutions/05/server --scenario burst-while-stopped
From tests: from clients.tcp_namespace import measure_in_namespace, NamespaceUnavailable
"""

import argparse
import fcntl
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.echo_client import connect, round_trip  # noqa: E402
from clients.idle import read_paced  # noqa: E402
from clients.server_process import Server, split_server_flags  # noqa: E402
from clients.tcp_queues import recv_until_quiet, send_while_paused  # noqa: E402

BLOCK = os.urandom(1 << 20)  # what the clients send, again and again
SMALL = "4096 16384 16384"       # tcp_wmem (min default max): no room to grow at all


class NamespaceUnavailable(Exception):
    """unshare is missing or not permitted here (a container without CAP_SYS_ADMIN, say)."""


def bring_loopback_up():
    """A new network namespace has only `lo`, and it is down: SIOCSIFFLAGS with IFF_UP."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH", b"lo", 0)
        flags = struct.unpack("16sH", fcntl.ioctl(sock, siocgifflags, request)[:18])[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH", b"lo", flags | iff_up))


def stream_at_full_speed(sock, stop):
    """Sends BLOCK again and again until stop is set or the connection fails."""
    try:
        while not stop.is_set():
            sock.sendall(BLOCK)
    except OSError:
        pass


def slow_reader(server, seconds, pace):
    """One client sends as fast as the server takes its bytes and reads the echo steadily, slower."""
    rss_start = peak = server.rss_kib()
    sock = socket.create_connection(server.address, timeout=5)
    stop = threading.Event()
    sender = threading.Thread(target=stream_at_full_speed, args=(sock, stop), daemon=True)
    sender.start()
    deadline = time.monotonic() + seconds

    def watch():
        nonlocal peak
        peak = max(peak, server.rss_kib())
        if time.monotonic() > deadline and not stop.is_set():
            stop.set()
            sock.shutdown(socket.SHUT_RDWR)  # ends read_paced

    received = read_paced(sock, pace, watch)
    stop.set()
    sender.join(timeout=5)
    sock.close()
    whole = len(received) - len(received) % len(BLOCK)
    exact = all(received[i:i + len(BLOCK)] == BLOCK for i in range(0, whole, len(BLOCK)))
    return {"rss_start_kib": rss_start, "rss_peak_kib": peak, "growth_mib": (peak - rss_start) / 1024,
            "echoed_mib": len(received) / (1 << 20),
            "echo_exact": exact and received[whole:] == BLOCK[:len(received) - whole]}


def one_message(server, seconds, pace):
    """One 64 KiB message to a client with a 4 KiB receive buffer: most of the echo must wait. It
    is sent while the server is stopped, so that one read (64 KiB) takes all of it, and the turn
    that leaves echo pending starts with none: the next wait has nothing to read."""
    message = BLOCK[:64 << 10]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(3)
        sock.connect(server.address)
        whole = send_while_paused(server.pid, sock, message)
        received = bytearray()
        try:
            while len(received) < len(message) and (chunk := sock.recv(len(message))):
                received += chunk
        except socket.timeout:
            pass
    return {"sent": len(message), "echoed": len(received), "echo_exact": received == message,
            "sent_while_stopped": whole}


def drain_after_fin(server, seconds, pace):
    """The client sends 640 KiB at once, half-closes, and from then on only reads, at `pace`: once
    the server has read everything, what it still owes leaves only as fast as the client reads."""
    data = BLOCK[:640 << 10]
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 << 10)
        sock.settimeout(5)
        sock.connect(server.address)

        def send_then_shut():
            try:
                sock.sendall(data)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # cut off: the echo below says so
        sender = threading.Thread(target=send_then_shut, daemon=True)
        sender.start()
        start = time.monotonic()
        received = read_paced(sock, pace)
        sender.join(timeout=5)
    return {"sent": len(data), "echoed": len(received), "echo_exact": received == data,
            "seconds": time.monotonic() - start}


def burst_while_stopped(server, seconds, pace):
    """A burst of 640 KiB (2.5 turns of four 64 KiB reads) sent while the server is stopped, all of
    it acknowledged (queued in its socket) before it continues: one edge for all of it."""
    burst = BLOCK[:640 << 10]
    with connect(*server.address, timeout=5) as sock:
        hello = round_trip(sock, b"hello")
        fitted = send_while_paused(server.pid, sock, burst, timeout=2.0)
        echoed = recv_until_quiet(sock, 0.5)
    return {"hello": hello == b"hello", "fitted": fitted, "sent": len(burst), "echoed": len(echoed),
            "echo_exact": echoed == burst}


# scenario: (tcp_wmem, tcp_rmem or None to keep the default, the function)
SCENARIOS = {"slow-reader": ("4096 16384 131072", None, slow_reader),
             "one-message": (SMALL, None, one_message),
             "drain-after-fin": (SMALL, None, drain_after_fin),
             "burst-while-stopped": (None, "4096 4194304 6291456", burst_while_stopped)}


def inside(binary, scenario, server_args, seconds, pace):
    """In the new namespace: small send buffers, the server, the scenario; prints the findings."""
    send_buffers, receive_buffers, run = SCENARIOS[scenario]
    bring_loopback_up()
    if send_buffers:
        pathlib.Path("/proc/sys/net/ipv4/tcp_wmem").write_text(send_buffers)
    if receive_buffers:
        pathlib.Path("/proc/sys/net/ipv4/tcp_rmem").write_text(receive_buffers)
    server = Server(pathlib.Path(binary), ["--quiet", *server_args])
    try:
        found = run(server, seconds, pace)
        code, stop_seconds = server.stop()
        print(json.dumps({**found, "exit_code": code, "stop_seconds": stop_seconds,
                          "stderr": server.stderr()[-2000:]}))
    finally:
        server.kill()


def measure_in_namespace(binary, scenario="slow-reader", server_args=(), seconds=4.0, pace=4 << 20):
    """Runs a scenario against the server in a new network namespace; raises NamespaceUnavailable
    if it cannot make one."""
    if shutil.which("unshare") is None:
        raise NamespaceUnavailable("unshare (util-linux) is not installed")
    user = [] if os.geteuid() == 0 else ["--map-root-user"]  # a user namespace grants the rights
    command = ["unshare", "--net", *user, sys.executable, __file__, str(binary), "--inside",
               "--scenario", scenario, "--seconds", str(seconds), "--pace", str(pace),
               *(["--", *server_args] if server_args else [])]
    result = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 30)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise NamespaceUnavailable(f"`{' '.join(command[:3])} ...` failed: "
                                   f"{(result.stderr.strip().splitlines() or ['no reason given'])[-1]}")
    return json.loads(lines[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("binary", help="the server to measure, e.g. build/solutions/05/server")
    parser.add_argument("--scenario", choices=SCENARIOS, default="slow-reader")
    parser.add_argument("--seconds", type=float, default=10, help="how long the slow reader reads")
    parser.add_argument("--pace", type=int, default=4 << 20, help="bytes per second the client reads")
    parser.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    own, server_args = split_server_flags(sys.argv[1:])
    args = parser.parse_args(own)
    args.server_args = server_args
    if args.inside:
        return inside(args.binary, args.scenario, args.server_args, args.seconds, args.pace)
    try:
        found = measure_in_namespace(args.binary, args.scenario, args.server_args, args.seconds, args.pace)
    except NamespaceUnavailable as reason:
        sys.exit(f"tcp_namespace: {reason}")
    found.pop("stderr")
    print(f"{args.binary}, {args.scenario}: {json.dumps(found)}")


if __name__ == "__main__":
    main()
