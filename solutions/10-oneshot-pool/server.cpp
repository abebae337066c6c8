// Lesson 10: worker threads sharing ONE epoll instance, each calling epoll_wait on it. Every
// connection is registered EPOLLONESHOT: its event goes to one worker and disarms it, and no other
// worker can get it until that worker re-arms it (EPOLL_CTL_MOD) as the last act of its turn. The
// same rule answers who may close and free a connection: the worker that holds its event.
#include <poll.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <list>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "acceptor.h"
#include "cli.h"
#include "echo_conn.h"
#include "epoll_setup.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "signals.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#endif

namespace {

ServerSpec make_spec() {
  unsigned cpus = std::clamp(std::thread::hardware_concurrency(), 1u, 256u);
  return {"Lesson 10: echo server whose worker threads share one epoll instance (EPOLLONESHOT).",
          7010,
          {{.name = "--workers", .kind = LessonFlag::Kind::kNumber,
            .help = "threads calling epoll_wait on the one epoll (default: the CPUs, " +
                    std::to_string(cpus) + " here; 1 to 256)",
            .default_value = static_cast<double>(cpus), .min_value = 1, .max_value = 256,
            .whole = true, .unit = "N"},
           {.name = "--listener", .kind = LessonFlag::Kind::kChoice,
            .help = "the listener's registration: edge (one worker woken per client) or level "
                    "(a cascade of wakeups, for the measurement in the lesson text)",
            .choices = {"edge", "level"}},
           {.name = "--no-oneshot",
            .help = "DELIBERATELY BROKEN, for the race demonstration: connections registered "
                    "EPOLLET without EPOLLONESHOT"}}};
}

// Events one worker takes per epoll_wait. Each disarms a connection that then waits for this
// worker while the others may sleep, so the batch is small (the lesson text weighs it).
constexpr int kEventsPerWait = 8;

// One client: lesson 02's EchoConn, and where it sits in the Registry. epoll hands its address
// (data.ptr) to whichever worker gets its event.
struct Conn : EchoConn {
  std::list<Conn>::iterator self;
};

// Every open connection, so that main can free the ones still open at exit, once no worker runs.
// Workers only add and remove here, under the lock, and never look a connection up: a worker
// reaches a connection through an epoll event and no other way.
struct Registry {
  std::mutex lock;
  std::list<Conn> conns;  // a list: a Conn never moves while epoll holds its address
};

// The listener, which every worker watches and none owns. Acceptor keeps state (its spare
// descriptor, its rest) that two threads must not touch at once, so accept_all runs under a lock.
// A lock, not a try_lock: a worker woken by a new client while another accepts must look again
// after it, or that client could wait for the next edge.
class SharedAcceptor {
 public:
  explicit SharedAcceptor(Fd listener) : acceptor_(std::move(listener)) {}

  int listener() const { return acceptor_.listener(); }

  void accept_all(const std::function<void(Fd)>& on_client) {
    std::lock_guard guard(lock_);
    acceptor_.accept_all(on_client);
    resting_.store(acceptor_.resting(), std::memory_order_relaxed);
  }

  // epoll_wait's timeout: forever, or a rest while the Acceptor rests (out of descriptors with no
  // spare). Clients that wait meanwhile raise no new edge, so a worker must look again.
  int wait_ms() const {
    return resting_.load(std::memory_order_relaxed) ? static_cast<int>(Acceptor::kRest.count()) : -1;
  }

  void accept_after_rest(const std::function<void(Fd)>& on_client) {
    if (!resting_.load(std::memory_order_relaxed)) return;
    std::lock_guard guard(lock_);
    if (acceptor_.rest_ms() == 0) {
      acceptor_.accept_all(on_client);
      resting_.store(acceptor_.resting(), std::memory_order_relaxed);
    }
  }

