// Acceptor: out of descriptors, it turns clients away instead of leaving them queued forever.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "acceptor.h"
#include "log.h"
#include "net.h"
#include "probe.h"

namespace {
// Each rejection prints a line unless quiet, as a server started with --quiet would be.
const bool kQuiet = (set_quiet(true), true);
}  // namespace

TEST_CASE("acceptor_accepts_until_the_queue_is_empty") {
  std::string error;
  Acceptor acceptor(listen_tcp("127.0.0.1", 0, true, &error));
  int port = local_port(acceptor.listener());
  Fd a = connect_loopback(port), b = connect_loopback(port);
  Fd client;
  CHECK(acceptor.accept_one(&client) == Acceptor::Result::kAccepted);
  CHECK(acceptor.accept_one(&client) == Acceptor::Result::kAccepted);
  CHECK(acceptor.accept_one(&client) == Acceptor::Result::kEmpty);
  CHECK((::fcntl(client.get(), F_GETFL) & O_NONBLOCK) != 0);
}

TEST_CASE("acceptor_turns_a_client_away_when_out_of_descriptors") {
  std::string error;
  Acceptor acceptor(listen_tcp("127.0.0.1", 0, true, &error));
  int port = local_port(acceptor.listener());
  Fd client = connect_loopback(port);
  std::vector<Fd> hog;
  {
    ScopedFdLimit limit(64);
    while (true) {  // use up every descriptor below the limit
      Fd fd(::open("/dev/null", O_RDONLY | O_CLOEXEC));
      if (!fd) break;
      hog.push_back(std::move(fd));
    }
    Fd accepted;
    CHECK(acceptor.accept_one(&accepted) == Acceptor::Result::kRejected);
    CHECK_MESSAGE(acceptor.accept_one(&accepted) == Acceptor::Result::kEmpty,
                  "with the queue drained the caller must be told to stop, or it spins");
    hog.clear();
  }
  char byte;
  CHECK_MESSAGE(::read(client.get(), &byte, 1) == 0, "the turned-away client should see EOF");
}

TEST_CASE("acceptor_turns_away_every_queued_client_and_keeps_its_spare") {
  std::string error;
  Acceptor acceptor(listen_tcp("127.0.0.1", 0, true, &error));
  int port = local_port(acceptor.listener());
  Fd first = connect_loopback(port), second = connect_loopback(port), third = connect_loopback(port);
  std::vector<Fd> hog;
  {
    ScopedFdLimit limit(64);
    for (Fd fd; (fd = Fd(::open("/dev/null", O_RDONLY | O_CLOEXEC)));) hog.push_back(std::move(fd));
    Fd accepted;
    // Each rejection must give the spare back, or the next queued client is accepted into the
    // spare's slot and, after it, accept() fails with EMFILE with nothing left to turn clients away.
    for (int client = 0; client < 3; ++client)
      CHECK_MESSAGE(acceptor.accept_one(&accepted) == Acceptor::Result::kRejected, "client ", client);
    CHECK(acceptor.accept_one(&accepted) == Acceptor::Result::kEmpty);
    hog.clear();
  }
}

TEST_CASE("acceptor_accept_all_hands_over_every_queued_client_then_returns") {
  std::string error;
  Acceptor acceptor(listen_tcp("127.0.0.1", 0, true, &error));
  int port = local_port(acceptor.listener());
  Fd a = connect_loopback(port), b = connect_loopback(port), c = connect_loopback(port);
  std::vector<Fd> accepted;
  acceptor.accept_all([&accepted](Fd client) { accepted.push_back(std::move(client)); });
  CHECK_MESSAGE(accepted.size() == 3, "every queued client should be taken in one call");
  for (const Fd& client : accepted) CHECK((::fcntl(client.get(), F_GETFL) & O_NONBLOCK) != 0);
  Fd late;
  CHECK_MESSAGE(acceptor.accept_one(&late) == Acceptor::Result::kEmpty,
                "accept_all returned before the queue was empty");
}
