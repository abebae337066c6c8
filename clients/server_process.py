"""Runs one server process for tests, the soak and the benchmarks: start it on a free port, wait
for its readiness line, read its descriptors, memory and CPU from /proc, stop it with a signal."""

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


class Server:
    """One server process started with --port 0, from its readiness line to its exit."""

    def __init__(self, binary, args=(), nofile=None, env=None):
        self.binary = binary
        self.stderr_file = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([str(binary), "--port", "0", *args], stdout=subprocess.PIPE,
                                     stderr=self.stderr_file, preexec_fn=_prepare_child(nofile),
                                     env={**os.environ, **(env or {})})
        self.pid = self.proc.pid
        self.host, self.port = self._wait_until_listening()
        self.baseline_fds = self.fd_count()
        self.stopped = False  # set once a test or the fixture sends the stop signal

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
        self.stderr_file.seek(0)
        return self.stderr_file.read().decode(errors="replace")

    def alive(self):
        return self.proc.poll() is None

    def fd_count(self):
        return len(os.listdir(f"/proc/{self.pid}/fd"))

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

    def cpu_per_second(self, seconds=1.0):
        """The CPU seconds the server uses per second over the next `seconds`: about 0 when it
        sleeps in its wait, about 1 when it spins."""
        cpu_before, start = self.cpu_seconds(), time.monotonic()
        time.sleep(seconds)  # the measurement interval itself, not a wait for an event
        return (self.cpu_seconds() - cpu_before) / (time.monotonic() - start)

    def wait_for_fds(self, expected, timeout=FD_SETTLE_TIMEOUT):
        """Waits until the server holds `expected` descriptors; returns the last count seen."""
        return wait_until(lambda: self.fd_count() == expected, timeout, lambda: self.fd_count())

    def stop(self, sig=signal.SIGTERM):
        """Sends sig and returns (exit code, seconds until exit); kills it if it does not stop."""
        self.stopped = True
        if not self.alive():
            return self.proc.returncode, 0.0
        start = time.monotonic()
        self.proc.send_signal(sig)
        try:
            code = self.proc.wait(timeout=STOP_TIMEOUT + 2)
        except subprocess.TimeoutExpired:
            self.kill()
            return None, time.monotonic() - start
        return code, time.monotonic() - start

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
