// loadgen: drives an echo server from one epoll loop over many non-blocking connections, each
// with one message in flight, checks every echoed byte, and reports rate, latency and server CPU.
//
//   loadgen --port P --connections 100 --duration 2 --server-pid PID      throughput (ping-pong)
//   loadgen --port P --mode idle --idle 10000 --rounds 1000 --server-pid PID   idle scaling
//
// One JSON line goes to stdout (for scripts), one human line to stderr. Any wrong echo, closed
// connection or stall ends the run with exit code 1 and a message saying what happened.
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "fd.h"
#include "net.h"

namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxEvents = 256;
// Idle connections are opened this many at a time, each batch echoed before the next: a batch
// stays well below the listen backlog (somaxconn, 4096), so connect() never waits on a full queue.
constexpr int kBatch = 500;

struct Config {
  std::string host = "127.0.0.1";
  int port = 0;
  std::string mode = "throughput";
  int connections = 1;    // throughput: busy connections
  int idle = 0;           // idle mode: connections held open without traffic
  long rounds = 1000;     // idle mode: timed round trips on the one active connection
  size_t size = 64;       // bytes per message
  double warmup = 0.5;    // seconds before the measured window (throughput mode)
  double duration = 2.0;  // measured window; in idle mode a cap on the time spent on rounds
  long messages = 0;      // throughput: end the window after this many echoes (0: no limit)
  int server_pid = 0;     // for CPU and memory figures from /proc
  double timeout = 5.0;   // no echo for this long means the server is stuck: fail
};

[[noreturn, gnu::format(printf, 1, 2)]] void fail(const char* format, ...) {
  va_list args;
  va_start(args, format);
  std::fputs("loadgen: ", stderr);
  std::vfprintf(stderr, format, args);
  std::fputc('\n', stderr);
  va_end(args);
  std::exit(1);
}

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// --- what the server costs, read from /proc -----------------------------------------------------

