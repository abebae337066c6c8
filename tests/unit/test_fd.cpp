// Fd owns a descriptor: it closes it exactly once, and moving hands the duty over.
#include <doctest/doctest.h>
#include <fcntl.h>
#include <unistd.h>

#include "fd.h"

namespace {
bool is_open(int fd) { return ::fcntl(fd, F_GETFD) != -1; }

int open_devnull() { return ::open("/dev/null", O_RDONLY | O_CLOEXEC); }
}  // namespace

TEST_CASE("fd_closes_its_descriptor_when_destroyed") {
  int raw = open_devnull();
  { Fd fd(raw); CHECK(fd.valid()); }
  CHECK_MESSAGE(!is_open(raw), "the destructor should have closed fd ", raw);
}

TEST_CASE("fd_move_transfers_ownership_and_closes_once") {
  int raw = open_devnull();
  Fd first(raw);
  Fd second(std::move(first));
  CHECK_FALSE(first.valid());
  CHECK(second.get() == raw);
  first.reset();  // a moved-from Fd owns nothing, so this must not close raw
  CHECK_MESSAGE(is_open(raw), "a moved-from Fd closed the descriptor it no longer owns");
}

TEST_CASE("fd_move_assignment_closes_the_old_descriptor") {
  int old_raw = open_devnull();
  int new_raw = open_devnull();
  Fd target(old_raw);
  target = Fd(new_raw);
  CHECK_MESSAGE(!is_open(old_raw), "assigning over an Fd must close what it owned");
  CHECK(target.get() == new_raw);
}

TEST_CASE("fd_self_move_assignment_keeps_the_descriptor") {
  int raw = open_devnull();
  Fd fd(raw);
  Fd& alias = fd;
  fd = std::move(alias);
  CHECK(fd.get() == raw);
  CHECK(is_open(raw));
}

TEST_CASE("fd_release_gives_up_ownership_without_closing") {
  int raw = open_devnull();
  { Fd fd(raw); CHECK(fd.release() == raw); }
  CHECK(is_open(raw));
  ::close(raw);
}
