// Listener addresses: IPv4 and IPv6 together, and the errors an operator sees
// when a port cannot be bound.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <thread>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
namespace codec = isoproxy::codec;

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

TEST_CASE("isoproxy check refuses what run would on this host: a source_address not of it",
          "[check][source][integration]") {
  // systemctl reload runs check before SIGHUP: what check lets through must not fail the reload.
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-check-host-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto file = dir / "far.toml";
  const auto write = [&](const std::string& listener_source, const std::string& route_source) {
    std::ofstream(file) << "[[listener]]\nname = \"far\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\n"
                        << listener_source << "\n[[listener]]\nname = \"routed\"\nlisten = \"127.0.0.1:0\"\n"
                        << "filters = [\"route\"]\n\n[filter.route]\nkind = \"tsap-route\"\n\n[[filter.route.route]]\n"
                        << "name = \"r\"\ncalled = [\"FAR\"]\nupstream = \"127.0.0.1:1\"\n" << route_source;
  };
  write("source = \"fixed\"\nsource_address = \"192.0.2.77\"\n", "source = \"fixed\"\nsource_address = \"192.0.2.78\"\n");
  auto far = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", file.string()});
  CHECK(far.exit_code == 1);
  INFO(far.err);
  // Both, each at its place in the file and naming its owner.
  CHECK(far.err.find(file.string() + ":6:18: listener[0].source_address: listener far: source_address 192.0.2.77 is not "
                                     "an address of this host") != std::string::npos);
  CHECK(far.err.find(file.string() + ":21:18: filter.route.route[0].source_address: filter route route r: source_address "
                                     "192.0.2.78 is not an address of this host") != std::string::npos);
  CHECK(far.out.find(": ok") == std::string::npos);
  write("source = \"fixed\"\nsource_address = \"127.0.0.1\"\n", "source = \"fixed\"\nsource_address = \"127.0.0.1\"\n");
  auto near = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", file.string()});
  CHECK(near.exit_code == 0);
  CHECK(near.out.find(file.string() + ": ok") != std::string::npos);
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
                   " is held by the running listener a, which this configuration removes or renames: with "
                   "workers = 1 a listener keeps its sockets only if its name, its listen list and its transparent "
                   "setting stay the same; make the change in two reloads") != std::string::npos);
  CHECK(line->find("another process") == std::string::npos);
  // A change of its transparent setting alone is named as such.
  REQUIRE(proxy.write_config("[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:" + std::to_string(port) +
                             "\"\ntransparent = true\n"));
  REQUIRE(proxy.signal(SIGHUP));
  CHECK(proxy.wait_for_line(std::regex("reload failed: listener a: 127\\.0\\.0\\.1:" + std::to_string(port) +
                                       " is held by the running listener a, whose transparent setting changes: "),
                            10s));
  // workers = 2 waits for a restart: a new wildcard listener beside an
  // unchanged one on the same port cannot be bound by the one worker running.
  REQUIRE(proxy.write_config("[global]\nworkers = 2\n\n" + config("a") + "\n[[listener]]\nname = \"wild\"\n"
                             "listen = \"0.0.0.0:" + std::to_string(port) + "\"\nupstream = \"127.0.0.1:" +
                             std::to_string(up.port()) + "\"\n"));
  REQUIRE(proxy.signal(SIGHUP));
  CHECK(proxy.wait_for_line(std::regex("reload failed: listener wild: 0\\.0\\.0\\.0:" + std::to_string(port) +
                                       " overlaps 127\\.0\\.0\\.1:" + std::to_string(port) +
                                       " of listener a, which stays bound: with one worker running"),
                            10s));
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

