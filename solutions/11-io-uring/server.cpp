// Lesson 11: the echo server on io_uring. A readiness server (lessons 02-06) asks the kernel which
// sockets are ready, then reads and writes them itself, a system call each. This one hands the
// kernel whole operations (accept, recv, send) through a submission ring and learns what became of
// each from a completion ring: the bytes are already read when it hears of them, and one
// io_uring_enter submits and reaps a whole batch.
#include <liburing.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/mman.h>
#include <sys/socket.h>

#include <bit>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <list>
#include <string>
#include <string_view>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "outbox.h"
#include "probe.h"
#include "signals.h"
#include "status.h"

namespace {

const ServerSpec kSpec{"Lesson 11: echo server on io_uring: completions instead of readiness.",
                       7011,
                       {{.name = "--buffers", .kind = LessonFlag::Kind::kNumber,
                         .help = "receive buffers shared by all connections, 4 KiB each (default 1024)",
                         .default_value = 1024, .min_value = 1, .max_value = 32768, .whole = true,
                         .unit = "N"}}};

// Submission queue entries: how many requests one io_uring_enter can carry. When it is full the
// server submits what it has and goes on (next_sqe), so this bounds a batch, not the connections.
constexpr unsigned kSubmissionEntries = 1024;
// Completion queue entries. Every connection's multishot recv can post a completion at the same
// moment; a full queue makes the kernel end multishot requests (no IORING_CQE_F_MORE), which the
// server survives by arming them again, at a cost. 16 bytes each.
constexpr unsigned kCompletionEntries = 16384;
// One provided buffer: a multishot recv fills at most this much per completion.
constexpr unsigned kBufferSize = 4096;
constexpr int kBufferGroup = 0;

// What a request was, kept in the low 3 bits of its user_data; the rest is the address of its
// Conn (aligned to 8), or 0 for the server's own requests.
enum class Op : uint64_t { kCancel, kAccept, kListenerReadable, kRestOver, kSignals, kRecv, kSend };
constexpr uint64_t kOpMask = 7;

// One client. Its address is the user_data of every request it has in the kernel, so it may be
// freed only once the last of them has completed (in_kernel() == 0).
struct Conn {
  Fd fd;
  Outbox out;                  // the echo owed: the bytes of the send in flight, then the rest
  bool recv_armed = false;     // a multishot recv is in the kernel: it ends with a CQE without F_MORE
  bool sending = false;        // the one send in flight on this socket (the echo keeps its order)
  unsigned cancels = 0;        // cancel requests in the kernel
  bool peer_done = false;      // recv completed with 0: the client sends no more (it may still read)
  bool failed = false;         // an error: close as soon as the kernel has let go of it
  std::list<Conn>::iterator self;

  unsigned in_kernel() const { return recv_armed + sending + cancels; }
};
static_assert(alignof(Conn) > kOpMask, "the op lives in the low bits of a Conn's address");

uint64_t tag(Conn* conn, Op op) { return reinterpret_cast<uint64_t>(conn) | static_cast<uint64_t>(op); }
Conn* conn_of(uint64_t user_data) { return reinterpret_cast<Conn*>(user_data & ~kOpMask); }
Op op_of(uint64_t user_data) { return static_cast<Op>(user_data & kOpMask); }

// The io_uring instance: two rings shared with the kernel, the submission queue (SQ) we write
// requests into and the completion queue (CQ) the kernel writes results into.
class Ring {
 public:
  Ring() = default;
  ~Ring() { exit(); }
  Ring(const Ring&) = delete;
  Ring& operator=(const Ring&) = delete;

  // 0, or -errno from io_uring_setup (EPERM: io_uring is blocked here; ENOSYS: no io_uring).
  int init() {
    io_uring_params params{};
    // DEFER_TASKRUN: the kernel finishes our requests' work when we enter to wait, in our thread,
    // instead of interrupting us for it; it needs SINGLE_ISSUER (one thread submits). Linux 6.1.
    params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_SINGLE_ISSUER |
                   IORING_SETUP_DEFER_TASKRUN;
    params.cq_entries = kCompletionEntries;
    int result = io_uring_queue_init_params(kSubmissionEntries, &ring_, &params);
    if (result == -EINVAL) {  // an older kernel without some of those flags
      params = {};
      params.flags = IORING_SETUP_CQSIZE;
      params.cq_entries = kCompletionEntries;
      result = io_uring_queue_init_params(kSubmissionEntries, &ring_, &params);
    }
    live_ = result == 0;
    return result;
  }
  io_uring* get() { return &ring_; }
  // Tears the instance down: the kernel cancels every request still in it.
  void exit() {
    if (live_) io_uring_queue_exit(&ring_);
    live_ = false;
  }

