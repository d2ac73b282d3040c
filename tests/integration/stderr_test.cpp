// isoproxy's standard error when nobody reads it, and when it is closed:
// the relay goes on either way.
#include <catch2/catch.hpp>

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>

#include "support/peers.h"
#include "support/proxy_process.h"

namespace t = isoproxy::test;
using t::ByteVec;
using t::Conn;
using t::ProxyProcess;
using t::TestServer;
using namespace std::chrono_literals;

namespace {

// A directory of its own, with a launcher that runs isoproxy with its
// standard error sent to `redirect` (shell syntax, e.g. "2>&-").
struct Launcher {
  std::filesystem::path dir, script;
  explicit Launcher(const std::string& name) {
    dir = std::filesystem::temp_directory_path() / ("isoproxy-" + name + "-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    script = dir / "launch.sh";
  }
  void write(const std::string& redirect) {
    std::ofstream(script) << "#!/bin/sh\nexec '" << ProxyProcess::default_binary() << "' \"$@\" " << redirect << "\n";
    std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  }
  ~Launcher() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

// What a non-blocking reader of `fd` gets until `pattern` appears in it (or the deadline).
std::optional<std::smatch> read_until(int fd, std::string& seen, const std::regex& pattern, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    std::smatch m;
    if (std::regex_search(seen, m, pattern)) return m;
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) return std::nullopt;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
    char buf[4096];
    const ssize_t n = ::read(fd, buf, sizeof buf);
    if (n > 0) seen.append(buf, static_cast<std::size_t>(n));
  }
}

// One session: CR, CC, close. False if any step takes over `timeout`.
bool one_session(std::uint16_t port, std::chrono::milliseconds timeout) {
  Conn c = t::connect_to("127.0.0.1", port, timeout);
  if (!c.valid()) return false;
  if (!c.send_all(t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1"), timeout)) return false;
  return c.recv_frame(timeout).has_value();
}

}  // namespace

TEST_CASE("a standard error nobody reads does not stop the relay, and the lines it dropped are counted",
          "[log][integration]") {
  // Every worker logs under one lock: a blocking write into a pipe nobody
  // empties (a stuck journald, a stopped `| less`) would stop every session.
  TestServer up(t::responder_handler({}));
  REQUIRE(up.ok());
  Launcher launch("stderr-stall");
  const auto fifo = launch.dir / "stderr";
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  const int rd = ::open(fifo.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);  // held, read only when the test says
  REQUIRE(rd >= 0);
  REQUIRE(::fcntl(rd, F_SETPIPE_SZ, 4096) >= 4096);  // one page: a few sessions' lines fill it
  launch.write("2>'" + fifo.string() + "'");
  ProxyProcess proxy("[global]\nlog_level = \"debug\"\nreverse_dns = false\n\n[admin]\nlisten = \"off\"\n\n[[listener]]\n"
                     "name = \"l\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n",
                     {}, launch.script.string());
  std::string seen;
  auto listening = read_until(rd, seen, std::regex(R"(listening on 127\.0\.0\.1:(\d+) \(listener l\))"), 10s);
  REQUIRE(listening);
  const auto port = static_cast<std::uint16_t>(std::stoi((*listening)[1]));
  // Nothing more is read: 60 sessions log far more than the pipe holds.
  int served = 0;
  for (int i = 0; i < 60; ++i) served += one_session(port, 5s) ? 1 : 0;
  CHECK(served == 60);
  // Read again: the next lines say how many were dropped meanwhile.
  seen.clear();
  const std::regex dropped(R"(isoproxy: (\d+) log lines dropped: standard error was not read for over 1000 ms)");
  std::optional<std::smatch> note;
  for (int i = 0; i < 20 && !note; ++i) {
    read_until(rd, seen, std::regex("$^"), 200ms);  // drains what is there
    REQUIRE(one_session(port, 5s));
    note = read_until(rd, seen, dropped, 2s);
  }
  REQUIRE(note);
  CHECK(std::stoi((*note)[1]) > 0);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(15s) == 0);
  ::close(rd);
}

TEST_CASE("started with standard error closed, isoproxy runs and stops cleanly", "[log][integration]") {
  // The descriptor would go to libuv's own files, then log lines into them;
  // libuv asserts when it closes a descriptor under 3 (it aborted at SIGTERM).
  TestServer up(t::responder_handler({}));
  REQUIRE(up.ok());
  Launcher launch("stderr-closed");
  launch.write("2>&- 1>&- 0<&-");
  const auto admin = launch.dir / "admin.sock";
  ProxyProcess proxy("[admin]\nlisten = \"unix:" + admin.string() + "\"\n\n[[listener]]\nname = \"l\"\nlisten = "
                     "\"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n",
                     {}, launch.script.string());
  // Its admin socket shows it is up (no log line can).
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (!std::filesystem::exists(admin) && std::chrono::steady_clock::now() < deadline) std::this_thread::sleep_for(20ms);
  REQUIRE(std::filesystem::exists(admin));
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(15s) == 0);
}
