// Acceptor: takes new clients off a non-blocking listener, and survives running out of
// descriptors (EMFILE) without crashing or spinning.
#pragma once

#include <chrono>
#include <functional>

#include "fd.h"

class Acceptor {
 public:
  // How long the listener rests when accept() cannot succeed for now (see resting()).
  static constexpr std::chrono::milliseconds kRest{100};

  // Takes the listening socket and reserves one spare descriptor (see accept_one). If the spare
  // cannot be opened (a descriptor limit that low), it says so once on stderr, and out of
  // descriptors it rests instead of turning clients away.
  explicit Acceptor(Fd listener);

  int listener() const { return listener_.get(); }

  enum class Result {
    kAccepted,  // *client holds a new non-blocking connection (TCP_NODELAY set)
    kEmpty,     // nothing more to accept now (EAGAIN, or resting): stop looping
    kRejected,  // out of descriptors: one client was accepted and closed at once
    kRetry,     // a client gave up while queued, or a signal arrived: just call again
  };

  // Accepts one pending connection. Out of descriptors, accept() fails with EMFILE and leaves the
  // connection queued, so the listener stays readable and a readiness loop wakes at once, forever
  // (100% CPU). Instead we free the spare, accept the client into it, close it (the client sees
  // EOF), and take the spare back: the queue drains and the loop can sleep.
  Result accept_one(Fd* client);

  // Calls accept_one until the queue is empty, handing each accepted client to on_client; clients
  // turned away and retries are passed over. Level-triggered this saves a wakeup per queued client;
  // edge-triggered it is a must, as clients left queued raise no new edge (lesson 05).
  void accept_all(const std::function<void(Fd)>& on_client);

  // Out of descriptors with no spare to give, or with the kernel short of memory, accept() fails
  // and the client stays queued: the listener stays readable. The Acceptor then rests for kRest,
  // as nginx does: the loop does not watch the listener meanwhile (a level-triggered loop would
  // spin on it), wakes when rest_ms() says, and calls accept_all() again.
  bool resting() const { return rest_until_ != Clock::time_point{}; }
  // Milliseconds of rest left, for the loop's wait timeout (rounded up); -1 when not resting.
  int rest_ms() const;

 private:
  using Clock = std::chrono::steady_clock;

  Result turn_one_away();
  Result queue_empty();
  Result rest(const char* why);
  bool take_spare();

  Fd listener_;
  Fd spare_;
  bool had_spare_ = false;  // a spare missing now was lost to another thread (see queue_empty)
  Clock::time_point rest_until_{};  // {} while not resting
};
