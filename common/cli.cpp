// Parsing of the shared command line. Every error is one line that names the flag, the value
// and what was expected, because that line is all a user sees before exit code 2.
#include "cli.h"

#include <arpa/inet.h>

#include <algorithm>
#include <utility>

#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "log.h"

namespace {

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

// The whole string is one decimal number (no leading space, no unit; an exponent is allowed, but
// not strtod's hex, "inf" or "nan", which --port would refuse too). Too large or too small for a
// double it still parses, as infinity or 0, so the range check can say what is wrong with it.
bool parse_number(const std::string& text, double* value) {
  if (text.empty() || text.find_first_not_of("0123456789.eE+-") != std::string::npos) return false;
  char* end = nullptr;
  *value = std::strtod(text.c_str(), &end);
  return *end == '\0' && !std::isnan(*value);
}

std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.10g", value);
  return text;
}

// Checks a lesson number against its flag's range; returns an error line, or "".
std::string check_number(const LessonFlag& flag, const std::string& text, double* value) {
  std::string quoted = flag.name + ": '" + text + "' ";
  if (!parse_number(text, value)) return quoted + "is not a number";
  if (flag.whole && *value != std::floor(*value)) return quoted + "is not a whole number";
  if (*value < flag.min_value || *value > flag.max_value) {
    std::string unit = flag.unit.size() > 1 ? " " + flag.unit : "";  // "seconds", not "n"
    for (char& c : unit) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return quoted + "is out of range (" + format_number(flag.min_value) + " to " +
           format_number(flag.max_value) + unit + ")";
  }
  return "";
}

std::string check_choice(const LessonFlag& flag, const std::string& value) {
  std::string words;
  for (const std::string& choice : flag.choices) {
    if (choice == value) return "";
    words += (words.empty() ? "" : ", ") + choice;
  }
  return flag.name + ": '" + value + "' is not one of " + words;
}

const LessonFlag* find_lesson_flag(const ServerSpec& spec, const std::string& name) {
  for (const LessonFlag& flag : spec.lesson_flags)
    if (flag.name == name) return &flag;
  return nullptr;
}

bool takes_value(const std::string& name, const LessonFlag* flag) {
  return name == "--host" || name == "--port" ||
         (flag != nullptr && flag->kind != LessonFlag::Kind::kSwitch);
}

// Applies one flag's value to the options; returns an error line, or "" on success.
std::string apply_value(const std::string& name, const std::string& value, const LessonFlag* flag,
                        Options& options) {
  if (name == "--host") {
    if (!is_ip_address(value)) return "--host: '" + value + "' is not an IPv4 or IPv6 address";
    options.host = value;
  } else if (name == "--port") {
    if (!parse_port(value, &options.port))
      return "--port: '" + value + "' is not a port number (0-65535; 0 picks a free port)";
  } else if (flag->kind == LessonFlag::Kind::kChoice) {
    if (std::string error = check_choice(*flag, value); !error.empty()) return error;
    options.choices[name] = value;
  } else {
    double number = 0;
    if (std::string error = check_number(*flag, value, &number); !error.empty()) return error;
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
    switch (flag.kind) {
      case LessonFlag::Kind::kSwitch: options.switches[flag.name] = false; break;
      case LessonFlag::Kind::kNumber: options.numbers[flag.name] = flag.default_value; break;
      case LessonFlag::Kind::kChoice: options.choices[flag.name] = flag.choices.at(0); break;
    }
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
      if (std::string error = apply_value(name, value, lesson_flag, options); !error.empty())
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

namespace {
std::string value_name(const LessonFlag& flag) {
  switch (flag.kind) {
    case LessonFlag::Kind::kSwitch: return "";
    case LessonFlag::Kind::kNumber: return " " + flag.unit;
    case LessonFlag::Kind::kChoice: break;
  }
  std::string words;
  for (const std::string& choice : flag.choices) words += (words.empty() ? "" : "|") + choice;
  return " " + words;
}
}  // namespace

std::string printable(const std::string& text) {
  std::string shown;
  for (unsigned char c : text) {
    if (c == '\n') shown += "\\n";
    else if (c == '\t') shown += "\\t";
    else if (c < 0x20 || c == 0x7f) {
      char escaped[8];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", c);
      shown += escaped;
    } else {
      shown += static_cast<char>(c);
    }
  }
  return shown;
}

namespace {
// "  --flag VALUE   help...": the help starts at column `width` (on the next line if the flag is
// longer) and wraps within 100 columns.
std::string option_line(const std::string& left, const std::string& help, size_t width) {
  const std::string indent(width, ' ');
  std::string text = "  " + left;
  text += text.size() + 1 < width ? std::string(width - text.size(), ' ') : "\n" + indent;
  size_t column = width;
  size_t start = 0;
  while (start < help.size()) {
    size_t end = help.find(' ', start);
    std::string word = help.substr(start, end == std::string::npos ? end : end - start);
    start = end == std::string::npos ? help.size() : end + 1;
    if (column > width && column + 1 + word.size() > 100) {
      text += "\n" + indent;
      column = width;
    } else if (column > width) {
      text += ' ';
      ++column;
    }
    text += word;
    column += word.size();
  }
  return text + "\n";
}
}  // namespace

std::string usage_text(const std::string& program, const ServerSpec& spec) {
  std::vector<std::pair<std::string, std::string>> options = {
      {"--host ADDR", "IPv4 or IPv6 address to listen on (default 127.0.0.1)"},
      {"--port N",
       "TCP port, 0 picks a free one (default " + std::to_string(spec.default_port) + ")"},
      {"--quiet", "no per-connection messages on stderr"}};
  std::string text = "usage: " + program + " [--host ADDR] [--port N] [--quiet]";
  for (const LessonFlag& flag : spec.lesson_flags) {
    text += " [" + flag.name + value_name(flag) + "]";
    options.emplace_back(flag.name + value_name(flag), flag.help);
  }
  options.emplace_back("--help", "this text");
  size_t width = 0;  // where the help texts start: after the longest flag, or column 26 at most
  for (const auto& [left, help] : options) {
    width = std::max(width, std::min<size_t>(left.size() + 4, 26));
  }
  text += "\n\n" + spec.summary + "\n\n";
  for (const auto& [left, help] : options) text += option_line(left, help, width);
  text += "\nOnce listening, prints 'listening on HOST:PORT' on stdout. SIGINT, SIGTERM and\n"
          "SIGHUP stop it (exit 0); SIGUSR1 prints one status line on stderr. Exit codes: 0 after\n"
          "a stop signal, 1 when setup fails, 2 for a usage error.\n";
  return text;
}

Options parse_or_exit(int argc, char** argv, const ServerSpec& spec) {
  std::string program = argc > 0 ? argv[0] : "server";
  ParseOutcome outcome = parse_options(std::vector<std::string>(argv + 1, argv + argc), spec);
  switch (outcome.action) {
    case ParseOutcome::Action::kHelp:
      std::fputs(usage_text(program, spec).c_str(), stdout);
      if (std::fflush(stdout) != 0) {  // /dev/full, a pipe nobody reads: the text is lost, so no success
        std::fprintf(stderr, "%s: cannot write the usage text: %s\n", printable(program).c_str(),
                     std::strerror(errno));
        std::exit(1);
      }
      std::exit(0);
    case ParseOutcome::Action::kUsageError:
      std::fprintf(stderr, "%s: %s (see --help)\n", printable(program).c_str(),
                   printable(outcome.error).c_str());
      std::exit(2);
    case ParseOutcome::Action::kRun:
      break;
  }
  set_quiet(outcome.options.quiet);
  return outcome.options;
}