 private:
  io_uring ring_{};
  bool live_ = false;
};

// The provided buffers: `count` buffers of kBufferSize bytes, handed to the kernel through a ring
// of their addresses. A recv that asks for a buffer (IOSQE_BUFFER_SELECT) takes the one at the
// ring's head only when data has arrived, and names it in its completion; until then an idle
// connection holds none. The server copies the bytes out and gives the buffer back at the tail.
class BufferRing {
 public:
  BufferRing() = default;
  ~BufferRing() {
    if (ring_ != nullptr) ::munmap(ring_, ring_bytes_);
  }
  BufferRing(const BufferRing&) = delete;
  BufferRing& operator=(const BufferRing&) = delete;

  // 0 or -errno. Registers the ring with io_uring as group kBufferGroup and fills it.
  int init(io_uring* ring, unsigned count) {
    unsigned entries = std::bit_ceil(count);  // a ring's size is a power of 2; it may hold fewer
    ring_bytes_ = entries * sizeof(io_uring_buf);
    void* memory = ::mmap(nullptr, ring_bytes_, PROT_READ | PROT_WRITE, MAP_ANONYMOUS | MAP_PRIVATE, -1, 0);
    if (memory == MAP_FAILED) return -errno;
    ring_ = static_cast<io_uring_buf_ring*>(memory);
    io_uring_buf_ring_init(ring_);
    io_uring_buf_reg registration{};
    registration.ring_addr = reinterpret_cast<uint64_t>(ring_);
    registration.ring_entries = entries;
    registration.bgid = kBufferGroup;
    if (int result = io_uring_register_buf_ring(ring, &registration, 0); result < 0) return result;
    mask_ = io_uring_buf_ring_mask(entries);
    // Written now, so every page is resident from the start: a fixed cost of the server, not a
    // cost per connection that the first busy clients would seem to add.
    memory_.assign(size_t{count} * kBufferSize, 0);
    for (unsigned id = 0; id < count; ++id) {
      io_uring_buf_ring_add(ring_, memory_.data() + size_t{id} * kBufferSize, kBufferSize,
                            static_cast<unsigned short>(id), mask_, static_cast<int>(id));
    }
    io_uring_buf_ring_advance(ring_, static_cast<int>(count));  // all of them visible at once
    return 0;
  }

  const char* data(unsigned id) const { return memory_.data() + size_t{id} * kBufferSize; }

  // Puts buffer `id` back at the ring's tail, where the kernel can take it again.
  void give_back(unsigned id) {
    io_uring_buf_ring_add(ring_, memory_.data() + size_t{id} * kBufferSize, kBufferSize,
                          static_cast<unsigned short>(id), mask_, 0);
    io_uring_buf_ring_advance(ring_, 1);  // publishes the new tail: until then the kernel cannot see it
  }

 private:
  io_uring_buf_ring* ring_ = nullptr;
  size_t ring_bytes_ = 0;
  int mask_ = 0;
  std::vector<char> memory_;
};

// Where io_uring cannot be used at all, why, as precisely as this process can tell.
std::string unavailable_reason(int error) {
  std::string call = std::string("io_uring_setup: ") + std::strerror(error);
  if (error == ENOSYS) return call + " (this kernel was built without io_uring)";
  if (error != EPERM && error != EACCES) return call;
  int disabled = 0;
  std::ifstream("/proc/sys/kernel/io_uring_disabled") >> disabled;
  if (disabled == 2) return call + " (sysctl kernel.io_uring_disabled = 2: disabled for every process)";
  if (disabled == 1) return call + " (sysctl kernel.io_uring_disabled = 1: only for kernel.io_uring_group)";
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);) {
    if (line.starts_with("Seccomp:") && line.find('0') == std::string::npos)
      return call + " (a seccomp filter blocks it, as Docker's default profile does)";
  }
  return call;
}

// One line and exit 1: a machine without io_uring is a setup failure, not a crash.
[[noreturn]] void exit_unavailable(int error) {
  warn("io_uring is not available here: %s", unavailable_reason(error).c_str());
  std::exit(1);
}

