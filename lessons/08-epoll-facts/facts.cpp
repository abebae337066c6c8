// Lesson 08: eleven popular claims about epoll and seven bugs from tutorial programs, each one
// a test on the running kernel. Your part: the predictions, each marked as a TODO of lesson 08.
//
// Each TEST_CASE builds the smallest situation that shows one fact and compares what the kernel
// does with your prediction: the constants just above it. When they differ, the message says why.
//   make 08 && build/lessons/08/facts             all cases
//   build/lessons/08/facts -tc='claim_04*'        one case (doctest's --help lists more options)
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <climits>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <map>
#include <mutex>
#include <ostream>
#include <string>
#include <thread>
#include <vector>

#include "acceptor.h"
#include "log.h"
#include "net.h"
#include "probe.h"

namespace {

// ---- Given: how a prediction is written and checked ---------------------------------------------

// What every prediction starts as. No count, byte total or errno the kernel reports equals it.
constexpr int kNoGuess = -99;
// Predict a mask the way a server would test it: EPOLLIN | EPOLLRDHUP, for instance.
constexpr uint32_t kNoGuessMask = 0;

// Compares what the kernel did with your prediction; on a miss, the message explains the fact.
// (The observation is taken once: many of them read or wait, and a second look would differ.)
#define CHECK_PREDICTION(observed, predicted, fact)                                              \
  do {                                                                                           \
    const auto kernel_did = (observed);                                                          \
    CHECK_MESSAGE(kernel_did == predicted, #predicted " is " << predicted << ", the kernel gave " \
                                                             << kernel_did << ".\n  " << fact);  \
  } while (false)

// Pipe writes stopped waking edge-triggered readers when the pipe already held data in 5.5;
// 5.14 restored the wakeup (and stable trees took the fix back to some older series).
bool pipe_may_skip_edge_wakeups() {
  KernelVersion kernel = running_kernel();
  return kernel >= KernelVersion{5, 5} && kernel < KernelVersion{5, 14};
}

ErrnoName errno_of(bool failed) { return ErrnoName{failed ? errno : 0}; }

// ---- The claims ---------------------------------------------------------------------------------

// Claim 1: "epoll_wait clears the events it returns, so re-arm the fd with EPOLL_CTL_MOD."
// One byte waits in a pipe and nobody reads it. The first epoll_wait (timeout 0) returns it.
// How many events does a SECOND wait return, level-triggered? Edge-triggered? Then another byte
// is written: how many events now, edge-triggered? With EPOLLONESHOT?
constexpr int kClaim01LevelSecondWait = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim01EdgeSecondWait = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim01EdgeAfterAnotherByte = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim01OneshotAfterAnotherByte = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("claim_01_epoll_wait_does_not_disarm_without_oneshot") {
  WatchedPipe level(EPOLLIN), edge(EPOLLIN | EPOLLET), oneshot(EPOLLIN | EPOLLONESHOT);
  for (WatchedPipe* watched : {&level, &edge, &oneshot}) {
    watched->put_byte();
    REQUIRE(watched->wait() == 1);
  }
  CHECK_PREDICTION(level.wait(), kClaim01LevelSecondWait,
                   "Level-triggered, ep_send_events puts a reported item back on the ready list; "
                   "it is reported again while the pipe holds data. Nothing was cleared.");
  CHECK_PREDICTION(edge.wait(), kClaim01EdgeSecondWait,
                   "Edge-triggered, the item is not put back: it waits for the next wakeup.");
  edge.put_byte();
  oneshot.put_byte();
  int edge_again = edge.wait();
  if (pipe_may_skip_edge_wakeups()) {
    MESSAGE("kernel " << running_kernel_release() << " may not wake edge-triggered pipe "
            "readers when the pipe already holds data (5.5 to 5.13); observed " << edge_again
            << " event(s)");
  } else {
    CHECK_PREDICTION(edge_again, kClaim01EdgeAfterAnotherByte,
                     "The new write is a new wakeup (ep_poll_callback queues the item again): "
                     "edge-triggered needs no EPOLL_CTL_MOD.");
  }
  CHECK_PREDICTION(oneshot.wait(), kClaim01OneshotAfterAnotherByte,
                   "Only EPOLLONESHOT disarms: ep_send_events clears the item's mask once it is "
                   "reported, and wakeups are ignored until EPOLL_CTL_MOD.");
  epoll_event rearm{EPOLLIN | EPOLLONESHOT, {.fd = oneshot.pipe.read_end.get()}};
  REQUIRE(::epoll_ctl(oneshot.epoll.get(), EPOLL_CTL_MOD, rearm.data.fd, &rearm) == 0);
  CHECK_MESSAGE(oneshot.wait() == 1, "EPOLL_CTL_MOD re-arms and polls the fd at once, so the "
                                     "waiting bytes are reported again");
}

// Claim 2: "epoll shares memory with user space (mmap), so events are not copied."
// What errno does mmap() of an epoll fd give? And epoll_wait into an events array that may be
// read but not written (a PROT_READ page), with one event ready: what errno?
constexpr ErrnoName kClaim02MmapErrno{kNoGuess};  // TODO(lesson 08): your prediction
constexpr ErrnoName kClaim02ReadOnlyArrayErrno{kNoGuess};  // TODO(lesson 08): your prediction

TEST_CASE("claim_02_epoll_copies_events_instead_of_sharing_memory") {
  WatchedPipe watched(EPOLLIN);
  void* shared = ::mmap(nullptr, 4096, PROT_READ, MAP_SHARED, watched.epoll.get(), 0);
  ErrnoName mmap_error = errno_of(shared == MAP_FAILED);
  if (shared != MAP_FAILED) ::munmap(shared, 4096);
  CHECK_PREDICTION(mmap_error, kClaim02MmapErrno,
                   "An epoll fd has no mmap operation (eventpoll_fops in fs/eventpoll.c): there "
                   "is no shared ring to map.");

  watched.put_byte();
  void* page = ::mmap(nullptr, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  REQUIRE(page != MAP_FAILED);
  int returned = ::epoll_wait(watched.epoll.get(), static_cast<epoll_event*>(page), 1, 0);
  ErrnoName wait_error = errno_of(returned < 0);
  ::munmap(page, 4096);
  CHECK_PREDICTION(wait_error, kClaim02ReadOnlyArrayErrno,
                   "epoll_wait copies each ready event into your array (epoll_put_uevent); a "
                   "page it cannot write makes the copy fail.");
  CHECK_MESSAGE(watched.wait() == 1, "the event that could not be copied goes back on the ready "
                                     "list, so the next epoll_wait still returns it");
}

// Claim 3: "maxevents must not exceed the size given to epoll_create."
// epoll_create(1) watches 200 pipes that all hold data. epoll_wait with maxevents 1000 (and an
// array of 1000): how many events come back? And which errno for maxevents one above
// INT_MAX / sizeof(epoll_event), the largest the kernel accepts?
constexpr int kClaim03EventsReturned = kNoGuess;  // TODO(lesson 08): your prediction
constexpr ErrnoName kClaim03BeyondLimitErrno{kNoGuess};  // TODO(lesson 08): your prediction

TEST_CASE("claim_03_maxevents_is_not_bounded_by_epoll_create_size") {
  Fd epoll(::epoll_create(1));
  REQUIRE(epoll.valid());
  std::vector<Pipe> pipes(200);
  for (Pipe& pipe : pipes) {
    pipe = make_pipe();
    watch(epoll.get(), pipe.read_end.get(), EPOLLIN);
    REQUIRE(write_text(pipe.write_end.get(), "x") == 1);
  }
  std::vector<epoll_event> events(1000);
  int returned = ::epoll_wait(epoll.get(), events.data(), 1000, 0);
  CHECK_PREDICTION(returned, kClaim03EventsReturned,
                   "epoll_create's size is only checked to be positive; maxevents is bounded by "
                   "your array, and the kernel cannot know its length.");
  // volatile: glibc marks epoll_wait's array with an access attribute, so gcc rejects a constant
  // maxevents larger than an array it can see. A running count (as in the seed) it cannot see.
  volatile int beyond = static_cast<int>(INT_MAX / sizeof(epoll_event)) + 1;
  int refused = ::epoll_wait(epoll.get(), events.data(), beyond, 0);
  CHECK_PREDICTION(errno_of(refused < 0), kClaim03BeyondLimitErrno,
                   "do_epoll_wait refuses maxevents <= 0 and above EP_MAX_EVENTS "
                   "(INT_MAX / sizeof(struct epoll_event)) before looking at anything else.");
}

// Claim 4: "In edge-triggered mode, data you do not read is lost."
// A TCP peer sends 2048 bytes; an edge-triggered watcher gets its event and reads only 1024.
// How many events does the next epoll_wait (timeout 0) return? How many bytes does the next
// read() return?
constexpr int kClaim04WaitAfterHalfRead = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim04BytesStillThere = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("claim_04_edge_triggered_unread_data_is_not_lost") {
  Connection tcp = make_tcp_connection();
  Fd epoll = make_epoll();
  watch(epoll.get(), tcp.near.get(), EPOLLIN | EPOLLET);
  REQUIRE(write_text(tcp.far.get(), std::string(2048, 'd')) == 2048);
  REQUIRE(ready_count(epoll.get(), 2000) == 1);
  REQUIRE(bytes_waiting(tcp.near.get()) == 2048);
  REQUIRE(read_count(tcp.near.get(), 1024) == 1024);
  CHECK_PREDICTION(ready_count(epoll.get()), kClaim04WaitAfterHalfRead,
                   "Edge-triggered reports changes: nothing new arrived, so no event.");
  CHECK_PREDICTION(read_count(tcp.near.get()), kClaim04BytesStillThere,
                   "The bytes stay in the socket's receive queue; only the notification is "
                   "not repeated. Read until EAGAIN and nothing is stranded.");
}

// Claim 5: "In edge-triggered mode, a read shorter than the buffer means the socket is drained."
// (a) A datagram socket holds two 100-byte datagrams; recv() into 1024 bytes returns 100, short.
//     How many bytes does the next recv() return?
// (b) A TCP peer sends 100 bytes and its FIN before you look. Watching EPOLLIN | EPOLLRDHUP |
//     EPOLLET, which mask is reported? After read() returns 100 (short), how many events does
//     the next epoll_wait return?
constexpr int kClaim05NextDatagram = kNoGuess;  // TODO(lesson 08): your prediction
constexpr EventMask kClaim05DataAndFinMask{kNoGuessMask};  // TODO(lesson 08): your prediction
constexpr int kClaim05WaitAfterShortRead = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("claim_05_edge_triggered_short_read_does_not_mean_drained") {
  Connection datagrams = make_socketpair(SOCK_DGRAM);
  Fd epoll = make_epoll();
  watch(epoll.get(), datagrams.near.get(), EPOLLIN | EPOLLET);
  for (int i = 0; i < 2; ++i) {
    REQUIRE(write_text(datagrams.far.get(), std::string(100, 'g')) == 100);
  }
  REQUIRE(ready_count(epoll.get()) == 1);
  REQUIRE(read_count(datagrams.near.get(), 1024) == 100);
  CHECK(ready_count(epoll.get()) == 0);
  CHECK_PREDICTION(read_count(datagrams.near.get(), 1024), kClaim05NextDatagram,
                   "A datagram read returns one datagram, however large the buffer: short "
                   "reads are normal, and the next datagram gets no new edge.");

  Connection tcp = make_tcp_connection();
  REQUIRE(write_text(tcp.far.get(), std::string(100, 't')) == 100);
  REQUIRE(::shutdown(tcp.far.get(), SHUT_WR) == 0);
  REQUIRE(settle(tcp.near.get(), POLLRDHUP, 2000));
  Fd tcp_epoll = make_epoll();
  watch(tcp_epoll.get(), tcp.near.get(), EPOLLIN | EPOLLRDHUP | EPOLLET);
  CHECK_PREDICTION(EventMask{wait_for_mask(tcp_epoll.get(), 0)}, kClaim05DataAndFinMask,
                   "Data and FIN were both there: one event carries both (tcp_poll sets "
                   "EPOLLRDHUP once the peer shut down its side).");
  REQUIRE(read_count(tcp.near.get(), 1024) == 100);
  CHECK_PREDICTION(ready_count(tcp_epoll.get()), kClaim05WaitAfterShortRead,
                   "The short read drained the data but not the EOF, and no new edge will come: "
                   "a server that stops at the short read never sees read() return 0. Read to "
                   "EAGAIN, or act on EPOLLRDHUP.");
  CHECK(read_count(tcp.near.get(), 1024) == 0);
}

// Claim 6: "select's FD_SETSIZE is 2048."
// How many descriptors does glibc's fd_set hold? And the kernel's select(), given a bitmap
// large enough, asked about a readable pipe at fd 1500: what does it return?
constexpr int kClaim06FdSetSize = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim06SelectOnFd1500 = kNoGuess;  // TODO(lesson 08): your prediction

int select_one_high_fd(int fd) {
  constexpr int kBitsPerWord = CHAR_BIT * sizeof(unsigned long);
  std::vector<unsigned long> bitmap(2048 / kBitsPerWord);
  bitmap[fd / kBitsPerWord] |= 1UL << (fd % kBitsPerWord);
  timeval no_wait{};
  // The kernel reads nfds bits from wherever the pointer points; fd_set is glibc's fixed size.
  return ::select(fd + 1, reinterpret_cast<fd_set*>(bitmap.data()), nullptr, nullptr, &no_wait);
}

TEST_CASE("claim_06_fd_setsize_is_1024_and_only_glibc_enforces_it") {
  int bits_in_fd_set = static_cast<int>(sizeof(fd_set) * CHAR_BIT);
  CHECK_PREDICTION(bits_in_fd_set, kClaim06FdSetSize,
                   "glibc's fd_set is FD_SETSIZE bits; FD_SET of a larger fd writes past it "
                   "(unchecked unless built with _FORTIFY_SOURCE).");
  rlimit limit{};
  REQUIRE(::getrlimit(RLIMIT_NOFILE, &limit) == 0);
  if (limit.rlim_max < 2048) {
    MESSAGE("RLIMIT_NOFILE's hard limit is " << limit.rlim_max << ": cannot open fd 1500, skipped");
    return;
  }
  ScopedFdLimit room(std::max<rlim_t>(limit.rlim_cur, 2048));
  Pipe pipe = make_pipe();
  Fd high(::fcntl(pipe.read_end.get(), F_DUPFD_CLOEXEC, 1500));
  REQUIRE(high.get() >= 1024);
  REQUIRE(write_text(pipe.write_end.get(), "x") == 1);
  CHECK_PREDICTION(select_one_high_fd(high.get()), kClaim06SelectOnFd1500,
                   "The kernel's select (core_sys_select in fs/select.c) takes any nfds up to "
                   "the process's descriptor table; the 1024 limit is the C library's fd_set.");
}

// Claim 7: "EPOLLERR and EPOLLHUP are always reported, whatever you asked for."
// (a) A pipe's read end is watched with events = 0, nothing requested; the write end closes.
//     Which mask is reported?
// (b) Level-triggered and left alone: how many events does the next wait return?
// (c) Watched with EPOLLIN | EPOLLONESHOT, one byte arrives and is reported; then the write end
//     closes. How many events does the next wait return?
// (d) A TCP peer closes while you watch EPOLLIN only (no EPOLLRDHUP). Which mask?
constexpr EventMask kClaim07NothingRequestedMask{kNoGuessMask};  // TODO(lesson 08): your prediction
constexpr int kClaim07HupNextWait = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kClaim07OneshotAfterHangup = kNoGuess;  // TODO(lesson 08): your prediction
constexpr EventMask kClaim07FinWithoutRdhupMask{kNoGuessMask};  // TODO(lesson 08): your prediction

TEST_CASE("claim_07_err_and_hup_are_implicit_except_for_a_fired_oneshot") {
  WatchedPipe nothing_requested(0);
  nothing_requested.pipe.write_end.reset();
  CHECK_PREDICTION(EventMask{wait_for_mask(nothing_requested.epoll.get(), 0)},
                   kClaim07NothingRequestedMask,
                   "epoll_ctl adds EPOLLERR | EPOLLHUP to every interest mask (ADD and MOD).");
  CHECK_PREDICTION(nothing_requested.wait(), kClaim07HupNextWait,
                   "A hangup is a state, not an event: level-triggered, it is reported on every "
                   "wait until you close the fd or EPOLL_CTL_DEL it.");

  WatchedPipe oneshot(EPOLLIN | EPOLLONESHOT);
  oneshot.put_byte();
  REQUIRE(oneshot.wait() == 1);
  oneshot.pipe.write_end.reset();
  CHECK_PREDICTION(oneshot.wait(), kClaim07OneshotAfterHangup,
                   "A fired EPOLLONESHOT item has an empty mask (only EP_PRIVATE_BITS left), "
                   "and ep_poll_callback ignores it: not even HUP gets through until MOD.");

  Connection tcp = make_tcp_connection();
  Fd epoll = make_epoll();
  watch(epoll.get(), tcp.near.get(), EPOLLIN);
  tcp.far.reset();
  REQUIRE(settle(tcp.near.get(), POLLRDHUP, 2000));
  CHECK_PREDICTION(EventMask{wait_for_mask(epoll.get(), 0)}, kClaim07FinWithoutRdhupMask,
                   "EPOLLRDHUP is reported only when requested; without it, a FIN looks like "
                   "data until read() returns 0.");
}

// Claim 8: "close(fd) removes fd from every epoll set."
// A pipe's read end r is watched; r2 = dup(r); close(r); a byte is written. How many events
// does epoll_wait return? Which errno does EPOLL_CTL_DEL with r2 give? After close(r2) as well,
// how many events?
constexpr int kClaim08EventsAfterClosingOneCopy = kNoGuess;  // TODO(lesson 08): your prediction
constexpr ErrnoName kClaim08DelThroughDupErrno{kNoGuess};  // TODO(lesson 08): your prediction
constexpr int kClaim08EventsAfterClosingEveryCopy = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("claim_08_close_removes_from_epoll_only_with_the_last_reference") {
  WatchedPipe watched(EPOLLIN);
  int closed_number = watched.pipe.read_end.get();
  Fd copy(::fcntl(closed_number, F_DUPFD_CLOEXEC, 0));
  REQUIRE(copy.valid());
  watched.pipe.read_end.reset();
  watched.put_byte();
  epoll_event event{};
  int returned = ::epoll_wait(watched.epoll.get(), &event, 1, 0);
  CHECK_PREDICTION(returned, kClaim08EventsAfterClosingOneCopy,
                   "epoll watches the open file, not the number: the item goes only when the "
                   "last descriptor for the file closes (eventpoll_release from __fput).");
  int reported_fd = event.data.fd;  // a copy: epoll_event is packed
  if (returned == 1) {
    CHECK_MESSAGE(reported_fd == closed_number, "the event carries the number you registered, "
                                                "now closed (and free for reuse)");
  }
  int removed = ::epoll_ctl(watched.epoll.get(), EPOLL_CTL_DEL, copy.get(), nullptr);
  CHECK_PREDICTION(errno_of(removed < 0), kClaim08DelThroughDupErrno,
                   "Items are keyed by (file, fd number); the dup has another number, so there "
                   "is no item to delete. EPOLL_CTL_DEL before close, and use CLOEXEC.");
  copy.reset();
  CHECK_PREDICTION(watched.wait(), kClaim08EventsAfterClosingEveryCopy,
                   "With the last descriptor closed, the file is released and leaves the set.");
}

// Claim 9: "epoll_create's size is ignored since Linux 2.6.8, but must be positive."
// Which errno does epoll_create(0) give?
constexpr ErrnoName kClaim09SizeZeroErrno{kNoGuess};  // TODO(lesson 08): your prediction

TEST_CASE("claim_09_epoll_create_size_must_be_positive_and_is_otherwise_ignored") {
  Fd refused(::epoll_create(0));
  CHECK_PREDICTION(errno_of(!refused.valid()), kClaim09SizeZeroErrno,
                   "The size is checked (size <= 0 fails) and then ignored. Prefer "
                   "epoll_create1(EPOLL_CLOEXEC), which has no size at all.");
  Fd tiny(::epoll_create(1)), huge(::epoll_create(INT_MAX));
  CHECK_MESSAGE((tiny.valid() && huge.valid()), "any positive size is accepted, and means nothing: "
                "claim 3's epoll_create(1) returns 200 events at once");
}

// Claim 10: "EPOLLHUP means the peer closed the connection."  Watching EPOLLIN | EPOLLRDHUP:
// (a) A TCP peer calls close(). Which mask is reported?
// (b) A TCP peer calls shutdown(SHUT_WR). How many bytes does your write("still here") return?
// (c) After (b) you shutdown(SHUT_WR) too. Which mask now?
// (d) A TCP peer aborts (SO_LINGER 0, then close: an RST). Which mask?
// (e) On an AF_UNIX stream socketpair, the peer calls close(). Which mask?
constexpr EventMask kClaim10PeerCloseMask{kNoGuessMask};  // TODO(lesson 08): your prediction
constexpr int kClaim10WriteAfterPeerFin = kNoGuess;  // TODO(lesson 08): your prediction
constexpr EventMask kClaim10BothShutMask{kNoGuessMask};  // TODO(lesson 08): your prediction
constexpr EventMask kClaim10ResetMask{kNoGuessMask};  // TODO(lesson 08): your prediction
constexpr EventMask kClaim10UnixPeerCloseMask{kNoGuessMask};  // TODO(lesson 08): your prediction

// The mask epoll reports for conn.near once `events` (or ERR/HUP) show up on it.
EventMask mask_after(const Connection& conn, short events) {
  REQUIRE(settle(conn.near.get(), events, 2000));
  Fd epoll = make_epoll();
  watch(epoll.get(), conn.near.get(), EPOLLIN | EPOLLRDHUP);
  return EventMask{wait_for_mask(epoll.get(), 0)};
}

TEST_CASE("claim_10_tcp_peer_close_is_rdhup_not_hup") {
  Connection closed = make_tcp_connection();
  closed.far.reset();
  CHECK_PREDICTION(mask_after(closed, POLLRDHUP), kClaim10PeerCloseMask,
                   "A peer's close() sends a FIN, which shuts only our receive side: tcp_poll "
                   "reports EPOLLIN | EPOLLRDHUP, and read() returns 0.");

  Connection half = make_tcp_connection();
  REQUIRE(::shutdown(half.far.get(), SHUT_WR) == 0);
  REQUIRE(mask_after(half, POLLRDHUP) == EventMask{EPOLLIN | EPOLLRDHUP});
  ssize_t written = ::send(half.near.get(), "still here", 10, MSG_NOSIGNAL);
  CHECK_PREDICTION(written, kClaim10WriteAfterPeerFin,
                   "After the peer's FIN our sending side is open: we can still write, and a "
                   "half-closed peer still reads it.");
  REQUIRE(settle(half.far.get(), POLLIN, 2000));
  CHECK(read_count(half.far.get()) == 10);
  REQUIRE(::shutdown(half.near.get(), SHUT_WR) == 0);
  CHECK_PREDICTION(mask_after(half, POLLRDHUP), kClaim10BothShutMask,
                   "tcp_poll reports EPOLLHUP only when both directions are shut (or the "
                   "connection is closed).");

  Connection reset = make_tcp_connection();
  abort_connection(&reset.far);
  CHECK_PREDICTION(mask_after(reset, POLLRDHUP), kClaim10ResetMask,
                   "An RST closes the connection with an error: sk_err gives EPOLLERR, the "
                   "closed state EPOLLHUP, and read() fails with ECONNRESET.");

  Connection unix_pair = make_socketpair(SOCK_STREAM);
  unix_pair.far.reset();
  CHECK_PREDICTION(mask_after(unix_pair, POLLRDHUP), kClaim10UnixPeerCloseMask,
                   "On AF_UNIX a peer's close shuts both directions at once (unix_poll reports "
                   "EPOLLHUP): a socketpair test says nothing about TCP.");
}

// ---- Given: the herd for claim 11 ---------------------------------------------------------------

// How many of the herd's threads one connection wakes: one, all of them, or something between.
struct Woken {
  int code;
  friend bool operator==(Woken, Woken) = default;
};
constexpr Woken kNoGuessWoken{0}, kOneThread{1}, kSomeThreads{2}, kEveryThread{3};
std::ostream& operator<<(std::ostream& out, Woken woken) {
  const char* names[] = {"kNoGuessWoken", "kOneThread", "kSomeThreads", "kEveryThread"};
  return out << names[woken.code];
}

enum class HerdMode { kOwnEpoll, kOwnEpollExclusive, kSharedLevel, kSharedEdge, kReusePort };
constexpr int kHerdThreads = 6;
constexpr int kHerdRounds = 5;

// Threads that wait for connections on one port, each the way `mode` says. A round connects one
// client and counts the threads whose epoll_wait returned for it. Nobody accepts until the round
// is over, so a woken thread always finds the connection, and each woken thread sits out the
// rest of the round (otherwise level-triggered waits would return again and again).
class Herd {
 public:
  explicit Herd(HerdMode mode);
  ~Herd();
  int woken_by_one_connection();

 private:
  struct Waiter {
    int epoll = -1;
    std::atomic<pid_t> tid{0};
    std::atomic<bool> in_wait{false};
    std::atomic<int> woken_round{-1};
  };
  void wait_for_connections(Waiter* waiter);
  void sit_out(int round);
  bool all_asleep(bool in_epoll_wait) const;
  void accept_everything();

  int port_ = 0;
  std::vector<Fd> listeners_;
  std::vector<Fd> epolls_;
  Fd stop_;  // an eventfd every epoll set watches, level-triggered: writing it wakes every thread
  std::array<Waiter, kHerdThreads> waiters_;
  std::vector<std::thread> threads_;
  std::atomic<int> round_{0};
  std::atomic<bool> stopping_{false};
  std::mutex mutex_;
  std::condition_variable next_round_;
};

uint32_t listener_events(HerdMode mode) {
  if (mode == HerdMode::kOwnEpollExclusive) return EPOLLIN | EPOLLEXCLUSIVE;
  if (mode == HerdMode::kSharedEdge) return EPOLLIN | EPOLLET;
  return EPOLLIN;
}

Herd::Herd(HerdMode mode) : stop_(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)) {
  bool shared = mode == HerdMode::kSharedLevel || mode == HerdMode::kSharedEdge;
  bool reuseport = mode == HerdMode::kReusePort;
  listeners_.push_back(reuseport ? listen_loopback_reuseport(0) : listen_loopback());
  port_ = local_port(listeners_[0].get());
  while (reuseport && listeners_.size() < kHerdThreads) {
    listeners_.push_back(listen_loopback_reuseport(port_));
  }
  for (int i = 0; i < (shared ? 1 : kHerdThreads); ++i) {
    epolls_.push_back(make_epoll());
    watch(epolls_[i].get(), stop_.get(), EPOLLIN);
    watch(epolls_[i].get(), listeners_[reuseport ? i : 0].get(), listener_events(mode));
  }
  for (int i = 0; i < kHerdThreads; ++i) {
    waiters_[i].epoll = epolls_[shared ? 0 : i].get();
    threads_.emplace_back(&Herd::wait_for_connections, this, &waiters_[i]);
  }
}

Herd::~Herd() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  next_round_.notify_all();
  uint64_t one = 1;
  if (::write(stop_.get(), &one, sizeof one) != sizeof one) std::perror("write(eventfd)");
  for (std::thread& thread : threads_) thread.join();
}

