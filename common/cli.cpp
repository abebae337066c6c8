// Parsing of the shared command line. Every error is one line that names the flag, the value
// and what was expected, because that line is all a user sees before exit code 2.
#include "cli.h"

#include <arpa/inet.h>

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "log.h"

namespace {

constexpr double kMaxSeconds = 1e6;  // far beyond any sensible timeout; keeps ms in range

bool is_ip_address(const std::string& text) {
  unsigned char buf[sizeof(in6_addr)];
  return inet_pton(AF_INET, text.c_str(), buf) == 1 || inet_pton(AF_INET6, text.c_str(), buf) == 1;
}

// Whole string, decimal digits only, 0..65535.
bool parse_port(const std::string& text, int* port) {
  if (text.empty() || text.size() > 5) return false;
  for (char c : text)
    if (c < '0' || c > '9') return false;
  *port = std::stoi(text);
  return *port <= 65535;
}

bool parse_positive_number(const std::string& text, double* value) {
  if (text.empty() || text[0] == ' ') return false;
  char* end = nullptr;
  errno = 0;
  *value = std::strtod(text.c_str(), &end);
  return errno == 0 && *end == '\0' && std::isfinite(*value) && *value > 0 && *value <= kMaxSeconds;
}

const LessonFlag* find_lesson_flag(const ServerSpec& spec, const std::string& name) {
  for (const LessonFlag& flag : spec.lesson_flags)
    if (flag.name == name) return &flag;
  return nullptr;
}

bool takes_value(const std::string& name, const LessonFlag* flag) {
  return name == "--host" || name == "--port" ||
         (flag != nullptr && flag->kind == LessonFlag::Kind::kPositiveNumber);
}

// Applies one flag's value to the options; returns an error line, or "" on success.
std::string apply_value(const std::string& name, const std::string& value, Options& options) {
  if (name == "--host") {
    if (!is_ip_address(value)) return "--host: '" + value + "' is not an IPv4 or IPv6 address";
    options.host = value;
  } else if (name == "--port") {
    if (!parse_port(value, &options.port))
      return "--port: '" + value + "' is not a port number (0-65535; 0 picks a free port)";
  } else {
    double number = 0;
    if (!parse_positive_number(value, &number))
      return name + ": '" + value + "' is not a positive number of seconds (at most 1e6)";
    options.numbers[name] = number;
  }
  return "";
}

ParseOutcome usage_error(std::string message) {
  ParseOutcome outcome;
  outcome.action = ParseOutcome::Action::kUsageError;
  outcome.error = std::move(message);
  return outcome;
}

}  // namespace

ParseOutcome parse_options(const std::vector<std::string>& args, const ServerSpec& spec) {
  ParseOutcome outcome;
  Options& options = outcome.options;
  options.port = spec.default_port;
  for (const LessonFlag& flag : spec.lesson_flags) {
    if (flag.kind == LessonFlag::Kind::kSwitch) options.switches[flag.name] = false;
    else options.numbers[flag.name] = flag.default_value;
  }
  for (size_t i = 0; i < args.size(); ++i) {
    std::string name = args[i];
    std::string value;
    bool has_inline_value = false;
    if (auto eq = name.find('='); name.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
      has_inline_value = true;
    }
    const LessonFlag* lesson_flag = find_lesson_flag(spec, name);
    if (name == "--help" || name == "-h") {
      outcome.action = ParseOutcome::Action::kHelp;
      return outcome;
    }
    if (takes_value(name, lesson_flag)) {
      if (!has_inline_value) {
        if (i + 1 == args.size() || args[i + 1].rfind("--", 0) == 0)
          return usage_error(name + " needs a value");
        value = args[++i];
      }
      if (std::string error = apply_value(name, value, options); !error.empty())
        return usage_error(error);
    } else if (name == "--quiet" || lesson_flag != nullptr) {
      if (has_inline_value) return usage_error(name + " takes no value");
      if (name == "--quiet") options.quiet = true;
      else options.switches[name] = true;
    } else {
      return usage_error("unknown argument '" + args[i] + "'");
    }
  }
  return outcome;
}

std::string usage_text(const std::string& program, const ServerSpec& spec) {
  std::string text = "usage: " + program + " [--host ADDR] [--port N] [--quiet]";
  for (const LessonFlag& flag : spec.lesson_flags)
    text += " [" + flag.name + (flag.kind == LessonFlag::Kind::kSwitch ? "" : " SECONDS") + "]";
  text += "\n\n" + spec.summary + "\n\n";
  text += "  --host ADDR   IPv4 or IPv6 address to listen on (default 127.0.0.1)\n";
  text += "  --port N      TCP port, 0 picks a free one (default " +
          std::to_string(spec.default_port) + ")\n";
  text += "  --quiet       no per-connection messages on stderr\n";
  for (const LessonFlag& flag : spec.lesson_flags) text += "  " + flag.name + "  " + flag.help + "\n";
  text += "  --help        this text\n\n";
  text += "Once listening, prints 'listening on HOST:PORT' on stdout. Exit codes: 0 after\n"
          "SIGINT/SIGTERM, 1 when setup fails, 2 for a usage error.\n";
  return text;
}

Options parse_or_exit(int argc, char** argv, const ServerSpec& spec) {
  std::string program = argc > 0 ? argv[0] : "server";
  ParseOutcome outcome = parse_options(std::vector<std::string>(argv + 1, argv + argc), spec);
  switch (outcome.action) {
    case ParseOutcome::Action::kHelp:
      std::fputs(usage_text(program, spec).c_str(), stdout);
      std::exit(0);
    case ParseOutcome::Action::kUsageError:
      std::fprintf(stderr, "%s: %s (see --help)\n", program.c_str(), outcome.error.c_str());
      std::exit(2);
    case ParseOutcome::Action::kRun:
      break;
  }
  set_quiet(outcome.options.quiet);
  return outcome.options;
}
