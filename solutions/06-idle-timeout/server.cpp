// Lesson 06: lesson 05's edge-triggered server as a reactor (one object per connection, with its
// own handlers, found through data.ptr) that closes connections idle for too long, on time.
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <list>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "fd.h"
#include "idle_timers.h"
#include "log.h"
#include "net.h"
#include "out_buffer.h"
#include "signals.h"

namespace {

const ServerSpec kSpec{"Lesson 06: edge-triggered epoll echo server that closes idle connections.",
                       7006,
                       {{"--idle-timeout", LessonFlag::Kind::kPositiveNumber,
                         "close a connection idle this long (default 60; fractions allowed)",
                         60}}};

// One read per readiness report; 64 KiB keeps the syscalls per byte low for bulk senders.
constexpr size_t kReadChunk = 64 * 1024;
// Events taken per epoll_wait: the length of our array, never the number of connections. The
// kernel fills at most this many; the other ready sockets stay ready for the next call.
constexpr int kMaxEvents = 256;
// Fairness: reads one connection gets per turn. Draining a fast sender to EAGAIN could keep
// everyone else waiting; past this bound it goes to the back of Reactor::ready_.
constexpr int kReadsPerTurn = 4;

class Connection;
class Reactor;
using Timers = IdleTimers<Connection>;

// What epoll's data.ptr points at. Every registered fd has one Handler, and the loop hands each
// event to it without knowing what kind it is (a connection, the listener).
class Handler {
 public:
  virtual ~Handler() = default;
  // An event epoll reported, or events == 0 for a turn from the Reactor's ready list.
  virtual void on_events(uint32_t events) = 0;
};

// One client: its socket, the echo it is owed, its idle deadline, and the handlers that do its I/O.
//
// Ownership: the Reactor owns every Connection, from accept until the end of the loop iteration in
// which it closes. Nothing else deletes one, least of all its own handlers: close() has the
// Reactor unregister and close the fd and cancel the idle timer at once, but the object is freed
// only after the iteration, because a later event of the same epoll_wait batch, or the ready list,
// may still hold its address. That is why on_events starts by checking closed().
class Connection final : public Handler {
 public:
  Connection(Reactor& reactor, Fd fd) : reactor_(reactor), fd_(std::move(fd)) {}

  int fd() const { return fd_.get(); }
  bool closed() const { return !fd_; }

  void on_events(uint32_t events) override;
  void on_timeout();  // its idle deadline has passed: the Reactor found it at the front of the list

 private:
  friend class Reactor;  // the Reactor keeps the bookkeeping fields (self_, timer_, queued_)

  bool on_readable(int max_reads);
  bool on_writable();
  bool echo_back(const char* data, size_t size);
  void note_activity();
  void close(const char* why);

  // Backpressure: a client whose echo piles up is not read until it drains: memory stays bounded.
  bool wants_read() const { return !peer_done_ && !out_.over_high_water(); }
  // EPOLLOUT comes with nearly every edge; it matters only while output is pending.
  bool wants_write() const { return !out_.empty(); }
  // The client sent FIN and has everything back: time to close.
  bool finished() const { return peer_done_ && out_.empty(); }
  // Input may be waiting and backpressure allows reading it. Asked after every write too: that is
  // how reading resumes once output drains, with no new edge for the bytes that waited meanwhile.
  bool should_read() const { return readable_ && wants_read(); }

  Reactor& reactor_;
  Fd fd_;
  OutputBuffer out_;        // echo bytes the socket did not take yet
  bool peer_done_ = false;  // read() returned 0: the client sends no more (it may still read)
  // An edge said input is waiting and no read has found its end yet. Bytes already queued raise no
  // new edge, so after a read stopped early (fairness, backpressure) this flag is all that says so.
  bool readable_ = false;
  // An event reported a FIN, urgent data or an error: a short read may stop in front of them,
  // so from now on only 0 or EAGAIN proves the input drained (see on_readable).
  bool read_to_eagain_ = false;
  bool queued_ = false;                   // on Reactor::ready_
  std::list<Connection>::iterator self_;  // where it sits in Reactor::conns_, to unlink it in O(1)
  Timers::Handle timer_;                  // where it sits in Reactor::timers_
};

// The listening socket's handler: takes every queued client and gives it to the Reactor.
class Listener final : public Handler {
 public:
  Listener(Reactor& reactor, Fd listener) : reactor_(reactor), acceptor_(std::move(listener)) {}
  int fd() const { return acceptor_.listener(); }
  void on_events(uint32_t events) override;