// utime + stime of the whole process (all threads), in seconds; -1 without a readable process.
// The kernel reports them in clock ticks (usually 10 ms), so a window needs a second or so of
// server CPU for a figure good to about 1%.
double server_cpu_seconds(int pid) {
  if (pid <= 0) return -1;
  std::ifstream file("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  // Field 2, the command name, may contain spaces and ')': count fields after the last ')'.
  size_t name_end = text.rfind(')');
  if (name_end == std::string::npos) return -1;
  std::istringstream fields(text.substr(name_end + 1));
  std::string skipped;
  for (int field = 3; field <= 13; ++field) fields >> skipped;
  unsigned long long utime = 0, stime = 0;
  if (!(fields >> utime >> stime)) return -1;
  return static_cast<double>(utime + stime) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// This process's CPU time (user + system), in microsecond resolution.
double own_cpu_seconds() {
  rusage usage{};
  ::getrusage(RUSAGE_SELF, &usage);
  auto seconds = [](const timeval& t) { return static_cast<double>(t.tv_sec) + 1e-6 * t.tv_usec; };
  return seconds(usage.ru_utime) + seconds(usage.ru_stime);
}

// CPU time the whole machine spent busy (all CPUs, from /proc/stat): what is left after the
// server's and our own share is other processes' work, which disturbs the measurement.
double machine_busy_seconds() {
  std::ifstream file("/proc/stat");
  std::string cpu;
  unsigned long long user = 0, nice = 0, system = 0, idle = 0, iowait = 0;
  unsigned long long irq = 0, softirq = 0, steal = 0;
  file >> cpu >> user >> nice >> system >> idle >> iowait >> irq >> softirq >> steal;
  unsigned long long busy = user + nice + system + irq + softirq + steal;  // not idle or iowait
  return static_cast<double>(busy) / static_cast<double>(::sysconf(_SC_CLK_TCK));
}

// The server's resident memory in KiB (VmRSS), or -1.
long server_rss_kib(int pid) {
  if (pid <= 0) return -1;
  std::ifstream file("/proc/" + std::to_string(pid) + "/status");
  for (std::string line; std::getline(file, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::strtol(line.c_str() + 6, nullptr, 10);
  return -1;
}

// Below this much server CPU in a window, one clock tick is over 10% of it: no per-message figure.
constexpr double kMinCpuSeconds = 0.1;

// A measured window: wall time and the server's CPU time between start() and stop().
// Our own CPU time is measured too: if we use our whole core, the rate is ours, not the server's.
struct Window {
  int pid = 0;
  Clock::time_point started;
  double wall = 0, cpu_start = -1, cpu = -1;
  double own_cpu_start = 0, own_cpu = 0;
  double machine_start = 0, machine = 0;

  void start() {
    cpu_start = server_cpu_seconds(pid);
    own_cpu_start = own_cpu_seconds();
    machine_start = machine_busy_seconds();
    started = Clock::now();
  }
  void stop() {
    wall = seconds_since(started);
    machine = machine_busy_seconds() - machine_start;
    own_cpu = own_cpu_seconds() - own_cpu_start;
    double cpu_end = server_cpu_seconds(pid);
    cpu = (cpu_start < 0 || cpu_end < 0) ? -1 : cpu_end - cpu_start;
  }
};

// --- connections and the loop that drives them ---------------------------------------------------

// One client connection with at most one message in flight.
struct Connection {
  Fd fd;
  uint32_t index = 0;
  uint64_t sequence = 0;      // messages sent so far; seeds the next message's bytes
  std::vector<char> message;  // the message in flight, kept to compare with its echo
  std::vector<char> echo;
  size_t written = 0, received = 0;
  bool in_flight = false;
  bool watching_output = false;  // EPOLLOUT is on only while part of a message is unsent
  Clock::time_point sent_at;
};

// The bytes of message `sequence` on connection `index` (xorshift64): every message differs, so
// an echo that drops, repeats, reorders or mixes up bytes between connections fails the check.
void fill_message(std::vector<char>& message, uint32_t index, uint64_t sequence) {
  uint64_t x = ((uint64_t{index} << 40) ^ (sequence * 0x9E3779B97F4A7C15ull)) | 1;
  for (char& byte : message) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    byte = static_cast<char>(x);
  }
}

// A connected, non-blocking TCP socket. Nagle is off so a message leaves at once.
Fd connect_to(const Config& config, size_t number) {
  SocketAddress address;
  if (!make_address(config.host, config.port, &address))
    fail("--host %s is not an address", config.host.c_str());
  Fd fd(::socket(address.family(), SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!fd) fail("socket (connection %zu): %s (raise ulimit -n?)", number, std::strerror(errno));
  auto whole = static_cast<time_t>(config.timeout);
  auto micros = static_cast<suseconds_t>((config.timeout - static_cast<double>(whole)) * 1e6);
  timeval limit{whole, micros};
  // SO_SNDTIMEO also bounds a blocking connect(): a server that never accepts cannot hang us.
  ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &limit, sizeof limit);
  int rc;
  do rc = ::connect(fd.get(), address.get(), address.length);
  while (rc < 0 && errno == EINTR);
  if (rc < 0)
    fail("connect to %s (connection %zu): %s", describe(config.host, config.port).c_str(), number,
         std::strerror(errno));
  int on = 1;
  ::setsockopt(fd.get(), IPPROTO_TCP, TCP_NODELAY, &on, sizeof on);
  if (!set_nonblocking(fd.get())) fail("fcntl(O_NONBLOCK): %s", std::strerror(errno));
  return fd;
}

// Level-triggered epoll over the connections. on_echo is called for each complete, verified
// echo with its round-trip time; it returns true to send the connection's next message.
class EchoLoop {
 public:
  using EchoHandler = std::function<bool(Connection&, double round_trip_us)>;

  explicit EchoLoop(size_t message_size)
      : message_size_(message_size), epoll_(::epoll_create1(EPOLL_CLOEXEC)) {
    if (!epoll_) fail("epoll_create1: %s", std::strerror(errno));
  }

  Connection& add(Fd fd) {
    Connection& connection = connections_.emplace_back();
    connection.fd = std::move(fd);
    connection.index = static_cast<uint32_t>(connections_.size() - 1);
    connection.message.resize(message_size_);
    connection.echo.resize(message_size_);
    control(EPOLL_CTL_ADD, connection, EPOLLIN);
    return connection;
  }

  void send_next(Connection& connection) {
    fill_message(connection.message, connection.index, connection.sequence++);
    connection.written = connection.received = 0;
    connection.in_flight = true;
    connection.sent_at = Clock::now();
    flush(connection);
  }

  // Handles events until done() holds. Fails if no echo completes for `timeout` seconds.
  void run(const std::function<bool()>& done, double timeout) {
    epoll_event events[kMaxEvents];
    Clock::time_point last_progress = Clock::now();
    uint64_t echoes_seen = echoes_;
    while (!done()) {
      int ready = ::epoll_wait(epoll_.get(), events, kMaxEvents, 50);
      if (ready < 0 && errno != EINTR) fail("epoll_wait: %s", std::strerror(errno));
      for (int i = 0; i < ready; ++i) {
        auto* connection = static_cast<Connection*>(events[i].data.ptr);
        if (events[i].events & EPOLLOUT) flush(*connection);
        if (events[i].events & (EPOLLIN | EPOLLERR | EPOLLHUP)) on_readable(*connection);
      }
      if (echoes_ != echoes_seen) {
        echoes_seen = echoes_;
        last_progress = Clock::now();
      } else if (seconds_since(last_progress) > timeout) {
        fail("no echo for %.1f s with %zu connections open: the server stopped answering", timeout,
             connections_.size());
      }
    }
  }

  std::deque<Connection>& connections() { return connections_; }  // deque: addresses stay put
  uint64_t echoes() const { return echoes_; }
  EchoHandler on_echo = [](Connection&, double) { return true; };

 private:
  void control(int operation, Connection& connection, uint32_t events) {
    epoll_event event{};
    event.events = events;
    event.data.ptr = &connection;
    if (::epoll_ctl(epoll_.get(), operation, connection.fd.get(), &event) < 0)
      fail("epoll_ctl: %s", std::strerror(errno));
  }

  // Writes what is left of the message; a full socket buffer turns EPOLLOUT on until it drains.
  void flush(Connection& connection) {
    while (connection.written < connection.message.size()) {
      const char* rest = connection.message.data() + connection.written;
      size_t left = connection.message.size() - connection.written;
      ssize_t n = ::send(connection.fd.get(), rest, left, MSG_NOSIGNAL);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && errno == EAGAIN) return watch_output(connection, true);
      if (n < 0) fail("send on connection %u: %s", connection.index, std::strerror(errno));
      connection.written += static_cast<size_t>(n);
    }
    watch_output(connection, false);
  }

  void watch_output(Connection& connection, bool on) {
    if (connection.watching_output == on) return;
    connection.watching_output = on;
    control(EPOLL_CTL_MOD, connection, on ? EPOLLIN | EPOLLOUT : EPOLLIN);
  }

  // Reads at most what the message in flight still owes, so extra bytes stay queued and spoil
  // the next comparison instead of going unnoticed.
  void on_readable(Connection& connection) {
    char stray;
    bool expecting = connection.in_flight && connection.received < connection.echo.size();
    char* into = expecting ? connection.echo.data() + connection.received : &stray;
    size_t want = expecting ? connection.echo.size() - connection.received : 1;
    ssize_t n = ::recv(connection.fd.get(), into, want, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR)) return;
    if (n < 0) fail("recv on connection %u: %s", connection.index, std::strerror(errno));
    if (n == 0)
      fail("the server closed connection %u after echoing %zu of %zu bytes of message %llu",
           connection.index, connection.received, connection.echo.size(),
           static_cast<unsigned long long>(connection.sequence));
    if (!expecting)
      fail("the server sent connection %u bytes it had not been sent", connection.index);
    connection.received += static_cast<size_t>(n);
    if (connection.received == connection.echo.size()) complete(connection);
  }

  void complete(Connection& connection) {
    const std::vector<char>& sent = connection.message;
    auto [want, got] = std::mismatch(sent.begin(), sent.end(), connection.echo.begin());
    if (want != sent.end())
      fail("wrong echo on connection %u, message %llu: byte %td is 0x%02x, should be 0x%02x",
           connection.index, static_cast<unsigned long long>(connection.sequence),
           want - sent.begin(), static_cast<unsigned char>(*got),
           static_cast<unsigned char>(*want));
    connection.in_flight = false;
    ++echoes_;
    double round_trip_us = seconds_since(connection.sent_at) * 1e6;
    if (on_echo(connection, round_trip_us)) send_next(connection);
  }

  size_t message_size_;
  Fd epoll_;
  std::deque<Connection> connections_;
  uint64_t echoes_ = 0;
};

// --- the two experiments -------------------------------------------------------------------------

struct Report {
  long messages = 0;            // echoes in the measured window
  uint64_t total_messages = 0;  // every echo of the run, warm-up and set-up included
  Window window;
  std::vector<double> latencies_us;
  long rss_before_kib = -1, rss_after_kib = -1;  // idle mode: around opening the idle connections
};

// N connections, each sending its next message as soon as the last one came back.
Report run_throughput(const Config& config) {
  EchoLoop loop(config.size);
  for (int i = 0; i < config.connections; ++i) loop.add(connect_to(config, i));
  Report report;
  report.window.pid = config.server_pid;
  bool measuring = false;
  loop.on_echo = [&](Connection&, double round_trip_us) {
    if (measuring) report.latencies_us.push_back(round_trip_us);
    return true;
  };
  for (Connection& connection : loop.connections()) loop.send_next(connection);
  Clock::time_point warmup_start = Clock::now();
  loop.run([&] { return seconds_since(warmup_start) >= config.warmup; }, config.timeout);
  measuring = true;
  report.window.start();
  auto limit_reached = [&] {
    return seconds_since(report.window.started) >= config.duration ||
           (config.messages > 0 &&
            static_cast<long>(report.latencies_us.size()) >= config.messages);
  };
  loop.run(limit_reached, config.timeout);
  report.window.stop();
  report.messages = static_cast<long>(report.latencies_us.size());
  report.total_messages = loop.echoes();
  return report;
}

// Opens config.idle connections, each making one round trip so the server has registered it.
void open_idle_connections(EchoLoop& loop, const Config& config) {
  long registered = 0;
  loop.on_echo = [&](Connection&, double) {
    ++registered;
    return false;  // stay idle from now on
  };
  for (int opened = 0; opened < config.idle;) {
    int batch = std::min(kBatch, config.idle - opened);
    for (int i = 0; i < batch; ++i) loop.send_next(loop.add(connect_to(config, opened + i)));
    opened += batch;
    loop.run([&] { return registered == opened; }, config.timeout);
  }
}

// M idle connections, then one active connection's round trips, timed one at a time.
Report run_idle(const Config& config) {
  EchoLoop loop(config.size);
  Report report;
  report.window.pid = config.server_pid;
  report.rss_before_kib = server_rss_kib(config.server_pid);
  open_idle_connections(loop, config);
  report.rss_after_kib = server_rss_kib(config.server_pid);
  // Opened last, so it has the highest fd in the server too: select's worst case.
  Connection& active = loop.add(connect_to(config, config.idle));
  long warmup_rounds = std::max(20L, config.rounds / 10), rounds_left = warmup_rounds;
  bool measuring = false;
  loop.on_echo = [&](Connection&, double round_trip_us) {
    if (measuring) report.latencies_us.push_back(round_trip_us);
    return --rounds_left > 0;
  };
  loop.send_next(active);
  loop.run([&] { return rounds_left == 0; }, config.timeout);
  measuring = true;
  rounds_left = config.rounds;
  report.window.start();
  loop.send_next(active);
  loop.run(
      [&] { return rounds_left == 0 || seconds_since(report.window.started) >= config.duration; },
      config.timeout);
  report.window.stop();
  report.messages = static_cast<long>(report.latencies_us.size());
  report.total_messages = loop.echoes();
  return report;
}

// --- output --------------------------------------------------------------------------------------

double percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0;
  auto nth = values.begin() + static_cast<long>(fraction * static_cast<double>(values.size() - 1));
  std::nth_element(values.begin(), nth, values.end());
  return *nth;
}