 private:
  std::mutex lock_;
  Acceptor acceptor_;
  std::atomic<bool> resting_{false};
};

// What the workers share. Cookies in data.ptr: &acceptor for the listener, &stop for the stop
// event, a Conn* for everything else.
struct Pool {
  explicit Pool(Fd listener) : acceptor(std::move(listener)) {}
  Fd epoll;
  SharedAcceptor acceptor;
  Fd stop;  // an eventfd, written once by main to stop every worker
  Registry registry;
  bool oneshot = true;  // false: --no-oneshot, the deliberate bug of the race demonstration
};

// ThreadSanitizer does not know that the kernel orders a re-arm before the event it arms (the
// epoll lock): it records a MOD as a mere use of the descriptor, and would call the close() that
// the next worker may make a race with it. Under TSan the hand-over is therefore declared (release
// before the MOD, acquire after epoll_wait) and the MOD itself made past TSan's interceptor. In a
// build without TSan these are a plain epoll_ctl and nothing.
void handing_over(const Conn& conn) {
#if defined(__SANITIZE_THREAD__)
  __tsan_release(const_cast<Conn*>(&conn));
#else
  (void)conn;
#endif
}
void taking_over(const Conn& conn) {
#if defined(__SANITIZE_THREAD__)
  __tsan_acquire(const_cast<Conn*>(&conn));
#else
  (void)conn;
#endif
}
int epoll_ctl_handing_over(int epoll, int op, int fd, epoll_event* event) {
#if defined(__SANITIZE_THREAD__)
  if (op == EPOLL_CTL_MOD) return static_cast<int>(::syscall(SYS_epoll_ctl, epoll, op, fd, event));
#endif
  return ::epoll_ctl(epoll, op, fd, event);
}

// What a connection is armed for: input while backpressure allows it, output while some is
// pending, and EPOLLONESHOT, so that the one event they produce disarms it again.
uint32_t events_for(const Conn& conn) {
  uint32_t events = EPOLLONESHOT;
  if (wants_read(conn)) events |= EPOLLIN;
  if (wants_write(conn)) events |= EPOLLOUT;
  return events;
}

// ADD (a new connection) or MOD (a re-arm): hands conn to epoll, and through it to whichever worker
// gets its next event. Once it returns true, the caller must not touch conn again.
bool arm(Pool& pool, Conn& conn, int op) {
  epoll_event event{};
  event.events = events_for(conn);
  if (!pool.oneshot) event.events = (event.events & ~EPOLLONESHOT) | EPOLLET;  // the deliberate bug
  event.data.ptr = &conn;
  int fd = conn.fd.get();
  handing_over(conn);  // from here on, conn is not ours to read
  return epoll_ctl_handing_over(pool.epoll.get(), op, fd, &event) == 0;
}

// Frees conn (closing its socket if still open) and forgets it.
void forget(Pool& pool, Conn& conn) {
  std::lock_guard guard(pool.registry.lock);
  pool.registry.conns.erase(conn.self);
}

// Stores a new connection, then registers it. From the ADD on, any worker may get its event and
// even close it, so everything about it is set before, and nothing touched after.
void add_connection(Pool& pool, Fd client) {
  Conn* conn;
  {
    std::lock_guard guard(pool.registry.lock);
    conn = &pool.registry.conns.emplace_front();
    conn->self = pool.registry.conns.begin();
  }
  int fd = client.get();  // for the message below: conn->fd is not ours to read after the ADD
  conn->fd = std::move(client);
  if (!arm(pool, *conn, EPOLL_CTL_ADD)) {
    warn("epoll_ctl(ADD) fd %d: %s; closing that connection", fd, std::strerror(errno));
    forget(pool, *conn);  // never armed: still ours to free
    return;
  }
  chatter("client connected (fd %d)", fd);
}

// The listener's event: accepts every client waiting (edge-triggered: until EAGAIN).
void accept_clients(Pool& pool) {
  pool.acceptor.accept_all([&pool](Fd client) { add_connection(pool, std::move(client)); });
}

// After each batch: if the Acceptor was resting (out of descriptors, no spare) and its rest is
// over, accepts the clients that waited meanwhile (they raise no new edge).
void accept_clients_after_rest(Pool& pool) {
  pool.acceptor.accept_after_rest([&pool](Fd client) { add_connection(pool, std::move(client)); });
}

// The connection a (connection's) event is for. It is disarmed now, and this worker's alone.
Conn& take_connection(const epoll_event& event) {
  Conn& conn = *static_cast<Conn*>(event.data.ptr);
  taking_over(conn);
  return conn;
}

// Unregisters, closes and frees conn. Only the worker holding its event may call this: conn is
// disarmed, so no other worker holds its address or can get it. DEL before close: a copy of the
// descriptor elsewhere (dup, fork) would keep the registration, and its events, alive.
void close_connection(Pool& pool, Conn& conn) {
  chatter("client closed (fd %d)", conn.fd.get());
  ::epoll_ctl(pool.epoll.get(), EPOLL_CTL_DEL, conn.fd.get(), nullptr);
  conn.fd.reset();
  forget(pool, conn);
}

// One turn, with lesson 02's handlers: a write of what is pending, one read of what arrived. No
// lock: the connection is disarmed, so this worker is the only one that can reach it. Returns
// false if the connection failed.
bool serve_turn(Conn& conn, uint32_t events) {
  bool ok = true;
  if ((events & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && wants_write(conn)) ok = on_writable(conn);
  if (ok && (events & (EPOLLIN | EPOLLERR | EPOLLHUP)) && wants_read(conn)) ok = on_readable(conn);
  return ok;
}

// The end of a turn: closes conn if it failed or is done, or re-arms it. The re-arm is the last
// thing this worker does with conn: from the MOD on another worker may be serving it. The MOD also
// polls the socket, so what is left unread (more than one read's worth, a FIN) raises an event.
void end_turn(Pool& pool, Conn& conn, bool ok) {
  if (!ok || finished(conn)) {
    close_connection(pool, conn);
  } else if (!arm(pool, conn, EPOLL_CTL_MOD)) {
    warn("epoll_ctl(MOD) fd %d: %s; closing that connection", conn.fd.get(), std::strerror(errno));
    close_connection(pool, conn);  // the MOD failed, so conn is still disarmed and ours
  }
}

// A worker: waits on the shared epoll and serves what it gets, until the stop event.
void run_worker(Pool& pool) {
  epoll_event events[kEventsPerWait];
  for (;;) {
    int ready = ::epoll_wait(pool.epoll.get(), events, kEventsPerWait, pool.acceptor.wait_ms());
    if (ready < 0) {
      if (errno == EINTR) continue;  // a stop and continue (SIGSTOP, SIGCONT) interrupts every wait
      warn("epoll_wait: %s", std::strerror(errno));
      std::_Exit(1);
    }
    for (int i = 0; i < ready; ++i) {
      void* cookie = events[i].data.ptr;
      if (cookie == &pool.stop) return;  // level-triggered and never read: every worker sees it
      if (cookie == &pool.acceptor) {
        accept_clients(pool);
        continue;
      }
      Conn& conn = take_connection(events[i]);
      end_turn(pool, conn, serve_turn(conn, events[i].events));
    }
    accept_clients_after_rest(pool);
  }
}

// The shared epoll instance, with the two registrations that are not connections: the listener
// (edge-triggered: one worker woken per new client, and it accepts until EAGAIN), and the stop
// eventfd (level-triggered and never read: once written, every epoll_wait returns it).
void set_up_epoll(Pool& pool, bool level_listener) {
  pool.epoll = epoll_or_exit();
  uint32_t listener_events = level_listener ? EPOLLIN : EPOLLIN | EPOLLET;
  watch_or_exit(pool.epoll.get(), pool.acceptor.listener(), listener_events, &pool.acceptor,
                "listener");
  pool.stop = Fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!pool.stop) die_setup("eventfd");
  watch_or_exit(pool.epoll.get(), pool.stop.get(), EPOLLIN, &pool.stop, "stop eventfd");
}

// main's own loop: sleeps on the signalfd until a stop signal (SIGUSR1 prints the status line).
void wait_for_stop_signal(int signal_fd) {
  pollfd watched{.fd = signal_fd, .events = POLLIN, .revents = 0};
  for (;;) {
    if (::poll(&watched, 1, -1) < 0 && errno != EINTR) die_setup("poll", "signalfd");
    if (handle_signals(signal_fd)) return;
  }
}

std::vector<std::thread> start_workers(Pool& pool, int count) {
  std::vector<std::thread> workers;
  try {
    for (int i = 0; i < count; ++i) {
      workers.emplace_back([&pool, i] {
        // Named, so that `top -H`, `ps -L` and the tests can tell the workers apart from main. By
        // itself: naming another thread opens /proc/self/task/TID/comm, a descriptor for a moment.
        std::string name = "worker " + std::to_string(i + 1);
        ::pthread_setname_np(::pthread_self(), name.c_str());
        run_worker(pool);
      });
    }
  } catch (const std::system_error& error) {
    warn("cannot start worker %zu of %d: %s", workers.size() + 1, count, error.what());
    std::_Exit(1);
  }
  return workers;
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  const ServerSpec spec = make_spec();
  Options options = parse_or_exit(argc, argv, spec);  // also applies --quiet
  // Before any thread starts: every thread inherits the blocked mask, so no worker takes a signal
  // away from the signalfd.
  Fd signals = watch_signals();
  Pool pool(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  pool.oneshot = !options.switches["--no-oneshot"];
  set_up_epoll(pool, options.choices["--listener"] == "level");
  announce_listening(options.host, local_port(pool.acceptor.listener()));  // may exit: no threads yet
  std::vector<std::thread> workers = start_workers(pool, static_cast<int>(options.numbers["--workers"]));
  wait_for_stop_signal(signals.get());
  uint64_t one = 1;
  if (::write(pool.stop.get(), &one, sizeof one) != sizeof one) die_setup("write", "stop eventfd");
  for (std::thread& worker : workers) worker.join();
  return 0;  // no worker runs now: the Registry's destructor closes and frees what is still open
}
