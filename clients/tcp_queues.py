"""What the kernel holds in a TCP connection's queues, the Send-Q and Recv-Q columns of `ss -tn`:
bytes a sender has not had acknowledged yet, and bytes a receiver has not read yet. Lesson 05's
tests use them to show where the bytes an edge-triggered server left unread actually are.

From tests: from clients.tcp_queues import paused, unacknowledged_bytes, unread_bytes, recv_until_quiet
"""

import array
import contextlib
import fcntl
import os
import signal
import socket
import termios
import time


def unacknowledged_bytes(sock):
    """Bytes sock has sent that the peer's kernel has not acknowledged yet (SIOCOUTQ, the FIN
    included). 0 means everything sent is in the peer's receive queue, or already read."""
    count = array.array("i", [0])
    fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, count)
    return count[0]


def unread_bytes(local_port, remote_port):
    """Bytes waiting unread in the receive queue of the local TCP socket local_port <-> remote_port
    (the Recv-Q of `ss -tn`), from /proc/net/tcp and tcp6; None if there is no such socket."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            next(lines)  # the header
            for line in lines:
                fields = line.split()
                local, remote = fields[1].rpartition(":")[2], fields[2].rpartition(":")[2]
                if int(local, 16) == local_port and int(remote, 16) == remote_port:
                    return int(fields[4].partition(":")[2], 16)  # tx_queue:rx_queue
    return None


def server_side_unread(server_port, client_sock):
    """Recv-Q of the server's end of client_sock's connection: what the server has not read yet."""
    return unread_bytes(server_port, client_sock.getsockname()[1])


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
