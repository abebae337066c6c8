// Lesson 09: many cores. N worker threads, each running lesson 06's reactor (its own epoll, its
// own connections, its own idle timers), and three ways to hand them new connections: one
// listening socket in every worker's epoll (shared: the thundering herd), the same with
// EPOLLEXCLUSIVE (exclusive), or one listening socket per worker with SO_REUSEPORT (reuseport).
// Your part: the six gaps marked TODO(lesson 09); the rest of this file is given.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "cli.h"
#include "fd.h"
#include "log.h"
#include "net.h"
#include "reactor.h"
#include "signals.h"

namespace {

using namespace reactor;

constexpr int kMaxWorkers = 256;

// The CPUs this process may run on (what `nproc` prints): the default number of workers.
int usable_cpus() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) return std::clamp(CPU_COUNT(&set), 1, kMaxWorkers);
  return std::clamp(static_cast<int>(std::thread::hardware_concurrency()), 1, kMaxWorkers);
}

ServerSpec make_spec() {
  int cpus = usable_cpus();
  return {"Lesson 09: one edge-triggered epoll loop per worker thread, three ways to share the port.",
          7009,
          {{.name = "--workers", .kind = LessonFlag::Kind::kNumber,
            .help = "worker threads, each with its own event loop (default: the CPUs, here " +
                    std::to_string(cpus) + ")",
            .default_value = static_cast<double>(cpus), .min_value = 1, .max_value = kMaxWorkers,
            .whole = true, .unit = "N"},
           {.name = "--listener", .kind = LessonFlag::Kind::kChoice,
            .help = "exclusive (default): one socket, EPOLLEXCLUSIVE; shared: one socket, every "
                    "worker woken; reuseport: a socket per worker (SO_REUSEPORT)",
            .choices = {"exclusive", "shared", "reuseport"}},
           {.name = "--idle-timeout", .kind = LessonFlag::Kind::kNumber,
            .help = "close a connection idle this long (default 60; 0.001 to 1e6)",
            .default_value = 60, .min_value = 0.001, .max_value = 1e6},
           {.name = "--stall-worker", .kind = LessonFlag::Kind::kNumber,
            .help = "DELIBERATELY BROKEN, for the stall demonstration: worker 0 does nothing for "
                    "this long after it starts (default 0: never)",
            .default_value = 0, .min_value = 0, .max_value = 60}}};
}

enum class Mode { kShared, kExclusive, kReuseport };

Mode parse_mode(const std::string& name) {
  if (name == "shared") return Mode::kShared;
  if (name == "reuseport") return Mode::kReuseport;
  return Mode::kExclusive;
}

// ---- The three listener modes ------------------------------------------------------------------

// What each worker's epoll is asked to watch on its listener (Reactor::watch adds EPOLLET).
// EPOLLEXCLUSIVE (Linux 4.5) makes this epoll's entry on the socket's wait queue an exclusive one:
// a new connection wakes the first such epoll that has a thread asleep in it, not all of them.
[[maybe_unused]] uint32_t listener_events(Mode mode) {  // until set_up_worker calls it
  // TODO(lesson 09): in exclusive mode return EPOLLIN | EPOLLEXCLUSIVE; in the other modes EPOLLIN.
  (void)mode;
  return EPOLLIN;
}

// shared, exclusive: one listening socket, and a descriptor of it for each worker. Each worker's
// Acceptor owns (and closes) its own descriptor; all of them name the same socket, hence the same
// accept queue and the same wait queue, which every worker's epoll joins.
std::vector<Fd> open_one_listener(const Options& options, int workers) {
  std::vector<Fd> listeners;
  listeners.push_back(listen_or_exit(options.host, options.port, /*nonblocking=*/true));
  // TODO(lesson 09): until there is one per worker, add a descriptor of the same socket made with
  // fcntl(listeners.front().get(), F_DUPFD_CLOEXEC, 0) (die_setup if it fails).
  (void)workers;
  return listeners;
}

// SO_REUSEPORT lets a later socket of the same user bind a port that sockets with SO_REUSEPORT
// hold, and listen on it: a second copy of this server would start without a word and take part
// of the clients. A socket without SO_REUSEPORT cannot bind a port any listener holds, so bind
// one first: if that fails the port is in use (exit 1, as the contract says); if not, the port is
// free (and chosen, for --port 0), and closing the probe hands it to the group.
int claim_port(const std::string& host, int port) {
  // TODO(lesson 09): make_address, then a socket with SO_REUSEADDR but not SO_REUSEPORT, bound to
  // it (die_setup("bind", describe(host, port)) if bind fails); return local_port() of it.
  (void)host;
  return port;
}

