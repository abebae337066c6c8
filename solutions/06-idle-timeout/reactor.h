// Lesson 06: the reactor. Lesson 05's edge-triggered server reshaped so each connection is an
// object with its own handlers, found through data.ptr, with an idle deadline the loop keeps on
// time. One Reactor is one event loop on one thread: lesson 06 runs one, lesson 09 one per worker.
#pragma once

#include <sys/epoll.h>

#include <cstdint>
#include <list>
#include <vector>

#include "acceptor.h"
#include "fd.h"
#include "idle_timers.h"
#include "out_buffer.h"

namespace reactor {

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

// What one listener's loop saw. Only that loop's thread writes them; lesson 09 reads them after
// joining the thread, and prints them.
struct ListenerCounts {
  uint64_t events = 0;         // times epoll reported the listener
  uint64_t found_nothing = 0;  // of those, the ones whose accept took no client (EAGAIN at once)
  uint64_t accepted = 0;       // clients this loop took
};

// The listening socket's handler: takes every queued client and gives it to the Reactor.
class Listener final : public Handler {
 public:
  Listener(Reactor& reactor, Fd listener) : reactor_(reactor), acceptor_(std::move(listener)) {}
  int fd() const { return acceptor_.listener(); }
  void on_events(uint32_t events) override;
  // Out of descriptors with no spare, the Acceptor rests (common/acceptor.h); clients queued
  // meanwhile raise no new edge, so the Reactor calls on_events once rest_ms() reaches 0.
  int rest_ms() const { return acceptor_.rest_ms(); }
  const ListenerCounts& counts() const { return counts_; }

 private:
  Reactor& reactor_;
  Acceptor acceptor_;
  ListenerCounts counts_;
};

// A handler whose event ends the loop: Reactor::run checks stop() after every wakeup.
class StopHandler : public Handler {
 public:
  bool stop() const { return stop_; }

 protected:
  bool stop_ = false;
};

// The signalfd's handler (lesson 06's one loop): a stop signal is one more event, and ends the loop.
class Signals final : public StopHandler {
 public:
  explicit Signals(Fd fd) : fd_(std::move(fd)) {}
  int fd() const { return fd_.get(); }
  void on_events(uint32_t) override;

 private:
  Fd fd_;
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
  // Runs until stop's handler says stop; returns the exit code (1 if epoll_wait failed).
  int run(Listener& listener, StopHandler& stop);

 private:
  int wait_ms(const Listener& listener) const;
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

}  // namespace reactor
