// isoproxy: an RFC 1006 (ISO transport over TCP) middlebox. This file is the
// command line only; each subcommand lives in its own module.
#include <CLI/CLI.hpp>
#include <fcntl.h>

#include <cerrno>
#include <cstdint>
#include <iostream>
#include <optional>
#include <string>

#include "check_cmd.h"
#include "decode_cmd.h"
#include "run_cmd.h"
#include "stats_cmd.h"

#ifndef ISOPROXY_VERSION
#define ISOPROXY_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  // Started with standard input, output or error closed (`2>&-`), the
  // descriptor would go to the next file opened (libuv's epoll or signal
  // pipe), and log lines into it: /dev/null holds the place instead.
  for (int fd = 0; fd <= 2; ++fd) {
    if (::fcntl(fd, F_GETFD) == -1 && errno == EBADF && ::open("/dev/null", O_RDWR) != fd) return 2;
  }
  CLI::App app{"isoproxy: an RFC 1006 (TPKT + X.224 class 0, port 102) proxy that repairs what makes strict peers refuse each other"};
  app.set_version_flag("-V,--version", "isoproxy " ISOPROXY_VERSION);
  app.require_subcommand(1);

  std::string run_config;
  std::string run_user;
  auto* run = app.add_subcommand("run", "Run the proxy in the foreground (logs to standard error)");
  run->add_option("-c,--config", run_config, "Configuration file (TOML)")->required();
  run->add_option("-u,--user", run_user,
                  "Started as root: bind, then run as this user, keeping only the capabilities the configuration needs")
      ->check([](const std::string& u) { return u.empty() ? std::string("names no user (e.g. --user isoproxy)") : std::string(); });

  std::string check_config;
  bool check_verbose = false;
  auto* check = app.add_subcommand("check", "Validate a configuration file; exit 0 if it is valid, 1 if not");
  check->add_option("-c,--config", check_config, "Configuration file (TOML)")->required();
  check->add_flag("-v,--verbose", check_verbose, "Print the effective configuration with every default filled in");

  isoproxy::DecodeCmdOptions dec;
  auto* decode = app.add_subcommand("decode", "Decode RFC 1006 frames from hex, a capture, or event-log addresses");
  decode->add_option("hex", dec.hex, "Hex of one or more TPKT frames (spaces allowed), or '-' to read standard input");
  decode->add_flag("--json", dec.json, "Print JSON for machines");
  decode->add_flag("--cotp", dec.cotp, "Each argument (or input line) is a bare X.224 TPDU without a TPKT header");
  decode->add_flag("--strict", dec.strict, "Reject a class 0 DT whose TPDU-NR is not 0 (RFC 2126 §6.5)");
  // Whole numbers read as text: CLI11 would wrap "-1" into a size_t.
  std::string dec_max_length = "65535", dec_port = "102";
  decode->add_option("--max-length", dec_max_length, "Largest TPKT accepted (7..65535)")->type_name("N")->default_str("65535");
  decode->add_option("--address", dec.addresses, "Decode a network address as MTA event logs print it (hex)");
  decode->add_option("--pcap", dec.pcap, "Decode both directions of every TPKT stream in a capture (pcap or pcapng)");
  decode->add_option("--port", dec_port, "TCP port of the RFC 1006 streams in the capture (1..65535)")->type_name("PORT")->default_str("102");

  isoproxy::StatsCmdOptions st;
  auto* stats = app.add_subcommand("stats", "Show the running proxy's sessions and totals, from its admin endpoint");
  // An empty value is a mistake (a shell variable that was not set), not "no filter".
  const auto non_empty = CLI::Validator(
      [](std::string& v) { return v.empty() ? std::string("an empty value matches nothing: leave the option out") : std::string(); },
      "", "non-empty");
  auto* st_admin = stats->add_option("--admin", st.admin, "Admin endpoint: HOST:PORT, [IPV6]:PORT or unix:/PATH (default 127.0.0.1:9102)")->type_name("ADDR")
      ->check(CLI::Validator([](std::string& v) { return v.empty() ? std::string("no address given: HOST:PORT, [IPV6]:PORT or unix:/PATH") : std::string(); },
                             "", "address"));
  stats->add_option("-c,--config", st.config, "Read the admin endpoint's address from this configuration file ([admin] listen)")->type_name("FILE")->excludes(st_admin);
  stats->add_flag("--json", st.json, "Print the sessions and totals as one JSON document, for scripts");
  auto* st_watch = stats->add_option("--watch", st.watch_interval, "Redraw every SECONDS (0.2..3600, default 2) until SIGINT or SIGTERM")->type_name("[SECONDS]")->expected(0, 1);
  stats->add_option("--count", st.count, "With --watch: stop after N refreshes")->type_name("N")->check(CLI::Range(std::uint64_t{1}, std::uint64_t{1000000000}));
  stats->add_flag("--closed", st.closed, "Show the recently closed sessions too, with close reason and DR");
  stats->add_option("--state", st.state, "Only sessions in this state")->type_name("STATE")->check(CLI::IsMember({"connecting", "awaiting-cc", "established", "draining", "closed"}));
  stats->add_option("--tsap", st.tsap, "Only sessions with this calling or called TSAP (ASCII, or hex)")->type_name("TSAP")->check(non_empty);
  stats->add_option("--peer", st.peer, "Only sessions with this client or upstream (IP or IP:PORT)")->type_name("IP[:PORT]")->check(non_empty);
  stats->add_option("--timeout", st.timeout_s, "Seconds to connect, and to receive each answer (0.1..600)")->type_name("SECONDS")->default_val(5.0);
  stats->add_option("--width", st.width, "Output width in columns, 0 for unlimited (default: the terminal's, else $COLUMNS, else 80)")->type_name("N");

  // An unknown word where the subcommand goes is named, not reported as a
  // missing subcommand.
  if (argc > 1 && argv[1][0] != '-' && app.get_subcommands([&](CLI::App* sub) { return sub->get_name() == argv[1]; }).empty()) {
    std::cerr << "isoproxy: no command \"" << argv[1] << "\": the commands are run, check, decode and stats (see isoproxy --help)\n";
    return 2;
  }
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "isoproxy: " << e.what() << " (see isoproxy --help)\n";
    return 2;
  }

  if (run->parsed()) return isoproxy::run_daemon(run_config, run_user);
  if (check->parsed()) return isoproxy::run_check(check_config, check_verbose, std::cout, std::cerr);
  if (stats->parsed()) {
    st.watch = st_watch->count() > 0;
    return isoproxy::run_stats(st, std::cout, std::cerr);
  }
  if (decode->parsed()) {
    // "-1", "1e3", "0x10", "007x" or 2^64 are named as typed, with the range.
    auto whole = [](const char* option, const std::string& text, unsigned long lo, unsigned long hi) -> std::optional<unsigned long> {
      const bool digits = !text.empty() && text.find_first_not_of("0123456789") == std::string::npos;
      const bool small = digits && text.find_first_not_of('0') != std::string::npos
                             ? text.size() - text.find_first_not_of('0') <= 6
                             : digits;
      if (small && std::stoul(text) >= lo && std::stoul(text) <= hi) return std::stoul(text);
      std::cerr << "isoproxy: decode: " << option << " " << text << " is "
                << (digits ? "outside " : "not a whole number in ") << lo << ".." << hi << "\n";
      return std::nullopt;
    };
    const auto max_length = whole("--max-length", dec_max_length, 7, 65535);
    const auto port = whole("--port", dec_port, 1, 65535);
    if (!max_length || !port) return 2;
    dec.max_length = *max_length;
    dec.port = static_cast<std::uint16_t>(*port);
    if (dec.hex.size() == 1 && dec.hex[0] == "-") {
      dec.hex.clear();
      dec.from_stdin = true;
    }
    return isoproxy::run_decode(dec, std::cin, std::cout, std::cerr);
  }
  return 2;
}
