// Set-up of an epoll server's own descriptors (lessons 04 on): the epoll instance, and the
// registrations that must not fail, such as the listener's and the signalfd's.
#pragma once

#include <cstdint>

#include "fd.h"

// epoll_create1(EPOLL_CLOEXEC), or exit 1 naming the call.
Fd epoll_or_exit();

// EPOLL_CTL_ADD of fd for events, with cookie as the data.ptr its events will carry; exit 1
// naming `what` if the kernel refuses.
void watch_or_exit(int epoll, int fd, uint32_t events, void* cookie, const char* what);
