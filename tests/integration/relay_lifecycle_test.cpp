// Session lifecycle through the real isoproxy binary over real sockets:
// half-close both ways, upstream refusal and connect timeout, client reset,
// handshake and idle timeouts, session limits, the source address of the
// upstream leg, start-up errors, backpressure (bounded RSS under 1 GiB), and
// SIGTERM drain (and a second SIGTERM) under load.
//
// Every wait is on an event with a deadline (a log line, EOF, a handler
// finishing, the process exiting). The only polling, bounded, is for what no
// event announces: the proxy's fd count and RSS in /proc and the progress
// counters of the load threads. The only sleeps are deliberate pacing (a slow
// reader, gaps shorter than the idle timeout), never a wait.
//
// Handlers and helper threads never use Catch2 assertions (not thread-safe):
// they record what they saw and the test thread checks it.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <regex>
#include <string>
#include <thread>
#include <tuple>
#include <vector>

#include "codec/tpkt.h"
#include "codec/x224.h"
#include <nlohmann/json.hpp>

#include "support/http.h"
#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

namespace t = isoproxy::test;
namespace codec = isoproxy::codec;
using t::ByteVec;
using t::Conn;
using t::Millis;
using t::AsanSmallQuarantine;
using t::ProxyProcess;
using t::TestServer;
using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

namespace {

constexpr const char* kLocal = "127.0.0.1";
using Fields = std::map<std::string, std::string>;

std::string regex_escape(const std::string& s) {
  static const std::regex special(R"([.^$|()\[\]{}*+?\\])");
  return std::regex_replace(s, special, R"(\$&)");
}

// For conditions no event announces (another process's fd count): checks
// every 5 ms until the deadline.
bool eventually(const std::function<bool()>& pred, Millis timeout = 5000ms) {
  const auto deadline = Clock::now() + timeout;
  for (;;) {
    if (pred()) return true;
    if (Clock::now() >= deadline) return false;
    std::this_thread::sleep_for(5ms);
  }
}

long ms_since(Clock::time_point t0) {
  return static_cast<long>(std::chrono::duration_cast<Millis>(Clock::now() - t0).count());
}

std::unique_ptr<ProxyProcess> start_proxy(const std::string& toml, std::size_t listeners = 1) {
  auto p = std::make_unique<ProxyProcess>(toml);
  INFO(p->error());
  REQUIRE(p->started());
  const auto port = p->wait_listening(10000ms, listeners);
  INFO(p->text());
  REQUIRE(port);
  return p;
}

std::string listener_toml(const std::string& name, std::uint16_t upstream_port, const std::string& extra = "") {
  return "[[listener]]\nname = \"" + name + "\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream_port) + "\"\n" + extra + "\n";
}

std::uint16_t port_of(ProxyProcess& p, const std::string& listener) {
  const auto port = p.listen_port(listener);
  INFO(p.text());
  REQUIRE(port);
  return *port;
}

// A session's close line is found by its client address ("127.0.0.1:PORT")
// among the lines logged after a mark taken before it connected: the kernel
// reuses a client port toward another destination port (another listener)
// once it is free, so an earlier session may have logged the same address.
std::size_t mark(const ProxyProcess& p) { return p.lines().size(); }
struct Watch {
  std::string client;
  std::size_t from = 0;  // mark() before the connection was made
};
Watch watch(const Conn& c, std::size_t from) { return {c.local_address(), from}; }
std::regex close_re(const std::string& client) {
  return std::regex(R"(\[S\d+\] close .*client=)" + regex_escape(client) + "( |$)");
}
std::optional<Fields> wait_close(ProxyProcess& p, const Watch& w, Millis timeout = 10000ms) {
  if (p.process() == nullptr) return std::nullopt;
  const std::regex re = close_re(w.client);
  std::optional<std::string> found;
  p.process()->wait_until(
      t::BackgroundProcess::Stream::kErr,
      [&](const std::vector<std::string>& ls) {
        for (std::size_t i = w.from; i < ls.size(); ++i) {
          if (std::regex_search(ls[i], re)) {
            found = ls[i];
            return true;
          }
        }
        return false;
      },
      timeout);
  if (!found) return std::nullopt;
  return t::parse_fields(*found);
}
// Close lines of this session so far (exactly one once it closed).
std::size_t count_close_lines(const ProxyProcess& p, const Watch& w) {
  const auto ls = p.lines();
  const std::regex re = close_re(w.client);
  std::size_t n = 0;
  for (std::size_t i = w.from; i < ls.size(); ++i) n += std::regex_search(ls[i], re) ? 1 : 0;
  return n;
}

// "connect-refused: 127.0.0.1:9: ..." -> "connect-refused".
std::string reason_kind(const std::string& reason) { return reason.substr(0, reason.find(':')); }
std::string field(const Fields& f, const std::string& key) {
  const auto it = f.find(key);
  return it == f.end() ? std::string("<missing ") + key + ">" : it->second;
}
std::uint64_t num_field(const Fields& f, const std::string& key) {
  const auto it = f.find(key);
  if (it == f.end() || it->second.empty()) return UINT64_MAX;
  return std::stoull(it->second);
}

const ByteVec& test_cr() {
  static const ByteVec cr = t::make_cr("CALLING", "CALLED");
  return cr;
}
// The CC a responder with reserved 0 answers test_cr() with.
ByteVec test_cc() {
  const auto d = codec::decode_frame(codec::Bytes(test_cr()));
  return t::make_cc_reply(d->tpdu, 0x0029, 0x00);
}

ByteVec payload_of(std::size_t n, std::uint8_t seed) {
  ByteVec p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(seed + i * 7);
  return p;
}
ByteVec dt_of(std::size_t n, std::uint8_t seed, bool eot = true) { return t::make_dt(codec::Bytes(payload_of(n, seed)), eot); }

ByteVec concat(std::initializer_list<const ByteVec*> parts) {
  ByteVec all;
  for (const ByteVec* p : parts) all.insert(all.end(), p->begin(), p->end());
  return all;
}

// Connects to the proxy and does CR -> CC with an upstream running
// responder_handler (reserved 0): the session is established on return.
Conn open_session(std::uint16_t port) {
  Conn c = t::connect_to(kLocal, port);
  INFO(c.error());
  REQUIRE(c.valid());
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  const auto cc = c.recv_frame();
  INFO(c.error());
  REQUIRE(cc);
  CHECK(*cc == test_cc());
  return c;
}
// A DT goes through and comes back unchanged (responder_handler echoes DTs).
bool echo_ok(Conn& c, const std::string& text) {
  const ByteVec dt = t::make_dt(text);
  if (!c.send_all(codec::Bytes(dt))) return false;
  const auto back = c.recv_frame();
  return back && *back == dt;
}

t::ResponderConfig plain_responder() {
  t::ResponderConfig cfg;
  cfg.reserved = 0x00;
  return cfg;
}

// A socket bound to 127.0.0.1:<ephemeral> that does not listen: connecting
// to its port is refused, and nobody can take the port while it is held.
struct ClosedPort {
  int fd = -1;
  std::uint16_t port = 0;
  ClosedPort() {
    fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const auto sa = t::make_sockaddr(kLocal, 0);
    if (fd >= 0 && ::bind(fd, sa->get(), sa->length) == 0) {
      t::SockAddr bound;
      bound.length = sizeof bound.storage;
      if (::getsockname(fd, bound.get(), &bound.length) == 0) port = t::address_port(bound.get());
    }
  }
  ~ClosedPort() {
    if (fd >= 0) ::close(fd);
  }
};

// A loopback address that swallows SYNs: a listening socket with backlog 0
// that never accepts, its accept queue filled first. Linux then drops every
// further SYN (tcp_conn_request: accept queue full -> drop; syncookies do not
// apply), so a connect() to it neither completes nor is refused. Loopback only.
class Blackhole {
 public:
  Blackhole() {
    listen_fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const auto sa = t::make_sockaddr(kLocal, 0);
    if (listen_fd_ < 0 || ::bind(listen_fd_, sa->get(), sa->length) != 0 || ::listen(listen_fd_, 0) != 0) {
      error_ = std::string("listen: ") + std::strerror(errno);
      return;
    }
    t::SockAddr bound;
    bound.length = sizeof bound.storage;
    ::getsockname(listen_fd_, bound.get(), &bound.length);
    port_ = t::address_port(bound.get());
    const auto target = t::make_sockaddr(kLocal, port_);
    for (int i = 0; i < 32; ++i) {
      const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
      if (fd < 0) break;
      fillers_.push_back(fd);
      if (::connect(fd, target->get(), target->length) == 0) continue;
      if (errno != EINPROGRESS) {
        error_ = std::string("connect: ") + std::strerror(errno);
        return;
      }
      pollfd p{fd, POLLOUT, 0};
      if (::poll(&p, 1, 300) == 0) {
        ready_ = true;  // this SYN was dropped: so will the proxy's be
        return;
      }
    }
    error_ = "the accept queue never filled";
  }
  ~Blackhole() {
    for (const int fd : fillers_) ::close(fd);
    if (listen_fd_ >= 0) ::close(listen_fd_);
  }
  bool ready() const { return ready_; }
  const std::string& error() const { return error_; }
  std::uint16_t port() const { return port_; }
  // Makes room in the accept queue: the fillers go (those queued are
  // accepted and closed), so that the next SYN, a connect()'s retry a
  // second after the first, gets in.
  void open_up() {
    for (const int fd : fillers_) ::close(fd);
    fillers_.clear();
    pollfd p{listen_fd_, POLLIN, 0};
    while (::poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
      const int fd = ::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd < 0) break;
      ::close(fd);
    }
  }
  // The next connection accepted, within `timeout` (an invalid Conn if none).
  Conn accept(Millis timeout) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(timeout.count())) != 1) return Conn::failure("nothing to accept");
    return Conn(::accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC));
  }

 private:
  int listen_fd_ = -1;
  std::vector<int> fillers_;
  std::uint16_t port_ = 0;
  bool ready_ = false;
  std::string error_;
};

