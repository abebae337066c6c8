#!/usr/bin/env python3
"""What the kernel holds in a TCP connection's queues, the Send-Q and Recv-Q columns of `ss -tn`:
bytes a sender has not had acknowledged yet, and bytes a receiver has not read yet. Lesson 05's
tests use them to show where the bytes an edge-triggered server left unread actually are.

By hand, the edge-triggered stall (lesson 05):
    build/solutions/05/server --et-read-once &
    clients/tcp_queues.py --port 7005 --pid $!
From tests: from clients.tcp_queues import paused, send_while_paused, server_side_unread, server_side_queues,
            recv_until_quiet
"""

import argparse
import array
import contextlib
import fcntl
import os
import pathlib
import signal
import socket
import struct
import sys
import termios
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from clients.echo_client import connect, round_trip  # noqa: E402
from clients.server_process import TcpSocket, proc_tcp_sockets  # noqa: E402


def bytes_waiting(sock):
    """Bytes in sock's receive queue, not read yet (FIONREAD)."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.FIONREAD, count)
    return count[0]


def unacknowledged_bytes(sock):
    """Bytes sock has sent that the peer's kernel has not acknowledged yet (SIOCOUTQ, the FIN
    included). 0 means everything sent is in the peer's receive queue, or already read."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    return count[0]


def queues(local_port, remote_port):
    """(Send-Q, Recv-Q) of `ss -tn` for the local TCP socket local_port <-> remote_port: bytes sent
    but not acknowledged yet (or not even sent), and bytes received but not read yet. None if there
    is no such socket. Asked of the kernel as `ss` asks it (sock_diag), or read from /proc/net/tcp
    where netlink is not allowed."""
    def find(sockets):
        return next((sock for sock in sockets if (sock.local_port, sock.remote_port) == (local_port, remote_port)),
                    None)
    try:
        found = find(diag_tcp_sockets())
    except OSError:
        found = find(proc_tcp_sockets())
    return found and (found.send_q, found.recv_q)


# sock_diag (man 7 sock_diag): one request, a reply per socket. The states asked for leave out
# TIME_WAIT: after a suite's worth of connections there are thousands, and /proc/net/tcp lists them
# all: 64 ms a read at 15,000 lines, against 6 ms this way.
NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, NLMSG_DONE, NLMSG_ERROR = 4, 20, 3, 2
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
TCP_TIME_WAIT = 6
NOT_TIME_WAIT = 0xFFF & ~(1 << TCP_TIME_WAIT)


def diag_tcp_sockets():
    """Every TCP socket but those in TIME_WAIT, IPv4 then IPv6, as TcpSocket records (as in ss, a
    listener's Send-Q is its backlog; /proc/net/tcp says 0)."""
    for family in (socket.AF_INET, socket.AF_INET6):
        with socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG) as netlink:
            # nlmsghdr, then inet_diag_req_v2: family, protocol, extensions, pad, states, an all-zero sockid.
            request = struct.pack("=BBBxI", family, socket.IPPROTO_TCP, 0, NOT_TIME_WAIT) + bytes(48)
            netlink.send(struct.pack("=IHHII", 16 + len(request), SOCK_DIAG_BY_FAMILY,
                                     NLM_F_REQUEST | NLM_F_DUMP, 1, 0) + request)
            yield from diag_replies(netlink)


def diag_replies(netlink):
    while True:
        data, offset = netlink.recv(1 << 16), 0
        while offset + 16 <= len(data):
            length, kind = struct.unpack_from("=IH", data, offset)
            if kind == NLMSG_DONE:
                return
            if kind == NLMSG_ERROR:
                raise OSError("sock_diag refused the request")
            # inet_diag_msg after the 16-byte nlmsghdr: family, state, timer, retrans; the sockid
            # (ports first, big-endian); 52 bytes in: expires, rqueue, wqueue, uid, inode.
            state = data[offset + 16 + 1]
            local_port, remote_port = struct.unpack_from("!HH", data, offset + 16 + 4)
            recv_q, send_q, _, inode = struct.unpack_from("=IIII", data, offset + 16 + 56)
            yield TcpSocket(local_port, remote_port, state, send_q, recv_q, str(inode))
            offset += (length + 3) & ~3


