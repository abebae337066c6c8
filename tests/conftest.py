"""The harness every test uses: which implementation and lessons to test, and running servers.

    pytest tests --impl lessons --lesson 03     the learner's lesson 03
    pytest tests --impl solutions               every lesson's reference answer

A test that takes a `lesson` argument runs once per selected lesson; a module narrows the lessons
it applies to with LESSONS = ["02", "03"]. The `server` fixture starts that lesson's server.
"""

import os
import pathlib
import sys

import pytest
from _pytest._io.saferepr import saferepr
from _pytest.assertion import util as assertion_util

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.io_uring_check import io_uring_unavailable  # noqa: E402
from clients.server_process import STOP_TIMEOUT, Server, ServerDied, ServerError, busy  # noqa: E402

# Under ThreadSanitizer (make test TSAN=1) the first data race ends the server with exit code 66,
# so the test that provoked it fails and shows the report (the server's stderr).
os.environ.setdefault("TSAN_OPTIONS", "halt_on_error=1:exitcode=66")


def lesson_dirs(kind="solutions"):
    return sorted(p for p in (ROOT / kind).glob("[0-9][0-9]-*") if p.is_dir())


def server_lessons():
    """Lessons whose program is an echo server (lesson 08, for instance, is a test program)."""
    return [p.name[:2] for p in lesson_dirs() if (p / "server.cpp").exists()]


def pytest_addoption(parser):
    parser.addoption("--impl", default=os.environ.get("ECHO_IMPL", "solutions"),
                     help="which implementation to test: lessons, solutions, or a copy of solutions/ "
                          "elsewhere (the mistake catalogue's)")
    parser.addoption("--lesson", action="append", default=[],
                     help="test only this lesson (NN); may be repeated")
    parser.addoption("--build-dir", default=os.environ.get("ECHO_BUILD", "build"),
                     help="where make put the binaries (build, or build-san for SAN=1)")
    parser.addoption("--sanitized", action="store_true",
                     help="the binaries run under AddressSanitizer (make test SAN=1)")
    parser.addoption("--stop-each-lesson", action="store_true",
                     help="after a lesson's first failure, skip its other tests (make progress)")
    parser.addoption("--phase", choices=["all", "first", "rest"], default="all",
                     help="first: the contract's basic promises and the lesson's own tests, in order; "
                          "rest: the others (make check-NN runs the two one after the other)")


def pytest_generate_tests(metafunc):
    if "lesson" not in metafunc.fixturenames:
        return
    present = [p.name[:2] for p in lesson_dirs()]
    wanted = [n for n in getattr(metafunc.module, "LESSONS", None) or server_lessons() if n in present]
    chosen = metafunc.config.getoption("--lesson")
    lessons = [n for n in wanted if not chosen or n in chosen]
    # An empty parametrization makes pytest skip the test, which is right: not this lesson's test.
    metafunc.parametrize("lesson", lessons)


def pytest_configure(config):
    config.addinivalue_line("markers", "basic: a first promise of the contract, checked before the "
                                       "lesson's own tests")
    config.addinivalue_line("markers", "runs_where_unavailable: runs even where LESSON_NEEDS says the "
                                       "lesson's server cannot run (it tests that case)")


# The order a learner meets the promises in `make check-NN`, which stops at the first failure: the
# simplest first, so that the first failure is the most basic thing wrong. Within a file, tests
# run in the order they are written.
FILE_ORDER = ["test_contract.py", "<the lesson's own>", "test_multiplexed.py", "test_faults.py",
              "test_soak.py"]


def order_of(item):
    name = item.path.name
    if item.get_closest_marker("basic"):
        return 0
    if name in FILE_ORDER:
        return FILE_ORDER.index(name) + (1 if name == "test_contract.py" else 0)
    if name.startswith("test_") and name[5:7].isdigit():
        return FILE_ORDER.index("<the lesson's own>")
    return len(FILE_ORDER)