namespace {

// utime + stime of `pid`, in clock ticks (/proc/PID/stat fields 14 and 15).
long cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  const std::string s((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = s.rfind(')');
  if (paren == std::string::npos) return -1;
  std::istringstream rest(s.substr(paren + 2));  // field 3 on
  std::string f;
  long total = 0;
  for (int i = 3; i <= 15 && rest >> f; ++i) {
    if (i >= 14) total += std::stol(f);
  }
  return total;
}

// A launcher that runs `ulimit_args` (e.g. "-n 40") and then the isoproxy
// binary with the arguments it is given: a proxy with a descriptor limit.
struct LimitedLauncher {
  std::filesystem::path dir, script;
  explicit LimitedLauncher(const std::string& ulimit_args) {
    dir = std::filesystem::temp_directory_path() / ("isoproxy-ulimit-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir);
    script = dir / "launch.sh";
    std::ofstream(script) << "#!/bin/sh\nulimit " << ulimit_args << " || exit 97\nexec '"
                          << ProxyProcess::default_binary() << "' \"$@\"\n";
    std::filesystem::permissions(script, std::filesystem::perms::owner_all);
  }
  ~LimitedLauncher() {
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
};

}  // namespace

TEST_CASE("start-up raises the soft descriptor limit for max_sessions, and warns when the hard limit is short",
          "[listen][integration][fd-limit]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::string toml = "[global]\nmax_sessions = 1000\n\n[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\n"
                           "upstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n";
  SECTION("a soft limit below what max_sessions needs is raised (1000 x 2 + 256)") {
    rlimit rl{};
    REQUIRE(getrlimit(RLIMIT_NOFILE, &rl) == 0);
    if (rl.rlim_max < 2256) {
      WARN("the hard descriptor limit here is " << rl.rlim_max << ": nothing to raise to, skipped");
      return;
    }
    LimitedLauncher launch("-S -n 512");
    ProxyProcess proxy(toml, {}, launch.script.string());
    REQUIRE(proxy.listen_port("l", 10s));
    CHECK(proxy.wait_for_line(std::regex(R"(descriptor limit raised from 512 to 2256 for max_sessions = 1000)"), 5s));
    std::ifstream limits("/proc/" + std::to_string(proxy.pid()) + "/limits");
    std::string line;
    bool seen = false;
    while (std::getline(limits, line)) {
      if (line.rfind("Max open files", 0) == 0) {
        seen = true;
        CHECK(std::regex_search(line, std::regex(R"(^Max open files\s+2256\s)")));
      }
    }
    CHECK(seen);
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(10s) == 0);
  }
  SECTION("a hard limit below it is said at start") {
    LimitedLauncher launch("-n 300");
    ProxyProcess proxy(toml, {}, launch.script.string());
    REQUIRE(proxy.listen_port("l", 10s));
    CHECK(proxy.wait_for_line(
        std::regex(R"(warning the descriptor limit \(300, hard limit 300\) is below the 2256 that max_sessions = 1000 needs)"), 5s));
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(10s) == 0);
  }
}

TEST_CASE("at the descriptor limit accepting pauses: no busy loop, no log flood, and it recovers by itself",
          "[listen][integration][fd-limit]") {
  // With several workers, libuv's way out of EMFILE (a spare descriptor it
  // closes to accept and drop the backlog) races the other threads; when it
  // loses, it called back with EMFILE for ever inside one callback. Three
  // rounds make that likely without the pause; with it, nothing spins.
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  LimitedLauncher launch("-n 48");
  ProxyProcess proxy("[global]\nworkers = 2\nmax_sessions = 1000\nreverse_dns = false\n\n[[listener]]\nname = \"l\"\n"
                     "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n"
                     "park_after = \"0\"\n",
                     {}, launch.script.string());
  auto port = proxy.listen_port("l", 10s);
  REQUIRE(port);
  INFO(proxy.text().substr(0, 4000));
  // Connections opened without waiting (non-blocking connect), held, and closed.
  auto open_many = [&](int n) {
    std::vector<int> fds;
    sockaddr_in to{};
    to.sin_family = AF_INET;
    to.sin_port = htons(*port);
    to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < n; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
      if (fd < 0) break;
      (void)::connect(fd, reinterpret_cast<const sockaddr*>(&to), sizeof to);
      fds.push_back(fd);
    }
    return fds;
  };
  auto close_all = [](std::vector<int>& fds) {
    for (int fd : fds) ::close(fd);
    fds.clear();
  };
  for (int round = 0; round < 3; ++round) {
    INFO("round " << round);
    std::vector<int> held = open_many(40);
    // Two churners while the limit is reached: the workers' accepts and
    // closes interleave, which is what makes libuv lose its spare.
    std::vector<std::thread> churners;
    for (int t = 0; t < 2; ++t) {
      churners.emplace_back([&] {
        for (int i = 0; i < 6; ++i) {
          auto fds = open_many(30);
          std::this_thread::sleep_for(100ms);
          close_all(fds);
        }
      });
    }
    for (auto& t : churners) t.join();
    std::this_thread::sleep_for(300ms);
    const long before = cpu_ticks(proxy.pid());
    std::this_thread::sleep_for(1000ms);
    const long during = cpu_ticks(proxy.pid()) - before;
    close_all(held);
    std::this_thread::sleep_for(500ms);
    const long after_start = cpu_ticks(proxy.pid());
    std::this_thread::sleep_for(1000ms);
    const long after = cpu_ticks(proxy.pid()) - after_start;
    // A spinning worker uses a whole CPU: about 100 ticks a second.
    CHECK(during < 40);
    CHECK(after < 40);
  }
  // The pauses were logged (at most a line a second per worker, over some
  // 12 s of storms with two workers: about 24, and margin), not every failed
  // accept (without the pause, hundreds of thousands a second).
  CHECK(proxy.count_lines(std::regex(R"(accept on 127\.0\.0\.1:\d+: too many open files)")) <= 60);
  // Recovered: a new session is relayed.
  const ByteVec dt = make_dt("after the storm");
  bool served = false;
  for (int attempt = 0; attempt < 20 && !served; ++attempt) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.valid());
    if (c.send_all(codec::Bytes(dt))) {
      auto echo = c.recv_exact(dt.size(), 2000ms);
      served = echo && *echo == dt;
    }
  }
  CHECK(served);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(15s) == 0);
}

