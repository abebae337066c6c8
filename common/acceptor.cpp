#include "acceptor.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cerrno>
#include <cstring>

#include "log.h"

namespace {
int open_spare() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }

int accept_nonblocking(int listener) {
  return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
}  // namespace

Acceptor::Acceptor(Fd listener) : listener_(std::move(listener)), spare_(open_spare()) {}

Acceptor::Result Acceptor::accept_one(Fd* client) {
  int fd = accept_nonblocking(listener_.get());
  if (fd >= 0) {
    // An echo writes back small pieces as they come; Nagle's algorithm would hold them back
    // waiting for ACKs (up to 40 ms with delayed ACKs on the other side).
    int on = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    *client = Fd(fd);
    return Result::kAccepted;
  }
  switch (errno) {
    case EAGAIN:
      return Result::kEmpty;
    case EINTR:
    case ECONNABORTED:  // the client reset the connection while it waited in the queue
    case EPROTO:
      return Result::kRetry;
    case EMFILE:
    case ENFILE:
      return turn_one_away();
    default:  // ENOBUFS, ENOMEM: the kernel is short of memory; try again on the next wakeup
      warn("accept: %s", std::strerror(errno));
      return Result::kEmpty;
  }
}

void Acceptor::accept_all(const std::function<void(Fd)>& on_client) {
  for (;;) {
    Fd client;
    switch (accept_one(&client)) {
      case Result::kAccepted:
        on_client(std::move(client));
        break;
      case Result::kRejected:  // out of fds: that client was turned away; try the next
      case Result::kRetry:
        break;
      case Result::kEmpty:
        return;
    }
  }
}

Acceptor::Result Acceptor::turn_one_away() {
  spare_.reset();
  Fd victim(accept_nonblocking(listener_.get()));
  int saved = errno;
  bool turned_away = victim.valid();
  victim.reset();  // before taking the spare back: the victim holds the spare's slot
  spare_.reset(open_spare());
  // accept() reports EMFILE even when the queue is empty; then the spare finds EAGAIN, and the
  // caller must stop looping. EMFILE/ENFILE here means there was no spare to give (the system
  // ran out too): stop as well, rather than loop on accept() without ever sleeping.
  if (!turned_away)
    return saved == EAGAIN || saved == EMFILE || saved == ENFILE ? Result::kEmpty : Result::kRetry;
  chatter("out of file descriptors: turned a client away");  // per connection: --quiet silences it
  return Result::kRejected;
}