// Sends all of [p, p+n) on a socket, in 100 ms poll ticks so that `stop` and
// the deadline are honoured. `blocked` is set once a tick passes without room.
enum class SendResult { kOk, kStopped, kTimeout, kError };
SendResult send_bytes(int fd, const std::uint8_t* p, std::size_t n, const std::atomic<bool>& stop,
                      Clock::time_point deadline, std::atomic<bool>* blocked = nullptr, int* err = nullptr) {
  while (n > 0) {
    const ssize_t r = ::send(fd, p, n, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (r > 0) {
      p += r;
      n -= static_cast<std::size_t>(r);
      continue;
    }
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (stop) return SendResult::kStopped;
      if (Clock::now() > deadline) return SendResult::kTimeout;
      pollfd pf{fd, POLLOUT, 0};
      if (::poll(&pf, 1, 100) == 0 && blocked != nullptr) *blocked = true;
      continue;
    }
    if (err != nullptr) *err = errno;
    return SendResult::kError;
  }
  return SendResult::kOk;
}

// One recv with a 100 ms poll tick: >0 bytes, 0 EOF, -1 error (errno), -2 nothing yet.
ssize_t recv_tick(int fd, std::uint8_t* buf, std::size_t cap) {
  pollfd pf{fd, POLLIN, 0};
  const int rc = ::poll(&pf, 1, 100);
  if (rc == 0 || (rc < 0 && errno == EINTR)) return -2;
  const ssize_t n = ::recv(fd, buf, cap, MSG_DONTWAIT);
  if (n < 0 && (errno == EAGAIN || errno == EINTR)) return -2;
  return n;
}

// ---------------------------------------------------------------------------
// Load frames: DT number `seq` carries seq (4 bytes, big-endian) and then
// (seq + j) & 0xFF; its payload length varies with seq. The receiver checks
// every frame against this as it arrives, with the codec's framer.

// 4..max octets of payload.
std::size_t load_payload_len(std::uint64_t seq, std::size_t max) {
  return 4 + static_cast<std::size_t>((seq * 7919) % (max - 3));
}

void append_load_frame(ByteVec& out, std::uint64_t seq, std::size_t max_payload) {
  const std::size_t len = load_payload_len(seq, max_payload);
  const std::size_t total = 7 + len;
  const std::uint8_t head[7] = {0x03, 0x00, static_cast<std::uint8_t>(total >> 8), static_cast<std::uint8_t>(total & 0xFF),
                                0x02, 0xF0, 0x80};
  out.insert(out.end(), head, head + 7);
  for (int i = 3; i >= 0; --i) out.push_back(static_cast<std::uint8_t>(seq >> (8 * i)));
  for (std::size_t j = 4; j < len; ++j) out.push_back(static_cast<std::uint8_t>(seq + j));
}

struct LoadCheck {
  std::size_t max_payload = 0;  // as the sender's
  codec::TpktFramer framer;
  std::uint64_t next_seq = 0;
  std::uint64_t frames = 0;
  std::uint64_t bytes = 0;
  std::string error;

  void feed(codec::Bytes in) {
    while (error.empty()) {
      const auto r = framer.next(in);
      if (r.status == codec::TpktFramer::kNeedMore) return;
      if (r.status == codec::TpktFramer::kError) {
        error = "framer: " + std::string(codec::framer_error_name(r.error)) + " after frame " + std::to_string(frames);
        return;
      }
      check(r.frame);
      ++frames;
      bytes += r.frame.size();
    }
  }
  void check(codec::Bytes f) {
    const std::uint64_t seq = next_seq++;
    const std::size_t len = load_payload_len(seq, max_payload);
    auto bad = [&](const std::string& why) { error = "frame seq " + std::to_string(seq) + ": " + why; };
    if (f.size() != 7 + len) return bad("size " + std::to_string(f.size()) + ", expected " + std::to_string(7 + len));
    if (f[4] != 0x02 || f[5] != 0xF0 || f[6] != 0x80) return bad("not the DT header sent");
    std::uint64_t got = 0;
    for (int i = 0; i < 4; ++i) got = (got << 8) | f[7 + static_cast<std::size_t>(i)];
    if (got != (seq & 0xFFFFFFFF)) return bad("carries seq " + std::to_string(got));
    for (std::size_t j = 4; j < len; ++j) {
      if (f[7 + j] != static_cast<std::uint8_t>(seq + j)) return bad("payload differs at " + std::to_string(j));
    }
  }
};

}  // namespace

// ---------------------------------------------------------------------------
// 1. Half-close

TEST_CASE("relay-life: client half-closes first, the upstream still answers in full, reason client-closed",
          "[relay-life][half-close]") {
  const ByteVec cr = test_cr();
  const ByteVec dt = dt_of(300, 1);
  const ByteVec cc = test_cc();
  const ByteVec r1 = dt_of(100, 2, false), r2 = dt_of(4000, 3, false), r3 = dt_of(30000, 4, true);

  struct Seen {
    std::mutex mu;
    std::vector<ByteVec> frames;
    bool eof = false, reset = false, replied = false;
    std::size_t trailing = 0;
  } seen;
  TestServer upstream([&](Conn& c) {
    std::vector<ByteVec> got;
    while (auto f = c.recv_frame(10000ms)) got.push_back(*f);
    const bool eof = c.eof_seen() && !c.reset_seen();
    // Only after the client's FIN: the reply must still reach it.
    const bool replied = eof && c.send_all(codec::Bytes(concat({&cc, &r1, &r2, &r3})));
    c.shutdown_write();
    std::lock_guard<std::mutex> lk(seen.mu);
    seen.frames = std::move(got);
    seen.eof = eof;
    seen.reset = c.reset_seen();
    seen.trailing = c.buffered();
    seen.replied = replied;
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("half", upstream.port()));
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, port_of(*proxy, "half"));
  REQUIRE(c.valid());
  const Watch client = watch(c, m);

  REQUIRE(c.send_all(codec::Bytes(concat({&cr, &dt}))));
  c.shutdown_write();
  for (const ByteVec* want : {&cc, &r1, &r2, &r3}) {
    const auto got = c.recv_frame();
    INFO(c.error() << "\n" << proxy->text());
    REQUIRE(got);
    CHECK(*got == *want);
  }
  CHECK(c.wait_eof());
  CHECK_FALSE(c.reset_seen());
  CHECK(c.buffered() == 0);

  REQUIRE(upstream.wait_finished(1));
  {
    std::lock_guard<std::mutex> lk(seen.mu);
    CHECK(seen.eof);
    CHECK_FALSE(seen.reset);
    CHECK(seen.trailing == 0);
    CHECK(seen.replied);
    REQUIRE(seen.frames.size() == 2);
    CHECK(seen.frames[0] == cr);
    CHECK(seen.frames[1] == dt);
  }
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "client-closed");
  CHECK(num_field(*f, "c2u_bytes") == cr.size() + dt.size());
  CHECK(num_field(*f, "c2u_frames") == 2);
  CHECK(num_field(*f, "u2c_bytes") == cc.size() + r1.size() + r2.size() + r3.size());
  CHECK(num_field(*f, "u2c_frames") == 4);
  CHECK(count_close_lines(*proxy, client) == 1);
}

TEST_CASE("relay-life: a client that closes inside a frame is logged with what it sent of it", "[relay-life][half-close]") {
  // The octets relayed as they are; the line says how much of the frame came,
  // and before its TPKT header is whole, that no length was declared yet.
  TestServer upstream(t::responder_handler({}));
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("cut", upstream.port(), "passthrough = false"));
  const std::uint16_t port = port_of(*proxy, "cut");
  const std::vector<std::pair<ByteVec, std::string>> cases = {
      {{0x03, 0x00}, "2 of the TPKT header's 4 octets"},
      {{0x03, 0x00, 0x00, 0x0A, 0x02, 0xF0, 0x80}, "7 octets of 10 declared"},
  };
  int id = 0;
  for (const auto& [tail, says] : cases) {
    INFO(says);
    Conn c = t::connect_to(kLocal, port);
    REQUIRE(c.valid());
    REQUIRE(c.send_all(codec::Bytes(test_cr())));
    REQUIRE(c.recv_frame());
    REQUIRE(c.send_all(codec::Bytes(tail)));
    c.shutdown_write();
    ++id;
    CHECK(proxy->wait_for_line(std::regex("\\[S" + std::to_string(id) + "\\] client closed inside a frame \\(" + says +
                                          "\\); relayed as they are"),
                               5000ms));
  }
  CHECK(proxy->count_lines(std::regex("of 0 declared")) == 0);
}

TEST_CASE("relay-life: upstream half-closes first, the client still sends in full, reason upstream-closed",
          "[relay-life][half-close]") {
  const ByteVec cr = test_cr();
  const ByteVec cc = test_cc();
  const ByteVec a = dt_of(200, 5), b = dt_of(9000, 6);
  const ByteVec x = dt_of(50, 7, false), y = dt_of(20000, 8);

  struct Seen {
    std::mutex mu;
    std::vector<ByteVec> frames;
    bool eof = false, reset = false;
    std::size_t trailing = 0;
  } seen;
  TestServer upstream([&](Conn& c) {
    std::vector<ByteVec> got;
    if (auto first = c.recv_frame(10000ms)) {
      got.push_back(*first);
      c.send_all(codec::Bytes(concat({&cc, &a, &b})));
      c.shutdown_write();  // FIN first, then keep reading
      while (auto f = c.recv_frame(10000ms)) got.push_back(*f);
    }
    std::lock_guard<std::mutex> lk(seen.mu);
    seen.frames = std::move(got);
    seen.eof = c.eof_seen();
    seen.reset = c.reset_seen();
    seen.trailing = c.buffered();
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("half", upstream.port()));
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, port_of(*proxy, "half"));
  REQUIRE(c.valid());
  const Watch client = watch(c, m);

  REQUIRE(c.send_all(codec::Bytes(cr)));
  for (const ByteVec* want : {&cc, &a, &b}) {
    const auto got = c.recv_frame();
    INFO(c.error());
    REQUIRE(got);
    CHECK(*got == *want);
  }
  REQUIRE(c.wait_eof());  // the upstream's FIN, relayed
  CHECK_FALSE(c.reset_seen());
  // The other direction is still open: send after the EOF, then close.
  REQUIRE(c.send_all(codec::Bytes(concat({&x, &y}))));
  c.shutdown_write();

  REQUIRE(upstream.wait_finished(1));
  {
    std::lock_guard<std::mutex> lk(seen.mu);
    CHECK(seen.eof);
    CHECK_FALSE(seen.reset);
    CHECK(seen.trailing == 0);
    REQUIRE(seen.frames.size() == 3);
    CHECK(seen.frames[0] == cr);
    CHECK(seen.frames[1] == x);
    CHECK(seen.frames[2] == y);
  }
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "upstream-closed");
  CHECK(num_field(*f, "c2u_bytes") == cr.size() + x.size() + y.size());
  CHECK(num_field(*f, "u2c_bytes") == cc.size() + a.size() + b.size());
  CHECK(count_close_lines(*proxy, client) == 1);
}

