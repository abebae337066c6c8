// OutputBuffer: keeps what the socket did not take, hands it over in order, frees memory when drained.
#include <doctest/doctest.h>
#include <sys/socket.h>
#include <unistd.h>

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
