// Lesson 06: the idle-timer list. Every connection gets the same timeout, so ordering connections
// by their last activity orders them by deadline too: a refresh is a move to the back, in O(1).
#pragma once

#include <chrono>
#include <climits>
#include <cstddef>
#include <list>

// The deadlines of idle connections, earliest first. Owner is whatever a timer belongs to (a
// Connection in the server, a small struct in the unit tests). The list never owns, deletes or
// calls its owners; it only answers "who is due?" and "how long until the next one?".
//
// Why a plain list stays sorted: a timer's deadline is always `now + timeout`, with one timeout
// for everyone and a clock that never goes back, so a timer added or refreshed now has the latest
// deadline of all and belongs at the back. No search, no rebalancing, no heap sift.
template <typename Owner>
class IdleTimers {
 public:
  // steady_clock is CLOCK_MONOTONIC on Linux: it never jumps when someone sets the wall clock,
  // which would otherwise close every connection at once (clock set forward) or none (set back).
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;
  using Duration = Clock::duration;

  struct Timer {
    TimePoint deadline;
    Owner* owner;
  };
  // Where one owner's timer sits: valid from add() until cancel(). A list iterator stays valid
  // while other elements come and go, and splice() moves the node without copying or allocating.
  using Handle = typename std::list<Timer>::iterator;

  explicit IdleTimers(Duration timeout) : timeout_(timeout) {}

  Duration timeout() const { return timeout_; }
  size_t size() const { return timers_.size(); }
  bool empty() const { return timers_.empty(); }

  // Starts owner's timer with deadline now + timeout. O(1); allocates the one list node.
  Handle add(Owner* owner, TimePoint now) {
    return timers_.insert(timers_.end(), {now + timeout_, owner});
  }

  // Activity: the deadline becomes now + timeout, so the timer moves to the back. O(1), no
  // allocation, no system call, so it can run on every read.
  void refresh(Handle timer, TimePoint now) {
    timer->deadline = now + timeout_;
    timers_.splice(timers_.end(), timers_, timer);
  }

  // Removes owner's timer for good (its connection is closing). O(1).
  void cancel(Handle timer) { timers_.erase(timer); }

  // The owner of the earliest timer if its deadline has come (deadline <= now), else nullptr.
  // It stays in the list: the caller closes that owner, which cancels the timer, and asks again.
  Owner* first_due(TimePoint now) const {
    if (timers_.empty() || timers_.front().deadline > now) return nullptr;
    return timers_.front().owner;
  }

  // How long epoll_wait may sleep: the milliseconds until the earliest deadline, rounded UP, so the
  // loop wakes at or after it (rounding down wakes it early, finds nothing due, and it goes round
  // and round with a 0 ms timeout until the deadline). 0 if one is already due; -1 (sleep until
  // an event) when there are no timers at all.
  int wait_ms(TimePoint now) const {
    if (timers_.empty()) return -1;
    Duration left = timers_.front().deadline - now;
    if (left <= Duration::zero()) return 0;
    long long ms = std::chrono::ceil<std::chrono::milliseconds>(left).count();
    return ms > INT_MAX ? INT_MAX : static_cast<int>(ms);
  }

 private:
  Duration timeout_;
  std::list<Timer> timers_;  // deadlines never decrease from front to back
};