// ---------------------------------------------------------------------------
// 2. Upstream refuses

TEST_CASE("relay-life: a refused upstream connect ends the session (connect-refused) and leaks no fd",
          "[relay-life][connect]") {
  ClosedPort closed;  // nothing listens on it
  REQUIRE(closed.port != 0);
  auto proxy = start_proxy(listener_toml("refused", closed.port));
  const auto lport = port_of(*proxy, "refused");
  const auto baseline = proxy->open_fds();
  REQUIRE(baseline);

  // Several sessions, so that one fd lost per session would show plainly.
  for (int i = 0; i < 3; ++i) {
    const auto m = mark(*proxy);
    Conn c = t::connect_to(kLocal, lport);
    REQUIRE(c.valid());
    const Watch client = watch(c, m);
    (void)c.send_all(codec::Bytes(test_cr()));  // may race the close; not needed for the outcome
    CHECK(c.wait_eof());                  // FIN or reset, promptly
    const auto f = wait_close(*proxy, client);
    INFO(proxy->text());
    REQUIRE(f);
    CHECK(reason_kind(field(*f, "reason")) == "connect-refused");
    CHECK(field(*f, "reason") ==
          "connect-refused: 127.0.0.1:" + std::to_string(closed.port) + ": ECONNREFUSED (connection refused)");
    CHECK(field(*f, "upstream") == "127.0.0.1:" + std::to_string(closed.port));
    CHECK(field(*f, "source") == "-");
    CHECK(num_field(*f, "u2c_bytes") == 0);
  }
  std::optional<std::size_t> now;
  const bool back = eventually([&] { return (now = proxy->open_fds()) == baseline; });
  INFO("fds at start " << *baseline << ", now " << now.value_or(0));
  CHECK(back);
}

TEST_CASE("relay-life: a connect() that fails at once names the upstream and counts as connect-failed",
          "[relay-life][connect]") {
  // From a loopback source to an address off this host: connect() itself
  // fails (EINVAL, or ENETUNREACH without a route), before any SYN.
  auto proxy = start_proxy("[[listener]]\nname = \"off\"\nlisten = \"127.0.0.1:0\"\nupstream = \"192.0.2.10:102\"\n"
                           "source = \"fixed\"\nsource_address = \"127.0.0.2\"\n");
  const auto lport = port_of(*proxy, "off");
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  CHECK(c.wait_eof());
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(std::regex_search(field(*f, "reason"), std::regex(R"(^connect-failed: 192\.0\.2\.10:102: E[A-Z]+ \()")));
  auto aport = t::admin_port(*proxy);
  REQUIRE(aport);
  const auto st = nlohmann::json::parse(t::http(*aport, "GET", "/stats").body);
  CHECK(st["connect_failures"] == nlohmann::json{{"connect-failed", 1}});
}

TEST_CASE("relay-life: a CC the upstream sends before the client's CR gives no cr_to_cc_ms", "[relay-life][stats]") {
  // An upstream out of order: its CC comes at once, the client's CR after
  // it. There is no CR-to-CC wait to show (the time between the two would
  // wrap around to twenty digits).
  TestServer up([](Conn& c) {
    if (!c.send_all(codec::Bytes(t::make_cc("CALLED", "CALLING")))) return;
    (void)c.wait_eof(10000ms);
  });
  REQUIRE(up.ok());
  auto proxy = start_proxy(listener_toml("early", up.port()));
  const auto lport = port_of(*proxy, "early");
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  REQUIRE(c.recv_frame(5000ms));  // the early CC, relayed
  // A millisecond of the loop's clock at least between the CC and the CR.
  std::this_thread::sleep_for(20ms);
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  c.shutdown_write();
  CHECK(c.wait_eof(5000ms));
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "c2u_frames") == "1");  // the CR, relayed after the CC
  CHECK(f->count("cr_to_cc_ms") == 0);
  const auto aport = t::admin_port(*proxy);
  REQUIRE(aport);
  const auto sessions = nlohmann::json::parse(t::http(*aport, "GET", "/sessions?closed=1").body)["sessions"];
  REQUIRE(sessions.size() == 1);
  CHECK(sessions[0]["cr_to_cc_ms"].is_null());
}

// ---------------------------------------------------------------------------
// 3. Upstream silent: connect timeout

TEST_CASE("relay-life: an upstream that never answers the SYN ends the session at connect_timeout",
          "[relay-life][connect]") {
  Blackhole hole;
  INFO(hole.error());
  REQUIRE(hole.ready());
  auto proxy = start_proxy(listener_toml("silent", hole.port(), "connect_timeout = \"500ms\""));
  const auto lport = port_of(*proxy, "silent");
  const auto baseline = proxy->open_fds();
  REQUIRE(baseline);

  const auto t0 = Clock::now();
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  const auto f = wait_close(*proxy, client, 5000ms);
  const long elapsed = ms_since(t0);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") ==
        "connect-timeout: 127.0.0.1:" + std::to_string(hole.port()) + " did not answer within 500ms");
  CHECK(field(*f, "source") == "-");
  INFO("closed after " << elapsed << " ms");
  CHECK(elapsed >= 450);
  CHECK(elapsed < 2000);
  CHECK(c.wait_eof(2000ms));
  std::optional<std::size_t> now;
  const bool back = eventually([&] { return (now = proxy->open_fds()) == baseline; });
  INFO("fds at start " << *baseline << ", now " << now.value_or(0));
  CHECK(back);
}

TEST_CASE("relay-life: a handshake_timeout shorter than connect_timeout still says connect-timeout",
          "[relay-life][connect]") {
  // Counted from accept, handshake_timeout ends the silent connect first:
  // the SYN was never answered, so it is no CC that failed to come.
  Blackhole hole;
  INFO(hole.error());
  REQUIRE(hole.ready());
  auto proxy = start_proxy(listener_toml("silent", hole.port(), "connect_timeout = \"10s\"\nhandshake_timeout = \"500ms\""));
  const auto lport = port_of(*proxy, "silent");
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  const auto f = wait_close(*proxy, client, 5000ms);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(std::regex_match(field(*f, "reason"),
                         std::regex("connect-timeout: 127\\.0\\.0\\.1:" + std::to_string(hole.port()) +
                                    R"( did not answer within \d+ms \(handshake_timeout 500ms came before connect_timeout 10s\))")));
  CHECK(proxy->wait_for_line(std::regex(R"(handshake_timeout: 500ms is not longer than connect_timeout \(10s\))"), 2s));
  // Counted as a connect failure, as connect_timeout's are (the totals at exit).
  proxy->signal(SIGTERM);
  CHECK(proxy->wait_for_line(std::regex(R"(stopped: .*connect_failures=connect-timeout=1)"), 10s));
}

TEST_CASE("relay-life: an upstream connect that lands after the session began to linger gets its FIN at once",
          "[relay-life][connect]") {
  // A malformed first frame (malformed = "close") ends the session while
  // the upstream connect is still in flight (its first SYN dropped: a full
  // accept queue), and the session lingers: FIN toward each leg that is up,
  // then wait for the peers'. When the connect lands (the SYN's retry, a
  // second later), the upstream needs that FIN as well, at once: nothing
  // is for it, and without the FIN it kept the connection, and the
  // session, until the linger's end, 2 s after the close began.
  Blackhole hole;
  INFO(hole.error());
  REQUIRE(hole.ready());
  auto proxy = start_proxy(listener_toml("late", hole.port(), "malformed = \"close\""));
  const auto lport = port_of(*proxy, "late");
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  // A DT with LI 3 (class 0 DTs have LI 2): it does not decode.
  const ByteVec bad = {0x03, 0x00, 0x00, 0x08, 0x03, 0xF0, 0x80, 0x00};
  REQUIRE(c.send_all(codec::Bytes(bad)));
  CHECK(c.wait_eof(5000ms));  // the linger's FIN: the session is closing
  // The client keeps its end open: the upstream alone decides when it ends.
  hole.open_up();
  Conn up = hole.accept(5000ms);
  INFO(proxy->text());
  REQUIRE(up.valid());
  const auto t0 = Clock::now();
  CHECK(up.wait_eof(700ms));
  INFO("the upstream saw EOF after " << ms_since(t0) << " ms");
  CHECK_FALSE(up.reset_seen());
  CHECK(up.buffered() == 0);  // not a byte: the bad frame is not relayed
  up.close();
  c.close();
  const auto f = wait_close(*proxy, client, 5000ms);
  REQUIRE(f);
  CHECK(field(*f, "reason").rfind("malformed-frame: ", 0) == 0);
}

// ---------------------------------------------------------------------------
// 4. Client reset mid-frame

TEST_CASE("relay-life: a client reset in the middle of a frame closes the upstream leg (client-reset)",
          "[relay-life][reset]") {
  t::FrameLog frames;
  struct Seen {
    std::mutex mu;
    bool eof = false, reset = false;
    std::string error;
  } seen;
  TestServer upstream([&](Conn& c) {
    const ByteVec cc = test_cc();
    while (auto f = c.recv_frame(10000ms)) {
      frames.add(*f);
      if (frames.size() == 1) c.send_all(codec::Bytes(cc));
    }
    std::lock_guard<std::mutex> lk(seen.mu);
    seen.eof = c.eof_seen();
    seen.reset = c.reset_seen();
    seen.error = c.error();
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("rst", upstream.port()));
  const auto lport = port_of(*proxy, "rst");
  const auto baseline = proxy->open_fds();
  REQUIRE(baseline);

  const auto m = mark(*proxy);
  Conn c = open_session(lport);
  const Watch client = watch(c, m);
  const ByteVec whole = dt_of(500, 9);
  REQUIRE(c.send_all(codec::Bytes(whole)));
  REQUIRE(frames.wait_size(2));  // the session carries frames
  const ByteVec next = dt_of(500, 10);
  c.set_nodelay();
  REQUIRE(c.send_all(codec::Bytes(next.data(), next.size() / 2)));  // half a TPKT
  c.close_with_reset();

  REQUIRE(upstream.wait_finished(1));  // the upstream leg was closed
  {
    std::lock_guard<std::mutex> lk(seen.mu);
    INFO("upstream saw: " << seen.error);
    CHECK(seen.eof);
  }
  const auto got = frames.frames();
  REQUIRE(got.size() == 2);
  CHECK(got[0] == test_cr());
  CHECK(got[1] == whole);
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "client-reset");
  CHECK(count_close_lines(*proxy, client) == 1);
  std::optional<std::size_t> now;
  const bool back = eventually([&] { return (now = proxy->open_fds()) == baseline; });
  INFO("fds at start " << *baseline << ", now " << now.value_or(0));
  CHECK(back);
}

