// The live page at GET / through the real binary and a real browser: headless
// Chromium loads it from the admin endpoint, runs its script under the page's
// own Content-Security-Policy, polls /sessions?closed=1 and /stats, and the
// DOM it dumps must show what the endpoint serves. Two launches (Chromium is
// slow): one through a gate in front of the endpoint that fails one poll and
// holds another until a session has closed, so the page must report the
// failure, recover and update in place; one direct, with a screenshot left
// in the build directory (tests/admin-page.png) for people to look at.
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"
#include "support/http.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

const std::string kXssTsap = "<img src=x onerror=alert(1)>";


// ---------------------------------------------------------------------------
// Headless Chromium, in its own process group so that every process it
// forks is ended with it; bounded by a deadline.

struct BrowserRun {
  bool started = false;
  bool timed_out = false;
  int exit_code = -1;
  std::string dom;     // --dump-dom, on standard output
  std::string log;     // standard error: Chromium's log, console messages included
};

BrowserRun run_chromium(const std::string& url, const std::filesystem::path& profile, int virtual_ms,
                        const std::filesystem::path& screenshot = {}, Millis deadline = 40s) {
  BrowserRun run;
  std::vector<std::string> argv = {"chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                                   "--disable-background-networking", "--no-first-run", "--no-default-browser-check",
                                   "--user-data-dir=" + profile.string(), "--enable-logging=stderr", "--v=0",
                                   "--virtual-time-budget=" + std::to_string(virtual_ms)};
  if (!screenshot.empty()) {
    argv.push_back("--screenshot=" + screenshot.string());
    argv.push_back("--window-size=1280,900");
    argv.push_back("--hide-scrollbars");
  }
  argv.push_back("--dump-dom");
  argv.push_back(url);

  int out[2], err[2];
  if (::pipe2(out, O_CLOEXEC) != 0) return run;
  if (::pipe2(err, O_CLOEXEC) != 0) {
    ::close(out[0]);
    ::close(out[1]);
    return run;
  }
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_adddup2(&fa, out[1], 1);
  posix_spawn_file_actions_adddup2(&fa, err[1], 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setpgroup(&attr, 0);  // its own process group, led by its pid
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  std::vector<char*> args;
  for (auto& a : argv) args.push_back(a.data());
  args.push_back(nullptr);
  pid_t pid = -1;
  const int rc = ::posix_spawnp(&pid, "chromium", &fa, &attr, args.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  ::close(out[1]);
  ::close(err[1]);
  if (rc != 0) {
    ::close(out[0]);
    ::close(err[0]);
    run.log = std::string("spawn chromium: ") + std::strerror(rc);
    return run;
  }
  run.started = true;
  const int pidfd = detail::pidfd_open(pid);
  const auto until = std::chrono::steady_clock::now() + deadline;
  bool out_open = true, err_open = true, exited = false, killed = false;
  std::chrono::steady_clock::time_point drain_until{};
  char buf[65536];
  while (out_open || err_open) {
    const auto now = std::chrono::steady_clock::now();
    if (!killed && (now >= until || exited)) {
      // Timed out, or the browser exited: end whatever it left in its group.
      // The leader is not reaped yet, so the group id cannot have been reused.
      run.timed_out = !exited;
      ::kill(-pid, SIGKILL);
      killed = true;
      drain_until = now + 5s;
    }
    if (killed && now >= drain_until) break;
    const auto stop = killed ? drain_until : until;
    const int wait_ms = static_cast<int>(std::max<long long>(
        1, std::chrono::duration_cast<Millis>(stop - std::chrono::steady_clock::now()).count()));
    pollfd fds[3] = {{out_open ? out[0] : -1, POLLIN, 0}, {err_open ? err[0] : -1, POLLIN, 0},
                     {exited ? -1 : pidfd, POLLIN, 0}};
    if (::poll(fds, 3, wait_ms) < 0 && errno != EINTR) break;
    for (int i = 0; i < 2; ++i) {
      if ((i == 0 ? !out_open : !err_open) || (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) == 0) continue;
      const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
      if (n > 0) (i == 0 ? run.dom : run.log).append(buf, static_cast<std::size_t>(n));
      else if (n == 0 || errno != EINTR) (i == 0 ? out_open : err_open) = false;
    }
    if (pidfd >= 0 && !exited && (fds[2].revents & POLLIN) != 0) exited = true;
    if (pidfd < 0 && !exited) {  // no pidfd (old kernel): notice the exit without reaping
      siginfo_t si{};
      if (::waitid(P_PID, static_cast<id_t>(pid), &si, WEXITED | WNOHANG | WNOWAIT) == 0 && si.si_pid == pid) exited = true;
    }
  }
  if (!killed) ::kill(-pid, SIGKILL);
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  if (!run.timed_out && WIFEXITED(status)) run.exit_code = WEXITSTATUS(status);
  ::close(out[0]);
  ::close(err[0]);
  if (pidfd >= 0) ::close(pidfd);
  return run;
}

// ---------------------------------------------------------------------------
// PollGate: an HTTP relay between the browser and the admin endpoint that
// counts GET /sessions requests and lets the test decide, per request, to
// forward it (after doing something first, the page's fetch waiting) or to
// answer 503. The page's requests go to the gate's origin, so the CSP's
// connect-src 'self' still holds. Requests are GETs without a body.

class PollGate {
 public:
  // decide(n) runs for the n-th GET /sessions request, on a relay thread: true forwards it.
  PollGate(std::uint16_t target, std::function<bool(int)> decide) : target_(target), decide_(std::move(decide)) {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    wake_fd_ = ::eventfd(0, EFD_CLOEXEC);
    auto addr = make_sockaddr("127.0.0.1", 0);
    if (listen_fd_ < 0 || wake_fd_ < 0 || ::bind(listen_fd_, addr->get(), addr->length) != 0 || ::listen(listen_fd_, 16) != 0) {
      error_ = std::string("gate: ") + std::strerror(errno);
      return;
    }
    SockAddr bound;
    bound.length = sizeof bound.storage;
    ::getsockname(listen_fd_, bound.get(), &bound.length);
    port_ = address_port(bound.get());
    threads_.emplace_back([this] { accept_loop(); });
  }
  PollGate(const PollGate&) = delete;
  PollGate& operator=(const PollGate&) = delete;
  ~PollGate() {
    // The eventfd is never read: once written it wakes every thread for good.
    const std::uint64_t one = 1;
    if (wake_fd_ >= 0) {
      [[maybe_unused]] const ssize_t n = ::write(wake_fd_, &one, sizeof one);
    }
    for (;;) {
      std::thread t;
      {
        std::lock_guard<std::mutex> lk(mu_);
        if (threads_.empty()) break;
        t = std::move(threads_.back());
        threads_.pop_back();
      }
      t.join();
    }
    if (listen_fd_ >= 0) ::close(listen_fd_);
    if (wake_fd_ >= 0) ::close(wake_fd_);
  }

  const std::string& error() const { return error_; }
  std::uint16_t port() const { return port_; }
  int sessions_requests() const { return sessions_requests_; }

 private:
  void accept_loop() {
    for (;;) {
      pollfd fds[2] = {{listen_fd_, POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      if (::poll(fds, 2, -1) < 0 && errno != EINTR) return;
      if (fds[1].revents != 0) return;
      if ((fds[0].revents & POLLIN) == 0) continue;
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) continue;
      std::lock_guard<std::mutex> lk(mu_);
      threads_.emplace_back([this, fd] { relay(fd); });
    }
  }

  static bool write_all(int fd, const char* p, std::size_t n) {
    while (n > 0) {
      const ssize_t w = ::send(fd, p, n, MSG_NOSIGNAL);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) return false;
      p += w;
      n -= static_cast<std::size_t>(w);
    }
    return true;
  }

  void relay(int client) {
    Conn upstream = connect_to("127.0.0.1", target_);
    std::string pending;  // request bytes not yet forwarded
    char buf[65536];
    while (upstream.valid()) {
      pollfd fds[3] = {{client, POLLIN, 0}, {upstream.fd(), POLLIN, 0}, {wake_fd_, POLLIN, 0}};
      if (::poll(fds, 3, -1) < 0) {
        if (errno == EINTR) continue;
        break;
      }
      if (fds[2].revents != 0) break;
      if ((fds[1].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = ::recv(upstream.fd(), buf, sizeof buf, 0);
        if (n <= 0 || !write_all(client, buf, static_cast<std::size_t>(n))) break;
      }
      if ((fds[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
        const ssize_t n = ::recv(client, buf, sizeof buf, 0);
        if (n <= 0) break;
        pending.append(buf, static_cast<std::size_t>(n));
        bool refused = false;
        for (std::size_t end; !refused && (end = pending.find("\r\n\r\n")) != std::string::npos;) {
          const std::string head = pending.substr(0, end + 4);
          pending.erase(0, end + 4);
          if (head.rfind("GET /sessions", 0) == 0) {
            std::lock_guard<std::mutex> lk(decide_mu_);  // one decision at a time, in order
            refused = !decide_(++sessions_requests_);
          }
          if (refused) {
            static const std::string k503 =
                "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n";
            write_all(client, k503.data(), k503.size());
          } else if (!write_all(upstream.fd(), head.data(), head.size())) {
            refused = true;
          }
        }
        if (refused) break;
      }
    }
    ::shutdown(client, SHUT_RDWR);
    ::close(client);
  }

  std::uint16_t target_;
  std::function<bool(int)> decide_;
  std::string error_;
  std::uint16_t port_ = 0;
  int listen_fd_ = -1;
  int wake_fd_ = -1;
  std::mutex mu_;
  std::vector<std::thread> threads_;
  std::mutex decide_mu_;
  std::atomic<int> sessions_requests_{0};
};

// ---------------------------------------------------------------------------

// An upstream like the vendor MTA: CR -> CC (reserved 0x11, TSAPs echoed),
// DT echoed; a DT "BYE" is answered with DR 0x80 (normal disconnect) and a close.
TestServer::Handler page_upstream() {
  return [](Conn& c) {
    for (;;) {
      auto frame = c.recv_frame(Millis(std::chrono::hours(1)));
      if (!frame) return;
      auto d = isoproxy::codec::decode_frame(isoproxy::codec::Bytes(*frame));
      if (!d) return;
      if (d->tpdu.type == isoproxy::codec::TpduType::kCR) {
        if (!c.send_all(isoproxy::codec::Bytes(make_cc_reply(d->tpdu, 0x0029, 0x11, true)))) return;
      } else if (d->tpdu.type == isoproxy::codec::TpduType::kDT) {
        const std::string data(d->tpdu.user_data.begin(), d->tpdu.user_data.end());
        if (data == "BYE") {
          c.send_all(isoproxy::codec::Bytes(make_dr(0x80, 0x01CA, 0x0029)));
          c.shutdown_write();
          c.wait_eof(5s);
          return;
        }
        if (!c.send_all(isoproxy::codec::Bytes(*frame))) return;
      } else if (d->tpdu.type == isoproxy::codec::TpduType::kDR) {
        return;
      }
    }
  };
}

// The part of the DOM from <table id="ID" to its </table>.
std::string table_html(const std::string& dom, const std::string& id) {
  const auto start = dom.find("<table id=\"" + id + "\"");
  if (start == std::string::npos) return {};
  const auto end = dom.find("</table>", start);
  return dom.substr(start, end == std::string::npos ? std::string::npos : end - start);
}

// The value of a data-NAME attribute of <body>, or -1.
long body_data(const std::string& dom, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex("<body[^>]*\\sdata-" + name + "=\"([0-9]+)\""))) return -1;
  return std::stol(m[1]);
}

std::string body_attr(const std::string& dom, const std::string& name) {
  std::smatch m;
  if (!std::regex_search(dom, m, std::regex("<body[^>]*\\sdata-" + name + "=\"([^\"]*)\""))) return {};
  return m[1];
}

// The page's console messages (Chromium's own log is mostly D-Bus noise here).
std::string console_lines(const std::string& log) {
  std::string out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("CONSOLE") != std::string::npos || line.find("FATAL") != std::string::npos) out += line + "\n";
  }
  return out;
}

// Console messages of the page that mean it did not run as written.
std::vector<std::string> script_problems(const std::string& log) {
  std::vector<std::string> out;
  std::istringstream in(log);
  for (std::string line; std::getline(in, line);) {
    if (line.find("CONSOLE") == std::string::npos) continue;
    if (line.find("Content Security Policy") != std::string::npos || line.find("Uncaught") != std::string::npos ||
        line.find("Refused") != std::string::npos) {
      out.push_back(line);
    }
  }
  return out;
}

// Width and height from a PNG's IHDR, or nullopt if it is not a PNG.
std::optional<std::pair<std::uint32_t, std::uint32_t>> png_size(const std::string& bytes) {
  static const std::string kSignature("\x89PNG\r\n\x1a\n", 8);
  if (bytes.size() < 33 || bytes.compare(0, 8, kSignature) != 0 || bytes.compare(12, 4, "IHDR") != 0) return std::nullopt;
  auto be32 = [&](std::size_t at) {
    return (std::uint32_t(std::uint8_t(bytes[at])) << 24) | (std::uint32_t(std::uint8_t(bytes[at + 1])) << 16) |
           (std::uint32_t(std::uint8_t(bytes[at + 2])) << 8) | std::uint32_t(std::uint8_t(bytes[at + 3]));
  };
  return std::make_pair(be32(16), be32(20));
}

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-page-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) std::filesystem::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("admin page: GET / serves the page with its security headers", "[admin-page][integration]") {
  ProxyProcess proxy("[[listener]]\nname = \"p\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n");
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  const HttpReply page = http(*aport, "GET", "/");
  REQUIRE(page.status == 200);
  CHECK(page.header("Content-Type") == "text/html; charset=utf-8");
  CHECK(page.header("X-Content-Type-Options") == "nosniff");
  CHECK(page.header("Cache-Control") == "no-store");
  const std::string csp = page.header("Content-Security-Policy");
  CHECK(csp.rfind("default-src 'none'; ", 0) == 0);
  CHECK(std::regex_search(csp, std::regex("script-src 'sha256-[A-Za-z0-9+/]{43}='")));
  CHECK(std::regex_search(csp, std::regex("style-src 'sha256-[A-Za-z0-9+/]{43}='")));
  CHECK(csp.find("connect-src 'self'") != std::string::npos);
  CHECK(page.body.rfind("<!DOCTYPE html>", 0) == 0);
  CHECK(page.header("Content-Length") == std::to_string(page.body.size()));
  // A query (?refresh=5) is the page's business: the same page.
  CHECK(http(*aport, "GET", "/?refresh=5").body == page.body);

  const HttpReply head = http(*aport, "HEAD", "/");
  CHECK(head.status == 200);
  CHECK(head.body.empty());
  CHECK(head.header("Content-Type") == "text/html; charset=utf-8");
  CHECK(head.header("Content-Length") == std::to_string(page.body.size()));
  CHECK(head.header("Content-Security-Policy") == csp);

  // Unknown resources still get the JSON 404, which now names the page.
  const HttpReply missing = http(*aport, "GET", "/index.html");
  CHECK(missing.status == 404);
  CHECK(json::parse(missing.body)["error"].get<std::string>().find("try / for the live page") != std::string::npos);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin page: headless Chromium shows live and closed sessions, recovers, never runs peer text",
          "[admin-page][integration]") {
  if (!on_path("chromium")) {
    FAIL("chromium is not installed: the live page is tested in headless Chromium "
         "(Debian package chromium; packaging/deps.sh --test installs it)");
  }
  TestServer up(page_upstream());
  REQUIRE(up.ok());
  // Framed through the data phase (passthrough = false): the page shows the
  // DT counts and the DR a client sends mid-session, which pass-through does not decode.
  ProxyProcess proxy("[[listener]]\nname = \"page\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\npassthrough = false\nfilters = [\"annotate\", \"reserved\"]\n\n"
                     "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n");
  auto port = proxy.listen_port("page", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);

  // Three live sessions: one with traffic, one whose calling TSAP is markup,
  // one that the upstream will disconnect while the page is open.
  auto open_session = [&](const std::string& calling, const std::string& called) {
    Conn c = connect_to("127.0.0.1", *port);
    if (c.valid() && c.send_all(make_cr(calling, called))) c.recv_frame(5s);
    return c;
  };
  Conn a = open_session("PAGECALLING1", "PAGECALLED01");
  Conn x = open_session(kXssTsap, "PAGECALLED02");
  Conn b = open_session("PAGECLOSING1", "PAGECALLED03");
  REQUIRE(a.valid());
  REQUIRE(x.valid());
  REQUIRE(b.valid());
  for (int i = 0; i < 3; ++i) {
    const ByteVec dt = make_dt(std::string(700 * (i + 1), static_cast<char>('a' + i)));
    REQUIRE(a.send_all(dt));
    REQUIRE(a.recv_exact(dt.size(), 5s));
  }
  const json live = json::parse(http(*aport, "GET", "/sessions").body);
  REQUIRE(live["sessions"].size() == 3);
  for (const json& s : live["sessions"]) REQUIRE(s["state"] == "established");
  const json xs = json::parse(http(*aport, "GET", "/sessions?tsap=PAGECALLED02").body)["sessions"];
  REQUIRE(xs.size() == 1);
  REQUIRE(xs[0]["calling_tsap"]["ascii"] == kXssTsap);  // the endpoint hands it over as is

  // The static page names none of them: whatever the DOM shows later, the script fetched.
  const std::string static_html = http(*aport, "GET", "/").body;
  REQUIRE(!static_html.empty());
  for (const std::string s : {"PAGECALLING1", "PAGECALLED01", "PAGECLOSING1", "onerror", "&lt;img", "normal disconnect"}) {
    INFO(s);
    CHECK(static_html.find(s) == std::string::npos);
  }

  TempDir tmp;
  REQUIRE(!tmp.path.empty());

  SECTION("through a gate: a failed poll, then a session closing while the page is open") {
    std::mutex mu;
    std::string gate_problem;
    // Poll 1 passes (B is live), poll 2 fails with 503 (banner), poll 3 waits
    // until B has closed, then passes: the page, never reloaded, must show B closed.
    PollGate gate(*aport, [&](int n) {
      if (n == 2) return false;
      if (n == 3) {
        std::string problem;
        if (!b.send_all(make_dt("BYE"))) problem = "send BYE: " + b.error();
        else if (!b.wait_eof(5s)) problem = "no DR and close for B: " + b.error();
        b.close();  // the client's side of the close: the session ends
        if (problem.empty() && !proxy.wait_for_line(std::regex("close reason=.*calling=\"?PAGECLOSING1"), 10s)) {
          problem = "no close line for B";
        }
        std::lock_guard<std::mutex> lk(mu);
        gate_problem = problem;
      }
      return true;
    });
    REQUIRE(gate.error().empty());
    const auto t0 = std::chrono::steady_clock::now();
    const BrowserRun run = run_chromium("http://127.0.0.1:" + std::to_string(gate.port()) + "/", tmp.path / "profile-gate", 6000);
    INFO("chromium took " << std::chrono::duration_cast<Millis>(std::chrono::steady_clock::now() - t0).count() << " ms");
    INFO("chromium console:\n" << console_lines(run.log));
    REQUIRE(run.started);
    REQUIRE_FALSE(run.timed_out);
    CHECK(run.exit_code == 0);
    {
      std::lock_guard<std::mutex> lk(mu);
      INFO("proxy log:\n" << proxy.text());
      CHECK(gate_problem == "");
    }
    CHECK(script_problems(run.log).empty());
    INFO("DOM:\n" << run.dom);
    REQUIRE(gate.sessions_requests() >= 4);
    // Polling went on past the failure and the page says it is live again.
    CHECK(body_data(run.dom, "failures") >= 1);
    CHECK(body_data(run.dom, "polls") >= 3);
    CHECK(body_attr(run.dom, "status") == "ok");
    CHECK(std::regex_search(run.dom, std::regex(R"(id="banner"[^>]*\bhidden\b)")));
    CHECK(run.dom.find("updated ") != std::string::npos);

    const std::string live_table = table_html(run.dom, "live");
    const std::string closed_table = table_html(run.dom, "closed");
    CHECK(live_table.find("PAGECALLING1") != std::string::npos);
    CHECK(live_table.find("PAGECALLED01") != std::string::npos);
    CHECK(live_table.find("PAGECALLED02") != std::string::npos);
    CHECK(live_table.find("established") != std::string::npos);
    CHECK(live_table.find("PAGECLOSING1") == std::string::npos);
    // The markup TSAP is text: escaped in the serialized DOM, never an element.
    CHECK(live_table.find("&lt;img src=x onerror=alert(1)&gt;") != std::string::npos);
    CHECK(run.dom.find("<img") == std::string::npos);

    // B in the closed table, with what the endpoint says about it.
    const json closed = json::parse(http(*aport, "GET", "/sessions?state=closed").body)["sessions"];
    REQUIRE(closed.size() == 1);
    const std::string reason = closed[0]["close_reason"].get<std::string>();
    const std::string dr_name = closed[0]["dr"]["name"].get<std::string>();
    CHECK(closed_table.find("PAGECLOSING1") != std::string::npos);
    CHECK(closed_table.find(">" + reason + "<") != std::string::npos);
    CHECK(closed_table.find("DR 0x80 from upstream: " + dr_name) != std::string::npos);
  }

  SECTION("directly, with a screenshot; ?refresh is bounded") {
    // Close B first, so that the screenshot shows a closed session too.
    REQUIRE(b.send_all(make_dt("BYE")));
    REQUIRE(b.wait_eof(5s));
    b.close();
    REQUIRE(proxy.wait_for_line(std::regex("close reason=.*calling=\"?PAGECLOSING1"), 10s));
    const auto png = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "admin-page.png";
    std::filesystem::remove(png);
    const BrowserRun run =
        run_chromium("http://127.0.0.1:" + std::to_string(*aport) + "/?refresh=0.1", tmp.path / "profile-shot", 3000, png);
    INFO("chromium console:\n" << console_lines(run.log));
    REQUIRE(run.started);
    REQUIRE_FALSE(run.timed_out);
    CHECK(run.exit_code == 0);
    CHECK(script_problems(run.log).empty());
    INFO("DOM:\n" << run.dom);
    CHECK(body_attr(run.dom, "interval") == "0.5");  // 0.1 s is below the bound
    CHECK(body_data(run.dom, "polls") >= 2);
    CHECK(table_html(run.dom, "live").find("PAGECALLING1") != std::string::npos);
    CHECK(table_html(run.dom, "closed").find("PAGECLOSING1") != std::string::npos);

    std::ifstream in(png, std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const auto size = png_size(bytes);
    REQUIRE(size);
    CHECK(size->first == 1280);
    CHECK(size->second == 900);
    CHECK(bytes.size() > 30000);  // a blank 1280x900 page compresses to a few KiB
  }

  a.close();
  x.close();
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}