void Herd::wait_for_connections(Waiter* waiter) {
  waiter->tid = ::gettid();
  epoll_event events[2];
  while (!stopping_) {
    waiter->in_wait = true;
    // The timeout only bounds the wait should the stop wakeup be missed; rounds take milliseconds.
    int returned = ::epoll_wait(waiter->epoll, events, 2, 2000);
    waiter->in_wait = false;
    if (stopping_ || returned <= 0) continue;
    int round = round_.load();
    waiter->woken_round = round;
    sit_out(round);
  }
}

void Herd::sit_out(int round) {
  std::unique_lock<std::mutex> lock(mutex_);
  next_round_.wait(lock, [&] { return stopping_ || round_.load() != round; });
}

// True when every thread sleeps ('S' in /proc) and, if asked, has said it is inside epoll_wait.
bool Herd::all_asleep(bool in_epoll_wait) const {
  for (const Waiter& waiter : waiters_) {
    if (waiter.tid == 0 || (in_epoll_wait && !waiter.in_wait)) return false;
    std::string path = "/proc/self/task/" + std::to_string(waiter.tid.load()) + "/stat";
    FILE* stat = std::fopen(path.c_str(), "re");
    char line[512] = {};
    bool read = stat && std::fgets(line, sizeof line, stat);
    if (stat) std::fclose(stat);
    const char* after_name = read ? std::strrchr(line, ')') : nullptr;
    if (!after_name || after_name[1] != ' ' || after_name[2] != 'S') return false;
  }
  return true;
}