// ---------------------------------------------------------------------------
// 5. Handshake and idle timeouts

TEST_CASE("relay-life: handshake_timeout ends a session that never completes CR/CC", "[relay-life][timeout]") {
  std::atomic<int> upstream_eofs{0};
  TestServer upstream([&](Conn& c) {
    // Never answers; reads (and drops) until the proxy closes.
    while (!c.eof_seen()) {
      if (!c.recv_some(65536, 10000ms) && !c.eof_seen()) return;
    }
    ++upstream_eofs;
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("hs", upstream.port(), "handshake_timeout = \"500ms\""));
  const auto lport = port_of(*proxy, "hs");

  SECTION("nothing at all is sent: no CR") {
    const auto t0 = Clock::now();
    const auto m = mark(*proxy);
    Conn c = t::connect_to(kLocal, lport);
    REQUIRE(c.valid());
    const Watch client = watch(c, m);
    const auto f = wait_close(*proxy, client, 5000ms);
    const long elapsed = ms_since(t0);
    INFO(proxy->text());
    REQUIRE(f);
    CHECK(field(*f, "reason") == "handshake-timeout: no CR within 500ms");
    INFO("closed after " << elapsed << " ms");
    CHECK(elapsed >= 450);
    CHECK(elapsed < 3000);
    CHECK(c.wait_eof(2000ms));
  }
  SECTION("a CR that is never answered: no CC or DR") {
    const auto t0 = Clock::now();
    const auto m = mark(*proxy);
    Conn c = t::connect_to(kLocal, lport);
    REQUIRE(c.valid());
    const Watch client = watch(c, m);
    REQUIRE(c.send_all(codec::Bytes(test_cr())));
    const auto f = wait_close(*proxy, client, 5000ms);
    const long elapsed = ms_since(t0);
    INFO(proxy->text());
    REQUIRE(f);
    CHECK(field(*f, "reason") == "handshake-timeout: no CC or DR within 500ms");
    CHECK(num_field(*f, "c2u_bytes") == test_cr().size());
    INFO("closed after " << elapsed << " ms");
    CHECK(elapsed >= 450);
    CHECK(elapsed < 3000);
    CHECK(c.wait_eof(2000ms));
  }
  CHECK(upstream.wait_finished(1));
  CHECK(upstream_eofs.load() == 1);
}

TEST_CASE("relay-life: a DR that neither peer follows with a close ends at handshake_timeout, which says so",
          "[relay-life][timeout]") {
  TestServer upstream([&](Conn& c) {
    // Refuses the CR with a DR, then keeps the connection open.
    if (!c.recv_frame(10000ms) || !c.send_all(codec::Bytes(t::make_dr(0x01, 0x0001, 0x0029)))) return;
    while (!c.eof_seen()) {
      if (!c.recv_some(65536, 10000ms) && !c.eof_seen()) return;
    }
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("dr", upstream.port(), "handshake_timeout = \"500ms\""));
  const auto lport = port_of(*proxy, "dr");
  const auto m = mark(*proxy);
  Conn c = t::connect_to(kLocal, lport);
  REQUIRE(c.valid());
  const Watch client = watch(c, m);
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  const auto dr = c.recv_frame(5000ms);
  REQUIRE(dr);  // relayed to the client, which keeps the connection open too
  const auto f = wait_close(*proxy, client, 5000ms);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "handshake-timeout: a DR refused the connection and neither peer closed within 500ms");
  CHECK(c.wait_eof(2000ms));
}

TEST_CASE("relay-life: idle_timeout ends an established session once no byte moves", "[relay-life][timeout]") {
  TestServer upstream(t::responder_handler(plain_responder()));
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("idle", upstream.port(), "idle_timeout = \"500ms\""));
  const auto m = mark(*proxy);
  Conn c = open_session(port_of(*proxy, "idle"));
  const Watch client = watch(c, m);

  // Traffic every 250 ms for well over the timeout keeps the session open
  // (the pacing is the point here, not a wait).
  for (int i = 0; i < 5; ++i) {
    std::this_thread::sleep_for(250ms);
    INFO("echo " << i << ": " << c.error() << "\n" << proxy->text());
    REQUIRE(echo_ok(c, "keepalive " + std::to_string(i)));
  }
  CHECK(count_close_lines(*proxy, client) == 0);

  const auto t0 = Clock::now();  // the last byte moved just before
  const auto f = wait_close(*proxy, client, 5000ms);
  const long elapsed = ms_since(t0);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "idle-timeout: no byte either way for 500ms");
  INFO("closed " << elapsed << " ms after the last byte");
  CHECK(elapsed >= 400);
  CHECK(elapsed < 3000);
  CHECK(c.wait_eof(2000ms));
}

