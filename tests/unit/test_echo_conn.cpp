// EchoConn (lessons 02-05): echoes in order even behind queued output, notices FIN and failures,
// and says what the connection wants next (read, write, close) from its state alone.
#include <doctest/doctest.h>
#include <poll.h>
#include <sys/socket.h>

#include <string>

#include "echo_conn.h"
#include "log.h"
#include "probe.h"

namespace {
// A failed read prints a line unless quiet, as a server started with --quiet would be.
const bool kQuiet = (set_quiet(true), true);

// An EchoConn owning the near end of a non-blocking socket pair; the test plays the client at far.
struct Client {
  Connection pair = make_socketpair(SOCK_STREAM);
  EchoConn conn;
  int far() const { return pair.far.get(); }
  Client() { conn.fd = std::move(pair.near); }
};
}  // namespace

TEST_CASE("echo_conn_on_readable_echoes_what_arrived_without_buffering_it") {
  Client client;
  REQUIRE(write_text(client.far(), "hello") == 5);
  CHECK(on_readable(client.conn));
  CHECK_MESSAGE(client.conn.out.empty(), "a socket with room took the echo: nothing to keep");
  CHECK(read_available(client.far()) == "hello");
  CHECK(wants_read(client.conn));
  CHECK_FALSE(wants_write(client.conn));
  CHECK_FALSE(finished(client.conn));
}

TEST_CASE("echo_conn_echo_back_keeps_order_when_output_is_queued") {
  Client client;
  std::string bulk = byte_pattern(4 << 20);  // far more than the socket buffer holds
  CHECK(echo_back(client.conn, bulk.data(), bulk.size()));
  REQUIRE_MESSAGE(!client.conn.out.empty(), "the socket should have refused part of 4 MiB");
  CHECK(wants_write(client.conn));
  CHECK_MESSAGE(!wants_read(client.conn), "over the high-water mark reading must stop");
  // The client reads: room opens up, yet the next echo must still wait behind the queued bytes.
  std::string received = read_available(client.far());
  std::string tail = "tail";
  CHECK(echo_back(client.conn, tail.data(), tail.size()));
  for (int rounds = 0; rounds < 10000 && wants_write(client.conn); ++rounds) {
    REQUIRE(on_writable(client.conn));
    received += read_available(client.far());
  }
  CHECK_FALSE(wants_write(client.conn));
  CHECK_MESSAGE(received.size() == bulk.size() + tail.size(), "bytes went missing");
  CHECK_MESSAGE(received == bulk + tail,
                "the echo came back reordered: echo_back sent ahead of the queued bytes");
}

TEST_CASE("echo_conn_on_readable_sets_peer_done_on_eof_and_finishes_once_nothing_is_owed") {
  Client client;
  REQUIRE(write_text(client.far(), "bye") == 3);
  REQUIRE(::shutdown(client.far(), SHUT_WR) == 0);  // the client half-closes but still reads
  CHECK(on_readable(client.conn));
  CHECK_FALSE(client.conn.peer_done);
  CHECK(on_readable(client.conn));
  CHECK_MESSAGE(client.conn.peer_done, "read() returned 0: the client sends no more");
  CHECK_FALSE(wants_read(client.conn));
  CHECK(finished(client.conn));
  CHECK(read_available(client.far()) == "bye");
}

TEST_CASE("echo_conn_is_not_finished_while_echo_is_owed") {
  Client client;
  client.conn.peer_done = true;
  client.conn.out.append("owed", 4);
  CHECK_MESSAGE(!finished(client.conn), "closing now would lose the 4 bytes owed");
  CHECK(wants_write(client.conn));
  CHECK(on_writable(client.conn));
  CHECK(finished(client.conn));
  CHECK(read_available(client.far()) == "owed");
}

TEST_CASE("echo_conn_on_readable_treats_eagain_as_nothing_after_all") {
  Client client;  // nothing sent: a spurious readiness report
  CHECK(on_readable(client.conn));
  CHECK_FALSE(client.conn.peer_done);
  CHECK(wants_read(client.conn));
}

TEST_CASE("echo_conn_reports_a_reset_peer_as_failed") {
  Connection tcp = make_tcp_connection();
  EchoConn conn;
  conn.fd = std::move(tcp.near);
  abort_connection(&tcp.far);
  REQUIRE(settle(conn.fd.get(), POLLIN | POLLERR, 1000));
  CHECK_MESSAGE(!on_readable(conn), "read() met ECONNRESET: the connection failed");
}

TEST_CASE("echo_conn_echo_back_reports_a_vanished_peer") {
  Client client;
  client.pair.far.reset();
  CHECK_MESSAGE(!echo_back(client.conn, "x", 1), "send() met EPIPE: the client is gone");
  CHECK(client.conn.out.empty());
}
