// OutputBuffer: keeps what the socket did not take, hands it over in order, frees memory when drained.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <string>

#include "fd.h"
#include "out_buffer.h"
#include "probe.h"

namespace {
struct SocketPair {
  Fd ours, theirs;
  SocketPair() {
    int fds[2];
    REQUIRE(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, fds) == 0);
    ours.reset(fds[0]);
    theirs.reset(fds[1]);
  }
};
}  // namespace

TEST_CASE("out_buffer_empty_flush_is_done") {
  SocketPair pair;
  OutputBuffer buffer;
  CHECK(buffer.empty());
  CHECK(buffer.flush_to(pair.ours.get()) == OutputBuffer::Flush::kDone);
}

TEST_CASE("out_buffer_keeps_what_a_full_socket_refuses_and_delivers_it_in_order") {
  SocketPair pair;
  OutputBuffer buffer;
  std::string data = byte_pattern(4 << 20);  // far more than a socket buffer holds
  buffer.append(data.data(), data.size());
  CHECK(buffer.flush_to(pair.ours.get()) == OutputBuffer::Flush::kBlocked);
  CHECK(buffer.pending() > 0);
  CHECK(buffer.over_high_water());
  std::string received;
  for (int rounds = 0; rounds < 10000 && received.size() < data.size(); ++rounds) {
    received += read_available(pair.theirs.get());
    buffer.flush_to(pair.ours.get());
  }
  CHECK(buffer.empty());
  CHECK_MESSAGE(received == data, "bytes arrived out of order or went missing");
}

TEST_CASE("out_buffer_reports_a_vanished_peer_as_failed") {
  SocketPair pair;
  OutputBuffer buffer;
  buffer.append("hello", 5);
  pair.theirs.reset();
  CHECK(buffer.flush_to(pair.ours.get()) == OutputBuffer::Flush::kFailed);
  CHECK(errno == EPIPE);  // and no SIGPIPE killed the test: MSG_NOSIGNAL
}

TEST_CASE("out_buffer_behind_a_reader_that_never_lets_it_drain_holds_at_most_high_water_plus_one_read") {
  // The server's side of a steady slow reader: each turn the socket takes part of what is owed
  // (the reader took a little), and another read is appended while the rest is still pending.
  SocketPair pair;
  int small = 16 * 1024;
  REQUIRE(::setsockopt(pair.ours.get(), SOL_SOCKET, SO_SNDBUF, &small, sizeof small) == 0);
  OutputBuffer buffer;
  constexpr size_t kRead = 64 * 1024;
  std::string chunk = byte_pattern(kRead), received;
  size_t appended = 0, most_held = 0;
  for (int turn = 0; turn < 2000; ++turn) {
    if (!buffer.over_high_water()) {  // as a server does: no read while above the high-water mark
      buffer.append(chunk.data(), chunk.size());
      appended += chunk.size();
    }
    most_held = std::max(most_held, buffer.held());
    CHECK(buffer.flush_to(pair.ours.get()) != OutputBuffer::Flush::kFailed);
    char some[8 * 1024];  // the reader takes a little each turn: never everything owed
    ssize_t n = ::read(pair.theirs.get(), some, sizeof some);
    if (n > 0) received.append(some, static_cast<size_t>(n));
    REQUIRE_FALSE(buffer.empty());
  }
  CHECK_MESSAGE(appended > 16 * OutputBuffer::kHighWater, "the test should push far more than the mark");
  CHECK_MESSAGE(most_held <= OutputBuffer::kHighWater + kRead,
                "the buffer kept bytes it had already sent: held up to ", most_held, " bytes for ",
                buffer.pending(), " unsent; it must never hold more than the high-water mark plus one read");
  for (size_t i = 0; i < received.size(); i += kRead)
    REQUIRE_MESSAGE(received.compare(i, kRead, chunk, 0, std::min(kRead, received.size() - i)) == 0,
                    "bytes arrived out of order or went missing at offset ", i);
}
