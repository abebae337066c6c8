// The listening socket: port 0 reports the real port; failures name the call and the address.
#include <doctest/doctest.h>
#include <sys/socket.h>

#include <string>

#include "net.h"

TEST_CASE("listen_tcp_on_port_0_reports_the_port_the_kernel_chose") {
  std::string error;
  Fd listener = listen_tcp("127.0.0.1", 0, false, &error);
  REQUIRE_MESSAGE(listener.valid(), error);
  int port = local_port(listener.get());
  CHECK(port > 0);
  CHECK(port < 65536);
}

TEST_CASE("listen_tcp_on_a_port_in_use_names_bind_and_the_address") {
  std::string error;
  Fd first = listen_tcp("127.0.0.1", 0, false, &error);
  REQUIRE(first.valid());
  int port = local_port(first.get());
  Fd second = listen_tcp("127.0.0.1", port, false, &error);
  CHECK_FALSE(second.valid());
  CHECK(error == "bind 127.0.0.1:" + std::to_string(port) + ": Address already in use");
}

TEST_CASE("listen_tcp_on_an_address_not_here_fails_with_eaddrnotavail") {
  std::string error;
  Fd listener = listen_tcp("192.0.2.1", 0, false, &error);  // TEST-NET-1: never local
  CHECK_FALSE(listener.valid());
  CHECK(error == "bind 192.0.2.1:0: Cannot assign requested address");
}

TEST_CASE("make_address_accepts_ipv4_and_ipv6_and_nothing_else") {
  SocketAddress address;
  CHECK(make_address("127.0.0.1", 80, &address));
  CHECK(address.family() == AF_INET);
  CHECK(make_address("::1", 80, &address));
  CHECK(address.family() == AF_INET6);
  CHECK_FALSE(make_address("localhost", 80, &address));
  CHECK(describe("::1", 80) == "[::1]:80");
  CHECK(describe("127.0.0.1", 80) == "127.0.0.1:80");
}

TEST_CASE("listen_tcp_nonblocking_listener_returns_eagain_when_no_client_waits") {
  std::string error;
  Fd listener = listen_tcp("127.0.0.1", 0, true, &error);
  REQUIRE(listener.valid());
  CHECK(::accept(listener.get(), nullptr, nullptr) == -1);
  CHECK(errno == EAGAIN);
}
