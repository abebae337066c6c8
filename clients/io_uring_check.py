#!/usr/bin/env python3
"""Can this process use io_uring? Lesson 11's server needs it; where it is blocked (a seccomp
filter such as Docker's default profile, or the sysctl kernel.io_uring_disabled), lesson 11's tests
skip with the reason this prints.

By hand:    clients/io_uring_check.py
From tests: from clients.io_uring_check import io_uring_unavailable
"""

import ctypes
import errno
import functools
import os
import sys

# io_uring_setup has the same number on every architecture (it is newer than the split tables).
SYS_IO_URING_SETUP = 425
PARAMS_SIZE = 120  # sizeof(struct io_uring_params)


def _sysctl(name):
    try:
        with open(f"/proc/sys/kernel/{name}") as value:
            return int(value.read())
    except (OSError, ValueError):
        return None


def _seccomp_mode():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Seccomp:"):
                return int(line.split()[1])
    return 0


@functools.cache
def io_uring_unavailable():
    """None if an io_uring instance can be created here; otherwise a sentence saying why not."""
    libc = ctypes.CDLL(None, use_errno=True)
    params = ctypes.create_string_buffer(PARAMS_SIZE)
    fd = libc.syscall(ctypes.c_long(SYS_IO_URING_SETUP), ctypes.c_uint(1), params)
    if fd >= 0:
        os.close(fd)
        return None
    error = ctypes.get_errno()
    why = f"io_uring_setup fails with {errno.errorcode.get(error, error)}"
    if error == errno.ENOSYS:
        return f"{why}: this kernel has no io_uring"
    disabled = _sysctl("io_uring_disabled")
    if error == errno.EPERM and disabled:
        return f"{why}: sysctl kernel.io_uring_disabled is {disabled}"
    if error == errno.EPERM and _seccomp_mode() == 2:
        return f"{why}: a seccomp filter blocks it (Docker's default profile does)"
    return why


def main():
    reason = io_uring_unavailable()
    print("io_uring is available" if reason is None else f"io_uring is not available: {reason}")
    sys.exit(0 if reason is None else 1)


if __name__ == "__main__":
    main()
