// close_with_recv_armed: what close() does to a TCP socket that has an io_uring recv armed.
// Lesson 11's server cancels a connection's requests and waits for their last completions before
// it closes the socket; this program shows why, on the running kernel:
//
//   build/demo/close_with_recv_armed
//   close() with a multishot recv armed: the client saw no FIN within 1000 ms
//   the recv cancelled first, then close(): the client saw its FIN after 0 ms
//
// An armed request holds its own reference to the socket's file, so close() only drops the
// descriptor: the socket stays open, and the peer waits for an EOF, until the request ends.
#include <arpa/inet.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace {

constexpr int kWaitMs = 1000;
constexpr uint64_t kRecv = 1, kCancel = 2;

[[noreturn]] void fail(const char* what, int error) {
  std::fprintf(stderr, "close_with_recv_armed: %s: %s\n", what, std::strerror(error));
  std::exit(1);
}

// A loopback connection: returns the client's end and sets *server to the accepted end.
int connect_pair(int listener, int* server) {
  sockaddr_in address{};
  socklen_t length = sizeof address;
  ::getsockname(listener, reinterpret_cast<sockaddr*>(&address), &length);
  int client = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (client < 0 || ::connect(client, reinterpret_cast<sockaddr*>(&address), length) != 0) fail("connect", errno);
  *server = ::accept4(listener, nullptr, nullptr, SOCK_CLOEXEC);
  if (*server < 0) fail("accept4", errno);
  return client;
}

// Milliseconds until the client reads EOF (the server's FIN), or -1 if none comes within kWaitMs.
long ms_until_fin(int client) {
  auto start = std::chrono::steady_clock::now();
  pollfd entry{client, POLLIN, 0};
  char byte;
  if (::poll(&entry, 1, kWaitMs) != 1 || ::read(client, &byte, 1) != 0) return -1;
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - start).count();
}

// Submits what is prepared and waits up to 100 ms for completions; returns whether the one with
// user_data `wanted` came.
bool reap(io_uring* ring, uint64_t wanted) {
  io_uring_cqe* cqe;
  __kernel_timespec timeout{0, 100'000'000};
  io_uring_submit_and_wait_timeout(ring, &cqe, 1, &timeout, nullptr);
  bool seen = false;
  unsigned head, count = 0;
  io_uring_for_each_cqe(ring, head, cqe) {
    seen = seen || (cqe->user_data == wanted && !(cqe->flags & IORING_CQE_F_MORE));
    ++count;
  }
  io_uring_cq_advance(ring, count);
  return seen;
}

// A multishot recv that takes its buffer from group 0 (nothing arrives in this test but the EOF).
void arm_recv(io_uring* ring, int fd) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  io_uring_prep_recv_multishot(sqe, fd, nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;
  sqe->buf_group = 0;
  io_uring_sqe_set_data64(sqe, kRecv);
  reap(ring, 0);  // submitted; it waits on the socket, no completion yet
}

void report(const char* how, long ms) {
  if (ms < 0) std::printf("%s: the client saw no FIN within %d ms\n", how, kWaitMs);
  else std::printf("%s: the client saw its FIN after %ld ms\n", how, ms);
  std::fflush(stdout);
}

}  // namespace

int main() {
  io_uring ring;
  if (int result = io_uring_queue_init(8, &ring, 0); result < 0) fail("io_uring_queue_init", -result);
  // One provided buffer (a multishot recv needs one to wait: with an empty ring it ends at once).
  void* page = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
  if (page == MAP_FAILED) fail("mmap", errno);
  auto* buffer_ring = static_cast<io_uring_buf_ring*>(page);
  static char buffer[64];
  io_uring_buf_reg registration{};
  registration.ring_addr = reinterpret_cast<uint64_t>(buffer_ring);
  registration.ring_entries = 1;
  if (int result = io_uring_register_buf_ring(&ring, &registration, 0); result < 0) {
    fail("io_uring_register_buf_ring", -result);
  }
  io_uring_buf_ring_add(buffer_ring, buffer, sizeof buffer, 0, io_uring_buf_ring_mask(1), 0);
  io_uring_buf_ring_advance(buffer_ring, 1);
  int listener = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in loopback{};
  loopback.sin_family = AF_INET;
  loopback.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&loopback), sizeof loopback) != 0 || ::listen(listener, 4) != 0) {
    fail("bind/listen", errno);
  }

  int server;
  int client = connect_pair(listener, &server);
  arm_recv(&ring, server);
  ::close(server);
  report("close() with a multishot recv armed", ms_until_fin(client));
  ::close(client);  // the peer's FIN ends that recv at last
  reap(&ring, kRecv);

  client = connect_pair(listener, &server);
  arm_recv(&ring, server);
  io_uring_sqe* cancel = io_uring_get_sqe(&ring);
  io_uring_prep_cancel64(cancel, kRecv, 0);
  io_uring_sqe_set_data64(cancel, kCancel);
  bool ended = false;
  for (int turn = 0; turn < 20 && !ended; ++turn) ended = reap(&ring, kRecv);  // its last completion
  if (!ended) fail("the cancelled recv never completed", ETIMEDOUT);
  ::close(server);
  report("the recv cancelled first, then close()", ms_until_fin(client));
  ::close(client);
  io_uring_queue_exit(&ring);
  return 0;
}