// One member of a reuseport group: SO_REUSEPORT must be set on every member before bind().
Fd listen_reuseport(const std::string& host, int port) {
  SocketAddress address;
  make_address(host, port, &address);
  Fd fd(::socket(address.family(), SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0));
  if (!fd) die_setup("socket", describe(host, port));
  int on = 1;
  if (::setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &on, sizeof on) < 0) {
    die_setup("setsockopt(SO_REUSEADDR)", describe(host, port));
  }
  // TODO(lesson 09): set SO_REUSEPORT the same way (setsockopt, SOL_SOCKET), before bind().
  if (::bind(fd.get(), address.get(), address.length) < 0) die_setup("bind", describe(host, port));
  if (::listen(fd.get(), SOMAXCONN) < 0) die_setup("listen", describe(host, port));
  return fd;
}

// reuseport: a listening socket per worker, all on the one port. The kernel picks a socket for
// each new connection by a hash of its addresses and ports: no shared queue, no herd.
std::vector<Fd> open_reuseport_group(const Options& options, int workers) {
  int port = claim_port(options.host, options.port);
  std::vector<Fd> listeners;
  while (static_cast<int>(listeners.size()) < workers) listeners.push_back(listen_reuseport(options.host, port));
  return listeners;
}

// ---- The workers -------------------------------------------------------------------------------

// The eventfd main writes to stop the workers. Nobody reads it, so it stays readable: every
// worker's epoll reports it once (edge-triggered), and a loop that is never idle still sees it.
class StopEvent final : public StopHandler {
 public:
  explicit StopEvent(int fd) : fd_(fd) {}
  int fd() const { return fd_; }
  void on_events(uint32_t) override { stop_ = true; }

 private:
  int fd_;  // main owns it
};

// One worker: lesson 06's reactor with its own listener handler, on its own thread. It never
// moves (the Listener holds the Reactor's address), so workers live behind unique_ptr.
struct Worker {
  Worker(Timers::Duration idle_timeout, Fd listening, int stop_fd)
      : reactor(idle_timeout), listener(reactor, std::move(listening)), stop(stop_fd) {}
  Reactor reactor;
  Listener listener;
  StopEvent stop;
  std::thread thread;
  // Written by the thread, read by main after join().
  int exit_code = 0;
  uint64_t wakeups = 0;  // times the loop's thread slept and was woken (see sleeps_so_far)
};

// Registers the worker's listener and the stop eventfd in the worker's own epoll. Runs in main,
// before any thread starts, so a failure is a plain setup failure (exit 1).
void set_up_worker(Worker& worker, Mode mode) {
  // TODO(lesson 09): worker.reactor.watch() the listener (its handler: worker.listener, events:
  // listener_events(mode)) and the stop eventfd (worker.stop, EPOLLIN); die_setup if either fails.
  (void)worker;
  (void)mode;
}

void request_stop(int stop_fd) {
  uint64_t one = 1;
  // Fails only if the counter would overflow, and then it is readable already.
  [[maybe_unused]] ssize_t n = ::write(stop_fd, &one, sizeof one);
}

// --stall-worker: DELIBERATELY BROKEN. Worker 0 sleeps before its loop starts, like a worker stuck
// in a long task, while its listener is registered: connections meant for it wait. It still wakes
// for the stop eventfd, so the server stops on time.
void stall(int stop_fd, double seconds) {
  pollfd stop{.fd = stop_fd, .events = POLLIN, .revents = 0};
  warn("worker 0: stalling for %.3f s (--stall-worker, deliberately broken)", seconds);
  ::poll(&stop, 1, static_cast<int>(seconds * 1000));
}

// How often the calling thread has gone to sleep (its voluntary context switches): each is one
// sleep in epoll_wait that something ended. The kernel counts the wakeups the server cannot see:
// a thread woken for a listener whose queue another worker has emptied meanwhile is put back to
// sleep inside epoll_wait, which returns nothing (ep_send_events polls each ready item again).
uint64_t sleeps_so_far() {
  rusage usage{};
  ::getrusage(RUSAGE_THREAD, &usage);
  return static_cast<uint64_t>(usage.ru_nvcsw);
}

