// The shared command line: defaults, every flag, and a one-line reason for every bad input.
#include <doctest/doctest.h>

#include <string>
#include <vector>

#include "cli.h"

namespace {
const ServerSpec kSpec{"test server", 7000,
                       {{.name = "--idle-timeout", .kind = LessonFlag::Kind::kNumber,
                         .help = "seconds of silence", .default_value = 60, .min_value = 0.001,
                         .max_value = 1e6},
                        {.name = "--broken", .help = "misbehave on purpose"},
                        {.name = "--workers", .kind = LessonFlag::Kind::kNumber, .help = "threads",
                         .default_value = 2, .min_value = 1, .max_value = 64, .whole = true,
                         .unit = "N"},
                        {.name = "--listener", .kind = LessonFlag::Kind::kChoice, .help = "how",
                         .choices = {"shared", "exclusive", "reuseport"}}}};

ParseOutcome parse(std::vector<std::string> args) { return parse_options(args, kSpec); }

std::string error_of(std::vector<std::string> args) {
  ParseOutcome outcome = parse(args);
  CHECK(outcome.action == ParseOutcome::Action::kUsageError);
  return outcome.error;
}

bool mentions(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }
}  // namespace

TEST_CASE("cli_defaults_are_loopback_and_the_documented_port") {
  ParseOutcome outcome = parse({});
  REQUIRE(outcome.action == ParseOutcome::Action::kRun);
  CHECK(outcome.options.host == "127.0.0.1");
  CHECK(outcome.options.port == 7000);
  CHECK_FALSE(outcome.options.quiet);
  CHECK(outcome.options.numbers["--idle-timeout"] == 60);
  CHECK_FALSE(outcome.options.switches["--broken"]);
  CHECK(outcome.options.numbers["--workers"] == 2);
  CHECK_MESSAGE(outcome.options.choices["--listener"] == "shared", "the first choice is the default");
}

TEST_CASE("cli_accepts_every_flag_in_both_spellings") {
  ParseOutcome outcome = parse({"--host", "::1", "--port=0", "--quiet", "--idle-timeout=0.25", "--broken"});
  REQUIRE(outcome.action == ParseOutcome::Action::kRun);
  CHECK(outcome.options.host == "::1");
  CHECK(outcome.options.port == 0);
  CHECK(outcome.options.quiet);
  CHECK(outcome.options.numbers["--idle-timeout"] == doctest::Approx(0.25));
  CHECK(outcome.options.switches["--broken"]);
  CHECK(parse({"--port", "65535"}).options.port == 65535);
  ParseOutcome more = parse({"--workers", "8", "--listener=reuseport"});
  REQUIRE(more.action == ParseOutcome::Action::kRun);
  CHECK(more.options.numbers["--workers"] == 8);
  CHECK(more.options.choices["--listener"] == "reuseport");
}

TEST_CASE("cli_help_wins") {
  CHECK(parse({"--port", "1", "--help"}).action == ParseOutcome::Action::kHelp);
  CHECK(parse({"-h"}).action == ParseOutcome::Action::kHelp);
}

TEST_CASE("cli_missing_values_are_named") {
  CHECK(mentions(error_of({"--port"}), "--port needs a value"));
  CHECK(mentions(error_of({"--host"}), "--host needs a value"));
  CHECK(mentions(error_of({"--idle-timeout"}), "--idle-timeout needs a value"));
  CHECK(mentions(error_of({"--port", "--quiet"}), "--port needs a value"));
}

TEST_CASE("cli_bad_ports_are_rejected") {
  for (const char* bad : {"abc", "-1", "65536", "70000", "", "80x", " 80", "+80", "1e3", "999999"})
    CHECK_MESSAGE(mentions(error_of({"--port", bad}), "is not a port number"), "port '", bad, "'");
}

TEST_CASE("cli_bad_hosts_are_rejected") {
  for (const char* bad : {"localhost", "300.1.1.1", "1.2.3", "", "::g", "example.com"})
    CHECK_MESSAGE(mentions(error_of({"--host", bad}), "is not an IPv4 or IPv6 address"), "host '", bad, "'");
}

TEST_CASE("cli_bad_lesson_numbers_are_rejected") {
  for (const char* bad : {"abc", "nan", "1s", "", " 1", "0x", "--", "inf", "infinity", "0x10", "0x1p-9"})
    CHECK_MESSAGE(mentions(error_of({"--idle-timeout=" + std::string(bad)}), "is not a number"), "value '", bad, "'");
  // Below 1 ms a timeout closes every client before its echo; 1e-300 used to become 0.
  for (const char* bad : {"0", "-1", "1e-300", "1e-400", "0.0009", "1e9", "1e400"})
    CHECK_MESSAGE(mentions(error_of({"--idle-timeout", bad}), "is out of range (0.001 to 1000000 seconds)"),
                  "value '", bad, "'");
  CHECK(mentions(error_of({"--workers", "2.5"}), "--workers: '2.5' is not a whole number"));
  CHECK(mentions(error_of({"--workers", "0"}), "is out of range (1 to 64)"));
}

TEST_CASE("cli_a_choice_must_be_one_of_the_list") {
  CHECK(mentions(error_of({"--listener", "all"}), "--listener: 'all' is not one of shared, exclusive, reuseport"));
  CHECK(mentions(error_of({"--listener"}), "--listener needs a value"));
}

TEST_CASE("cli_control_characters_in_a_message_are_escaped") {
  CHECK(printable("a\nb\tc\x1b[31md\x7f") == "a\\nb\\tc\\x1b[31md\\x7f");
  CHECK_MESSAGE(printable("caf\xc3\xa9") == "caf\xc3\xa9", "UTF-8 text stays as it is");
}

TEST_CASE("cli_unknown_arguments_and_values_on_switches_are_rejected") {
  CHECK(mentions(error_of({"--bogus"}), "unknown argument '--bogus'"));
  CHECK(mentions(error_of({"stray"}), "unknown argument 'stray'"));
  CHECK(mentions(error_of({"--quiet=yes"}), "--quiet takes no value"));
  CHECK(mentions(error_of({"--broken=1"}), "--broken takes no value"));
}

TEST_CASE("cli_usage_lists_lesson_flags") {
  std::string text = usage_text("server", kSpec);
  CHECK(mentions(text, "--idle-timeout SECONDS"));
  CHECK(mentions(text, "--workers N"));
  CHECK(mentions(text, "--listener shared|exclusive|reuseport"));
  CHECK(mentions(text, "default 7000"));
}