 private:
  Reactor& reactor_;
  Acceptor acceptor_;
};

// The loop: sleeps until a socket is ready or the earliest idle deadline comes, hands each event
// to its Handler, closes the connections whose deadline has passed. Owns every Connection.
class Reactor {
 public:
  explicit Reactor(Timers::Duration idle_timeout);

  bool watch(int fd, Handler* handler, uint32_t events);
  void add_connection(Fd client);
  void remove_connection(Connection& conn);
  void queue_turn(Connection& conn);
  Timers& timers() { return timers_; }
  int run(const sigset_t* wait_mask);

 private:
  int wait_ms() const;
  void close_idle_connections();
  void serve_queued(std::vector<Connection*>& turns);

  Fd epoll_;
  Timers timers_;          // every open connection's idle deadline, earliest first
  Timers::TimePoint now_;  // the clock, read once per wakeup: for the expiry and the next wait
  // A list, because a Connection must never move while epoll holds its address.
  std::list<Connection> conns_;
  std::list<Connection> closed_;    // closed during this iteration, freed once it is done
  std::vector<Connection*> ready_;  // connections that stopped at the fairness bound, served next
};

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
// queue raise no new edge, and would wait until yet another client connects.
void Listener::on_events(uint32_t) {
  acceptor_.accept_all([this](Fd client) { reactor_.add_connection(std::move(client)); });
}

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
// new events (0), never sleep. Otherwise sleep until the earliest idle deadline, or until an event
// if there is no connection at all (-1).
int Reactor::wait_ms() const { return ready_.empty() ? timers_.wait_ms(now_) : 0; }

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

// The event loop: waits for readiness or the next deadline, dispatches, until a stop signal.
// Returns the exit code.
int Reactor::run(const sigset_t* wait_mask) {
  epoll_event events[kMaxEvents];
  std::vector<Connection*> turns;
  while (!stop_requested()) {
    // SIGINT/SIGTERM are blocked except inside epoll_pwait: one that arrived since the check above
    // is still pending and interrupts the call at once, instead of waiting for the next client.
    int ready = ::epoll_pwait(epoll_.get(), events, kMaxEvents, wait_ms(), wait_mask);
    int error = errno;
    now_ = Timers::Clock::now();  // once per wakeup: the expiry below and the next wait use it
    if (ready < 0) {
      if (error == EINTR) continue;  // a signal: the loop condition decides
      warn("epoll_pwait: %s", std::strerror(error));
      return 1;
    }
    for (int i = 0; i < ready; ++i) {
      static_cast<Handler*>(events[i].data.ptr)->on_events(events[i].events);
    }
    // After the events, so a byte that arrived by its deadline still saves its connection.
    close_idle_connections();
    serve_queued(turns);
    // Only now may closed connections be freed: until the iteration is done, a later event or the
    // ready list could still hold the address of one closed earlier.
    closed_.clear();
  }
  return 0;  // conns_'s destructor closes every connection, then epoll_'s the epoll fd
}

}  // namespace

int main(int argc, char** argv) {
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  install_signal_handlers();
  const sigset_t* wait_mask = block_stop_signals();
  std::chrono::duration<double> idle_timeout(options.numbers["--idle-timeout"]);
  Reactor reactor(std::chrono::duration_cast<Timers::Duration>(idle_timeout));
  Listener listener(reactor, listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  if (!reactor.watch(listener.fd(), &listener, EPOLLIN)) die_setup("epoll_ctl(ADD listener)");
  announce_listening(options.host, local_port(listener.fd()));
  return reactor.run(wait_mask);
}