TEST_CASE("relay-life: half a frame held when idle_timeout closes is shown live and in the close line",
          "[relay-life][timeout][stats]") {
  // The client sends the start of a DT and goes quiet: the proxy holds
  // those octets (it relays whole frames) and, at the close, never relays
  // them. They are read all the same: /sessions shows them held, and the
  // close line says how many the close dropped.
  std::atomic<std::size_t> upstream_got{0};
  TestServer upstream([&](Conn& c) {
    const auto cr = c.recv_frame(10000ms);
    if (!cr || !c.send_all(codec::Bytes(test_cc()))) return;
    (void)c.wait_eof(10000ms);
    upstream_got = cr->size() + c.buffered();
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy(listener_toml("half", upstream.port(), "idle_timeout = \"3s\"\npassthrough = false\npark_after = \"0\""));
  const auto aport = t::admin_port(*proxy);
  REQUIRE(aport);
  const auto m = mark(*proxy);
  Conn c = open_session(port_of(*proxy, "half"));
  const Watch client = watch(c, m);
  const ByteVec dt = dt_of(50, 9);
  REQUIRE(c.send_all(codec::Bytes(dt.data(), 20)));
  nlohmann::json live;
  const bool seen = eventually([&] {
    live = nlohmann::json::parse(t::http(*aport, "GET", "/sessions").body)["sessions"];
    return live.size() == 1 && live[0]["to_upstream"]["held_bytes"] == 20;
  });
  INFO(live.dump());
  CHECK(seen);
  const auto f = wait_close(*proxy, client, 10000ms);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "idle-timeout: no byte either way for 3s");
  CHECK(num_field(*f, "c2u_bytes") == test_cr().size());
  CHECK(num_field(*f, "c2u_held") == 20);
  CHECK(f->count("u2c_held") == 0);
  CHECK(upstream.wait_finished(1, 5000ms));
  CHECK(upstream_got == test_cr().size());  // the half frame never went out
  const auto closed = nlohmann::json::parse(t::http(*aport, "GET", "/sessions?state=closed").body)["sessions"];
  REQUIRE(closed.size() == 1);
  CHECK(closed[0]["to_upstream"]["held_bytes"] == 20);
  CHECK(closed[0]["to_client"]["held_bytes"] == 0);
}

// ---------------------------------------------------------------------------
// 6. Session limits

TEST_CASE("relay-life: global and per-listener max_sessions refuse the connection beyond, cleanly",
          "[relay-life][limits]") {
  TestServer upstream(t::responder_handler(plain_responder()));
  REQUIRE(upstream.ok());
  // Listener a: at most 1 session; listener b: only the global limit of 2.
  auto proxy = start_proxy("[global]\nmax_sessions = 2\n\n" +
                               listener_toml("a", upstream.port(), "max_sessions = 1") +
                               listener_toml("b", upstream.port()),
                           2);
  const auto pa = port_of(*proxy, "a");
  const auto pb = port_of(*proxy, "b");

  auto expect_refused = [&](std::uint16_t port, const std::string& listener, const std::string& why) {
    const auto m = mark(*proxy);
    Conn r = t::connect_to(kLocal, port);
    REQUIRE(r.valid());
    const Watch who = watch(r, m);
    const auto t0 = Clock::now();
    CHECK(r.wait_eof(2000ms));  // accepted and closed at once, not left hanging in the backlog
    CHECK_FALSE(r.reset_seen());
    CHECK(ms_since(t0) < 1000);
    const auto line = proxy->wait_for_line(
        std::regex("refused " + regex_escape(who.client) + " on listener " + listener + ": " + regex_escape(why) + "$"), 5000ms);
    INFO(proxy->text());
    CHECK(line);
    CHECK(count_close_lines(*proxy, who) == 0);  // never became a session
  };

  const auto m_a1 = mark(*proxy);
  Conn a1 = open_session(pa);
  expect_refused(pa, "a", "listener limit of 1 sessions reached");
  const auto m_b1 = mark(*proxy);
  Conn b1 = open_session(pb);
  expect_refused(pb, "b", "global limit of 2 sessions reached");

  // The sessions in place were not disturbed, and the refused ones never reached the upstream.
  CHECK(echo_ok(a1, "a1 still here"));
  CHECK(echo_ok(b1, "b1 still here"));
  CHECK(upstream.accepted_count() == 2);

  // Once a1 ends, listener a takes a new session.
  const Watch a1_addr = watch(a1, m_a1);
  a1.shutdown_write();
  CHECK(a1.wait_eof());
  const auto fa = wait_close(*proxy, a1_addr);
  INFO(proxy->text());
  REQUIRE(fa);
  CHECK(field(*fa, "reason") == "client-closed");
  Conn a3 = open_session(pa);
  CHECK(echo_ok(a3, "a3 accepted"));

  // Once b1 ends, the global slot is free again for listener b.
  const Watch b1_addr = watch(b1, m_b1);
  b1.shutdown_write();
  CHECK(b1.wait_eof());
  REQUIRE(wait_close(*proxy, b1_addr));
  Conn b3 = open_session(pb);
  CHECK(echo_ok(b3, "b3 accepted"));
  CHECK(echo_ok(a3, "a3 still here"));
  CHECK(upstream.accepted_count() == 4);
}

// ---------------------------------------------------------------------------
// 7. Source address of the upstream leg; start-up errors

TEST_CASE("relay-life: source = fixed binds every upstream connection to source_address, auto uses the kernel's",
          "[relay-life][source]") {
  TestServer up2(t::responder_handler(plain_responder()));
  TestServer up3(t::responder_handler(plain_responder()));
  TestServer up_auto(t::responder_handler(plain_responder()));
  REQUIRE(up2.ok());
  REQUIRE(up3.ok());
  REQUIRE(up_auto.ok());
  auto proxy = start_proxy(listener_toml("fixed2", up2.port(), "source = \"fixed\"\nsource_address = \"127.0.0.2\"") +
                               listener_toml("fixed3", up3.port(), "source = \"fixed\"\nsource_address = \"127.0.0.3\"") +
                               listener_toml("auto", up_auto.port(), "source = \"auto\""),
                           3);
  const std::vector<std::tuple<std::string, TestServer*, std::string>> cases = {
      {"fixed2", &up2, "127.0.0.2"}, {"fixed3", &up3, "127.0.0.3"}, {"auto", &up_auto, "127.0.0.1"}};
  constexpr int kPerListener = 4;
  for (const auto& [name, server, ip] : cases) {
    const auto port = port_of(*proxy, name);
    for (int i = 0; i < kPerListener; ++i) {
      const auto m = mark(*proxy);
      Conn c = open_session(port);
      CHECK(echo_ok(c, name + " " + std::to_string(i)));
      const Watch client = watch(c, m);
      c.shutdown_write();
      CHECK(c.wait_eof());
      const auto f = wait_close(*proxy, client);
      INFO(proxy->text());
      REQUIRE(f);
      CHECK(field(*f, "reason") == "client-closed");
      CHECK(field(*f, "source").rfind(ip + ":", 0) == 0);
    }
    INFO("listener " << name);
    CHECK(server->peer_ips() == std::vector<std::string>(kPerListener, ip));
  }
}

TEST_CASE("relay-life: start-up fails with exit 1 naming the address: non-local source, listen port in use",
          "[relay-life][source][startup]") {
  SECTION("source_address that is not an address of this host") {
    TestServer upstream(t::echo_handler());
    REQUIRE(upstream.ok());
    ProxyProcess proxy(listener_toml("far", upstream.port(), "source = \"fixed\"\nsource_address = \"192.0.2.77\""));
    REQUIRE(proxy.started());
    CHECK(proxy.wait_exit() == 1);
    INFO(proxy.text());
    CHECK(proxy.count_lines(std::regex(R"(error .*192\.0\.2\.77.*not an address of this host)")) == 1);
    CHECK(proxy.count_lines(std::regex("listening on")) == 0);
  }
  SECTION("a tsap-route's source_address that is not an address of this host") {
    TestServer upstream(t::echo_handler());
    REQUIRE(upstream.ok());
    const std::string up = "127.0.0.1:" + std::to_string(upstream.port());
    ProxyProcess proxy("[[listener]]\nname = \"routed\"\nlisten = \"127.0.0.1:0\"\nfilters = [\"route\"]\n\n"
                       "[filter.route]\nkind = \"tsap-route\"\ndefault = \"" + up + "\"\n\n[[filter.route.route]]\n"
                       "name = \"far\"\ncalled = [\"FAR\"]\nupstream = \"" + up +
                       "\"\nsource = \"fixed\"\nsource_address = \"192.0.2.78\"\n");
    REQUIRE(proxy.started());
    CHECK(proxy.wait_exit() == 1);
    INFO(proxy.text());
    CHECK(proxy.count_lines(std::regex(R"(error .*filter route route far: source_address 192\.0\.2\.78 is not an address of this host)")) == 1);
    CHECK(proxy.count_lines(std::regex("listening on")) == 0);
  }
  SECTION("listen address already in use") {
    TestServer holder(t::echo_handler());  // holds 127.0.0.1:PORT in LISTEN
    REQUIRE(holder.ok());
    const std::string taken = "127.0.0.1:" + std::to_string(holder.port());
    ProxyProcess proxy("[[listener]]\nname = \"taken\"\nlisten = \"" + taken + "\"\nupstream = \"127.0.0.1:1\"\n");
    REQUIRE(proxy.started());
    CHECK(proxy.wait_exit() == 1);
    INFO(proxy.text());
    CHECK(proxy.count_lines(std::regex("error .*" + regex_escape(taken) + ".*in use")) == 1);
    CHECK(proxy.count_lines(std::regex("listening on")) == 0);
    CHECK(holder.accepted_count() == 0);
  }
  SECTION("a privileged port without the privilege") {
    // Cannot be tested as root (binding below 1024 just works), nor where
    // unprivileged users may bind low ports (net.ipv4.ip_unprivileged_port_start).
    int start = 1024;
    std::ifstream("/proc/sys/net/ipv4/ip_unprivileged_port_start") >> start;
    if (::geteuid() == 0 || start <= 102) {
      WARN("skipped: a port below 1024 needs no privilege here (root, or ip_unprivileged_port_start = " << start << ")");
      return;
    }
    ProxyProcess proxy("[[listener]]\nname = \"low\"\nlisten = \"127.0.0.1:102\"\nupstream = \"127.0.0.1:1\"\n");
    REQUIRE(proxy.started());
    CHECK(proxy.wait_exit() == 1);
    INFO(proxy.text());
    CHECK(proxy.count_lines(std::regex(R"(error .*127\.0\.0\.1:102.*below 1024)")) == 1);
  }
}

// ---------------------------------------------------------------------------
// 8. Backpressure

namespace {

constexpr std::size_t kBpPayload = 8192;
constexpr std::size_t kBpFrame = kBpPayload + 7;  // 8199 octets on the wire
constexpr std::uint64_t kBpFrames = (std::uint64_t{1} << 30) / kBpPayload;  // 1 GiB of payload
constexpr std::size_t kRssBoundKiB = 32 * 1024;  // the proxy may grow by at most 32 MiB

// Frame i: DT header, i (4 bytes, big-endian), then a pseudo-random pattern
// from offset i % 251: a lost, repeated or reordered frame shows.
struct BpFrames {
  ByteVec pattern;
  BpFrames() : pattern(251 + kBpPayload) {
    std::uint32_t x = 0x12345678;
    for (auto& b : pattern) {
      x = x * 1664525u + 1013904223u;
      b = static_cast<std::uint8_t>(x >> 24);
    }
  }
  void fill(std::uint64_t i, std::uint8_t* out) const {
    const std::uint8_t head[7] = {0x03, 0x00, static_cast<std::uint8_t>(kBpFrame >> 8),
                                  static_cast<std::uint8_t>(kBpFrame & 0xFF), 0x02, 0xF0, 0x80};
    std::memcpy(out, head, 7);
    for (int k = 0; k < 4; ++k) out[7 + k] = static_cast<std::uint8_t>(i >> (24 - 8 * k));
    std::memcpy(out + 11, pattern.data() + i % 251, kBpPayload - 4);
  }
};

// Compares the stream as it arrives with what was sent; stores nothing.
struct BpCheck {
  explicit BpCheck(const BpFrames& g) : gen(g) {}
  const BpFrames& gen;
  ByteVec expect = ByteVec(kBpFrame);
  std::uint64_t frame = 0;
  std::size_t off = 0;
  std::uint64_t bytes = 0;
  std::string error;

  void feed(const std::uint8_t* p, std::size_t n) {
    while (n > 0 && error.empty()) {
      if (frame >= kBpFrames) {
        error = "bytes after the last frame";
        return;
      }
      if (off == 0) gen.fill(frame, expect.data());
      const std::size_t take = std::min(n, kBpFrame - off);
      if (std::memcmp(p, expect.data() + off, take) != 0) {
        std::size_t k = 0;
        while (p[k] == expect[off + k]) ++k;
        error = "frame " + std::to_string(frame) + " differs at octet " + std::to_string(off + k) + " (stream offset " +
                std::to_string(bytes + k) + ")";
        return;
      }
      p += take;
      n -= take;
      off += take;
      bytes += take;
      if (off == kBpFrame) {
        off = 0;
        ++frame;
      }
    }
  }
};

}  // namespace

TEST_CASE("relay-life: backpressure: 1 GiB into a slow reader keeps the proxy's RSS bounded and arrives byte-exact",
          "[relay-life][backpressure]") {
  // Framed (libuv's write queue and high_water) and in pass-through (the pipe).
  const bool passthrough = GENERATE(false, true);
  INFO("passthrough = " << passthrough);
  const BpFrames gen;
  {
    // The hand-built frame is what the codec's encoder makes.
    ByteVec f(kBpFrame);
    gen.fill(77, f.data());
    REQUIRE(t::make_dt(codec::Bytes(f.data() + 7, kBpPayload)) == f);
  }
  const auto start = Clock::now();
  const auto deadline = start + 120s;  // the whole transfer, or the test fails

  struct Up {
    std::mutex mu;
    BpCheck check;
    bool eof = false;
    std::string error;
    long slow_ms = 0;
    explicit Up(const BpFrames& g) : check(g) {}
  } up(gen);
  TestServer upstream([&](Conn& c) {
    // Small, so that the proxy's writes back up quickly; not smaller. On
    // loopback (64 KiB MTU) the proxy's MSS toward us is 32 KiB (half the
    // window it first saw): a buffer whose whole window stays under that
    // (16 KiB gave 31 KiB) stalls TCP itself, the sender waiting for a
    // window of one MSS and only zero-window probes trickling through.
    c.set_rcvbuf(64 * 1024);
    const auto cr = c.recv_frame(10000ms);
    if (!cr || *cr != test_cr() || !c.send_all(codec::Bytes(test_cc()))) {
      std::lock_guard<std::mutex> lk(up.mu);
      up.error = "no CR: " + c.error();
      return;
    }
    BpCheck& check = up.check;  // only this thread touches it until the handler ends
    const ByteVec early = c.take_buffered();
    check.feed(early.data(), early.size());
    std::vector<std::uint8_t> buf(1 << 20);
    const int fd = c.fd();
    bool eof = false;
    std::string error;
    // Slow phase: 64 KiB, then a 10 ms pause, for ~2 s from the first DT byte.
    const auto slow_until = Clock::now() + 2s;
    while (Clock::now() < slow_until && check.error.empty() && !eof) {
      std::size_t got = 0;
      while (got < 64 * 1024 && !eof) {
        pollfd p{fd, POLLIN, 0};
        if (::poll(&p, 1, t::detail::remaining_ms(deadline)) <= 0) {
          error = "timeout in the slow phase";
          eof = true;
          break;
        }
        const ssize_t n = ::recv(fd, buf.data(), 64 * 1024 - got, 0);
        if (n <= 0) {
          eof = true;
          if (n < 0) error = std::string("recv: ") + std::strerror(errno);
          break;
        }
        check.feed(buf.data(), static_cast<std::size_t>(n));
        got += static_cast<std::size_t>(n);
      }
      std::this_thread::sleep_for(10ms);  // the slow reader's pause (pacing, not a wait)
    }
    const long slow_ms = ms_since(slow_until - 2s);
    // Fast phase: as fast as possible until EOF.
    while (!eof && check.error.empty()) {
      pollfd p{fd, POLLIN, 0};
      if (::poll(&p, 1, t::detail::remaining_ms(deadline)) <= 0) {
        error = "timeout after " + std::to_string(check.bytes) + " bytes";
        break;
      }
      const ssize_t n = ::recv(fd, buf.data(), buf.size(), 0);
      if (n <= 0) {
        eof = n == 0;
        if (n < 0) error = std::string("recv: ") + std::strerror(errno);
        break;
      }
      check.feed(buf.data(), static_cast<std::size_t>(n));
    }
    c.shutdown_write();
    std::lock_guard<std::mutex> lk(up.mu);
    up.eof = eof && error.empty();
    up.error = error;
    up.slow_ms = slow_ms;
  });
  REQUIRE(upstream.ok());
  const AsanSmallQuarantine small_quarantine;  // the RSS bound below
  auto proxy = start_proxy(listener_toml("bp", upstream.port(), passthrough ? "" : "passthrough = false"));
  const auto lport = port_of(*proxy, "bp");
  const auto baseline = proxy->rss_kib();
  REQUIRE(baseline);

  const auto aport = t::admin_port(*proxy);
  REQUIRE(aport);
  const auto m = mark(*proxy);
  Conn c = open_session(lport);
  const Watch client = watch(c, m);
  struct Sent {
    std::atomic<std::uint64_t> frames{0};
    std::atomic<bool> done{false};
    std::atomic<bool> switched{false};  // pass-through began after the first batch
    std::string error;  // written before `done`
  } sent;
  const std::atomic<bool> never{false};
  constexpr std::size_t kBatch = 32;  // ~256 KiB per send
  std::thread sender([&] {
    ByteVec batch(kBatch * kBpFrame);
    for (std::uint64_t i = 0; i < kBpFrames; i += kBatch) {
      if (passthrough && i == kBatch) {
        // Pass-through begins at a frame boundary with nothing queued, which a
        // backed-up stream rarely offers: let the first batch through and the
        // switch happen before the bulk (polled: no event announces it).
        const auto until = Clock::now() + 10s;
        while (!sent.switched && Clock::now() < until) {
          if (t::http(*aport, "GET", "/sessions").body.find("\"passthrough\":true") != std::string::npos) {
            sent.switched = true;
          } else {
            std::this_thread::sleep_for(20ms);
          }
        }
      }
      const std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(kBatch, kBpFrames - i));
      for (std::size_t k = 0; k < n; ++k) gen.fill(i + k, batch.data() + k * kBpFrame);
      int err = 0;
      const auto r = send_bytes(c.fd(), batch.data(), n * kBpFrame, never, deadline, nullptr, &err);
      if (r != SendResult::kOk) {
        sent.error = r == SendResult::kTimeout ? "send timed out" : std::string("send: ") + std::strerror(err);
        break;
      }
      sent.frames += n;
    }
    c.shutdown_write();
    sent.done = true;
  });

  // Sample the RSS while the transfer runs (the handler finishing is the event).
  std::size_t peak = *baseline;
  std::size_t samples = 0;
  while (!upstream.wait_finished(1, 20ms) && Clock::now() < deadline) {
    if (const auto r = proxy->rss_kib()) {
      peak = std::max(peak, *r);
      ++samples;
    }
  }
  sender.join();
  const long total_ms = ms_since(start);
  std::lock_guard<std::mutex> lk(up.mu);
  INFO("RSS baseline " << *baseline << " KiB, peak " << peak << " KiB (+" << (peak - *baseline) << " KiB, bound +"
                       << kRssBoundKiB << " KiB), " << samples << " samples; " << total_ms << " ms in all, slow phase "
                       << up.slow_ms << " ms; received " << up.check.bytes << " bytes");
  WARN("backpressure: RSS baseline " << *baseline << " KiB, peak " << peak << " KiB (+" << (peak - *baseline)
                                     << " KiB); 1 GiB in " << total_ms << " ms");
  CHECK(sent.error.empty());
  CHECK(sent.frames.load() == kBpFrames);
  CHECK(up.error.empty());
  CHECK(up.check.error.empty());
  CHECK(up.check.frame == kBpFrames);
  CHECK(up.check.off == 0);
  CHECK(up.check.bytes == kBpFrames * kBpFrame);
  CHECK(up.eof);
  CHECK(samples > 10);
  CHECK(peak - *baseline < kRssBoundKiB);
  CHECK(total_ms < 120000);

  CHECK(c.wait_eof(10000ms));
  const auto f = wait_close(*proxy, client);
  INFO(proxy->text());
  REQUIRE(f);
  CHECK(field(*f, "reason") == "client-closed");
  CHECK(num_field(*f, "c2u_bytes") == test_cr().size() + kBpFrames * kBpFrame);
  if (passthrough) {
    // The CR and the first batch framed, then the rest spliced uncounted.
    CHECK(sent.switched);
    CHECK(num_field(*f, "c2u_frames") <= 1 + kBatch);
  } else {
    CHECK(num_field(*f, "c2u_frames") == kBpFrames + 1);
  }
  CHECK(field(*f, "passthrough") == (passthrough ? "1" : "<missing passthrough>"));
}

