"""Runs one server process for tests, the soak and the benchmarks: start it on a free port, wait
for its readiness line, read its descriptors, memory and CPU from /proc, stop it with a signal."""

import collections
import ctypes
import os
import resource
import select
import signal
import subprocess
import tempfile
import time

READY_TIMEOUT = 5.0
STOP_TIMEOUT = 1.0  # the contract: exit 0 within a second of SIGTERM
FD_SETTLE_TIMEOUT = 3.0


PR_SET_PDEATHSIG = 1
_libc = ctypes.CDLL(None, use_errno=True)


def busy(per_second):
    """Server.cpu_per_second() in words, for messages: it counts time in the run queue too, so a
    server that spins reads about 1 per thread that spins, even on a machine too busy to run it."""
    return f"wanted a CPU {per_second:.2f} s of every second (running, or ready to run)"


def split_server_flags(argv):
    """A client's command line split at "--": its own arguments, then the flags it passes on to the
    server it starts (`syscall_count.py BINARY --round-trips 1000 -- --workers 1`)."""
    if "--" not in argv:
        return list(argv), []
    at = argv.index("--")
    return list(argv[:at]), list(argv[at + 1:])


def _prepare_child(nofile):
    """Runs in the child before exec: it dies with the process that started it (even one killed
    with SIGKILL, whose clean-up never runs), and gets the descriptor limit it was asked for."""
    def prepare():
        _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    return prepare


class ServerError(AssertionError):
    """The server did not start as the contract says; the message says what it did instead."""


class ServerDied(AssertionError):
    """The server is gone when a test asked something of it; the message says how it ended."""


SANITIZER_MARKERS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                     "WARNING: ThreadSanitizer", "ThreadSanitizer:")


def describe_exit(code):
    """'exit code 1', or for a death by signal 'killed by SIGSEGV (a crash)'."""
    if code is None:
        return "still running"
    if code >= 0:
        return f"exit code {code}"
    name = signal.Signals(-code).name
    crash = {"SIGSEGV": "a crash: bad memory access",
             "SIGABRT": "it aborted: a failed check, a sanitizer report, or std::terminate, say a "
                        "std::thread destroyed unjoined",
             "SIGBUS": "a crash", "SIGFPE": "a crash: arithmetic error", "SIGILL": "a crash"}.get(name)
    return f"killed by {name}" + (f" ({crash})" if crash else "")


def socket_inodes_in(tables):
    """The inodes of the sockets listed in /proc/net tables such as tcp, tcp6, unix."""
    inodes = set()
    for table in tables:
        try:
            with open(f"/proc/net/{table}") as lines:
                header = next(lines).split()
                column = header.index("Inode") if "Inode" in header else 9
                inodes.update(line.split()[column] for line in lines)
        except (FileNotFoundError, IndexError, ValueError):
            pass
    return inodes


TcpSocket = collections.namedtuple("TcpSocket", "local_port remote_port state send_q recv_q inode")


