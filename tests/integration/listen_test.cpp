// Listener addresses: IPv4 and IPv6 together, and the errors an operator sees
// when a port cannot be bound.
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <regex>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;

namespace {

bool ipv6_loopback_available() {
  TestServer probe(echo_handler(), "::1");
  return probe.ok();
}

}  // namespace

TEST_CASE("a listener accepts on IPv4 and IPv6 addresses at once", "[listen][integration]") {
  if (!ipv6_loopback_available()) {
    WARN("no IPv6 loopback (::1) on this machine: the IPv6 listener test is skipped");
    return;
  }
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"dual\"\nlisten = [\"127.0.0.1:0\", \"[::1]:0\"]\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\n");
  REQUIRE(proxy.wait_listening(10s, 2));
  const auto listeners = proxy.listeners();
  REQUIRE(listeners.size() == 2);
  for (const auto& l : listeners) {
    INFO(l.address << ":" << l.port);
    const std::string host = l.address.front() == '[' ? l.address.substr(1, l.address.size() - 2) : l.address;
    Conn c = connect_to(host, l.port);
    REQUIRE(c.valid());
    const ByteVec dt = make_dt("over " + host);
    REQUIRE(c.send_all(dt));
    auto back = c.recv_exact(dt.size(), 5s);
    REQUIRE(back);
    CHECK(*back == dt);
  }
  CHECK(proxy.wait_for_lines(std::regex(R"(close reason=client-closed .*client=\[::1\]:)"), 1, 10s));
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("binding port 102 without privilege is a clear start-up error", "[listen][integration]") {
  if (geteuid() != 0 || !on_path("setpriv")) {
    WARN("needs root (to drop to an unprivileged user with setpriv): the privilege error test is skipped");
    return;
  }
  // A config the unprivileged user can read.
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-priv-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  ::chmod(dir.c_str(), 0755);
  const auto file = dir / "isoproxy.toml";
  { std::ofstream(file) << "[[listener]]\nname = \"low\"\nlisten = \"127.0.0.1:102\"\nupstream = \"127.0.0.1:9\"\n"; }
  ::chmod(file.c_str(), 0644);
  auto r = run_process({"/usr/bin/setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
                        "--bounding-set=-all", isoproxy::test::isoproxy_binary(), "run", "-c", file.string()},
                       "", 20s);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("cannot listen on 127.0.0.1:102") != std::string::npos);
  CHECK(r.err.find("ports below 1024 need root or CAP_NET_BIND_SERVICE") != std::string::npos);
  std::filesystem::remove_all(dir);
}

TEST_CASE("isoproxy check validates a file through the command line", "[check][integration]") {
  auto ok = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", std::string(ISOPROXY_SOURCE_DIR) + "/conf/isoproxy.toml", "--verbose"});
  CHECK(ok.exit_code == 0);
  CHECK(ok.out.find("conf/isoproxy.toml: ok") != std::string::npos);
  CHECK(ok.out.find("connect_timeout = \"5s\"") != std::string::npos);  // a default filled in

  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-check-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "bad.toml";
  {
    std::ofstream(file) << "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.1\"\nconect_timeout = \"5s\"\n"
                           "max_frame = \"1MiB\"\n";
  }
  auto bad = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", file.string()});
  CHECK(bad.exit_code == 1);
  // Both errors at once, each with file:line:col.
  CHECK(bad.err.find(file.string() + ":4:1: listener[0].conect_timeout: unknown key; did you mean \"connect_timeout\"?") !=
        std::string::npos);
  CHECK(bad.err.find(file.string() + ":5:13: listener[0].max_frame:") != std::string::npos);
  std::filesystem::remove_all(dir);
}

namespace {
// A port that was free a moment ago (a listener bound it and let it go).
std::uint16_t free_port() {
  TestServer probe(echo_handler());
  REQUIRE(probe.ok());
  return probe.port();
}
}  // namespace

TEST_CASE("a reload that renames a listener on a fixed port, with one worker, says why it cannot and keeps serving",
          "[listen][integration]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::uint16_t port = free_port();  // the listener below takes it
  auto config = [&](const std::string& name) {
    return "[[listener]]\nname = \"" + name + "\"\nlisten = \"127.0.0.1:" + std::to_string(port) +
           "\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n";
  };
  ProxyProcess proxy(config("a"));
  REQUIRE(proxy.listen_port("a", 10s) == port);
  REQUIRE(proxy.write_config(config("b")));
  REQUIRE(proxy.signal(SIGHUP));
  auto line = proxy.wait_for_line(std::regex("reload failed: "), 10s);
  INFO(proxy.text());
  REQUIRE(line);
  CHECK(line->find("reload failed: listener b: 127.0.0.1:" + std::to_string(port) +
                   " is held by the running listener a, which changes (its name, its other addresses or their "
                   "order): with workers = 1 a listener keeps its sockets only if its name and its listen list stay "
                   "the same; make the change in two reloads") != std::string::npos);
  CHECK(line->find("another process") == std::string::npos);
  // Listener a still serves.
  Conn c = connect_to("127.0.0.1", port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr("CALLING", "CALLED")));
  CHECK(c.recv_frame(5s));
}

TEST_CASE("a reload that writes a listener's address differently keeps its socket", "[listen][integration]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::uint16_t port = free_port();
  auto config = [&](const std::string& host) {
    return "[[listener]]\nname = \"a\"\nlisten = \"" + host + ":" + std::to_string(port) + "\"\nupstream = \"127.0.0.1:" +
           std::to_string(up.port()) + "\"\n";
  };
  ProxyProcess proxy(config("[::1]"));
  REQUIRE(proxy.listen_port("a", 10s) == port);
  INFO(proxy.text());
  // The same endpoint written another way: with one worker, a listener seen
  // as changed would have to bind the port a second time, and the reload
  // would fail ("held by the running listener a").
  REQUIRE(proxy.write_config(config("[0:0::1]")));
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_lines(std::regex("reload(ed |.*failed)"), 1, 10s));
  CHECK(proxy.count_lines(std::regex("reload failed")) == 0);
  CHECK(proxy.count_lines(std::regex("reloaded ")) == 1);
  CHECK(proxy.count_lines(std::regex(R"(listening on .* \(listener a\))")) == 1);
  Conn c = connect_to("::1", port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr("CALLING", "CALLED")));
  CHECK(c.recv_frame(5s));
}
