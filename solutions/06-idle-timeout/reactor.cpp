// Lesson 06: the reactor's handlers and loop (reactor.h says what each class is for).
#include "reactor.h"

#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>

#include "log.h"
#include "net.h"
#include "signals.h"

namespace reactor {
namespace {

// The size of one read(); 64 KiB keeps the syscalls per byte low for bulk senders.
constexpr size_t kReadChunk = 64 * 1024;
// Events taken per epoll_wait: the length of our array, never the number of connections. The
// kernel fills at most this many; the other ready sockets stay ready for the next call.
constexpr int kMaxEvents = 256;
// Fairness: reads one connection gets per turn. Draining a fast sender to EAGAIN could keep
// everyone else waiting; past this bound it goes to the back of Reactor::ready_.
constexpr int kReadsPerTurn = 4;

}  // namespace

// Serves one connection: an event epoll reported (events), or its turn from the ready list (events
// 0). Closes it if it failed or is finished; queues it again if it stopped at the fairness bound.
void Connection::on_events(uint32_t events) {
  if (closed()) return;  // closed earlier in this iteration; its memory lives until the end of it
  // An edge is the only news there will be: write it down. EPOLLERR and EPOLLHUP come even
  // unasked; the read or write they lead to meets the error and closes the connection.
  if (events & (EPOLLIN | EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP)) readable_ = true;
  if (events & (EPOLLRDHUP | EPOLLPRI | EPOLLERR | EPOLLHUP)) read_to_eagain_ = true;
  bool ok = true;
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && wants_write()) ok = on_writable();
  if (ok && should_read()) ok = on_readable(kReadsPerTurn);
  if (!ok || finished()) {
    close(ok ? "done" : "failed");
  } else if (should_read() && !queued_) {
    reactor_.queue_turn(*this);
  }
}

// Reads and echoes until the input is drained, or max_reads reads (fairness), or backpressure.
// Edge-triggered: bytes left unread are not announced again, so readable_ stays set until a read
// proves the input drained. Returns false if the connection failed.
bool Connection::on_readable(int max_reads) {
  char buffer[kReadChunk];
  for (int reads = 0; reads < max_reads && should_read();) {
    ssize_t n = ::read(fd_.get(), buffer, sizeof buffer);
    if (n > 0) {
      ++reads;
      note_activity();  // a byte received: the idle deadline starts again
      if (!echo_back(buffer, static_cast<size_t>(n))) return false;
      // A short read took all the data TCP held, and any byte arriving later raises a new edge, so
      // the read that would say EAGAIN is skipped. Not if a FIN or urgent data may wait behind it.
      if (static_cast<size_t>(n) < sizeof buffer && !read_to_eagain_) readable_ = false;
    } else if (n == 0) {
      peer_done_ = true;  // FIN: stop reading; close once everything owed is sent
      readable_ = false;
    } else if (int error = errno; error == EAGAIN) {
      readable_ = false;  // drained: the next byte to arrive raises a new edge
    } else if (error != EINTR) {
      chatter("read fd %d: %s", fd_.get(), std::strerror(error));
      return false;
    }
  }
  return true;
}

// Sends what is queued. Echo the client took is activity too: a client still reading what it is
// owed is not idle, even if it sends nothing. Returns false if the client is gone.
bool Connection::on_writable() {
  size_t owed = out_.pending();
  if (out_.flush_to(fd_.get()) == OutputBuffer::Flush::kFailed) return false;
  if (out_.pending() < owed) note_activity();
  return true;
}

// Sends data at once if nothing is queued ahead of it, and keeps what the socket refuses.
// Returns false if the client is gone (EPIPE, ECONNRESET).
bool Connection::echo_back(const char* data, size_t size) {
  size_t sent = 0;
  if (out_.empty()) {  // queued bytes must leave first, or the echo would come back reordered
    long n = write_some(fd_.get(), data, size);
    if (n < 0 && errno != EAGAIN) return false;
    sent = n < 0 ? 0 : static_cast<size_t>(n);
  }
  out_.append(data + sent, size - sent);
  return true;
}

// Bytes moved: the idle deadline becomes now + timeout. O(1), and no system call: the clock is
// read in the vDSO (about 30 ns here). Not the loop's once-per-wakeup time: bytes that arrived
// while the batch was being served would get a deadline early by as long as the batch took.
void Connection::note_activity() { reactor_.timers().refresh(timer_, Timers::Clock::now()); }

void Connection::on_timeout() {
  double seconds = std::chrono::duration<double>(reactor_.timers().timeout()).count();
  chatter("fd %d: idle for %.3f s", fd_.get(), seconds);
  close("idle timeout");
}

void Connection::close(const char* why) {
  chatter("client closed (fd %d): %s", fd_.get(), why);
  reactor_.remove_connection(*this);
}

// Accepts every client waiting in the queue. Edge-triggered, this is a must: clients left in the
// queue raise no new edge, and would wait until yet another client connects. Counts what it finds
// (lesson 09 prints the counts: an event that finds nothing is a cost of sharing a listener).
void Listener::on_events(uint32_t events) {
  uint64_t before = counts_.accepted;
  acceptor_.accept_all([this](Fd client) {
    ++counts_.accepted;
    reactor_.add_connection(std::move(client));
  });
  if (events == 0) return;  // the end of a rest, not an event from epoll
  ++counts_.events;
  if (counts_.accepted == before) ++counts_.found_nothing;
}