void Herd::accept_everything() {
  for (const Fd& listener : listeners_) {
    while (Fd(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC)).valid()) {
    }
  }
}

int Herd::woken_by_one_connection() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    ++round_;
  }
  next_round_.notify_all();
  REQUIRE_MESSAGE(wait_until([&] { return all_asleep(true); }, 2000),
                  "the herd's threads did not all go back to epoll_wait within 2 s");
  int round = round_.load();
  Fd client = connect_loopback(port_);
  auto woken = [&] {
    return std::count_if(waiters_.begin(), waiters_.end(),
                         [&](const Waiter& waiter) { return waiter.woken_round == round; });
  };
  REQUIRE_MESSAGE(wait_until([&] { return woken() > 0; }, 2000), "no thread woke for a connection");
  // Woken threads may still wait for a CPU; count once every thread has slept for 5 ms in a row.
  int calm = 0;
  wait_until([&] { calm = all_asleep(false) ? calm + 1 : 0; return calm >= 5; }, 1000);
  int count = static_cast<int>(woken());
  accept_everything();
  return count;
}

Woken classify(int woken) {
  if (woken <= 1) return kOneThread;
  return woken >= kHerdThreads - 1 ? kEveryThread : kSomeThreads;
}

// The median of kHerdRounds rounds, which one slow scheduling decision cannot move.
int median_woken(HerdMode mode, std::string* rounds) {
  Herd herd(mode);
  std::vector<int> counts;
  for (int i = 0; i < kHerdRounds; ++i) counts.push_back(herd.woken_by_one_connection());
  for (int count : counts) *rounds += std::to_string(count) + " ";
  std::sort(counts.begin(), counts.end());
  return counts[kHerdRounds / 2];
}

