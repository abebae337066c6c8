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

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from clients.server_process import STOP_TIMEOUT, Server, ServerError  # noqa: E402



def lesson_dirs(kind="solutions"):
    return sorted(p for p in (ROOT / kind).glob("[0-9][0-9]-*") if p.is_dir())


def server_lessons():
    """Lessons whose program is an echo server (lesson 08, for instance, is a test program)."""
    return [p.name[:2] for p in lesson_dirs() if (p / "server.cpp").exists()]


def pytest_addoption(parser):
    parser.addoption("--impl", default=os.environ.get("ECHO_IMPL", "solutions"),
                     choices=["lessons", "solutions"], help="which implementation to test")
    parser.addoption("--lesson", action="append", default=[],
                     help="test only this lesson (NN); may be repeated")
    parser.addoption("--build-dir", default=os.environ.get("ECHO_BUILD", "build"),
                     help="where make put the binaries (build, or build-san for SAN=1)")
    parser.addoption("--sanitized", action="store_true",
                     help="the binaries run under AddressSanitizer (make test SAN=1)")


def pytest_generate_tests(metafunc):
    if "lesson" not in metafunc.fixturenames:
        return
    present = [p.name[:2] for p in lesson_dirs()]
    wanted = [n for n in getattr(metafunc.module, "LESSONS", None) or server_lessons() if n in present]
    chosen = metafunc.config.getoption("--lesson")
    lessons = [n for n in wanted if not chosen or n in chosen]
    # An empty parametrization makes pytest skip the test, which is right: not this lesson's test.
    metafunc.parametrize("lesson", lessons)


def pytest_collection_modifyitems(config, items):
    """With --lesson, drop tests that belong to other lessons entirely."""
    chosen = config.getoption("--lesson")
    if not chosen:
        return
    keep = []
    for item in items:
        lesson = getattr(item, "callspec", None) and item.callspec.params.get("lesson")
        if lesson is None or lesson in chosen:
            keep.append(item)
    items[:] = keep


def binary_path(config, lesson, name="server"):
    impl = config.getoption("--impl")
    path = ROOT / config.getoption("--build-dir") / impl / lesson / name
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

    def start(lesson, *args, nofile=None, env=None, check_fds=True):
        try:
            server = Server(binary_path(request.config, lesson), args, nofile, env)
        except ServerError as error:
            pytest.fail(str(error), pytrace=False)
        server.check_fds = check_fds
        servers.append(server)
        return server

    yield start
    problems = []
    for server in servers:
        if server.stopped:
            continue  # the test stopped it and checked the exit itself
        if not server.alive():
            problems.append(f"the server died during the test (exit code {server.proc.returncode}); "
                            f"a client's behaviour must never kill it")
            continue
        if server.check_fds:
            count = server.wait_for_fds(server.baseline_fds)
            if count != server.baseline_fds:
                problems.append(f"the server holds {count} descriptors, {server.baseline_fds} when it "
                                f"started: every closed connection should close its fd (a leak)")
        code, seconds = server.stop()
        if code != 0 or seconds > STOP_TIMEOUT:
            problems.append(f"after SIGTERM the server should exit 0 within {STOP_TIMEOUT} s; "
                            f"it gave {code} after {seconds:.2f} s")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


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
    if report.failed:
        for index, server in enumerate(getattr(item, "servers", [])):
            text = server.stderr()
            if text:
                report.sections.append((f"server {index} stderr", text[-4000:]))
