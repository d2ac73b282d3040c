// isoproxy: an RFC 1006 (ISO transport over TCP) middlebox. This file is the
// command line only; each subcommand lives in its own module.
#include <CLI/CLI.hpp>
#include <iostream>

#include "check_cmd.h"
#include "decode_cmd.h"
#include "run_cmd.h"

#ifndef ISOPROXY_VERSION
#define ISOPROXY_VERSION "0.0.0"
#endif

int main(int argc, char** argv) {
  CLI::App app{"isoproxy: an RFC 1006 (TPKT + X.224 class 0, port 102) proxy that repairs what makes strict peers refuse each other"};
  app.set_version_flag("-V,--version", "isoproxy " ISOPROXY_VERSION);
  app.require_subcommand(1);

  std::string run_config;
  std::string run_user;
  auto* run = app.add_subcommand("run", "Run the proxy in the foreground (logs to standard error)");
  run->add_option("-c,--config", run_config, "Configuration file (TOML)")->required();
  run->add_option("-u,--user", run_user,
                  "Started as root: bind, then run as this user, keeping only the capabilities the configuration needs");

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
  decode->add_option("--max-length", dec.max_length, "Largest TPKT accepted (7..65535)")->default_val(65535);
  decode->add_option("--address", dec.addresses, "Decode a network address as MTA event logs print it (hex)");
  decode->add_option("--pcap", dec.pcap, "Decode both directions of every TPKT stream in a capture (pcap or pcapng)");
  decode->add_option("--port", dec.port, "TCP port of the RFC 1006 streams in the capture")->default_val(102);

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    if (e.get_exit_code() == 0) return app.exit(e);  // --help, --version
    std::cerr << "isoproxy: " << e.what() << " (see isoproxy --help)\n";
    return 2;
  }

  if (run->parsed()) return isoproxy::run_daemon(run_config, run_user);
  if (check->parsed()) return isoproxy::run_check(check_config, check_verbose, std::cout, std::cerr);
  if (decode->parsed()) {
    if (dec.hex.size() == 1 && dec.hex[0] == "-") {
      dec.hex.clear();
      dec.from_stdin = true;
    }
    return isoproxy::run_decode(dec, std::cin, std::cout, std::cerr);
  }
  return 2;
}