// Claim 11: "Every process or thread waiting on a listening socket wakes up for each new
// connection: the thundering herd." Six threads wait; one client connects. How many threads
// does epoll wake, kOneThread or kEveryThread, when...
// each thread has its own epoll fd watching the listener?
constexpr Woken kClaim11OwnEpoll = kNoGuessWoken;  // TODO(lesson 08): your prediction
// ...each has its own epoll fd, and the listener was added with EPOLLEXCLUSIVE?
constexpr Woken kClaim11OwnEpollExclusive = kNoGuessWoken;  // TODO(lesson 08): your prediction
// ...all threads wait on ONE shared epoll fd, the listener level-triggered?
constexpr Woken kClaim11SharedLevel = kNoGuessWoken;  // TODO(lesson 08): your prediction
// ...all threads wait on one shared epoll fd, the listener edge-triggered?
constexpr Woken kClaim11SharedEdge = kNoGuessWoken;  // TODO(lesson 08): your prediction
// ...each thread has its own listener on the same port (SO_REUSEPORT) and its own epoll fd?
constexpr Woken kClaim11ReusePort = kNoGuessWoken;  // TODO(lesson 08): your prediction

TEST_CASE("claim_11_thundering_herd_depends_on_how_you_wait") {
  struct Case {
    HerdMode mode;
    Woken predicted;
    std::string how;  // strings, not char pointers: doctest prints a char pointer as an address
    std::string why;
  };
  const Case cases[] = {
      {HerdMode::kOwnEpoll, kClaim11OwnEpoll, "own epoll fd each",
       "Each epoll instance has its own entry on the listener's wait queue, and "
       "ep_poll_callback wakes the waiter of every one."},
      {HerdMode::kOwnEpollExclusive, kClaim11OwnEpollExclusive, "own epoll fd, EPOLLEXCLUSIVE",
       "EPOLLEXCLUSIVE entries are exclusive waiters: the wakeup stops at the first "
       "instance that has a sleeping thread."},
      {HerdMode::kSharedLevel, kClaim11SharedLevel, "one shared epoll fd, level-triggered",
       "One waiter is woken, but the level-triggered item goes back on the ready list "
       "and ep_done_scan wakes the next waiter, and so on: a cascade."},
      {HerdMode::kSharedEdge, kClaim11SharedEdge, "one shared epoll fd, edge-triggered",
       "Threads sleep as exclusive waiters on the instance's queue, and an "
       "edge-triggered item is not re-queued, so nobody else is woken."},
      {HerdMode::kReusePort, kClaim11ReusePort, "SO_REUSEPORT, a listener each",
       "The kernel picks one listening socket per connection (a hash of the "
       "addresses), so only that socket's thread wakes."},
  };
  std::map<HerdMode, int> medians;
  for (const Case& c : cases) {
    if (c.mode == HerdMode::kOwnEpollExclusive && running_kernel() < KernelVersion{4, 5}) {
      MESSAGE("EPOLLEXCLUSIVE needs Linux 4.5; kernel " << running_kernel_release() << ": skipped");
      continue;
    }
    std::string rounds;
    medians[c.mode] = median_woken(c.mode, &rounds);
    MESSAGE(c.how << ": threads woken per connection (of " << kHerdThreads << "), round by round: "
                  << rounds);
    CHECK_PREDICTION(classify(medians[c.mode]), c.predicted, c.how << ": " << c.why);
  }
  CHECK_MESSAGE(medians[HerdMode::kSharedEdge] < medians[HerdMode::kSharedLevel],
                "a shared epoll fd should wake fewer threads edge-triggered than level-triggered");
  CHECK_MESSAGE(medians[HerdMode::kReusePort] < medians[HerdMode::kOwnEpoll],
                "SO_REUSEPORT should wake fewer threads than one listener in every epoll set");
  if (medians.count(HerdMode::kOwnEpollExclusive)) {
    CHECK_MESSAGE(medians[HerdMode::kOwnEpollExclusive] < medians[HerdMode::kOwnEpoll],
                  "EPOLLEXCLUSIVE should wake fewer threads than plain registrations");
  }
}