// Multishot recv (one request, many completions) came with Linux 6.0.
void require_multishot_recv() {
  KernelVersion kernel = running_kernel();
  if (kernel < KernelVersion{6, 0}) {
    warn("io_uring is not available here: multishot recv needs Linux 6.0 or later; this is %s",
         running_kernel_release().c_str());
    std::exit(1);
  }
}

class Server {
 public:
  Server(Fd listener, Fd signals, unsigned buffers);
  ~Server();
  int listener() const { return acceptor_.listener(); }
  int run();

 private:
  bool submit_and_reap();
  void dispatch(const io_uring_cqe& cqe);
  io_uring_sqe* next_sqe();

  void arm_accept();
  void arm_signals();
  void on_accept(int result, unsigned flags);
  void resume_accepting();
  void on_signals(int result, unsigned flags);

  void add_connection(Fd client);
  void arm_recv(Conn& conn);
  void start_send(Conn& conn);
  void cancel(Conn& conn, Op op);
  void on_recv(Conn& conn, int result, unsigned flags);
  void on_send(Conn& conn, int result);
  void on_cancel(Conn& conn);
  void update(Conn& conn);
  void close_when_released(Conn& conn);

  Acceptor acceptor_;
  Fd signals_;
  std::list<Conn> conns_;  // a list: a Conn never moves while the kernel holds its address
  BufferRing buffers_;
  Ring ring_;
  __kernel_timespec rest_{};  // the Acceptor's rest, read by the kernel when the timeout is submitted
  bool said_ring_empty_ = false;
  bool stop_ = false;
};

Server::Server(Fd listener, Fd signals, unsigned buffers)
    : acceptor_(std::move(listener)), signals_(std::move(signals)) {
  int result = ring_.init();
  if (result == -EMFILE || result == -ENFILE || result == -ENOMEM) {
    errno = -result;
    die_setup("io_uring_setup");
  }
  if (result < 0) exit_unavailable(-result);
  if (int error = buffers_.init(ring_.get(), buffers); error < 0) {
    errno = -error;
    die_setup("io_uring_register_buf_ring", "provided-buffer rings need Linux 5.19 or later");
  }
}

// The ring goes first: the kernel lets go of every request, and of the memory its sends read
// from, before the connections and buffers are freed.
Server::~Server() { ring_.exit(); }

// A free submission queue entry. When the queue is full, what is in it is submitted first.
io_uring_sqe* Server::next_sqe() {
  io_uring_sqe* sqe = io_uring_get_sqe(ring_.get());
  while (sqe == nullptr) {
    if (int result = io_uring_submit(ring_.get()); result < 0 && result != -EINTR && result != -EAGAIN) {
      warn("io_uring_submit: %s", std::strerror(-result));
      std::exit(1);
    }
    sqe = io_uring_get_sqe(ring_.get());
  }
  return sqe;
}

// The loop: one io_uring_enter submits every request prepared since the last one and waits for a
// completion; then every completion that has arrived is handled, most of which prepare new requests.
int Server::run() {
  arm_signals();
  arm_accept();
  while (!stop_) {
    if (!submit_and_reap()) {
      warn("submit_and_reap() failed (is its TODO filled in?)");
      return 1;
    }
  }
  return 0;  // ~Server tears down the ring, then closes every connection
}

// One turn: submit and wait in one system call, then handle every completion in the CQ and move
// its head past them. Returns false if io_uring_enter failed in a way the loop cannot go on from.
bool Server::submit_and_reap() {
  int result = io_uring_submit_and_wait(ring_.get(), 1);
  // EINTR: a stop and continue (SIGSTOP, SIGCONT); EAGAIN, EBUSY: the kernel is short of memory, or
  // the CQ has overflowed: reaping what is there makes room.
  if (result < 0 && result != -EINTR && result != -EAGAIN && result != -EBUSY) {
    warn("io_uring_enter: %s", std::strerror(-result));
    return false;
  }
  unsigned head;
  unsigned seen = 0;
  io_uring_cqe* cqe;
  io_uring_for_each_cqe(ring_.get(), head, cqe) {
    dispatch(*cqe);
    ++seen;
  }
  io_uring_cq_advance(ring_.get(), seen);  // only now may the kernel reuse those entries
  return true;
}

