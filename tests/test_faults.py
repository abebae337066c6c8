"""Faults that come from operators and supervisors rather than from clients, for every server: a
stop signal under full load, standard descriptors closed at start, a log nobody reads, a readiness
line that cannot be written or must wait (a full pipe), a usage error or help text into a pipe
nobody reads, control characters in a bad argument, and the smallest descriptor limit the server
starts with. (Faults of clients, and SIGHUP and SIGUSR1: test_contract.py.)"""

import os
import pathlib
import signal
import socket
import subprocess
import time

import pytest

from clients.crowd import close_all, open_many
from clients.echo_client import connect, recv_until_eof, round_trip
from clients.firehose import Flood
from clients.server_process import STOP_TIMEOUT, Server, ServerError, busy, describe_exit, wait_until
from conftest import binary_path

FLOOD_CONNECTIONS = 100
LOG_CLIENTS = 2000


def test_stop_signal_under_a_flood_exits_0_within_a_second(start_server, lesson):
    server = start_server(lesson, "--quiet")
    with Flood(server.address, FLOOD_CONNECTIONS) as flood:
        assert flood.wait_until_streaming(), "the flood's clients got no echo: is the server echoing?"
        code, seconds = server.stop(signal.SIGTERM)
    assert code == 0 and seconds <= STOP_TIMEOUT, (
        f"with {FLOOD_CONNECTIONS} clients streaming, SIGTERM should stop the server (exit 0) within "
        f"{STOP_TIMEOUT} s; after {seconds:.1f} s: {describe_exit(code)}. A wait that finds ready descriptors "
        f"returns them without delivering a signal blocked outside it (pselect, ppoll, epoll_pwait), so a "
        f"server that is never idle never sees its SIGTERM: watch the signal as a descriptor (signalfd, "
        f"lesson 02)")


def terminate(proc):
    """Sends SIGTERM to a server started without Server; (exit code, seconds), the code None if it
    was still running after the stop timeout (it is killed then)."""
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=STOP_TIMEOUT + 2)
    except subprocess.TimeoutExpired:
        code = None
        proc.kill()
        proc.wait()
    return code, time.monotonic() - start


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.parametrize("closed", [(0, 1, 2), (2,), (1, 2)], ids=["stdin-stdout-stderr", "stderr", "stdout-stderr"])
def test_started_with_stdio_closed_no_log_line_reaches_a_client(pytestconfig, lesson, closed):
    def close_them():  # in the child before exec: a careless supervisor (`server <&- >&- 2>&-`)
        for fd in closed:
            os.close(fd)

    port = free_port()
    proc = subprocess.Popen([str(binary_path(pytestconfig, lesson)), "--port", str(port)],
                            preexec_fn=close_them)  # not --quiet: it logs every client
    try:
        listening = wait_until(lambda: socket.socket().connect_ex(("127.0.0.1", port)) == 0 or proc.poll() is not None,
                               5.0, lambda: proc.poll() is None)
        assert listening, f"started with descriptors {closed} closed, the server exited {proc.poll()} instead of serving"
        for index in range(5):
            message = b"client %d: nothing but this should come back" % index
            with connect("127.0.0.1", port) as sock:
                sock.sendall(message)
                sock.shutdown(socket.SHUT_WR)
                echoed = recv_until_eof(sock)
            assert echoed == message, (
                f"started with descriptors {closed} closed, the server echoed {echoed!r} for {message!r}: a "
                f"client's socket got one of those numbers, and what the server wrote to stdout or stderr "
                f"went into its echo. Open /dev/null onto any closed descriptor 0-2 before opening "
                f"anything else")
    finally:
        code, _ = terminate(proc)
    ended = "still running" if code is None else describe_exit(code)
    assert code == 0, f"after SIGTERM the server should exit 0 within {STOP_TIMEOUT} s, not {ended}"