// ---------------------------------------------------------------------------
// 9-10. SIGTERM

namespace {

// One side's view of a load session: frames checked as they arrive.
struct LoadSide {
  std::mutex mu;
  LoadCheck check;
  std::uint64_t first_bytes = 0;  // the CR or CC, counted toward the proxy's totals
  bool eof = false;
  bool reset = false;
  std::string error;
  std::string send_error;
  std::atomic<std::uint64_t> progress{0};  // frames checked so far
};

// Reads fd until EOF or error (or stop), checking load frames.
void read_load(int fd, LoadSide& side, const std::atomic<bool>& stop) {
  std::vector<std::uint8_t> buf(256 * 1024);
  while (!stop) {
    const ssize_t n = recv_tick(fd, buf.data(), buf.size());
    if (n == -2) continue;
    std::lock_guard<std::mutex> lk(side.mu);
    if (n == 0) {
      side.eof = true;
      return;
    }
    if (n < 0) {
      side.eof = true;
      side.reset = errno == ECONNRESET;
      if (!side.reset) side.error = std::string("recv: ") + std::strerror(errno);
      return;
    }
    side.check.feed(codec::Bytes(buf.data(), static_cast<std::size_t>(n)));
    side.progress = side.check.frames;
    if (!side.check.error.empty()) return;
  }
}

// Writes load frames until the connection fails (or stop).
void write_load(int fd, LoadSide& side, const std::atomic<bool>& stop, Clock::time_point deadline,
                std::size_t max_payload) {
  std::uint64_t seq = 0;
  ByteVec batch;
  while (!stop) {
    batch.clear();
    for (int k = 0; k < 8; ++k) append_load_frame(batch, seq++, max_payload);
    int err = 0;
    const auto r = send_bytes(fd, batch.data(), batch.size(), stop, deadline, nullptr, &err);
    if (r == SendResult::kOk) continue;
    std::lock_guard<std::mutex> lk(side.mu);
    if (r == SendResult::kError) side.send_error = std::strerror(err);
    if (r == SendResult::kTimeout) side.send_error = "timeout";
    return;
  }
}

}  // namespace

