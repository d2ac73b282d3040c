// The service manager protocol through the real binary: the test plays
// systemd, with an AF_UNIX datagram socket of its own named by NOTIFY_SOCKET,
// and reads what isoproxy reports: READY=1 once everything is bound,
// RELOADING=1 (with MONOTONIC_USEC) and READY=1 around a reload, failed or
// not, STOPPING=1 at the drain. Each datagram's sender is checked with
// SCM_CREDENTIALS, as systemd does.
#include <signal.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

struct Notification {
  std::string text;
  pid_t pid = -1;
  bool has(const std::string& assignment) const {
    return ("\n" + text + "\n").find("\n" + assignment + "\n") != std::string::npos;
  }
  std::optional<std::string> value(const std::string& name) const {
    const std::string all = "\n" + text + "\n";
    const auto at = all.find("\n" + name + "=");
    if (at == std::string::npos) return std::nullopt;
    const auto start = at + name.size() + 2;
    return all.substr(start, all.find('\n', start) - start);
  }
};

// The service manager's end: a datagram socket in a directory of its own.
class NotifySocket {
 public:
  NotifySocket() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-notify-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) == nullptr) return;
    dir_ = tmpl;
    path_ = (dir_ / "notify.sock").string();
    fd_ = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un sun{};
    sun.sun_family = AF_UNIX;
    if (fd_ < 0 || path_.size() >= sizeof sun.sun_path) return;
    std::memcpy(sun.sun_path, path_.data(), path_.size());
    const int one = 1;
    if (::bind(fd_, reinterpret_cast<const sockaddr*>(&sun), sizeof sun) != 0 ||
        ::setsockopt(fd_, SOL_SOCKET, SO_PASSCRED, &one, sizeof one) != 0) {
      ::close(fd_);
      fd_ = -1;
    }
  }
  NotifySocket(const NotifySocket&) = delete;
  NotifySocket& operator=(const NotifySocket&) = delete;
  ~NotifySocket() {
    if (fd_ >= 0) ::close(fd_);
    std::error_code ec;
    if (!dir_.empty()) std::filesystem::remove_all(dir_, ec);
  }
  bool ok() const { return fd_ >= 0; }
  std::string env() const { return "NOTIFY_SOCKET=" + path_; }

  // The next datagram, or nullopt at the deadline.
  std::optional<Notification> next(Millis timeout = 10000ms) {
    if (detail::poll_until(fd_, POLLIN, std::chrono::steady_clock::now() + timeout) <= 0) return std::nullopt;
    char buf[4096];
    iovec iov{buf, sizeof buf};
    alignas(cmsghdr) char control[CMSG_SPACE(sizeof(ucred))];
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control;
    msg.msg_controllen = sizeof control;
    const ssize_t n = ::recvmsg(fd_, &msg, MSG_DONTWAIT);
    if (n < 0) return std::nullopt;
    Notification out;
    out.text.assign(buf, static_cast<std::size_t>(n));
    while (!out.text.empty() && out.text.back() == '\n') out.text.pop_back();
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
        ucred cred{};
        std::memcpy(&cred, CMSG_DATA(c), sizeof cred);
        out.pid = cred.pid;
      }
    }
    return out;
  }

 private:
  std::filesystem::path dir_;
  std::string path_;
  int fd_ = -1;
};

// A port free on 127.0.0.1 just now (the kernel's choice, released at once).
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof a;
  std::uint16_t port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len) == 0) {
    port = ntohs(a.sin_port);
  }
  ::close(fd);
  return port;
}

std::uint64_t monotonic_usec() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return static_cast<std::uint64_t>(ts.tv_sec) * 1000000ULL + static_cast<std::uint64_t>(ts.tv_nsec) / 1000ULL;
}

}  // namespace