def proc_tcp_sockets():
    """Every TCP socket the kernel lists in /proc/net/tcp and tcp6, TIME_WAIT included, as a
    TcpSocket: state is the kernel's number (see TCP_STATES), inode as /proc/PID/fd names it."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as lines:
                next(lines)  # the header
                for line in lines:
                    fields = line.split()
                    send_q, _, recv_q = fields[4].partition(":")  # tx_queue:rx_queue
                    yield TcpSocket(int(fields[1].rpartition(":")[2], 16), int(fields[2].rpartition(":")[2], 16),
                                    int(fields[3], 16), int(send_q, 16), int(recv_q, 16), fields[9])
        except FileNotFoundError:  # tcp6 where IPv6 is off
            pass


TCP_STATES = {1: "ESTABLISHED", 6: "TIME_WAIT", 8: "CLOSE_WAIT", 10: "LISTEN"}  # the kernel's numbers


def tcp_states_on_port(port):
    """{state name: count} of the TCP sockets whose local port is `port`."""
    return collections.Counter(TCP_STATES.get(sock.state, sock.state) for sock in proc_tcp_sockets()
                               if sock.local_port == port)


class Server:
    """One server process started with --port 0, from its readiness line to its exit."""

    def __init__(self, binary, args=(), nofile=None, env=None, stderr=None):
        """stderr: where the server's stderr goes (a file or descriptor); by default a temporary
        file that stderr() reads back."""
        self.binary = binary
        self.stderr_file = tempfile.TemporaryFile() if stderr is None else None
        self.proc = subprocess.Popen([str(binary), "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=stderr if stderr is not None else self.stderr_file,
                                     preexec_fn=_prepare_child(nofile), env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        self.host, self.port = self._wait_until_listening()
        self.baseline_fds = self.fd_count()
        self.baseline_files = self.open_files()
        self.stopped = False  # set once a test or the fixture sends the stop signal
        self.stuck_cpu = 0.0

    def _wait_until_listening(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline().decode(errors="replace").strip() if ready else ""
        if not line.startswith("listening on "):
            self.kill()
            raise ServerError(f"{self.binary.name} should print 'listening on HOST:PORT' on stdout within "
                        f"{READY_TIMEOUT} s of starting; instead it printed {line!r} "
                        f"(exit code {self.proc.poll()}).\nIts stderr:\n{self.stderr()}")
        host, _, port = line[len("listening on "):].rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def address(self):
        return (self.host, self.port)

    def stderr(self):
        if self.stderr_file is None:
            return ""
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def how_it_ended(self):
        """A sentence for a failure message: how the server ended, and the first line of a
        sanitizer's report if its stderr holds one."""
        text = f"the server died: {describe_exit(self.proc.poll())}{self.last_words()}"
        report = next((line.strip() for line in self.stderr().splitlines()
                       if any(marker in line for marker in SANITIZER_MARKERS)), None)
        if report:
            text += f". The sanitizer says: {report}"
        elif self.proc.poll() is not None and self.proc.poll() < 0:
            text += (f". To see where, run the lesson under AddressSanitizer: "
                     f"make check-{self.binary.parent.name} SAN=1")
        return text

    def descriptors(self):
        """The numbers of the server's open descriptors (the names in /proc/PID/fd)."""
        if not self.alive():  # a dead process holds no descriptors, and that is no leak
            raise ServerDied(self.how_it_ended())
        try:
            return os.listdir(f"/proc/{self.pid}/fd")
        except FileNotFoundError:
            raise ServerDied(self.how_it_ended()) from None

    def fd_count(self):
        return len(self.descriptors())

    def open_files(self):
        """What the server's descriptors refer to, as a multiset of their /proc/PID/fd links
        ("/dev/null": a spare; "socket:[inode]": the listener, or a connection), whatever their
        numbers: a spare closed and opened again may get another number."""
        files = collections.Counter()
        for name in self.descriptors():
            try:
                files[os.readlink(f"/proc/{self.pid}/fd/{name}")] += 1
            except OSError:  # closed meanwhile
                continue
        return files

    def settle(self, timeout=FD_SETTLE_TIMEOUT):
        """Waits until the server holds what it held at start: the same open files, not only as
        many. With threads the count passes the start's on its way down (a connection not yet
        closed where a spare is not yet back), so a count alone can be met too early. True if
        it settled."""
        settled = lambda: self.open_files() == self.baseline_files  # noqa: E731
        return wait_until(settled, timeout, settled)

    def change_since_start(self):
        """What the server holds now that it did not at start, and what it held then and no longer
        does: "gone: /dev/null; new: socket:[123]"."""
        now = self.open_files()
        gone, new = self.baseline_files - now, now - self.baseline_files
        parts = [f"{label}: {', '.join(sorted(files.elements()))}" for label, files in (("gone", gone), ("new", new))
                 if files]
        return "; ".join(parts) or "the same files as at start"

    def dead_sockets(self):
        """Sockets the server holds that the kernel has already closed: a peer reset them (an RST
        takes a TCP socket out of the kernel's tables at once) and the server never noticed."""
        return len(self.socket_inodes() - socket_inodes_in(["tcp", "tcp6", "udp", "udp6", "unix", "raw", "netlink"]))

    def socket_inodes(self):
        """The inodes of the sockets the server holds (its /proc/PID/fd links read socket:[inode])."""
        return {target[8:-1] for target in self.open_files() if target.startswith("socket:[")}

    def unclosed_connections(self):
        """Connections the clients closed but the server did not (CLOSE_WAIT): it never read the
        FIN, or read it and kept the connection."""
        return tcp_states_on_port(self.port).get("CLOSE_WAIT", 0)

    def status_field(self, name):
        """A number from /proc/PID/status: VmRSS (KiB), voluntary_ctxt_switches (times it slept)."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith(name + ":"):
                    return int(line.split()[1])
        raise LookupError(f"/proc/{self.pid}/status has no {name} line")

    def rss_kib(self):
        return self.status_field("VmRSS")

    def cpu_seconds(self):
        with open(f"/proc/{self.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def schedstat_seconds(self, fields=(0, 1)):
        """Sums fields of /proc/PID/task/*/schedstat over the server's threads, in seconds: field 0
        is time on a CPU, field 1 time waiting in the run queue (nanosecond resolution, unlike
        the clock ticks of /proc/PID/stat)."""
        total = 0
        for task in os.listdir(f"/proc/{self.pid}/task"):
            try:
                with open(f"/proc/{self.pid}/task/{task}/schedstat") as stat:
                    values = stat.read().split()
            except (FileNotFoundError, ProcessLookupError):
                continue  # a thread that just ended
            total += sum(int(values[field]) for field in fields)
        return total / 1e9

    def cpu_demand_seconds(self):
        """Seconds the server's threads have spent running or ready to run (on a CPU, or in the
        run queue waiting for one). A spinning server wants the CPU all the time, even when a busy
        machine gives it only part of a core."""
        return self.schedstat_seconds((0, 1))

    def cpu_per_second(self, seconds=1.0):
        """How much of each second over the next `seconds` the server ran or was ready to run:
        about 0 when it sleeps in its wait, about 1 when it spins, however busy the machine is."""
        demand_before, start = self.cpu_demand_seconds(), time.monotonic()
        time.sleep(seconds)  # the measurement interval itself, not a wait for an event
        return (self.cpu_demand_seconds() - demand_before) / (time.monotonic() - start)

    def wait_for_fds(self, expected, timeout=FD_SETTLE_TIMEOUT):
        """Waits until the server holds `expected` descriptors; returns the last count seen."""
        return wait_until(lambda: self.fd_count() == expected, timeout, lambda: self.fd_count())

    def stop(self, sig=signal.SIGTERM):
        """Sends sig and returns (exit code, seconds until exit); kills it if it does not stop,
        after noting in self.stuck_cpu how busy it was meanwhile (about 1: a busy loop)."""
        self.stopped = True
        if not self.alive():
            return self.proc.returncode, 0.0
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT + 1)
        except subprocess.TimeoutExpired:
            self.stuck_cpu = self.cpu_per_second(0.3)
            self.kill()
            return None, time.monotonic() - start
        return code, time.monotonic() - start

    def last_words(self):
        """', saying LINE' with the last line the server wrote to stderr once it has ended ("terminate
        called without an active exception", an error it reported), or ''."""
        lines = self.stderr().strip().splitlines()
        return f", saying {lines[-1]!r}" if self.proc.poll() is not None and lines else ""

    def why_it_did_not_stop(self, code, seconds):
        """A sentence for a stop that failed: what the server was doing instead."""
        if code is not None:
            return f"it gave {describe_exit(code)} after {seconds:.2f} s{self.last_words()}"
        if self.stuck_cpu > 0.2:  # asleep is about 0; a spinning server gets a share of a busy machine
            return (f"it was still running {seconds:.1f} s later, busy {self.stuck_cpu:.2f} of each second: a "
                    f"busy loop. Something keeps it from sleeping in its wait (write interest with nothing to "
                    f"send, a listener it cannot accept from, an EOF it keeps reading, a due timer that is "
                    f"never removed), so it never gets round to the stop signal either")
        return (f"it was still running {seconds:.1f} s later, asleep: it does not notice the signal "
                f"(is the signalfd watched with the sockets?)")

    def kill(self):
        if self.alive():
            self.proc.kill()
        self.proc.wait()


def wait_until(condition, timeout, value=lambda: None, interval=0.02):
    """Polls condition() until it holds or timeout passes; returns value() (for messages).

    Used where the event is inside another process (its fd count, its exit) and cannot be
    waited on directly; the interval is a polling period, not a guess at how long things take."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(interval)
    return value()