TEST_CASE("relay-life: SIGTERM under load drains every session at a frame boundary and exits 0",
          "[relay-life][drain]") {
  constexpr int kSessions = 4;
  constexpr long kDrainMs = 3000;
  // Both sizes are ordinary RFC 1006 traffic: X.400 MTAs negotiate 2048-octet
  // TPDUs; the TPKT allows 65535 (max_frame's default).
  std::size_t max_payload = 0;
  SECTION("DTs of 4..3004 octets of payload") { max_payload = 3004; }
  SECTION("DTs of 4..60004 octets of payload") { max_payload = 60004; }
  const auto deadline = Clock::now() + 60s;
  std::atomic<bool> stop{false};

  // The upstream: answers the CR, then streams load frames to the client while
  // checking the client's. Keyed by the proxy's source address (the close line's source=).
  std::mutex ups_mu;
  std::map<std::string, std::unique_ptr<LoadSide>> ups;
  TestServer upstream([&](Conn& c) {
    LoadSide* side;
    {
      std::lock_guard<std::mutex> lk(ups_mu);
      side = (ups[c.peer_address()] = std::make_unique<LoadSide>()).get();
      side->check.max_payload = max_payload;
    }
    const auto cr = c.recv_frame(10000ms);
    if (!cr || *cr != test_cr() || !c.send_all(codec::Bytes(test_cc()))) {
      std::lock_guard<std::mutex> lk(side->mu);
      side->error = "no CR: " + c.error();
      return;
    }
    {
      std::lock_guard<std::mutex> lk(side->mu);
      side->first_bytes = cr->size();
      const ByteVec early = c.take_buffered();
      side->check.feed(codec::Bytes(early));
    }
    LoadSide out_dummy;  // the writer's send errors only
    std::thread writer([&] { write_load(c.fd(), out_dummy, stop, deadline, max_payload); });
    read_load(c.fd(), *side, stop);
    // The proxy closed this leg: stop writing to it.
    ::shutdown(c.fd(), SHUT_WR);
    writer.join();
  });
  REQUIRE(upstream.ok());
  // Frame boundaries are known only while framing: pass-through (which stops
  // at a quiet point instead, see passthrough_test.cpp) is off.
  auto proxy = start_proxy("[global]\ndrain_timeout = \"" + std::to_string(kDrainMs) + "ms\"\n\n" +
                           listener_toml("load", upstream.port(), "passthrough = false"));
  const auto lport = port_of(*proxy, "load");

  struct Client {
    Conn conn;
    Watch addr;
    LoadSide down;  // what the client receives
    LoadSide up;    // the client's send errors
    std::thread reader, writer;
  };
  std::vector<std::unique_ptr<Client>> clients;
  struct Joiner {
    std::atomic<bool>& stop;
    std::vector<std::unique_ptr<Client>>& cs;
    ~Joiner() {
      stop = true;
      for (auto& c : cs) {
        if (c->reader.joinable()) c->reader.join();
        if (c->writer.joinable()) c->writer.join();
      }
    }
  } joiner{stop, clients};

  for (int i = 0; i < kSessions; ++i) {
    auto cl = std::make_unique<Client>();
    const auto m = mark(*proxy);
    cl->conn = open_session(lport);
    cl->addr = watch(cl->conn, m);
    cl->down.first_bytes = test_cc().size();
    cl->down.check.max_payload = max_payload;
    // The upstream streams right after its CC: what came with it is load already.
    const ByteVec early = cl->conn.take_buffered();
    cl->down.check.feed(codec::Bytes(early));
    Client* raw = cl.get();
    cl->reader = std::thread([raw, &stop] { read_load(raw->conn.fd(), raw->down, stop); });
    cl->writer = std::thread(
        [raw, &stop, deadline, max_payload] { write_load(raw->conn.fd(), raw->up, stop, deadline, max_payload); });
    clients.push_back(std::move(cl));
  }
  // Load in both directions on every session before the signal.
  const bool loaded = eventually(
      [&] {
        std::lock_guard<std::mutex> lk(ups_mu);
        if (ups.size() < kSessions) return false;
        for (auto& [k, s] : ups) {
          if (s->progress < 500) return false;
        }
        for (auto& c : clients) {
          if (c->down.progress < 500) return false;
        }
        return true;
      },
      20000ms);
  INFO(proxy->text());
  {
    std::lock_guard<std::mutex> lk(ups_mu);
    std::string progress;
    for (auto& [k, s] : ups) {
      std::lock_guard<std::mutex> lk2(s->mu);
      progress += " upstream " + k + ": " + std::to_string(s->progress.load()) + " frames " + s->error + s->check.error;
    }
    for (auto& c : clients) {
      std::lock_guard<std::mutex> lk2(c->down.mu);
      progress += " client " + c->addr.client + ": " + std::to_string(c->down.progress.load()) + " frames " + c->down.error +
                  c->down.check.error + c->up.send_error;
    }
    INFO("progress:" << progress);
    REQUIRE(loaded);
  }

  const auto t0 = Clock::now();
  REQUIRE(proxy->signal(SIGTERM));
  const auto code = proxy->wait_exit(Millis(kDrainMs + 5000));
  const long elapsed = ms_since(t0);
  INFO(proxy->text());
  CHECK(proxy->count_lines(std::regex("SIGTERM: draining 4 sessions")) == 1);
  REQUIRE(code);
  CHECK(*code == 0);
  INFO("exited " << elapsed << " ms after SIGTERM");
  CHECK(elapsed < kDrainMs + 3000);

  // Every reader sees its connection end (the proxy is gone) and returns by
  // itself, having read all there was; then the writers are stopped.
  for (auto& c : clients) c->reader.join();
  CHECK(upstream.wait_finished(kSessions, 5000ms));
  stop = true;
  for (auto& c : clients) c->writer.join();
  upstream.stop();

  std::lock_guard<std::mutex> lk(ups_mu);
  REQUIRE(ups.size() == kSessions);
  for (auto& c : clients) {
    INFO("client " << c->addr.client);
    const auto f = wait_close(*proxy, c->addr, 100ms);
    REQUIRE(f);
    CHECK(count_close_lines(*proxy, c->addr) == 1);
    const std::string reason = field(*f, "reason");
    CHECK((reason == "drain" || reason == "client-closed" || reason == "upstream-closed"));
    // Upstream side: whole frames only, in order, exactly what the proxy counted.
    const std::string source = field(*f, "source");
    REQUIRE(ups.count(source) == 1);
    LoadSide& u = *ups[source];
    {
      std::lock_guard<std::mutex> lk2(u.mu);
      INFO("upstream " << source << ": " << (u.reset ? "reset" : u.eof ? "EOF" : "open") << ", " << u.check.frames
                       << " whole frames, " << u.check.framer.held() << " octets of a frame held at the end; "
                       << u.error << " " << u.check.error);
      CHECK(u.error.empty());
      CHECK(u.check.error.empty());
      CHECK(u.eof);
      CHECK(u.check.framer.held() == 0);  // no truncated frame at EOF
      CHECK(u.check.frames > 500);
      CHECK(num_field(*f, "c2u_frames") == 1 + u.check.frames);
      CHECK(num_field(*f, "c2u_bytes") == u.first_bytes + u.check.bytes);
    }
    // Client side, the same for the other direction.
    {
      std::lock_guard<std::mutex> lk2(c->down.mu);
      INFO("client side: " << (c->down.reset ? "reset" : c->down.eof ? "EOF" : "open") << ", "
                            << c->down.check.frames << " whole frames, " << c->down.check.framer.held()
                            << " octets of a frame held at the end; " << c->down.error << " " << c->down.check.error);
      CHECK(c->down.error.empty());
      CHECK(c->down.check.error.empty());
      CHECK(c->down.eof);
      CHECK(c->down.check.framer.held() == 0);
      CHECK(c->down.check.frames > 500);
      CHECK(num_field(*f, "u2c_frames") == 1 + c->down.check.frames);
      CHECK(num_field(*f, "u2c_bytes") == c->down.first_bytes + c->down.check.bytes);
    }
  }
}

TEST_CASE("relay-life: a second SIGTERM during the drain closes every session at once (shutdown) and exits 0",
          "[relay-life][drain]") {
  // The upstream answers the CR and then reads nothing until released.
  std::mutex mu;
  std::condition_variable cv;
  bool release = false;
  TestServer upstream([&](Conn& c) {
    if (!c.recv_frame(10000ms) || !c.send_all(codec::Bytes(test_cc()))) return;
    std::unique_lock<std::mutex> lk(mu);
    cv.wait_for(lk, 60s, [&] { return release; });
  });
  REQUIRE(upstream.ok());
  struct Releaser {
    std::mutex& mu;
    std::condition_variable& cv;
    bool& release;
    ~Releaser() {
      {
        std::lock_guard<std::mutex> lk(mu);
        release = true;
      }
      cv.notify_all();
    }
  } releaser{mu, cv, release};
  auto proxy = start_proxy("[global]\ndrain_timeout = \"30s\"\n\n" + listener_toml("slow", upstream.port()));
  const auto lport = port_of(*proxy, "slow");

  // Session 1: the client stops in the middle of a frame, so the drain waits for its end.
  const auto m1 = mark(*proxy);
  Conn c1 = open_session(lport);
  const Watch a1 = watch(c1, m1);
  const ByteVec dt = dt_of(1000, 11);
  c1.set_nodelay();
  REQUIRE(c1.send_all(codec::Bytes(dt.data(), 100)));

  // Session 2: the client pushes into an upstream that does not read, until
  // the proxy stops reading it (its queue toward the upstream is over high
  // water), so the drain waits for a flush that cannot come.
  const auto m2 = mark(*proxy);
  Conn c2 = open_session(lport);
  const Watch a2 = watch(c2, m2);
  std::atomic<bool> stop{false}, blocked{false};
  std::thread pusher([&] {
    const ByteVec frame = dt_of(8000, 12);
    ByteVec batch;
    for (int k = 0; k < 16; ++k) batch.insert(batch.end(), frame.begin(), frame.end());
    while (!stop) {
      if (send_bytes(c2.fd(), batch.data(), batch.size(), stop, Clock::now() + 60s, &blocked) != SendResult::kOk) return;
    }
  });
  struct Stopper {
    std::atomic<bool>& stop;
    std::thread& th;
    ~Stopper() {
      stop = true;
      if (th.joinable()) th.join();
    }
  } stopper{stop, pusher};
  const bool backed_up = eventually([&] { return blocked.load(); }, 30000ms);
  REQUIRE(backed_up);  // (session 1's half frame was read long before this)

  REQUIRE(proxy->signal(SIGTERM));
  INFO(proxy->text());
  REQUIRE(proxy->wait_for_line(std::regex(R"(SIGTERM: draining 2 sessions \(deadline 30s\))"), 5000ms));
  CHECK(count_close_lines(*proxy, a1) == 0);
  CHECK(count_close_lines(*proxy, a2) == 0);
  CHECK(proxy->running());

  const auto t0 = Clock::now();
  REQUIRE(proxy->signal(SIGTERM));
  const auto code = proxy->wait_exit(10000ms);
  const long elapsed = ms_since(t0);
  INFO(proxy->text());
  REQUIRE(code);
  CHECK(*code == 0);
  INFO("exited " << elapsed << " ms after the second SIGTERM");
  CHECK(elapsed < 3000);  // at once, not at the 30 s drain deadline
  CHECK(proxy->count_lines(std::regex("SIGTERM again: closing 2 sessions now")) == 1);
  for (const Watch& a : {a1, a2}) {
    INFO("client " << a.client);
    const auto f = wait_close(*proxy, a, 100ms);
    REQUIRE(f);
    CHECK(field(*f, "reason") == "shutdown");
    CHECK(count_close_lines(*proxy, a) == 1);
  }
  CHECK(c1.wait_eof(2000ms));
}

namespace {

// The time left on the keepalive timer of the socket matching an `ss`
// filter, in seconds; nullopt when it has none (or no such socket). Debian
// 12's ss prints 7 s as "6.996ms" (its unit suffix is not to be trusted), so
// the number is read as seconds whatever follows it.
std::optional<double> keepalive_seconds(const std::string& filter) {
  const auto r = t::run_process({"/usr/bin/env", "ss", "-tnoH", "state", "established", filter});
  if (r.exit_code != 0) return std::nullopt;
  std::smatch m;
  static const std::regex kTimer(R"(timer:\(keepalive,([0-9.]+))");
  if (!std::regex_search(r.out, m, kTimer)) return std::nullopt;
  return std::stod(m[1].str());
}

// Polls `ss` (no event announces a socket option), bounded.
std::optional<double> wait_keepalive(const std::string& filter, Millis within) {
  const auto until = Clock::now() + within;
  for (;;) {
    if (auto k = keepalive_seconds(filter)) return k;
    if (Clock::now() >= until) return std::nullopt;
    std::this_thread::sleep_for(50ms);
  }
}

}  // namespace