def test_a_log_nobody_reads_never_stalls_service_or_shutdown(start_server, lesson):
    reader, writer = os.pipe()  # the read end stays open and is never read: the pipe fills up
    try:
        server = start_server(lesson, stderr=writer)  # not --quiet: lines for every client
        os.close(writer)
        for index in range(LOG_CLIENTS):
            with connect(*server.address, timeout=2) as sock:
                try:
                    assert round_trip(sock, b"x") == b"x"
                except (AssertionError, OSError) as error:
                    pytest.fail(f"with stderr a pipe nobody reads, client {index} of {LOG_CLIENTS} got no "
                                f"echo ({error}): the server is stuck writing its log. A log line stderr "
                                f"cannot take at once must be dropped (and counted), never waited for")
        code, seconds = server.stop()
        assert code == 0 and seconds <= STOP_TIMEOUT, (
            f"with stderr a full pipe, SIGTERM should still stop the server (exit 0) within {STOP_TIMEOUT} s; "
            f"{server.why_it_did_not_stop(code, seconds)}")
    finally:
        os.close(reader)


@pytest.mark.parametrize("stdout", ["/dev/full", "a pipe nobody reads"])
def test_readiness_line_that_cannot_be_written_is_a_setup_failure(pytestconfig, lesson, stdout):
    if stdout == "/dev/full":
        target = os.open("/dev/full", os.O_WRONLY)
    else:
        reader, target = os.pipe()
        os.close(reader)  # writing now fails with EPIPE
    try:
        proc = subprocess.Popen([str(binary_path(pytestconfig, lesson)), "--port", "0"], stdout=target,
                                stderr=subprocess.PIPE, text=True)
    finally:
        os.close(target)
    try:
        _, stderr = proc.communicate(timeout=3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail(f"with stdout {stdout}, the readiness line cannot be written, yet the server ran on "
                    f"unannounced; it should say so on stderr and exit 1 (setup failed)")
    assert proc.returncode == 1 and "readiness" in stderr, (
        f"with stdout {stdout}, the server should report that the readiness line could not be written and "
        f"exit 1; it exited {proc.returncode} saying {stderr!r}")


def full_pipe():
    """A pipe filled to the brim whose reader stays open (and never reads): the next write to it
    waits. Returns (read end, write end)."""
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    try:
        while True:
            os.write(writer, b"x" * 4096)
    except BlockingIOError:
        pass
    os.set_blocking(writer, True)  # as a supervisor's pipe is: the server's write blocks
    return reader, writer


def waits_on_a_pipe(pid):
    """True while the process sleeps in a write to a full pipe (its /proc/PID/wchan)."""
    try:
        return "pipe_write" in pathlib.Path(f"/proc/{pid}/wchan").read_text()
    except OSError:
        return False


def test_stop_signal_while_the_readiness_line_waits_on_a_full_pipe_exits_0(pytestconfig, lesson):
    # A supervisor that reads the server's stdout slowly, or only later: the readiness line waits.
    reader, writer = full_pipe()
    try:
        proc = subprocess.Popen([str(binary_path(pytestconfig, lesson)), "--port", "0", "--quiet"], stdout=writer,
                                stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            waiting = wait_until(lambda: waits_on_a_pipe(proc.pid) or proc.poll() is not None, 5.0,
                                 lambda: waits_on_a_pipe(proc.pid))
            ended = f"exited {describe_exit(proc.poll())}" if proc.poll() is not None else "did not"
            assert waiting, f"with stdout a full pipe, the server should wait to write its readiness line; it {ended}"
            code, seconds = terminate(proc)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        os.close(reader)
        os.close(writer)
    assert code == 0 and seconds <= STOP_TIMEOUT, (
        f"waiting to write its readiness line into a full pipe, the server should still stop on SIGTERM (exit "
        f"0) within {STOP_TIMEOUT} s; it {'was still waiting' if code is None else 'gave ' + describe_exit(code)} "
        f"after {seconds:.1f} s. The stop signals are blocked for the signalfd, and the loop that would read it "
        f"has not started: let them end the process at once while the line is written (StopSignalsExitAtOnce)")


def broken_pipe():
    """The write end of a pipe whose reader is gone: a write fails with EPIPE, and raises SIGPIPE."""
    reader, writer = os.pipe()
    os.close(reader)
    return writer


def test_usage_error_into_a_pipe_nobody_reads_still_exits_2(pytestconfig, lesson):
    writer = broken_pipe()
    try:
        code = subprocess.run([str(binary_path(pytestconfig, lesson)), "--bogus"], stderr=writer,
                              stdout=subprocess.DEVNULL, timeout=5).returncode
    finally:
        os.close(writer)
    assert code == 2, (
        f"a usage error with stderr a pipe whose reader is gone should still exit 2; it exited "
        f"{describe_exit(code)}. Writing the error raises SIGPIPE, which kills the process unless it is ignored "
        f"before anything is written (protect_standard_streams)")


@pytest.mark.parametrize("stdout", ["/dev/full", "a pipe nobody reads"])
def test_help_that_cannot_be_written_says_so_and_exits_1(pytestconfig, lesson, stdout):
    target = os.open("/dev/full", os.O_WRONLY) if stdout == "/dev/full" else broken_pipe()
    try:
        done = subprocess.run([str(binary_path(pytestconfig, lesson)), "--help"], stdout=target,
                              stderr=subprocess.PIPE, text=True, timeout=5)
    finally:
        os.close(target)
    assert done.returncode == 1 and "usage" in done.stderr, (
        f"with stdout {stdout}, --help cannot print its text: the server should say so on stderr and exit 1, "
        f"not report success; it exited {describe_exit(done.returncode)} saying {done.stderr!r}")


CONTROL_CHARACTERS = [["--port", "70\n01"], ["--host", "\x1b[2J127.0.0.1"], ["--bogus\r\nsecond line"],
                      ["--port=\x07"]]


@pytest.mark.parametrize("args", CONTROL_CHARACTERS, ids=["newline", "escape", "crlf", "bell"])
def test_usage_error_with_control_characters_is_one_escaped_line(pytestconfig, lesson, args):
    result = subprocess.run([str(binary_path(pytestconfig, lesson)), *args], capture_output=True, timeout=5)
    message = result.stderr.decode(errors="replace").removesuffix("\n")
    raw = [c for c in message if ord(c) < 32 or ord(c) == 127]
    assert result.returncode == 2 and message and not raw, (
        f"a usage error should exit 2 with one line on stderr, the bad value's control characters "
        f"escaped (\\n, \\x1b); it exited {result.returncode} and printed {message!r}")


def smallest_descriptor_limit(pytestconfig, lesson):
    """The lowest RLIMIT_NOFILE at which the server starts (prints its readiness line)."""
    binary = binary_path(pytestconfig, lesson)
    for limit in range(3, 16):
        try:
            server = Server(binary, ["--quiet"], nofile=limit)
        except ServerError:
            continue
        server.kill()
        return limit
    pytest.fail("the server did not start with any descriptor limit up to 15")


def test_smallest_descriptor_limits_neither_spin_nor_ignore_a_stop(start_server, pytestconfig, lesson):
    smallest = smallest_descriptor_limit(pytestconfig, lesson)
    for limit in range(smallest, smallest + 3):
        server = start_server(lesson, "--quiet", nofile=limit)
        clients = open_many(server.address, 5)
        try:
            for sock in clients:
                sock.sendall(b"hello")
            cpu = server.cpu_per_second(0.5)
            print(f"lesson {lesson}: RLIMIT_NOFILE {limit} (smallest {smallest}), 5 clients: busy {cpu:.3f} s per second")
            assert server.alive(), f"with RLIMIT_NOFILE {limit} the server died when clients came"
            assert cpu < 0.3, (
                f"with RLIMIT_NOFILE {limit} (the smallest it starts with is {smallest}) and 5 clients, the server "
                f"{busy(cpu)}: it is spinning on a listener it cannot accept from. Out of "
                f"descriptors, turn the client away with a spare descriptor, or stop watching the listener a while")
            said = server.stderr().splitlines()  # --quiet: what is left is what an operator must see
            assert len(said) <= 2, (
                f"out of descriptors for half a second, the server wrote {len(said)} lines to stderr despite "
                f"--quiet, the first: {said[0]!r}. Say it once per episode (and a missing spare descriptor "
                f"once), not at every retry: a log that grows every 100 ms buries everything else")
        finally:
            close_all(clients)
        code, seconds = server.stop()
        assert code == 0 and seconds <= STOP_TIMEOUT, (
            f"out of descriptors (RLIMIT_NOFILE {limit}), SIGTERM should still stop the server within "
            f"{STOP_TIMEOUT} s (exit 0); {server.why_it_did_not_stop(code, seconds)}")
