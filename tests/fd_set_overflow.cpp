// What FD_SET does with an fd at or past FD_SETSIZE (lesson 02): an fd_set is a fixed bitmap of
// FD_SETSIZE bits and FD_SET does not check, so it flips a bit in whatever memory comes after it.
//
//   build/demo/fd_set_overflow [FD]            built as Debian's g++ builds by default: silent corruption
//   build/demo/fd_set_overflow_fortified [FD]  built with -D_FORTIFY_SOURCE=2: glibc aborts instead
//
// Safe to run: the write lands inside this program's own struct, in a guard placed after the set.
#include <sys/select.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

// An fd_set as it sits in a stack frame, with other data right after it: here, a guard we can read.
struct Frame {
  fd_set set;
  unsigned char guard[256];
};

// The largest fd whose bit still falls inside Frame, so the demonstration never writes beyond it.
constexpr long kLargestSafeFd = FD_SETSIZE + 8 * sizeof(Frame::guard) - 1;

// The compiler may assume that writing into `set` cannot change `guard` (going past the end of an
// array is undefined behaviour), and keep the zeros it wrote earlier. This barrier makes it store
// and reload the memory for real, so we see what the machine did.
void compiler_barrier(Frame* frame) { asm volatile("" : : "r"(frame) : "memory"); }

long parse_fd(int argc, char** argv) {
  long fd = 1500;
  if (argc > 1) {
    char* end = nullptr;
    fd = std::strtol(argv[1], &end, 10);
    if (*end != '\0' || fd < 0 || fd > kLargestSafeFd) {
      std::fprintf(stderr, "usage: %s [FD]  (0 <= FD <= %ld, default 1500)\n", argv[0], kLargestSafeFd);
      std::exit(2);
    }
  }
  // Hide the value from the optimizer: with a constant, the fortified build would refuse to
  // compile FD_SET(1500) ("bit outside of fd_set selected"), and we want to see what runs.
  asm volatile("" : "+r"(fd));
  return fd;
}

}  // namespace

int main(int argc, char** argv) {
  long fd = parse_fd(argc, argv);
  Frame frame;
  std::memset(&frame, 0, sizeof frame);
  std::printf("an fd_set is %zu bytes: one bit each for fds 0..%d (FD_SETSIZE = %d)\n", sizeof(fd_set),
              FD_SETSIZE - 1, FD_SETSIZE);
  std::printf("calling FD_SET(%ld, &set)\n", fd);
  std::fflush(stdout);  // the fortified build aborts inside FD_SET; show what came before

  compiler_barrier(&frame);
  FD_SET(static_cast<int>(fd), &frame.set);
  compiler_barrier(&frame);

  for (size_t i = 0; i < sizeof frame.guard; ++i) {
    if (frame.guard[i] != 0) {
      std::printf("OVERWRITTEN: byte %zu after the end of the fd_set went from 0x00 to 0x%02x.\n"
                  "That memory belongs to something else (here, a guard; in a server, other variables\n"
                  "or a return address). Nothing warned, nothing crashed: silent corruption.\n",
                  i, frame.guard[i]);
      return 1;
    }
  }
  std::printf("fd %ld is below FD_SETSIZE: its bit is inside the fd_set, nothing else was touched.\n", fd);
  return 0;
}
