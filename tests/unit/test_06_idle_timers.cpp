// Lesson 06's idle-timer list, driven by an injected clock: every test passes the time in, so
// nothing sleeps and every deadline is exact to the nanosecond (all but the last test, which
// shows against the kernel what wait_ms's rounding is for).
#include <doctest/doctest.h>
#include <sys/epoll.h>

#include <chrono>
#include <string>
#include <vector>

#include "06-idle-timeout/idle_timers.h"
#include "fd.h"

namespace {
using namespace std::chrono_literals;

struct Peer;
using Timers = IdleTimers<Peer>;

// Stands in for a connection: it knows its timer, as the server's Connection does.
struct Peer {
  int id = 0;
  Timers::Handle timer{};
};

const Timers::TimePoint t0{};  // the injected clock's zero; only differences matter

// What the server does with the due timers: close each owner (which cancels its timer) and ask
// again. Returns the ids in the order they expired. Stops after size() rounds, so a first_due
// that never moves on fails the test instead of hanging it.
std::vector<int> expire_due(Timers& timers, Timers::TimePoint now) {
  std::vector<int> expired;
  for (size_t rounds = timers.size() + 1; rounds > 0; --rounds) {
    Peer* peer = timers.first_due(now);
    if (peer == nullptr) return expired;
    expired.push_back(peer->id);
    timers.cancel(peer->timer);
  }
  FAIL("first_due kept answering after every timer had been cancelled");
  return expired;
}

void start(Timers& timers, Peer& peer, Timers::TimePoint now) {
  peer.timer = timers.add(&peer, now);
}
}  // namespace

TEST_CASE("idle_timers_expire_in_deadline_order_and_not_before_the_deadline") {
  Timers timers(10s);
  Peer a{1}, b{2}, c{3};
  start(timers, a, t0);
  start(timers, b, t0 + 1s);
  start(timers, c, t0 + 2s);
  CHECK_MESSAGE(timers.first_due(t0 + 10s - 1ns) == nullptr, "nothing due 1 ns before a deadline");
  CHECK(expire_due(timers, t0 + 10s) == std::vector<int>{1});  // deadline == now counts as due
  CHECK(expire_due(timers, t0 + 12s) == std::vector<int>{2, 3});
  CHECK(timers.empty());
}

TEST_CASE("idle_timers_refresh_moves_an_active_owner_behind_the_idle_ones") {
  Timers timers(10s);
  Peer a{1}, b{2};
  start(timers, a, t0);
  start(timers, b, t0 + 1s);
  timers.refresh(a.timer, t0 + 5s);  // a spoke at 5 s: its deadline is now 15 s, after b's 11 s
  CHECK_MESSAGE(expire_due(timers, t0 + 12s) == std::vector<int>{2}, "only b (due 11 s) at 12 s");
  CHECK_MESSAGE(timers.wait_ms(t0 + 12s) == 3000, "a, refreshed at 5 s, is due at 15 s: 3000 ms");
  CHECK(expire_due(timers, t0 + 15s) == std::vector<int>{1});
}

TEST_CASE("idle_timers_refresh_keeps_an_owner_alive_as_long_as_it_is_active") {
  Timers timers(1s);
  Peer talker{1}, silent{2};
  start(timers, talker, t0);
  start(timers, silent, t0);
  std::vector<int> expired;
  for (auto now = t0; now <= t0 + 10s; now += 300ms) {  // talker says something every 0.3 s
    timers.refresh(talker.timer, now);
    for (int id : expire_due(timers, now)) expired.push_back(id);
  }
  CHECK_MESSAGE(expired == std::vector<int>{2}, "the silent one expires once, the talker never");
  CHECK(timers.size() == 1);
}

TEST_CASE("idle_timers_cancel_removes_a_closed_owner_for_good") {
  Timers timers(10s);
  Peer a{1}, b{2}, c{3};
  start(timers, a, t0);
  start(timers, b, t0);
  start(timers, c, t0);
  timers.cancel(b.timer);  // b's connection closed before its deadline
  CHECK(timers.size() == 2);
  CHECK(expire_due(timers, t0 + 1h) == std::vector<int>{1, 3});
  CHECK_MESSAGE(timers.wait_ms(t0 + 1h) == -1, "no timers: epoll_wait should sleep until an event");
}