void run_worker(Worker& worker, int index, double stall_seconds) {
  // "worker 3" in top -H, ps -L and /proc/PID/task/TID/comm (at most 15 characters).
  ::pthread_setname_np(::pthread_self(), ("worker " + std::to_string(index)).c_str());
  if (index == 0 && stall_seconds > 0) stall(worker.stop.fd(), stall_seconds);
  uint64_t before = sleeps_so_far();
  worker.exit_code = worker.reactor.run(worker.listener, worker.stop);
  worker.wakeups = sleeps_so_far() - before;
  if (worker.exit_code != 0) request_stop(worker.stop.fd());  // one loop failed: stop them all
}

// Main's whole job while the workers serve: wait for a stop signal (SIGUSR1 prints the status and
// goes on), or for a worker that failed and asked everyone to stop.
void wait_for_stop(int signal_fd, int stop_fd) {
  for (;;) {
    pollfd fds[] = {{.fd = signal_fd, .events = POLLIN, .revents = 0},
                    {.fd = stop_fd, .events = POLLIN, .revents = 0}};
    if (::poll(fds, 2, -1) < 0 && errno != EINTR) die_setup("poll");
    if (fds[1].revents != 0) return;
    if (fds[0].revents != 0 && handle_signals(signal_fd)) return;
  }
}

// One worker's exit line: clients accepted; wakeups; wakeups that took no client (woken for
// nothing, or for its clients' bytes only); then what the server itself saw of the listener: the
// events epoll returned for it, and those whose accept found the queue empty.
std::string describe_counts(const Worker& worker) {
  const ListenerCounts& counts = worker.listener.counts();
  uint64_t took_clients = counts.events - counts.found_nothing;
  uint64_t empty = worker.wakeups > took_clients ? worker.wakeups - took_clients : 0;
  char line[200];
  std::snprintf(line, sizeof line, "accepted=%llu wakeups=%llu empty_wakeups=%llu listener_events=%llu "
                "accept_found_nothing=%llu", static_cast<unsigned long long>(counts.accepted),
                static_cast<unsigned long long>(worker.wakeups), static_cast<unsigned long long>(empty),
                static_cast<unsigned long long>(counts.events),
                static_cast<unsigned long long>(counts.found_nothing));
  return line;
}

// Tells every worker to stop, and waits until each has: only then may main read what the workers
// wrote (join is the synchronisation), and destroy them.
void stop_and_join(std::vector<std::unique_ptr<Worker>>& workers, int stop_fd) {
  // TODO(lesson 09): request_stop(stop_fd), then join() every worker's thread.
  (void)workers;
  (void)stop_fd;
}

// Prints each worker's counters, the one line per worker the tests and the lesson read, once
// every worker has stopped. Returns the exit code: 1 if any worker's loop failed.
int report(const std::vector<std::unique_ptr<Worker>>& workers) {
  int code = 0;
  for (size_t i = 0; i < workers.size(); ++i) {
    warn("worker %zu: %s", i, describe_counts(*workers[i]).c_str());
    code = std::max(code, workers[i]->exit_code);
  }
  return code;
}

}  // namespace

int main(int argc, char** argv) {
  protect_standard_streams();  // first: before anything else gets a descriptor (lesson 01)
  const ServerSpec spec = make_spec();
  Options options = parse_or_exit(argc, argv, spec);  // also applies --quiet
  Mode mode = parse_mode(options.choices["--listener"]);
  int count = static_cast<int>(options.numbers["--workers"]);
  // Before any thread exists: threads inherit the blocked mask, so no worker can take a stop
  // signal away from the signalfd (or die of it), and each loop's plain epoll_wait is safe.
  Fd signals = watch_signals();
  Fd stop_fd(::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop_fd) die_setup("eventfd");
  std::vector<Fd> listeners = mode == Mode::kReuseport ? open_reuseport_group(options, count)
                                                       : open_one_listener(options, count);
  int port = local_port(listeners.front().get());
  std::chrono::duration<double> idle_timeout(options.numbers["--idle-timeout"]);
  std::vector<std::unique_ptr<Worker>> workers;
  for (Fd& listening : listeners) {
    workers.push_back(std::make_unique<Worker>(std::chrono::duration_cast<Timers::Duration>(idle_timeout),
                                               std::move(listening), stop_fd.get()));
    set_up_worker(*workers.back(), mode);
  }
  // Announced before the threads start: a client that connects now waits in an accept queue,
  // and a failed announcement exits while this is still the only thread.
  announce_listening(options.host, port);
  for (size_t i = 0; i < workers.size(); ++i) {
    workers[i]->thread = std::thread(run_worker, std::ref(*workers[i]), static_cast<int>(i),
                                     options.numbers["--stall-worker"]);
  }
  wait_for_stop(signals.get(), stop_fd.get());
  stop_and_join(workers, stop_fd.get());
  return report(workers);
}