void Server::dispatch(const io_uring_cqe& cqe) {
  Conn* conn = conn_of(cqe.user_data);
  switch (op_of(cqe.user_data)) {
    case Op::kAccept: return on_accept(cqe.res, cqe.flags);
    case Op::kListenerReadable: return arm_accept();
    case Op::kRestOver: return resume_accepting();
    case Op::kSignals: return on_signals(cqe.res, cqe.flags);
    case Op::kRecv: return on_recv(*conn, cqe.res, cqe.flags);
    case Op::kSend: return on_send(*conn, cqe.res);
    case Op::kCancel: return on_cancel(*conn);
  }
}

// --- the listener and the signals -------------------------------------------------------------

// One request that accepts every client from now on, each in its own completion.
void Server::arm_accept() {
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_multishot_accept(sqe, acceptor_.listener(), nullptr, nullptr, SOCK_CLOEXEC);
  io_uring_sqe_set_data64(sqe, tag(nullptr, Op::kAccept));
}

void Server::on_accept(int result, unsigned flags) {
  if (result >= 0) {
    server_counters().accepted.fetch_add(1, std::memory_order_relaxed);
    add_connection(Fd(result));
  } else {
    chatter("accept: %s", std::strerror(-result));
  }
  if (flags & IORING_CQE_F_MORE) return;  // still armed
  if (result >= 0) return arm_accept();     // ended for the kernel's own reasons (a full CQ)
  resume_accepting();
}

// The multishot accept ended with an error, typically EMFILE: out of descriptors. The client is
// still queued, and an accept armed again now would fail again at once, in a loop. So the server
// falls back to lesson 02's Acceptor, which turns queued clients away with its spare descriptor
// (or rests when it has none), then waits for the listener to be readable before arming again.
void Server::resume_accepting() {
  acceptor_.accept_all([this](Fd client) { add_connection(std::move(client)); });
  io_uring_sqe* sqe = next_sqe();
  if (acceptor_.resting()) {
    rest_.tv_sec = 0;
    rest_.tv_nsec = static_cast<long long>(acceptor_.rest_ms()) * 1000000;
    io_uring_prep_timeout(sqe, &rest_, 0, 0);
    io_uring_sqe_set_data64(sqe, tag(nullptr, Op::kRestOver));
  } else {
    io_uring_prep_poll_add(sqe, acceptor_.listener(), POLLIN);  // readiness, once, for the listener
    io_uring_sqe_set_data64(sqe, tag(nullptr, Op::kListenerReadable));
  }
}

// Signals are a descriptor (common/signals.h) watched through the ring like everything else, so a
// stop is one more completion, even when the ring is never idle.
void Server::arm_signals() {
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_poll_multishot(sqe, signals_.get(), POLLIN);
  io_uring_sqe_set_data64(sqe, tag(nullptr, Op::kSignals));
}

void Server::on_signals(int result, unsigned flags) {
  if (result < 0) {
    warn("poll on the signalfd: %s", std::strerror(-result));
    stop_ = true;
    return;
  }
  if (handle_signals(signals_.get())) stop_ = true;
  if (!(flags & IORING_CQE_F_MORE)) arm_signals();
}

// --- connections --------------------------------------------------------------------------------