TEST_CASE("idle_timers_many_equal_deadlines_all_expire_together_in_arrival_order") {
  Timers timers(2s);
  std::vector<Peer> peers(1000);
  for (int i = 0; i < 1000; ++i) {
    peers[i].id = i;
    start(timers, peers[i], t0);
  }
  CHECK(timers.first_due(t0 + 2s - 1ns) == nullptr);
  std::vector<int> expired = expire_due(timers, t0 + 2s);
  REQUIRE(expired.size() == 1000);
  for (int i = 0; i < 1000; ++i) CHECK(expired[i] == i);
}

TEST_CASE("idle_timers_expire_exactly_the_due_ones_and_keep_the_rest") {
  Timers timers(10s);
  std::vector<Peer> peers(10);
  for (int i = 0; i < 10; ++i) {
    peers[i].id = i;
    start(timers, peers[i], t0 + i * 100ms);  // deadlines 10.0 s, 10.1 s, ... 10.9 s
  }
  CHECK(expire_due(timers, t0 + 10s + 450ms) == std::vector<int>{0, 1, 2, 3, 4});
  CHECK(timers.size() == 5);
  CHECK_MESSAGE(timers.wait_ms(t0 + 10s + 450ms) == 50, "the next deadline (10.5 s) is 50 ms away");
  CHECK(expire_due(timers, t0 + 10s + 500ms) == std::vector<int>{5});
}

TEST_CASE("idle_timers_wait_ms_rounds_up_so_the_loop_never_wakes_early") {
  Timers timers(250ms);
  Peer a{1};
  CHECK_MESSAGE(timers.wait_ms(t0) == -1, "no timers: -1, epoll_wait sleeps until an event");
  start(timers, a, t0);
  CHECK(timers.wait_ms(t0) == 250);
  CHECK_MESSAGE(timers.wait_ms(t0 - 1us) == 251, "250.001 ms left must wait 251 ms, not 250");
  CHECK_MESSAGE(timers.wait_ms(t0 + 249ms + 600us) == 1,
                "0.4 ms left must wait 1 ms: 0 would return at once, find nothing due, and spin");
  CHECK_MESSAGE(timers.wait_ms(t0 + 250ms - 1ns) == 1, "1 ns left still waits 1 ms");
  CHECK(timers.wait_ms(t0 + 250ms) == 0);
  CHECK_MESSAGE(timers.wait_ms(t0 + 5s) == 0, "a deadline in the past: do not sleep at all");
}

TEST_CASE("idle_timers_wait_ms_fits_the_longest_allowed_timeout_in_an_int") {
  Timers timers(std::chrono::seconds(1000000));  // the command line's maximum, 1e6 s
  Peer a{1};
  start(timers, a, t0);
  CHECK(timers.wait_ms(t0) == 1000000000);
  Timers absurd(std::chrono::hours(24 * 365 * 100));
  Peer b{2};
  start(absurd, b, t0);
  CHECK_MESSAGE(absurd.wait_ms(t0) == INT_MAX, "a wait past INT_MAX ms is clamped, never negative");
}

TEST_CASE("idle_timers_wait_ms_lets_one_epoll_wait_reach_the_deadline") {
  // The real clock and a real (empty) epoll instance, for ten deadlines 2.3 to 3.2 ms away, none on
  // a whole millisecond. Rounded up, each takes one epoll_wait. Rounded down, the last fraction of
  // a millisecond becomes a 0 ms wait that returns at once, again and again until the deadline:
  // thousands of calls per deadline on the machine this was written on.
  Fd epoll(::epoll_create1(EPOLL_CLOEXEC));
  REQUIRE(epoll);
  epoll_event events[1];
  int rounds = 10, calls = 0, zero_waits = 0;
  for (int round = 0; round < rounds; ++round) {
    Timers timers(std::chrono::microseconds(2300 + 97 * round));
    Peer peer{round};
    start(timers, peer, Timers::Clock::now());
    while (timers.first_due(Timers::Clock::now()) == nullptr && calls < 100000) {
      int ms = timers.wait_ms(Timers::Clock::now());
      if (ms < 0) FAIL("wait_ms said -1 (sleep until an event) with a timer pending");
      zero_waits += ms == 0;
      ++calls;
      ::epoll_wait(epoll.get(), events, 1, ms);
    }
  }
  CHECK_MESSAGE(zero_waits == 0, zero_waits << " waits of 0 ms before " << rounds
                                            << " deadlines: a busy loop (wait_ms rounds down?)");
  CHECK_MESSAGE(calls <= 2 * rounds,
                calls << " epoll_wait calls for " << rounds << " deadlines; one each will do");
}
