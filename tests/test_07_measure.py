"""Lesson 07: the measuring machinery is itself tested. loadgen drives a server and checks every
echoed byte (and fails loudly when a byte is wrong or the server goes quiet); bench.py turns runs
into tables and plots. (The libevent server joins test_multiplexed.py like lessons 02-06.)"""

import json
import socket
import subprocess
import sys
import threading

import pytest

from conftest import ROOT

LESSONS = ["07"]


def loadgen(config, port, *args, timeout=20):
    """Runs build/clients/loadgen; returns (exit code, its JSON report or None, its stderr)."""
    path = ROOT / config.getoption("--build-dir") / "clients" / "loadgen"
    if not path.exists():
        pytest.fail(f"{path} does not exist: build it with `make loadgen` (make 07 builds it too)")
    result = subprocess.run([str(path), "--port", str(port), *map(str, args)], capture_output=True,
                            text=True, timeout=timeout)
    lines = result.stdout.strip().splitlines()
    return result.returncode, json.loads(lines[-1]) if lines else None, result.stderr


def test_loadgen_measures_a_positive_rate_of_byte_exact_echoes(server, pytestconfig):
    code, report, stderr = loadgen(pytestconfig, server.port, "--connections", 10, "--warmup", 0.2,
                                   "--duration", 1, "--server-pid", server.pid, "--timeout", 2)
    assert code == 0, (f"lesson 07's server should echo every message back, byte for byte (on_read); "
                       f"loadgen reported: {stderr.strip()}")
    assert report["messages"] > 0 and report["msgs_per_s"] > 0, f"no messages were echoed in 1 s: {report}"
    assert 0 < report["p50_us"] <= report["p99_us"], f"latency percentiles make no sense: {report}"
    assert report["server_cpu_s"] > 0, f"loadgen should read the server's CPU time from /proc/PID/stat: {report}"


def test_loadgen_idle_mode_registers_every_idle_connection_then_times_one(server, pytestconfig):
    code, report, stderr = loadgen(pytestconfig, server.port, "--mode", "idle", "--idle", 200,
                                   "--rounds", 100, "--server-pid", server.pid)
    assert code == 0, f"idle mode failed: {stderr}"
    assert report["idle"] == 200 and report["messages"] == 100, \
        f"200 idle connections and 100 timed round trips were asked for; the report says {report}"
    assert report["rss_before_kib"] > 0 and report["bytes_per_idle_conn"] >= 0, \
        f"with --server-pid, idle mode should report the server's memory per idle connection: {report}"


class OneShotServer:
    """A listener on a free port whose single client gets handle(sock) in a thread."""

    def __init__(self, handle):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, args=(handle,), daemon=True)
        self.thread.start()

    def _serve(self, handle):
        self.listener.settimeout(5)
        try:
            sock, _ = self.listener.accept()
        except OSError:
            return
        with sock:
            sock.settimeout(5)
            handle(sock)

    def close(self):
        self.listener.close()
        self.thread.join(timeout=5)


def stay_open_until_the_client_leaves(sock):
    try:
        while sock.recv(64):
            pass
    except OSError:
        pass


def echo_with_one_byte_flipped(sock):
    data = sock.recv(64)
    sock.sendall(bytes([data[0] ^ 1]) + data[1:])
    stay_open_until_the_client_leaves(sock)


def test_loadgen_fails_loudly_on_a_wrong_echo(pytestconfig, lesson):
    fake = OneShotServer(echo_with_one_byte_flipped)
    try:
        code, _, stderr = loadgen(pytestconfig, fake.port, "--duration", 1, "--warmup", 0, "--timeout", 2)
    finally:
        fake.close()
    assert code == 1 and "wrong echo" in stderr and "byte 0" in stderr, (
        f"a server that flipped a bit of byte 0 should make loadgen exit 1 naming the byte; it exited "
        f"{code} saying {stderr!r}")


def test_loadgen_fails_loudly_when_the_server_stops_answering(pytestconfig, lesson):
    fake = OneShotServer(stay_open_until_the_client_leaves)  # reads, never answers
    try:
        code, _, stderr = loadgen(pytestconfig, fake.port, "--duration", 5, "--warmup", 0, "--timeout", 0.5)
    finally:
        fake.close()
    assert code == 1 and "no echo for" in stderr, \
        f"a silent server should make loadgen give up after --timeout; it exited {code} saying {stderr!r}"


def test_bench_smoke_run_writes_its_table_and_plots(pytestconfig, lesson, tmp_path):
    command = [sys.executable, str(ROOT / "clients/bench.py"), "--smoke", "--no-install", "--lessons", lesson,
               "--impl", pytestconfig.getoption("--impl"), "--build-dir", pytestconfig.getoption("--build-dir"),
               "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert result.returncode == 0, f"bench.py --smoke failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    runs = json.loads((tmp_path / "results.json").read_text())["results"]["throughput"]
    errors = [run["error"] for key, per_key in runs.items() for run in per_key if "error" in run]
    assert not errors, f"bench.py's throughput runs against lesson 07 failed: {errors}"
    table = (tmp_path / "results.md").read_text()
    assert "| 07 libevent |" in table and "Linux" in table, "results.md should hold the server's rows and the machine"
    for plot in ["idle-latency.png", "cpu-per-message.png", "syscalls-per-message.png"]:
        assert (tmp_path / plot).stat().st_size > 1000, f"bench.py should draw {plot}"