// ---- The bugs in the articles' sample programs --------------------------------------------------

// Bug: fcntl(fd, F_SETFL, fcntl(fd, F_GETFD, 0) | O_NONBLOCK) on a file opened for appending
// (and close-on-exec) that holds "abc". What does F_GETFD return? After the buggy line, the
// offset is moved to 0 and "X" written: how many bytes does the file hold?
constexpr int kBugGetfdReturns = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kBugGetfdFileSize = kNoGuess;  // TODO(lesson 08): your prediction

std::string contents(int fd) {
  char buffer[16] = {};
  ssize_t n = ::pread(fd, buffer, sizeof buffer, 0);
  return std::string(buffer, n > 0 ? static_cast<size_t>(n) : 0);
}

TEST_CASE("bug_f_getfd_instead_of_f_getfl_clears_o_append") {
  Fd file(::memfd_create("append-probe", MFD_CLOEXEC));
  REQUIRE(file.valid());
  REQUIRE(::fcntl(file.get(), F_SETFL, ::fcntl(file.get(), F_GETFL) | O_APPEND) == 0);
  REQUIRE(write_text(file.get(), "abc") == 3);
  int descriptor_flags = ::fcntl(file.get(), F_GETFD, 0);
  CHECK_PREDICTION(descriptor_flags, kBugGetfdReturns,
                   "F_GETFD returns the descriptor flags (FD_CLOEXEC), not the file status "
                   "flags (O_APPEND, O_NONBLOCK...), which are F_GETFL's.");
  REQUIRE(::fcntl(file.get(), F_SETFL, descriptor_flags | O_NONBLOCK) == 0);  // the seed's line
  REQUIRE(::lseek(file.get(), 0, SEEK_SET) == 0);
  REQUIRE(write_text(file.get(), "X") == 1);
  CHECK_PREDICTION(static_cast<int>(contents(file.get()).size()), kBugGetfdFileSize,
                   "F_SETFL replaced every status flag with FD_CLOEXEC | O_NONBLOCK: O_APPEND is "
                   "gone, so the write landed at offset 0 and overwrote the file (\"Xbc\").");
  REQUIRE(::fcntl(file.get(), F_SETFL, O_APPEND) == 0);
  REQUIRE(set_nonblocking(file.get()));  // common/net.cpp: F_GETFL | O_NONBLOCK
  REQUIRE(write_text(file.get(), "Y") == 1);
  CHECK_MESSAGE(contents(file.get()) == "XbcY", "with F_GETFL, O_APPEND survives");
}