struct Summary {
  double rate, p50, p99;
  double cpu_us = -1;          // server CPU per message, or -1 if not measurable
  double bytes_per_idle = -1;  // idle mode: server RSS growth per idle connection
  // CPU seconds per second of the window (1 is a full core): server, us, every other process.
  double server_busy = -1, client_busy = 0, others_busy = -1;
};

Summary summarise(const Config& config, const Report& report) {
  Summary summary;
  double messages = static_cast<double>(report.messages);
  summary.rate = report.window.wall > 0 ? messages / report.window.wall : 0;
  summary.p50 = percentile(report.latencies_us, 0.50);
  summary.p99 = percentile(report.latencies_us, 0.99);
  if (report.window.wall > 0) {
    summary.client_busy = report.window.own_cpu / report.window.wall;
    if (report.window.cpu >= 0) summary.server_busy = report.window.cpu / report.window.wall;
    double others = report.window.machine - report.window.cpu - report.window.own_cpu;
    if (report.window.cpu >= 0) summary.others_busy = others / report.window.wall;
  }
  if (report.window.cpu >= kMinCpuSeconds && report.messages > 0)
    summary.cpu_us = report.window.cpu * 1e6 / messages;
  long rss_growth_kib = report.rss_after_kib - report.rss_before_kib;
  if (config.mode == "idle" && config.idle > 0 && report.rss_before_kib >= 0)
    summary.bytes_per_idle = static_cast<double>(rss_growth_kib) * 1024 / config.idle;
  return summary;
}