TEST_CASE("near the descriptor limit each new connection is warned about, before libuv drops them unseen",
          "[listen][integration][fd-limit]") {
  // Past the limit, libuv accepts and closes new connections with a spare
  // descriptor of its own and calls nobody: no session, no log line, no
  // count. What isoproxy can say is that the limit is near.
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  LimitedLauncher launch("-n 64");
  ProxyProcess proxy("[global]\nmax_sessions = 1000\nreverse_dns = false\n\n[[listener]]\nname = \"l\"\n"
                     "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n",
                     {}, launch.script.string());
  auto port = proxy.listen_port("l", 10s);
  REQUIRE(port);
  const std::regex warned(
      R"(warning listener l: descriptors nearly exhausted: this connection got descriptor (\d+) of the process's limit of 64; )"
      R"(past the limit, new connections are closed as they are accepted)");
  // Sessions held open, each relayed (two descriptors), until the warning comes.
  std::vector<Conn> held;
  const ByteVec dt = make_dt("hold");
  for (int i = 0; i < 40 && proxy.count_lines(warned) == 0; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.valid());
    if (!c.send_all(codec::Bytes(dt)) || !c.recv_exact(dt.size(), 2000ms)) break;  // the limit itself
    held.push_back(std::move(c));
  }
  INFO(proxy.text().substr(0, 4000));
  REQUIRE(proxy.wait_for_line(warned, 5s));
  // Not before: the first sessions were far from it.
  CHECK(held.size() >= 10);
  std::smatch m;
  const std::string text = proxy.text();
  REQUIRE(std::regex_search(text, m, warned));
  CHECK(std::stoi(m[1]) >= 64 - 8);
  held.clear();
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(15s) == 0);
}

TEST_CASE("a session that gets no descriptor for its upstream socket is said at warn and counted",
          "[listen][integration][fd-limit]") {
  // Accepting takes the last descriptor, the upstream socket finds none:
  // every later session fails alike, which `journalctl -p warning` must
  // show. Which session lands there depends on the descriptors isoproxy
  // holds besides its sessions, so two limits of either parity are tried.
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::regex warned(
      R"(warning \[S\d+\] listener l: no upstream connection can be made from this host: upstream-socket: EMFILE)");
  int seen = 0;
  for (const char* limit : {"-n 63", "-n 64"}) {
    INFO(limit);
    LimitedLauncher launch(limit);
    ProxyProcess proxy("[global]\nmax_sessions = 1000\nreverse_dns = false\n\n[[listener]]\nname = \"l\"\n"
                       "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n",
                       {}, launch.script.string());
    auto port = proxy.listen_port("l", 10s);
    REQUIRE(port);
    std::vector<Conn> held;
    const ByteVec dt = make_dt("hold");
    for (int i = 0; i < 40; ++i) {
      Conn c = connect_to("127.0.0.1", *port);
      if (!c.valid() || !c.send_all(codec::Bytes(dt)) || !c.recv_exact(dt.size(), 2000ms)) break;
      held.push_back(std::move(c));
    }
    const bool here = proxy.wait_for_line(warned, 2s).has_value();
    held.clear();
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(15s) == 0);
    if (here) {
      ++seen;
      // Counted with the connect failures (the totals at exit).
      CHECK(proxy.count_lines(std::regex(R"(stopped: .*connect_failures=.*upstream-socket=1)")) == 1);
    }
  }
  CHECK(seen >= 1);
}
