#include "epoll_setup.h"

#include <sys/epoll.h>

#include "net.h"

Fd epoll_or_exit() {
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  if (!epoll) die_setup("epoll_create1");
  return epoll;
}

void watch_or_exit(int epoll, int fd, uint32_t events, void* cookie, const char* what) {
  epoll_event event{};
  event.events = events;
  event.data.ptr = cookie;
  if (::epoll_ctl(epoll, EPOLL_CTL_ADD, fd, &event) < 0) die_setup("epoll_ctl(ADD)", what);
}