TEST_CASE("sd_notify: READY once bound, RELOADING and READY around reloads, STOPPING at the drain",
          "[notify][integration]") {
  NotifySocket manager;
  REQUIRE(manager.ok());
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::uint16_t port = free_port();
  const std::uint16_t admin = free_port();
  REQUIRE(port != 0);
  REQUIRE(admin != 0);
  const std::string config = "[admin]\nlisten = \"127.0.0.1:" + std::to_string(admin) +
                             "\"\n\n[[listener]]\nname = \"n\"\nlisten = \"127.0.0.1:" + std::to_string(port) +
                             "\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n";
  ProxyProcess proxy(config, {}, ProxyProcess::default_binary(), {manager.env()});
  REQUIRE(proxy.started());

  auto ready = manager.next(10s);
  REQUIRE(ready);
  INFO(ready->text << "\n" << proxy.text());
  CHECK(ready->pid == proxy.pid());
  CHECK(ready->has("READY=1"));
  CHECK(ready->value("STATUS") == "serving 1 listener");
  // READY=1 means bound: the listener and the admin endpoint answer at once,
  // without waiting for any log line.
  {
    Conn c = connect_to("127.0.0.1", port);
    REQUIRE(c.valid());
    const ByteVec dt = make_dt("after READY");
    REQUIRE(c.send_all(dt));
    CHECK(c.recv_exact(dt.size(), 5s) == dt);
    Conn a = connect_to("127.0.0.1", admin);
    CHECK(a.valid());
  }

  // A good reload: RELOADING=1 stamped with the monotonic clock, then READY=1.
  const std::uint64_t before = monotonic_usec();
  REQUIRE(proxy.signal(SIGHUP));
  auto reloading = manager.next(10s);
  REQUIRE(reloading);
  INFO(reloading->text);
  CHECK(reloading->pid == proxy.pid());
  CHECK(reloading->has("RELOADING=1"));
  const auto stamp = reloading->value("MONOTONIC_USEC");
  REQUIRE(stamp);
  REQUIRE(std::regex_match(*stamp, std::regex(R"(\d{1,20})")));
  const std::uint64_t usec = std::stoull(*stamp);
  CHECK(usec >= before);
  CHECK(usec <= monotonic_usec());
  auto reloaded = manager.next(10s);
  REQUIRE(reloaded);
  CHECK(reloaded->has("READY=1"));
  CHECK(reloaded->value("STATUS") == "serving 1 listener");
  CHECK(proxy.wait_for_line(std::regex("reloaded .*: 1 listener"), 10s));

  // A refused file: still RELOADING=1 then READY=1, and the old config serves on.
  REQUIRE(proxy.write_config("[[listener]]\nlisten = \"127.0.0.1:0\"\nupstrem = \"x\"\n"));
  REQUIRE(proxy.signal(SIGHUP));
  auto reloading2 = manager.next(10s);
  REQUIRE(reloading2);
  CHECK(reloading2->has("RELOADING=1"));
  auto ready2 = manager.next(10s);
  REQUIRE(ready2);
  CHECK(ready2->has("READY=1"));
  // systemd counts any READY=1 as a reload done: the status says it failed.
  CHECK(std::regex_match(ready2->value("STATUS").value_or(""),
                         std::regex(R"(serving 1 listener; the last reload failed \(.*listener\[0\]\.upstream: required.*\), see the log)")));
  CHECK(proxy.wait_for_line(std::regex("reload failed"), 10s));
  {
    Conn c = connect_to("127.0.0.1", port);
    REQUIRE(c.valid());
    const ByteVec dt = make_dt("after a refused reload");
    REQUIRE(c.send_all(dt));
    CHECK(c.recv_exact(dt.size(), 5s) == dt);
  }

  REQUIRE(proxy.signal(SIGTERM));
  auto stopping = manager.next(10s);
  REQUIRE(stopping);
  CHECK(stopping->has("STOPPING=1"));
  CHECK(stopping->value("STATUS").value_or("").rfind("draining ", 0) == 0);
  CHECK(proxy.wait_exit(10s) == 0);
  // Nothing else was sent.
  CHECK_FALSE(manager.next(200ms));
}

TEST_CASE("sd_notify: an unreachable NOTIFY_SOCKET is logged and the relay serves on", "[notify][integration]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"n\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                         std::to_string(up.port()) + "\"\n",
                     {}, ProxyProcess::default_binary(), {"NOTIFY_SOCKET=/nonexistent/isoproxy-notify.sock"});
  auto port = proxy.listen_port("n", 10s);
  REQUIRE(port);
  CHECK(proxy.wait_for_line(std::regex("warning sd_notify: No such file or directory"), 10s));
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.valid());
  const ByteVec dt = make_dt("served anyway");
  REQUIRE(c.send_all(dt));
  CHECK(c.recv_exact(dt.size(), 5s) == dt);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

namespace {

// Runs isoproxy with $JOURNAL_STREAM naming its own standard error, as
// systemd does when StandardError=journal: a shell reads the pipe's
// device:inode and execs the binary in its place.
std::vector<std::string> as_journal_stream(std::vector<std::string> args) {
  std::vector<std::string> argv = {"/bin/sh", "-c",
                                   "JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && export JOURNAL_STREAM && "
                                   "exec \"$@\"",
                                   "sh", ProxyProcess::default_binary()};
  argv.insert(argv.end(), args.begin(), args.end());
  return argv;
}

}  // namespace

TEST_CASE("journald: lines carry their syslog priority and no timestamp when stderr is the journal",
          "[notify][journal][integration]") {
  // An error: the configuration cannot be read.
  auto bad = run_process(as_journal_stream({"run", "-c", "/nonexistent/isoproxy.toml"}), "", 20s);
  INFO(bad.err);
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.rfind("<3>error /nonexistent/isoproxy.toml: cannot read: No such file or directory\n", 0) == 0);

  // Info and warning lines of a running proxy.
  const auto dir = fs::temp_directory_path() / ("isoproxy-journal-" + std::to_string(::getpid()));
  fs::create_directories(dir);
  const auto file = dir / "isoproxy.toml";
  {
    std::ofstream(file) << "[admin]\nlisten = \"off\"\n[[listener]]\nname = \"j\"\nlisten = \"127.0.0.1:0\"\n"
                           "upstream = \"127.0.0.1:9\"\n";
  }
  BackgroundProcess proxy(as_journal_stream({"run", "-c", file.string()}),
                          {"NOTIFY_SOCKET=/nonexistent/isoproxy-notify.sock"});
  REQUIRE(proxy.started());
  using Err = BackgroundProcess::Stream;
  CHECK(proxy.wait_for_line(Err::kErr, std::regex(R"(^<6>info listening on 127\.0\.0\.1:\d+ \(listener j\)$)"), 10s));
  CHECK(proxy.wait_for_line(Err::kErr, std::regex(R"(^<4>warning sd_notify: No such file or directory$)"), 10s));
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
  for (const auto& line : proxy.lines(Err::kErr)) {
    INFO(line);
    CHECK(std::regex_search(line, std::regex(R"(^<[2-7]>(debug|info|warning|error|critical) )")));
  }

  // A JOURNAL_STREAM that is not our stderr (a child of the service writing
  // elsewhere) keeps the timestamps.
  auto other = run_process({"/usr/bin/env", "JOURNAL_STREAM=1:1", ProxyProcess::default_binary(), "run", "-c",
                            "/nonexistent/isoproxy.toml"},
                           "", 20s);
  CHECK(std::regex_search(other.err, std::regex(R"(^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3} error /nonexistent)")));
  fs::remove_all(dir);
}