TEST_CASE("relay-life: a drain relays the frame in flight, not the frames begun after it, whole or not",
          "[relay-life][drain]") {
  // The upstream answers the CR, then takes everything until the proxy's FIN.
  std::mutex mu;
  ByteVec got;
  TestServer upstream([&](Conn& c) {
    if (!c.recv_frame(10000ms) || !c.send_all(codec::Bytes(test_cc()))) return;
    for (;;) {
      auto chunk = c.recv_some(65536, 20000ms);
      if (!chunk || chunk->empty()) break;
      std::lock_guard lock(mu);
      got.insert(got.end(), chunk->begin(), chunk->end());
    }
  });
  REQUIRE(upstream.ok());
  // Framed to the end, never parked: the drain's frame rule is what is tested.
  auto proxy = start_proxy("[global]\ndrain_timeout = \"20s\"\n\n" +
                           listener_toml("inflight", upstream.port(), "passthrough = false\npark_after = \"0\""));
  const auto lport = port_of(*proxy, "inflight");
  const auto m = mark(*proxy);
  Conn c = open_session(lport);
  const Watch a = watch(c, m);
  const ByteVec f1 = dt_of(1000, 1), f2 = dt_of(6, 2), f3 = dt_of(40, 3);
  // Half of f1, read by the proxy (its socket's queue empties) before the signal.
  REQUIRE(c.send_all(codec::Bytes(f1.data(), 500)));
  const auto until = Clock::now() + 10s;
  while (t::rx_queue(lport, c.local_port()) != 0 && Clock::now() < until) std::this_thread::yield();
  REQUIRE(t::rx_queue(lport, c.local_port()) == 0);
  REQUIRE(proxy->signal(SIGTERM));
  INFO(proxy->text());
  REQUIRE(proxy->wait_for_line(std::regex(R"(SIGTERM: draining 1 session)"), 5000ms));
  // The rest of f1, a whole f2 and the start of f3, in one write.
  ByteVec rest(f1.begin() + 500, f1.end());
  rest.insert(rest.end(), f2.begin(), f2.end());
  rest.insert(rest.end(), f3.begin(), f3.begin() + 5);
  REQUIRE(c.send_all(codec::Bytes(rest)));
  const auto f = wait_close(*proxy, a);
  REQUIRE(f);
  CHECK(field(*f, "reason") == "drain");
  CHECK(num_field(*f, "drain_discarded") == f2.size() + 5);
  CHECK(upstream.wait_finished(1, 10000ms));
  std::lock_guard lock(mu);
  CHECK(codec::to_hex(codec::Bytes(got)) == codec::to_hex(codec::Bytes(f1)));  // f1 whole, and nothing begun after the drain
}

TEST_CASE("relay-life: what a client sends after the drain's FIN is counted as drain_discarded",
          "[relay-life][drain]") {
  // The upstream answers the CR, then waits for the proxy's FIN and closes.
  std::atomic<bool> upstream_saw_eof{false};
  std::atomic<std::size_t> upstream_extra{0};
  TestServer upstream([&](Conn& c) {
    if (!c.recv_frame(10000ms) || !c.send_all(codec::Bytes(test_cc()))) return;
    upstream_saw_eof = c.wait_eof(20000ms);
    upstream_extra = c.buffered();
  });
  REQUIRE(upstream.ok());
  auto proxy = start_proxy("[global]\ndrain_timeout = \"20s\"\n\n" + listener_toml("late", upstream.port()));
  const auto lport = port_of(*proxy, "late");
  const auto m = mark(*proxy);
  Conn c = open_session(lport);
  const Watch a = watch(c, m);

  // Idle at the signal: the drain sends its FIN to both peers at once.
  REQUIRE(proxy->signal(SIGTERM));
  INFO(proxy->text());
  REQUIRE(proxy->wait_for_line(std::regex(R"(SIGTERM: draining 1 session)"), 5000ms));
  REQUIRE(c.wait_eof(10000ms));
  CHECK_FALSE(c.reset_seen());
  // The client still sends a whole DT and then its own FIN: the other leg is
  // closed, so nothing can be relayed, and the close line says how much.
  const ByteVec late = dt_of(700, 31);
  REQUIRE(c.send_all(codec::Bytes(late)));
  c.shutdown_write();

  const auto f = wait_close(*proxy, a);
  REQUIRE(f);
  CHECK(field(*f, "reason") == "drain");
  CHECK(num_field(*f, "drain_discarded") == late.size());
  CHECK(num_field(*f, "c2u_bytes") == test_cr().size());
  const auto code = proxy->wait_exit(10000ms);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK(upstream.wait_finished(1, 5000ms));
  CHECK(upstream_saw_eof);
  CHECK(upstream_extra == 0);  // nothing of the late DT reached the upstream
}

TEST_CASE("relay-life: the admin endpoint answers while sessions drain and closes when the last is gone",
          "[relay-life][drain][admin]") {
  // An operator watches a long drain: which sessions hold it, and why.
  TestServer upstream([](Conn& c) {
    if (!c.recv_frame(10000ms) || !c.send_all(codec::Bytes(test_cc()))) return;
    (void)c.wait_eof(20000ms);
  });
  REQUIRE(upstream.ok());
  const std::string token = "0123456789abcdef-drain";
  const unsigned workers = GENERATE(1u, 2u);
  INFO("workers = " << workers);
  auto proxy = start_proxy("[global]\ndrain_timeout = \"20s\"\nworkers = " + std::to_string(workers) +
                           "\n\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"" + token + "\"\n\n" +
                           listener_toml("held", upstream.port(), "passthrough = false\npark_after = \"0\""));
  const auto lport = port_of(*proxy, "held");
  const auto aport = t::admin_port(*proxy);
  REQUIRE(aport);
  const auto m = mark(*proxy);
  Conn c = open_session(lport);
  const Watch a = watch(c, m);
  // A frame begun before the signal holds the drain until it is complete.
  const ByteVec f1 = dt_of(100, 7);
  REQUIRE(c.send_all(codec::Bytes(f1.data(), 10)));
  const auto until = Clock::now() + 10s;
  while (t::rx_queue(lport, c.local_port()) != 0 && Clock::now() < until) std::this_thread::yield();
  REQUIRE(t::rx_queue(lport, c.local_port()) == 0);
  REQUIRE(proxy->signal(SIGTERM));
  INFO(proxy->text());
  REQUIRE(proxy->wait_for_line(std::regex(R"(SIGTERM: draining 1 session)"), 5000ms));

  const auto listed = t::http(*aport, "GET", "/sessions?state=draining");
  CHECK(listed.status == 200);
  const auto sessions = nlohmann::json::parse(listed.body)["sessions"];
  REQUIRE(sessions.size() == 1);
  CHECK(sessions[0]["state"] == "draining");
  const auto stats = t::http(*aport, "GET", "/stats");
  CHECK(stats.status == 200);
  CHECK(nlohmann::json::parse(stats.body)["sessions"]["active"] == 1);
  const auto cli = t::run_process({ProxyProcess::default_binary(), "stats", "--admin", "127.0.0.1:" + std::to_string(*aport),
                                   "--state", "draining", "--width", "0"});
  CHECK(cli.exit_code == 0);
  CHECK(cli.out.find("draining") != std::string::npos);
  const auto reload = t::http(*aport, "POST", "/reload", "Authorization: Bearer " + token + "\r\n");
  CHECK(reload.status == 503);
  CHECK(reload.body.find("refused") != std::string::npos);

  // The frame completes: the session drains, and with it the process.
  REQUIRE(c.send_all(codec::Bytes(f1.data() + 10, f1.size() - 10)));
  CHECK(c.wait_eof(10000ms));
  c.close();
  const auto f = wait_close(*proxy, a);
  REQUIRE(f);
  CHECK(field(*f, "reason") == "drain");
  const auto code = proxy->wait_exit(10000ms);
  REQUIRE(code);
  CHECK(*code == 0);
  CHECK_FALSE(t::connect_to(kLocal, *aport, 1000ms).valid());
}

// The client leg inherits keepalive from the listening socket; the upstream
// leg gets it once the session has lived a second (a shorter one never needs
// it: the first probe comes keepalive_interval after the last byte anyway).
TEST_CASE("relay-life: keepalive on both legs with the configured interval, and none when off",
          "[relay-life][keepalive]") {
  if (!t::on_path("ss")) {
    WARN("ss (iproute2) is not installed: keepalive not checked");
    return;
  }
  TestServer upstream(t::responder_handler());
  REQUIRE(upstream.ok());
  const bool on = GENERATE(true, false);
  INFO("keepalive = " << on);
  auto proxy = start_proxy(listener_toml("ka", upstream.port(),
                                         std::string("keepalive = ") + (on ? "true" : "false") +
                                             "\nkeepalive_interval = \"7s\"\n"));
  const std::uint16_t port = port_of(*proxy, "ka");
  Conn c = t::connect_to(kLocal, port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(codec::Bytes(test_cr())));
  REQUIRE(c.recv_frame());  // the CC: both legs are up
  // The proxy's end of the client leg has the listener's port; its end of the
  // upstream leg has the upstream's port as its peer.
  const std::string client_leg = "sport = :" + std::to_string(port);
  const std::string upstream_leg = "dport = :" + std::to_string(upstream.port());
  if (on) {
    const auto client_ka = keepalive_seconds(client_leg);
    REQUIRE(client_ka);
    CHECK(*client_ka <= 7.0);
    CHECK(*client_ka > 5.0);
    const auto upstream_ka = wait_keepalive(upstream_leg, 5000ms);
    REQUIRE(upstream_ka);
    CHECK(*upstream_ka <= 7.0);
    CHECK(*upstream_ka > 5.0);
  } else {
    CHECK_FALSE(keepalive_seconds(client_leg));
    // Longer than the upstream leg's one second: still none.
    CHECK_FALSE(wait_keepalive(upstream_leg, 1500ms));
  }
}
