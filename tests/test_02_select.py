"""Lesson 02: select() cannot watch an fd >= FD_SETSIZE. The server turns such clients away and
goes on serving the rest; FD_SET past the limit would silently corrupt memory (or, fortified, abort).

The demonstration program is tests/fd_set_overflow.cpp, built by `make 02` into build/demo/."""

import signal
import subprocess

import pytest

from clients.crowd import close_all, echo_through_all, open_many, wait_until_closed
from conftest import ROOT

LESSONS = ["02"]

FD_SETSIZE = 1024  # glibc's, on every Linux architecture (not 2048, whatever articles say)


def test_clients_past_fd_setsize_are_turned_away_and_the_rest_still_served(start_server, lesson):
    server = start_server(lesson)  # not --quiet: each client turned away is logged
    # The server's own descriptors (stdio, the signalfd, the listener, the spare) take the lowest
    # numbers; accepted clients get the next ones in order, so the first `fits` clients fit.
    fits = FD_SETSIZE - server.baseline_fds
    socks = open_many(server.address, 1100)
    try:
        kept, beyond = socks[:fits], socks[fits:]
        fates = wait_until_closed(beyond, timeout=5)
        assert "open" not in fates, (
            f"{fates.count('open')} of the {len(beyond)} clients whose fd would be >= FD_SETSIZE were "
            f"still connected after 5 s, with no answer: the server should close a connection that "
            f"select() cannot watch (they should see EOF or RST), never leave it hanging")
        assert server.fd_count() <= FD_SETSIZE, (
            f"the server holds {server.fd_count()} descriptors: it kept fds >= FD_SETSIZE, and passing "
            f"one to FD_SET writes past the end of the fd_set")
        problems = echo_through_all(kept, timeout=30)
        assert not problems, (
            f"after turning clients away, {len(problems)} of the {fits} connections below FD_SETSIZE "
            f"failed to echo; first: {problems[0]}")
        warning = f"FD_SETSIZE = {FD_SETSIZE}"
        assert warning in server.stderr(), (
            f"the server should say on stderr when it turns a client away, naming the fd and "
            f"{warning!r}; its stderr was: {server.stderr()[-300:]!r}")

        close_all(kept[:10])  # room again: the next clients get the freed fds, below the limit
        server.wait_for_fds(FD_SETSIZE - 10)
        newcomers = open_many(server.address, 10)
        socks += newcomers
        problems = echo_through_all(newcomers)
        assert not problems, f"once fds were free again, new clients should be served; first: {problems[0]}"
    finally:
        close_all(socks)


def run_demo(pytestconfig, name, fd):
    path = ROOT / pytestconfig.getoption("--build-dir") / "demo" / name
    if not path.exists():
        pytest.fail(f"{path} does not exist: `make 02` builds it (from tests/fd_set_overflow.cpp)")
    return subprocess.run([str(path), str(fd)], capture_output=True, text=True, timeout=10)


def test_fd_set_below_fd_setsize_stays_inside_the_set(pytestconfig, lesson):
    result = run_demo(pytestconfig, "fd_set_overflow", FD_SETSIZE - 1)
    assert result.returncode == 0 and "nothing else was touched" in result.stdout, (
        f"FD_SET(1023) is the last legal bit and should leave the guard alone; the demo said "
        f"{result.stdout!r} (exit {result.returncode})")


@pytest.mark.parametrize("fd", [FD_SETSIZE, 1500])
def test_fd_set_past_fd_setsize_silently_overwrites_the_memory_after_it(pytestconfig, lesson, fd):
    result = run_demo(pytestconfig, "fd_set_overflow", fd)
    assert result.returncode == 1 and "OVERWRITTEN" in result.stdout, (
        f"without _FORTIFY_SOURCE, FD_SET({fd}) should flip a bit in the guard after the fd_set, with "
        f"no error; the demo said {result.stdout!r} {result.stderr!r} (exit {result.returncode})")
    expected_byte = (fd - FD_SETSIZE) // 8  # bit fd lives in byte fd / 8 of the bitmap
    assert f"byte {expected_byte} after the end" in result.stdout, (
        f"FD_SET({fd}) should land in byte {expected_byte} after the set; the demo said {result.stdout!r}")


def test_fortified_fd_set_past_fd_setsize_aborts_instead(pytestconfig, lesson):
    result = run_demo(pytestconfig, "fd_set_overflow_fortified", 1500)
    assert result.returncode == -signal.SIGABRT, (
        f"built with -D_FORTIFY_SOURCE=2, FD_SET(1500) should abort (SIGABRT); it exited "
        f"{result.returncode} and said {result.stdout!r}")
    assert "bit out of range" in result.stderr, (
        f"glibc's fortified FD_SET says '*** bit out of range 0 - FD_SETSIZE on fd_set ***'; "
        f"stderr was {result.stderr!r}")
    assert "OVERWRITTEN" not in result.stdout, "the fortified build must stop before the write"