void print_json(const Config& config, const Report& report, const Summary& summary) {
  bool idle = config.mode == "idle";
  std::printf(
      "{\"mode\": \"%s\", \"connections\": %d, \"idle\": %d, \"size\": %zu, \"window_s\": %.4f, "
      "\"messages\": %ld, \"total_messages\": %llu, \"msgs_per_s\": %.1f, \"p50_us\": %.2f, "
      "\"p99_us\": %.2f, \"server_cpu_s\": %.3f, \"cpu_us_per_msg\": %.3f, "
      "\"rss_before_kib\": %ld, \"rss_after_kib\": %ld, \"bytes_per_idle_conn\": %.1f, "
      "\"server_busy\": %.3f, "
      "\"client_busy\": %.3f, \"others_busy\": %.3f}\n",
      config.mode.c_str(), idle ? 1 : config.connections, idle ? config.idle : 0, config.size,
      report.window.wall, report.messages, static_cast<unsigned long long>(report.total_messages),
      summary.rate, summary.p50, summary.p99, report.window.cpu, summary.cpu_us,
      report.rss_before_kib, report.rss_after_kib, summary.bytes_per_idle, summary.server_busy,
      summary.client_busy, summary.others_busy);
  std::fflush(stdout);
}

void print_human(const Config& config, const Report& report, const Summary& summary) {
  if (config.mode == "idle")
    std::fprintf(stderr, "idle scaling: %d idle + 1 active, %ld round trips of %zu bytes",
                 config.idle, report.messages, config.size);
  else
    std::fprintf(stderr, "throughput: %d connections, %zu-byte messages: %.0f msg/s",
                 config.connections, config.size, summary.rate);
  std::fprintf(stderr, ", p50 %.1f us, p99 %.1f us", summary.p50, summary.p99);
  if (summary.cpu_us >= 0)
    std::fprintf(stderr, ", server CPU %.2f us/msg", summary.cpu_us);
  else if (report.window.cpu >= 0)
    std::fprintf(stderr, ", server CPU: too little to measure in clock ticks");
  if (summary.bytes_per_idle >= 0)
    std::fprintf(stderr, ", server RSS +%ld KiB (%.0f B per idle connection)",
                 report.rss_after_kib - report.rss_before_kib, summary.bytes_per_idle);
  if (summary.server_busy >= 0)
    std::fprintf(stderr, "; busy: server %.0f%%, loadgen %.0f%%, others %.0f%% of a core",
                 summary.server_busy * 100, summary.client_busy * 100,
                 std::max(0.0, summary.others_busy * 100));  // below 0: tick rounding
  std::fputc('\n', stderr);
}