FAILED_LESSONS = set()  # with --stop-each-lesson: lessons that already failed a check


def lesson_of(item):
    return getattr(item, "callspec", None) and item.callspec.params.get("lesson")


# What a lesson's server needs that a machine may lack: {lesson: () -> why it is missing, or None}.
# Where it is missing, that lesson's tests skip with the reason instead of failing (a test marked
# runs_where_unavailable checks that very case, and runs anyway).
LESSON_NEEDS = {"11": io_uring_unavailable}


def pytest_runtest_setup(item):
    lesson = lesson_of(item)
    need = LESSON_NEEDS.get(lesson)
    if need and not item.get_closest_marker("runs_where_unavailable"):
        reason = need()
        if reason:
            pytest.skip(f"lesson {lesson} cannot run here: {reason}")
    if item.config.getoption("--stop-each-lesson") and lesson in FAILED_LESSONS:
        pytest.skip(f"an earlier check of lesson {lesson} failed")


def pytest_collection_modifyitems(config, items):
    """With --lesson, drops tests that belong to other lessons; then puts the rest in FILE_ORDER."""
    chosen = config.getoption("--lesson")
    if chosen:
        items[:] = [item for item in items if lesson_of(item) in (None, *chosen)]
    position = {id(item): index for index, item in enumerate(items)}
    items.sort(key=lambda item: (order_of(item), position[id(item)]))  # stable: source order within
    CHECKS["collected"] = len(items)
    phase = config.getoption("--phase")
    if phase != "all":
        first = FILE_ORDER.index("<the lesson's own>")
        items[:] = [item for item in items if (order_of(item) <= first) == (phase == "first")]


CHECKS = {"collected": 0, "finished": 0}  # over both phases


def pytest_runtest_logfinish(nodeid, location):
    CHECKS["finished"] += 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """After `make check-NN` stopped at the first failure (-x): how many checks it did not run."""
    left = CHECKS["collected"] - CHECKS["finished"]
    if config.getoption("maxfail") == 1 and exitstatus != 0 and left > 0:
        lessons = config.getoption("--lesson")
        target = f"make check-{lessons[0]} ALL=1" if len(lessons) == 1 else "ALL=1"
        terminalreporter.write_line(
            f"Stopped at the first failure: {left} more check(s) not run. Fix this one and run the same "
            f"command again, or run every check with {target}.", yellow=True)


def explained_briefly_when_long(explain):
    """Echoes of megabytes are compared with ==. When they differ, pytest explains the difference
    with a difflib diff, which is quadratic in the length: where the environment says CI, or under
    -v, a diff of two 1 MiB echoes runs for minutes and the test hangs instead of failing. Every
    such assertion carries a message naming the first difference; for long operands this gives
    only their sizes. (Wrapping pytest's function, not adding a hook: every hook would run, pytest's
    own diff included.)"""
    def explain_comparison(config, op, left, right, **kwargs):
        if op == "==" and max(length(left), length(right)) > LONGEST_DIFFED:
            return [f"{saferepr(left, 30)} == {saferepr(right, 30)}",
                    f"lengths {length(left)} and {length(right)}: too long to diff; the message says where "
                    f"they differ"]
        return explain(config=config, op=op, left=left, right=right, **kwargs)
    return explain_comparison


def length(value):
    """Characters or bytes in a string, or in all the strings of a list or tuple (pytest diffs
    those line by line, and each pair of long lines character by character)."""
    if isinstance(value, (bytes, bytearray, str)):
        return len(value)
    if isinstance(value, (list, tuple)):
        return sum(length(item) + 1 for item in value)
    return 0


LONGEST_DIFFED = 4096
assertion_util.assertrepr_compare = explained_briefly_when_long(assertion_util.assertrepr_compare)


def binary_path(config, lesson, name="server"):
    impl = config.getoption("--impl")
    path = ROOT / config.getoption("--build-dir") / impl.lstrip("/") / lesson / name  # as make builds it
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it first with `make {lesson} IMPL={impl}`")
    return path


