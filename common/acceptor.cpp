#include "acceptor.h"

#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <atomic>
#include <cerrno>
#include <cstring>

#include "log.h"
#include "status.h"

namespace {
int open_spare() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }

// Once per process: with an Acceptor per thread (lesson 09) each would say it otherwise.
std::atomic<bool> said_no_spare{false};

int accept_nonblocking(int listener) {
  return ::accept4(listener, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
}
}  // namespace

Acceptor::Acceptor(Fd listener) : listener_(std::move(listener)) { take_spare(); }

// (Re)opens the spare; says once if it cannot, since from then on clients wait instead of being
// turned away. Returns whether there is a spare now.
bool Acceptor::take_spare() {
  if (!spare_) spare_.reset(open_spare());
  if (spare_) had_spare_ = true;
  if (!spare_ && !said_no_spare.exchange(true)) {
    warn("no spare descriptor (open /dev/null: %s): when out of descriptors, clients will wait "
         "in the queue instead of being turned away", std::strerror(errno));
  }
  return spare_.valid();
}

Acceptor::Result Acceptor::accept_one(Fd* client) {
  // A spare lost to another thread (see turn_one_away) is taken back once descriptors free up.
  if (!spare_) take_spare();
  int fd = accept_nonblocking(listener_.get());
  if (fd >= 0) {
    rest_until_ = {};
    server_counters().accepted.fetch_add(1, std::memory_order_relaxed);
    // An echo writes back small pieces as they come; Nagle's algorithm would hold them back
    // waiting for ACKs (up to 40 ms with delayed ACKs on the other side).
    int on = 1;
    ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
    *client = Fd(fd);
    return Result::kAccepted;
  }
  switch (errno) {
    case EAGAIN:
      return queue_empty();
    case EINTR:
    case ECONNABORTED:  // the client reset the connection while it waited in the queue
    case EPROTO:
      return Result::kRetry;
    case EMFILE:
    case ENFILE:
      return turn_one_away();
    default:  // ENOBUFS, ENOMEM: the kernel is short of memory; the client stays queued
      return rest(std::strerror(errno));
  }
}

void Acceptor::accept_all(const std::function<void(Fd)>& on_client) {
  for (;;) {
    Fd client;
    switch (accept_one(&client)) {
      case Result::kAccepted:
        on_client(std::move(client));
        break;
      case Result::kRejected:  // out of descriptors: that client was turned away; try the next
      case Result::kRetry:
        break;
      case Result::kEmpty:
        return;
    }
  }
}

// The queue is empty: nothing to rest from. A rest left set would keep rest_ms() at 0 and the
// loop that waits for it spinning (with threads, another one may have emptied a shared queue).
// A good moment to take back a spare lost to another thread, too. If no descriptor is free yet,
// rest and try again: waiting for the next client instead could leave this Acceptor without its
// spare for good, and out of descriptors the next time, with none to turn a client away with.
Acceptor::Result Acceptor::queue_empty() {
  rest_until_ = {};
  if (!spare_ && !take_spare() && had_spare_) return rest("lost the spare descriptor to another thread");
  return Result::kEmpty;
}

int Acceptor::rest_ms() const {
  if (!resting()) return -1;
  auto left = std::chrono::ceil<std::chrono::milliseconds>(rest_until_ - Clock::now());
  return left.count() > 0 ? static_cast<int>(left.count()) : 0;
}

Acceptor::Result Acceptor::rest(const char* why) {
  bool again = resting();  // still out of descriptors after a rest: said already
  rest_until_ = Clock::now() + kRest;
  if (!again) {
    chatter("accept: %s; not accepting for %lld ms at a time until descriptors free up", why,
            static_cast<long long>(kRest.count()));
  }
  return Result::kEmpty;
}

Acceptor::Result Acceptor::turn_one_away() {
  if (!take_spare()) return rest("out of descriptors, and no spare to turn a client away with");
  spare_.reset();
  Fd victim(accept_nonblocking(listener_.get()));
  int saved = errno;
  bool turned_away = victim.valid();
  victim.reset();  // before taking the spare back: the victim holds the spare's slot
  take_spare();    // fails only if someone else (another thread) took the slot meanwhile
  // accept() reports EMFILE even when the queue is empty; then the spare finds EAGAIN, and the
  // caller must stop looping. EMFILE/ENFILE here means the slot was gone before we could use it.
  if (!turned_away) {
    if (saved == EMFILE || saved == ENFILE) return rest(std::strerror(saved));
    return saved == EAGAIN ? queue_empty() : Result::kRetry;
  }
  server_counters().turned_away.fetch_add(1, std::memory_order_relaxed);
  chatter("out of file descriptors: turned a client away");  // per connection: --quiet silences it
  return Result::kRejected;
}