// --- command line --------------------------------------------------------------------------------

const char kUsage[] =
    "usage: loadgen --port N [--host ADDR] [--mode throughput|idle] [--size BYTES]\n"
    "               [--server-pid PID]\n"
    "  throughput:  [--connections N] [--warmup S] [--duration S] [--messages COUNT]\n"
    "  idle:        [--idle M] [--rounds K] [--duration S (cap on the rounds)]\n"
    "  --timeout S  fail if no echo arrives for S seconds (default 5)\n";

[[noreturn]] void usage_error(const std::string& message) {
  std::fprintf(stderr, "loadgen: %s\n%s", message.c_str(), kUsage);
  std::exit(2);
}

double number_of(const std::string& flag, const std::string& text, double low, double high) {
  char* end = nullptr;
  double value = std::strtod(text.c_str(), &end);
  if (text.empty() || *end != '\0' || !(value >= low && value <= high))
    usage_error(flag + ": '" + text + "' is not a number from " + std::to_string(low) + " to " +
                std::to_string(high));
  return value;
}

Config parse_config(int argc, char** argv) {
  Config config;
  for (int i = 1; i < argc; ++i) {
    std::string flag = argv[i];
    if (flag == "--help") {
      std::fputs(kUsage, stdout);
      std::exit(0);
    }
    if (i + 1 == argc) usage_error(flag + " needs a value (or is unknown)");
    std::string value = argv[++i];
    if (flag == "--host")
      config.host = value;
    else if (flag == "--port")
      config.port = static_cast<int>(number_of(flag, value, 1, 65535));
    else if (flag == "--mode" && (value == "throughput" || value == "idle"))
      config.mode = value;
    else if (flag == "--connections")
      config.connections = static_cast<int>(number_of(flag, value, 1, 1e5));
    else if (flag == "--idle")
      config.idle = static_cast<int>(number_of(flag, value, 0, 1e5));
    else if (flag == "--rounds")
      config.rounds = static_cast<long>(number_of(flag, value, 1, 1e9));
    else if (flag == "--size")
      config.size = static_cast<size_t>(number_of(flag, value, 1, 1 << 24));
    else if (flag == "--warmup")
      config.warmup = number_of(flag, value, 0, 3600);
    else if (flag == "--duration")
      config.duration = number_of(flag, value, 0.001, 3600);
    else if (flag == "--messages")
      config.messages = static_cast<long>(number_of(flag, value, 0, 1e12));
    else if (flag == "--server-pid")
      config.server_pid = static_cast<int>(number_of(flag, value, 1, 1 << 30));
    else if (flag == "--timeout")
      config.timeout = number_of(flag, value, 0.1, 3600);
    else
      usage_error("unknown flag or value: " + flag + " " + value);
  }
  if (config.port == 0) usage_error("--port is required");
  return config;
}

// Thousands of connections need thousands of descriptors: use the whole hard limit.
void raise_fd_limit() {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) == 0 && limit.rlim_cur < limit.rlim_max) {
    limit.rlim_cur = limit.rlim_max;
    ::setrlimit(RLIMIT_NOFILE, &limit);
  }
}

}  // namespace

int main(int argc, char** argv) {
  Config config = parse_config(argc, argv);
  raise_fd_limit();
  Report report = config.mode == "idle" ? run_idle(config) : run_throughput(config);
  if (report.messages == 0) fail("no echo completed in the %.2f s window", report.window.wall);
  Summary summary = summarise(config, report);
  print_json(config, report, summary);
  print_human(config, report, summary);
  return 0;
}
