"""A short soak under random faults for every multiplexed server (`make soak` runs the long one):
echo, half-close, slow readers, resets mid-transfer and vanishing clients, all at once."""

from clients.soak import RSS_BOUND_MIB, soak
from conftest import binary_path

LESSONS = ["02", "03", "04", "05", "06", "07", "09"]


def test_short_soak_under_random_faults_loses_nothing(pytestconfig, lesson, memory_is_the_servers_own):
    row, failures = soak(binary_path(pytestconfig, lesson), seconds=1.5, clients=16, seed=int(lesson),
                         rss_bound_mib=RSS_BOUND_MIB if memory_is_the_servers_own else None)
    _, connections, verified, faults, growth, _ = row
    print(f"lesson {lesson}: {connections} connections, {verified >> 20} MiB verified, {faults} faults, "
          f"RSS +{growth:.1f} MiB")
    assert not failures, (
        f"under a mix of polite and rude clients ({connections} connections, {faults} faults injected) "
        f"the server failed {len(failures)} time(s); first: {failures[0]}")
    assert verified > 0, "the soak verified no bytes at all: no polite client got its echo"


LESSONS.append("10")  # lesson 10, a thread pool on one epoll (a line of its own: others add theirs)
LESSONS.append("11")  # lesson 11, io_uring