// Bug: if (events & EPOLLERR || events & EPOLLHUP || (!events & EPOLLIN)) close(fd);
// The last test means "not readable". Of the 63 non-empty masks made of EPOLLIN, EPOLLPRI,
// EPOLLOUT, EPOLLERR, EPOLLHUP and EPOLLRDHUP, for how many is (!events & EPOLLIN) true?
constexpr int kBugNotEventsFires = kNoGuess;  // TODO(lesson 08): your prediction

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wparentheses"  // gcc -Wall warns about exactly this line
bool seed_not_readable(uint32_t events) { return !events & EPOLLIN; }
#pragma GCC diagnostic pop

TEST_CASE("bug_not_events_and_epollin_is_never_true") {
  const uint32_t bits[] = {EPOLLIN, EPOLLPRI, EPOLLOUT, EPOLLERR, EPOLLHUP, EPOLLRDHUP};
  int seed_fires = 0, intended_fires = 0;
  for (uint32_t combination = 1; combination < 64; ++combination) {
    uint32_t events = 0;
    for (int bit = 0; bit < 6; ++bit) events |= (combination >> bit & 1) ? bits[bit] : 0;
    seed_fires += seed_not_readable(events);
    intended_fires += !(events & EPOLLIN);
  }
  CHECK_PREDICTION(seed_fires, kBugNotEventsFires,
                   "! binds tighter than &: (!events) & EPOLLIN is 1 & 1 only when events is 0, "
                   "and epoll never reports an empty mask. Write !(events & EPOLLIN).");
  CHECK_MESSAGE(intended_fires == 31, "!(events & EPOLLIN) holds for the 31 masks without EPOLLIN");
  Connection idle = make_tcp_connection();  // writable, nothing to read: EPOLLOUT alone
  Fd epoll = make_epoll();
  watch(epoll.get(), idle.near.get(), EPOLLIN | EPOLLOUT);
  uint32_t live = wait_for_mask(epoll.get(), 0);
  REQUIRE(live == EPOLLOUT);
  CHECK_FALSE_MESSAGE(seed_not_readable(live),
                      "a writable socket with nothing to read passes the seed's test");
}