@pytest.fixture
def start_server(request):
    """start_server(lesson, *args, nofile=N) -> Server; every server is stopped after the test,
    must exit 0 within a second of SIGTERM, and must hold no more descriptors than it started
    with once the test's own connections are closed."""
    servers = []
    request.node.servers = servers

    def start(lesson, *args, nofile=None, env=None, check_fds=True, stderr=None):
        failure = None
        try:
            server = Server(binary_path(request.config, lesson), args, nofile, env, stderr)
        except ServerError as error:
            failure = str(error)
        if failure:
            pytest.fail(failure, pytrace=False)  # outside the except: the reason is printed once
        server.check_fds = check_fds
        servers.append(server)
        return server

    yield start
    problems = [problem for server in servers if not server.stopped
                for problem in [after_the_test(server)] if problem]
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


def after_the_test(server):
    """What is wrong with a server once its test is over: dead, holding descriptors, or not
    stopping on SIGTERM. None if nothing."""
    if not server.alive():
        return f"{server.how_it_ended()}, during the test. A client's behaviour must never kill it"
    if server.check_fds:
        try:
            settled = server.settle()
            count, change = server.fd_count(), server.change_since_start()
        except ServerDied as died:
            return f"{died}, just after the test"
        if not settled and count <= server.baseline_fds:
            return (f"the server holds {count} descriptors, {server.baseline_fds} when it started ({change}): it "
                    f"closed one it still needs (its listener, epoll instance, signalfd or spare), or closed a "
                    f"descriptor twice, which closes whatever was given its number since")
        if not settled:
            unclosed = server.unclosed_connections()
            if unclosed:
                cpu = server.cpu_per_second(0.3)
                spinning = (f"; and it is spinning (it {busy(cpu)}): reading the EOF again "
                            f"and again?" if cpu > 0.5 else "")
                io_uring = ("; with io_uring, a recv completion without IORING_CQE_F_MORE has ended the "
                            "multishot recv, which reports nothing more (not even the FIN) until it is armed again"
                            if server.binary.parent.name == "11" else "")
                return (f"{unclosed} connection(s) that the clients closed are still open in the server "
                        f"(CLOSE_WAIT): it never read their FIN, or read it (read() returned 0) and did not "
                        f"close them once everything owed was sent{spinning}{io_uring}")
            dead = server.dead_sockets()
            if dead:
                return (f"{dead} connection(s) were reset by their clients (RST) and the server still holds "
                        f"them: it never read or wrote them again, so it never met the error. A connection "
                        f"that owes echo must stay watched for writing (or reading), and a failed read or "
                        f"write must close it")
            return (f"the server holds {count} descriptors, {server.baseline_fds} when it started ({change}): "
                    f"every closed connection should close its fd (a leak)")
    code, seconds = server.stop()
    if code != 0 or seconds > STOP_TIMEOUT:
        return (f"after SIGTERM the server should exit 0 within {STOP_TIMEOUT} s; "
                f"{server.why_it_did_not_stop(code, seconds)}")
    return None


@pytest.fixture
def memory_is_the_servers_own(pytestconfig):
    """False under AddressSanitizer: its redzones and quarantine of freed memory are its own cost,
    so memory bounds are checked by the plain build only."""
    return not pytestconfig.getoption("--sanitized")


@pytest.fixture
def server(start_server, lesson):
    """The lesson's server, running quietly on a free port."""
    return start_server(lesson, "--quiet")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Shows each server's stderr under a failed test: what the server said is half the story."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and lesson_of(item):
        FAILED_LESSONS.add(lesson_of(item))
    if report.failed:
        for index, server in enumerate(getattr(item, "servers", [])):
            if not server.stopped and not server.alive():  # name the death the test may only have felt
                report.sections.append((f"server {index}", f"{server.how_it_ended()}, during this test"))
            text = server.stderr()
            if text:
                report.sections.append((f"server {index} stderr", text[-4000:]))