def unread_bytes(local_port, remote_port):
    """The Recv-Q of the local TCP socket local_port <-> remote_port; None if there is none."""
    found = queues(local_port, remote_port)
    return found and found[1]


def server_side_unread(server_port, client_sock):
    """Recv-Q of the server's end of client_sock's connection: what the server has not read yet."""
    return unread_bytes(server_port, client_sock.getsockname()[1])


def server_side_queues(server_port, client_sock):
    """(Send-Q, Recv-Q) of the server's end of client_sock's connection."""
    return queues(server_port, client_sock.getsockname()[1])


def recv_until_quiet(sock, quiet):
    """Everything that arrives until nothing more has come for `quiet` seconds (or EOF)."""
    chunks = []
    saved = sock.gettimeout()
    sock.settimeout(quiet)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except socket.timeout:
        pass
    finally:
        sock.settimeout(saved)
    return b"".join(chunks)


def process_state(pid):
    """The state letter of /proc/PID/stat: R running, S sleeping, T stopped..."""
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().rpartition(")")[2].split()[0]


@contextlib.contextmanager
def paused(pid, timeout=2.0):
    """Stops process pid (SIGSTOP) for the block and continues it after. Bytes sent to it meanwhile
    pile up in its receive queues, so when it wakes they are all there at once: one edge for all.

    kill() returns before the process has stopped: woken from epoll_wait to stop, it could still
    collect an event for bytes sent in that moment. So the block starts only once it is stopped."""
    os.kill(pid, signal.SIGSTOP)
    try:
        deadline = time.monotonic() + timeout
        while process_state(pid) != "T" and time.monotonic() < deadline:
            time.sleep(0.001)  # another process's state: polled, there is nothing to wait on
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def send_while_paused(pid, sock, *sends, shutdown=False, timeout=2.0):
    """Stops pid, makes each send (bytes, or (bytes, flags)) on sock, then shutdown(SHUT_WR) if
    asked, waits until the peer's kernel has acknowledged all of it, and continues pid. Returns
    False if it did not all fit in the peer's receive window within timeout."""
    with paused(pid):
        for item in sends:
            data, flags = item if isinstance(item, tuple) else (item, 0)
            sock.sendall(data, flags)
        if shutdown:
            sock.shutdown(socket.SHUT_WR)
        deadline = time.monotonic() + timeout
        while unacknowledged_bytes(sock) and time.monotonic() < deadline:
            time.sleep(0.005)  # another process's kernel state: polled, there is nothing to wait on
        return unacknowledged_bytes(sock) == 0


def demonstrate_stall(host, port, pid, size, quiet=0.5):
    """Sends size bytes while server pid is stopped, then reports what came back, what the server
    left in its receive queue, and what one more byte (a new edge) releases."""
    with connect(host, port) as sock:
        round_trip(sock, b"hello")
        if not send_while_paused(pid, sock, os.urandom(size)):
            sys.exit("the burst did not fit in the server's receive window; try a smaller --size")
        echoed = len(recv_until_quiet(sock, quiet))
        print(f"sent {size} bytes while the server was stopped: {echoed} came back, then nothing for {quiet} s")
        print(f"the server's receive queue (Recv-Q of `ss -tn 'sport = :{port}'`) holds "
              f"{server_side_unread(port, sock)} bytes")
        sock.sendall(b"!")
        more = len(recv_until_quiet(sock, quiet))
        print(f"sent 1 more byte (a new edge): {more} more came back; "
              f"Recv-Q now {server_side_unread(port, sock)} bytes")


def main():
    parser = argparse.ArgumentParser(description="Shows the edge-triggered stall of a server that reads once per edge.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=7005)
    parser.add_argument("--pid", type=int, required=True, help="the server's process id (it is stopped for a moment)")
    parser.add_argument("--size", type=int, default=80 * 1024, help="burst size (default: one 64 KiB read and a quarter)")
    args = parser.parse_args()
    demonstrate_stall(args.host, args.port, args.pid, args.size)


if __name__ == "__main__":
    main()