// Bug: epoll_wait(epfd, events, count_of_connections, -1), with an array shorter than the count.
// The array has 4 entries, followed in memory by 8 guard entries; 8 pipes are ready and
// maxevents is 8. How many guard entries does the kernel overwrite?
constexpr int kBugGuardEntriesOverwritten = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("bug_maxevents_larger_than_the_array_overwrites_past_it") {
  constexpr int kDeclared = 4, kGuards = 8, kReady = 8;
  std::array<epoll_event, kDeclared + kGuards> memory{};  // the "array" is memory[0..3]
  const uint64_t kCanary = 0xC0FFEE00C0FFEE00;
  for (epoll_event& guard : memory) guard = epoll_event{0, {.u64 = kCanary}};
  Fd epoll = make_epoll();
  std::vector<Pipe> pipes(kReady);
  for (Pipe& pipe : pipes) {
    pipe = make_pipe();
    watch(epoll.get(), pipe.read_end.get(), EPOLLIN);
    REQUIRE(write_text(pipe.write_end.get(), "x") == 1);
  }
  REQUIRE(::epoll_wait(epoll.get(), memory.data(), kReady, 0) == kReady);
  int overwritten = static_cast<int>(std::count_if(memory.begin() + kDeclared, memory.end(),
      [&](const epoll_event& e) { return e.data.u64 != kCanary; }));
  CHECK_PREDICTION(overwritten, kBugGuardEntriesOverwritten,
                   "The kernel trusts maxevents: it checks the range is user memory (access_ok) "
                   "and writes up to maxevents events. Whatever followed the array is gone.");
  for (epoll_event& guard : memory) guard = epoll_event{0, {.u64 = kCanary}};
  CHECK(::epoll_wait(epoll.get(), memory.data(), kDeclared, 0) == kDeclared);
  CHECK_MESSAGE(std::all_of(memory.begin() + kDeclared, memory.end(),
                            [&](const epoll_event& e) { return e.data.u64 == kCanary; }),
                "maxevents = the array's length keeps the guards intact; the rest come next call");
}

// Bug: the same call when the connection count is 0 (no clients yet): maxevents 0, timeout -1.
// Which errno? (Does the call wait at all?)
constexpr ErrnoName kBugMaxeventsZeroErrno{kNoGuess};  // TODO(lesson 08): your prediction

TEST_CASE("bug_maxevents_zero_fails_at_once_instead_of_waiting") {
  Fd epoll = make_epoll();
  epoll_event event{};
  int returned = ::epoll_wait(epoll.get(), &event, 0, -1);  // -1: were it to wait, never return
  CHECK_PREDICTION(errno_of(returned < 0), kBugMaxeventsZeroErrno,
                   "maxevents must be positive. A loop around this call never sleeps: it spins "
                   "at 100% CPU on EINVAL until a first client arrives.");
}