void Server::add_connection(Fd client) {
  // An echo writes back small pieces as they come; Nagle's algorithm would hold them back.
  int on = 1;
  ::setsockopt(client.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  Conn& conn = conns_.emplace_front();
  conn.self = conns_.begin();
  conn.fd = std::move(client);
  chatter("client connected (fd %d)", conn.fd.get());
  arm_recv(conn);
}

// One recv request for the whole life of the connection (multishot): each arrival of data takes a
// provided buffer and posts a completion with IORING_CQE_F_MORE, until one comes without it.
void Server::arm_recv(Conn& conn) {
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_recv_multishot(sqe, conn.fd.get(), nullptr, 0, 0);
  sqe->flags |= IOSQE_BUFFER_SELECT;  // no buffer of ours: the kernel picks one from the group
  sqe->buf_group = kBufferGroup;
  io_uring_sqe_set_data64(sqe, tag(&conn, Op::kRecv));
  conn.recv_armed = true;
}

// One send in flight per socket. Two sends on one socket can complete out of order (one waits
// for room in the socket buffer, the next finds room first), and the echo would come back shuffled.
void Server::start_send(Conn& conn) {
  if (conn.sending || conn.out.empty()) return;
  std::string_view bytes = conn.out.next_send();
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_send(sqe, conn.fd.get(), bytes.data(), bytes.size(), MSG_NOSIGNAL);
  io_uring_sqe_set_data64(sqe, tag(&conn, Op::kSend));
  conn.sending = true;
}

// Asks the kernel to cancel conn's request `op`. The cancelled request still completes (with
// -ECANCELED, or with its result if it was faster), and the cancel itself completes too.
void Server::cancel(Conn& conn, Op op) {
  io_uring_sqe* sqe = next_sqe();
  io_uring_prep_cancel64(sqe, tag(&conn, op), 0);
  io_uring_sqe_set_data64(sqe, tag(&conn, Op::kCancel));
  ++conn.cancels;
}

// A completion of the multishot recv: bytes in a provided buffer, the end of the stream, or an
// error. The buffer goes back to the ring at once; the bytes wait in the connection's Outbox.
void Server::on_recv(Conn& conn, int result, unsigned flags) {
  if (!(flags & IORING_CQE_F_MORE)) conn.recv_armed = false;  // this recv has ended; update() decides
  // Only a completion with IORING_CQE_F_BUFFER has taken a buffer. An EOF or error has not, and the
  // id bits of its flags are 0: giving "buffer 0" back would put it in the ring twice, and two
  // recvs would fill it at once, one client's bytes in another's echo.
  if (flags & IORING_CQE_F_BUFFER) {
    unsigned id = flags >> IORING_CQE_BUFFER_SHIFT;
    if (result > 0 && !conn.failed) conn.out.append(buffers_.data(id), static_cast<size_t>(result));
    buffers_.give_back(id);
  }
  if (result == 0) {
    conn.peer_done = true;  // EOF: send what is owed, then close
  } else if (result == -ENOBUFS) {
    // The ring was empty when data came: no error of the client's. The buffers of this batch are
    // back by the time the next io_uring_enter submits, so update() arms the recv again.
    if (!said_ring_empty_) {
      warn("recv: the ring of provided buffers was empty (ENOBUFS); recvs wait for buffers to come back");
    }
    said_ring_empty_ = true;
  } else if (result < 0 && result != -ECANCELED) {  // ECANCELED: backpressure cancelled it
    chatter("recv fd %d: %s", conn.fd.get(), std::strerror(-result));
    conn.failed = true;
  }
  update(conn);
}

// The send completed: res bytes went into the socket, maybe fewer than asked (a short send); the
// rest is sent next, before anything queued behind it.
void Server::on_send(Conn& conn, int result) {
  conn.sending = false;
  if (result > 0) {
    conn.out.consume(static_cast<size_t>(result));
  } else if (!conn.failed) {
    chatter("send fd %d: %s", conn.fd.get(), result < 0 ? std::strerror(-result) : "sent nothing");
    conn.failed = true;  // EPIPE, ECONNRESET: the client is gone
  }
  update(conn);
}

void Server::on_cancel(Conn& conn) {
  --conn.cancels;
  update(conn);
}

// After every completion of a connection: start the next send, keep exactly one recv armed while
// reading is wanted, cancel it under backpressure, close when done. The last thing a handler does.
void Server::update(Conn& conn) {
  if (!conn.failed) start_send(conn);
  if (conn.failed || (conn.peer_done && conn.out.empty())) return close_when_released(conn);
  bool wants_read = !conn.peer_done && !conn.out.over_high_water();
  if (wants_read && !conn.recv_armed) {
    arm_recv(conn);  // after ENOBUFS, or after backpressure has eased
  } else if (!wants_read && conn.recv_armed && conn.cancels == 0) {
    cancel(conn, Op::kRecv);  // backpressure: no more recvs until the echo drains below the mark
  }
}

// Frees the connection once the kernel holds no request of it: a later completion would otherwise
// find freed memory at its user_data. Until then, cancels what still runs. Closing the socket is
// the last step, so the client sees its FIN only when everything owed has been sent.
void Server::close_when_released(Conn& conn) {
  if (conn.in_kernel() == 0) {
    chatter("client closed (fd %d)", conn.fd.get());
    conns_.erase(conn.self);  // the Fd closes the socket
    return;
  }
  if (conn.cancels > 0) return;  // their completions come first
  if (conn.recv_armed) cancel(conn, Op::kRecv);
  if (conn.sending) cancel(conn, Op::kSend);
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  Options options = parse_or_exit(argc, argv, kSpec);  // also applies --quiet
  require_multishot_recv();
  Fd signals = watch_signals();
  Server server(listen_or_exit(options.host, options.port, /*nonblocking=*/true), std::move(signals),
                static_cast<unsigned>(options.numbers["--buffers"]));
  announce_listening(options.host, local_port(server.listener()));
  return server.run();
}