void Signals::on_events(uint32_t) { stop_ = handle_signals(fd_.get()) || stop_; }

Reactor::Reactor(Timers::Duration idle_timeout)
    : epoll_(::epoll_create1(EPOLL_CLOEXEC)), timers_(idle_timeout), now_(Timers::Clock::now()) {
  if (!epoll_) die_setup("epoll_create1");
}

// Registers fd once for its whole life, edge-triggered, with its Handler as the cookie every event
// will carry. Returns false if epoll_ctl failed (ENOMEM, or ENOSPC: max_user_watches).
bool Reactor::watch(int fd, Handler* handler, uint32_t events) {
  epoll_event event{};
  event.events = events | EPOLLET;
  event.data.ptr = handler;
  return ::epoll_ctl(epoll_.get(), EPOLL_CTL_ADD, fd, &event) == 0;
}

// Stores a new connection, registers it for everything it will ever want (no epoll_ctl per
// message, nor per backpressure episode; EPOLLRDHUP reports the peer's FIN and EPOLLPRI urgent
// data, both of which can hide behind a short read), and starts its idle timer.
void Reactor::add_connection(Fd client) {
  Connection& conn = conns_.emplace_front(*this, std::move(client));
  conn.self_ = conns_.begin();
  if (!watch(conn.fd(), &conn, EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLPRI)) {
    warn("epoll_ctl(ADD) fd %d: %s; closing that connection", conn.fd(), std::strerror(errno));
    conns_.erase(conn.self_);  // the Fd closes the socket; the client sees EOF
    return;
  }
  conn.timer_ = timers_.add(&conn, Timers::Clock::now());  // not now_: it may have come after it
  chatter("client connected (fd %d)", conn.fd());
}

// Unregisters and closes the connection and cancels its timer. Its memory lives on until the
// iteration is done (see run).
void Reactor::remove_connection(Connection& conn) {
  // DEL before close: close() alone removes the fd from epoll only when no other descriptor
  // (dup, fork) refers to the same socket; otherwise events would keep coming for freed memory.
  ::epoll_ctl(epoll_.get(), EPOLL_CTL_DEL, conn.fd(), nullptr);
  conn.fd_.reset();
  timers_.cancel(conn.timer_);
  closed_.splice(closed_.end(), conns_, conn.self_);  // moves the node, not the Connection
}

void Reactor::queue_turn(Connection& conn) {
  conn.queued_ = true;
  ready_.push_back(&conn);
}

// Queued connections hold input no edge will announce again: while there are any, only look for
// new events (0), never sleep. Otherwise sleep until the earliest idle deadline or the end of the
// listener's rest, or until an event if there is neither (-1).
int Reactor::wait_ms(const Listener& listener) const {
  if (!ready_.empty()) return 0;
  int timers = timers_.wait_ms(now_), rest = listener.rest_ms();
  return timers < 0 ? rest : rest < 0 ? timers : std::min(timers, rest);
}

// The list is ordered by deadline: only its front is ever looked at, never every connection.
// on_timeout closes the connection, which cancels its timer, so the next one comes to the front.
void Reactor::close_idle_connections() {
  while (Connection* idle = timers_.first_due(now_)) idle->on_timeout();
}

// Gives each connection queued at the fairness bound one more turn, in the order they queued.
// Those that stop at the bound again queue for the next iteration, behind the new events.
void Reactor::serve_queued(std::vector<Connection*>& turns) {
  turns.swap(ready_);
  for (Connection* conn : turns) {
    conn->queued_ = false;
    conn->on_events(0);  // returns at once if an event or the timer closed it in this iteration
  }
  turns.clear();
}

// The event loop: waits for readiness or the next deadline, dispatches, until the stop handler's
// event (a stop signal in lesson 06). Returns the exit code.
int Reactor::run(Listener& listener, StopHandler& stop) {
  epoll_event events[kMaxEvents];
  std::vector<Connection*> turns;
  while (!stop.stop()) {
    int ready = ::epoll_wait(epoll_.get(), events, kMaxEvents, wait_ms(listener));
    int error = errno;
    now_ = Timers::Clock::now();  // once per wakeup: the expiry below and the next wait use it
    if (ready < 0) {
      if (error == EINTR) continue;  // a signal we do not handle, such as SIGCONT
      warn("epoll_wait: %s", std::strerror(error));
      return 1;
    }
    for (int i = 0; i < ready; ++i) {
      static_cast<Handler*>(events[i].data.ptr)->on_events(events[i].events);
    }
    // After the events, so a byte that arrived by its deadline still saves its connection.
    close_idle_connections();
    serve_queued(turns);
    if (listener.rest_ms() == 0) listener.on_events(0);  // the rest is over: accept again
    // Only now may closed connections be freed: until the iteration is done, a later event or the
    // ready list could still hold the address of one closed earlier.
    closed_.clear();
  }
  return 0;  // conns_'s destructor closes every connection, then epoll_'s the epoll fd
}


}  // namespace reactor