// Bug: an edge-triggered listener that accepts ONE connection per event.
// Three clients are queued before the wait. After the single accept(), how many events does
// the next epoll_wait (timeout 0) return? How many connections are still queued?
constexpr int kBugEtWaitAfterOneAccept = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kBugEtStillQueued = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("bug_et_listener_with_one_accept_per_event_strands_connections") {
  Fd listener = listen_loopback();
  Fd epoll = make_epoll();
  watch(epoll.get(), listener.get(), EPOLLIN | EPOLLET);
  std::vector<Fd> clients;
  for (int i = 0; i < 3; ++i) clients.push_back(connect_loopback(local_port(listener.get())));
  REQUIRE(wait_until([&] { return accept_queue_length(listener.get()) == 3; }, 2000));
  REQUIRE(ready_count(epoll.get()) == 1);
  Fd first(::accept4(listener.get(), nullptr, nullptr, SOCK_CLOEXEC));
  REQUIRE(first.valid());
  CHECK_PREDICTION(ready_count(epoll.get()), kBugEtWaitAfterOneAccept,
                   "Three arrivals made one edge; accepting one is no new arrival, so no event "
                   "until another client connects. Accept until EAGAIN.");
  CHECK_PREDICTION(accept_queue_length(listener.get()), kBugEtStillQueued,
                   "The other connections wait, completed, in the accept queue (ss -lnt shows "
                   "them in Recv-Q).");
}

// Bug: a level-triggered listener when accept() fails with EMFILE (out of descriptors).
// One client waits in the queue. Of 1000 epoll_wait calls (timeout 0), each followed by the
// failing accept(), how many report the listener? With the spare-descriptor fix (common/
// acceptor.h) the client is accepted and closed: what does its next read() return?
constexpr int kBugEmfileReadyOf1000 = kNoGuess;  // TODO(lesson 08): your prediction
constexpr int kBugEmfileClientReads = kNoGuess;  // TODO(lesson 08): your prediction

// Counts the epoll_wait calls that report an event within `window`, each call allowed to sleep
// until the window ends: a loop that sleeps returns about once, a spinning loop thousands of times.
template <typename OnReady>
int wakeups_within(int epfd, std::chrono::milliseconds window, OnReady on_ready) {
  using Clock = std::chrono::steady_clock;
  auto end = Clock::now() + window;
  int wakeups = 0;
  for (auto now = Clock::now(); now < end; now = Clock::now()) {
    auto left = std::chrono::ceil<std::chrono::milliseconds>(end - now);
    if (ready_count(epfd, static_cast<int>(left.count())) == 0) continue;
    ++wakeups;
    on_ready();
  }
  return wakeups;
}

TEST_CASE("bug_lt_listener_out_of_descriptors_spins") {
  set_quiet(true);  // no "turned a client away" line per rejected connection
  Acceptor acceptor(listen_loopback());  // reserves its spare descriptor now
  Fd epoll = make_epoll();
  watch(epoll.get(), acceptor.listener(), EPOLLIN);
  Fd client = connect_loopback(local_port(acceptor.listener()));
  REQUIRE(wait_until([&] { return accept_queue_length(acceptor.listener()) == 1; }, 2000));
  ScopedFdLimit out_of_descriptors(lowest_free_fd());
  int other_outcomes = 0;  // accept() results other than EMFILE: there should be none
  auto seed_accept = [&] {
    Fd accepted(::accept4(acceptor.listener(), nullptr, nullptr, SOCK_CLOEXEC));
    other_outcomes += accepted.valid() || errno != EMFILE;
  };
  int ready = 0;
  for (int i = 0; i < 1000; ++i) {
    if (ready_count(epoll.get()) == 1) ++ready, seed_accept();
  }
  REQUIRE_MESSAGE(other_outcomes == 0, "accept() should fail with EMFILE under the lowered limit");
  CHECK_PREDICTION(ready, kBugEmfileReadyOf1000,
                   "accept() failed, so the connection is still queued and the listener still "
                   "readable: level-triggered, every wait returns at once. A busy loop.");
  int spinning = wakeups_within(epoll.get(), std::chrono::milliseconds(50), seed_accept);
  int calm = wakeups_within(epoll.get(), std::chrono::milliseconds(50), [&] {
    Fd unused;
    while (acceptor.accept_one(&unused) != Acceptor::Result::kEmpty) unused.reset();
  });
  MESSAGE("wakeups in 50 ms out of descriptors: " << spinning << " with accept() alone, " << calm
          << " with the spare-descriptor fix");
  CHECK(other_outcomes == 0);
  CHECK_MESSAGE(spinning >= 20, "the seed's loop should wake again and again, not sleep");
  CHECK_MESSAGE(calm <= 2, "with the spare fd the queue drains and the loop sleeps");
  REQUIRE(settle(client.get(), POLLIN, 2000));
  CHECK_PREDICTION(read_count(client.get()), kBugEmfileClientReads,
                   "The spare-descriptor trick accepts the client into the freed slot and closes "
                   "it at once: the client sees EOF instead of waiting forever.");
}

// Bug: a handler that closes on EPOLLHUP | EPOLLERR before reading.
// A TCP peer sends "last words" (10 bytes) and then aborts (RST). epoll reports EPOLLIN |
// EPOLLRDHUP | EPOLLHUP | EPOLLERR. How many bytes can read() still return?
constexpr int kBugBytesAfterHangup = kNoGuess;  // TODO(lesson 08): your prediction

TEST_CASE("bug_closing_on_hup_before_reading_loses_the_last_bytes") {
  Connection tcp = make_tcp_connection();
  REQUIRE(write_text(tcp.far.get(), "last words") == 10);
  REQUIRE(settle(tcp.near.get(), POLLIN, 2000));
  abort_connection(&tcp.far);
  REQUIRE(mask_after(tcp, POLLRDHUP) == EventMask{EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR});
  CHECK_PREDICTION(read_count(tcp.near.get()), kBugBytesAfterHangup,
                   "The bytes arrived before the RST and are still queued; a handler that closes "
                   "on HUP/ERR first throws them away. Read until 0 or an error, then close.");
  ErrnoName after_the_bytes = errno_of(read_count(tcp.near.get()) < 0);
  CHECK(after_the_bytes == ErrnoName{ECONNRESET});

  WatchedPipe pipe(EPOLLIN);
  REQUIRE(write_text(pipe.pipe.write_end.get(), "bye") == 3);
  pipe.pipe.write_end.reset();
  CHECK(EventMask{wait_for_mask(pipe.epoll.get(), 0)} == EventMask{EPOLLIN | EPOLLHUP});
  CHECK_MESSAGE(read_count(pipe.pipe.read_end.get()) == 3,
                "a pipe whose writer wrote and closed reports EPOLLHUP with the bytes still there");
}

}  // namespace
