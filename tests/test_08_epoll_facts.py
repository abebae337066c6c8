"""Lesson 08: the facts program checks eleven epoll claims and seven tutorial bugs on the running
kernel; here it must pass as a whole (every prediction right, every fact holding on this kernel)."""

import subprocess

import pytest

from conftest import binary_path

LESSONS = ["08"]

# The program takes well under a second; the bound only stops a hung run (a herd thread that
# never woke, say) from holding up the suite.
FACTS_TIMEOUT = 60


def test_every_prediction_matches_the_running_kernel(lesson, pytestconfig):
    binary = binary_path(pytestconfig, lesson, "facts")
    try:
        result = subprocess.run([str(binary), "--no-colors"], capture_output=True, text=True,
                                timeout=FACTS_TIMEOUT)
    except subprocess.TimeoutExpired as expired:
        output = (expired.stdout or b"").decode(errors="replace")
        pytest.fail(f"{binary} did not finish within {FACTS_TIMEOUT} s; it should take about a "
                    f"second. Its output so far:\n{output}")
    if result.returncode != 0:
        pytest.fail(f"{binary} exited {result.returncode}: each failed check below names a "
                    f"prediction (the constant above its TEST_CASE in facts.cpp), what the kernel "
                    f"did, and why.\n{result.stdout}{result.stderr}", pytrace=False)
