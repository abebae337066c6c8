// The probes lesson 08 observes the kernel with: masks and errnos print by name, kernel releases
// parse into comparable versions, and a connection's two ends really talk to each other.
#include <doctest/doctest.h>
#include <sys/epoll.h>

#include <cerrno>
#include <sstream>

#include "probe.h"

TEST_CASE("event_names_lists_each_bit_by_name_and_any_rest_in_hex") {
  CHECK(event_names(EPOLLIN | EPOLLRDHUP) == "EPOLLIN|EPOLLRDHUP");
  CHECK(event_names(0) == "0 (no events)");
  CHECK(event_names(EPOLLHUP | (1u << 20)) == "EPOLLHUP|0x100000");
}

TEST_CASE("errno_name_prints_the_symbol_not_the_number") {
  std::ostringstream out;
  out << ErrnoName{ENODEV} << " " << ErrnoName{0};
  CHECK(out.str() == "ENODEV 0");
}

TEST_CASE("parse_kernel_release_reads_major_and_minor") {
  CHECK(parse_kernel_release("5.13.0-40-generic") == KernelVersion{5, 13});
  CHECK(parse_kernel_release("6.18.44-fc") > KernelVersion{5, 14});
  CHECK(parse_kernel_release("garbage") == KernelVersion{0, 0});
}

TEST_CASE("make_tcp_connection_gives_two_ends_of_one_loopback_connection") {
  Connection tcp = make_tcp_connection();
  REQUIRE(write_text(tcp.far.get(), "ping") == 4);
  REQUIRE(settle(tcp.near.get(), POLLIN, 2000));
  CHECK(read_count(tcp.near.get()) == 4);
}
