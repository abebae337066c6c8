// Acceptor: takes new clients off a non-blocking listener, and survives running out of
// descriptors (EMFILE) without crashing or spinning.
#pragma once

#include <functional>

#include "fd.h"

class Acceptor {
 public:
  // Takes the listening socket and reserves one spare descriptor (see accept_one).
  explicit Acceptor(Fd listener);

  int listener() const { return listener_.get(); }

  enum class Result {
    kAccepted,  // *client holds a new non-blocking connection (TCP_NODELAY set)
    kEmpty,     // nothing more to accept now (EAGAIN): stop looping
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

 private:
  Result turn_one_away();

  Fd listener_;
  Fd spare_;
};
