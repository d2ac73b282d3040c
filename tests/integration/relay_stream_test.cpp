// The relay's byte stream through the real binary and real sockets
// (DESIGN.md §2): a healthy session passes byte-exact under any TCP split or
// coalescing, the vendor CC's reserved byte is repaired and nothing else,
// non-RFC 1006 and malformed input get the configured answer and lose
// nothing, and garbage (short lengths, floods of tiny frames, stalled or
// truncated frames) neither breaks the stream nor spins the CPU.
//
// Every wait is on an event with a deadline; the only timed waits are short
// bounded polls that check that nothing (more) arrives, and the one-second
// stall whose CPU cost is measured. Peers in other threads record what they
// see; only the test thread asserts.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <regex>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "codec/text.h"
#include "codec/x224.h"
#include "support/peers.h"
#include "support/proxy_process.h"

using isoproxy::test::ByteVec;
using isoproxy::test::Conn;
using isoproxy::test::Millis;
using isoproxy::test::TestServer;
namespace codec = isoproxy::codec;
namespace t = isoproxy::test;

namespace {

using Clock = std::chrono::steady_clock;

constexpr Millis kWait{10000};      // for events that must happen
constexpr Millis kQuiet{30};        // "nothing (more) arrives" polls
constexpr Millis kBulkWait{30000};  // the multi-megabyte streams

ByteVec cat(std::initializer_list<ByteVec> parts) {
  ByteVec out;
  for (const auto& p : parts) out.insert(out.end(), p.begin(), p.end());
  return out;
}

ByteVec slice(const ByteVec& v, std::size_t from, std::size_t to) {
  return ByteVec(v.begin() + static_cast<std::ptrdiff_t>(from), v.begin() + static_cast<std::ptrdiff_t>(to));
}

std::string hex(const ByteVec& v) { return codec::to_hex(codec::Bytes(v)); }

// "" when equal; otherwise where and how two (possibly large) streams differ,
// so that a failure never prints megabytes.
std::string mismatch(const ByteVec& got, const ByteVec& want) {
  if (got == want) return {};
  std::size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  auto around = [i](const ByteVec& v) {
    const std::size_t from = i >= 8 ? i - 8 : 0;
    return hex(slice(v, std::min(from, v.size()), std::min(i + 16, v.size())));
  };
  std::ostringstream s;
  s << "got " << got.size() << " bytes, want " << want.size() << "; first difference at offset " << i
    << ": got ..." << around(got) << "... want ..." << around(want) << "...";
  return s.str();
}

void set_nodelay(int fd) {
  const int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

// utime + stime of a process, in clock ticks (/proc/PID/stat fields 14 and 15).
std::optional<long long> cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = all.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream rest(all.substr(paren + 1));
  std::vector<std::string> f;  // f[0] is field 3 (state)
  for (std::string w; rest >> w;) f.push_back(w);
  if (f.size() < 13) return std::nullopt;
  return std::stoll(f[11]) + std::stoll(f[12]);
}

// ---------------------------------------------------------------------------
// The upstream: a TestServer whose handler records every byte the proxy sends
// on each connection; the test thread answers through send().

class UpConn {
 public:
  std::size_t size() const {
    std::lock_guard<std::mutex> lk(mu_);
    return got_.size();
  }
  ByteVec bytes() const {
    std::lock_guard<std::mutex> lk(mu_);
    return got_;
  }
  bool wait_bytes(std::size_t n, Millis timeout = kWait) const {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return got_.size() >= n || eof_; }) && got_.size() >= n;
  }
  bool wait_eof(Millis timeout = kWait) const {
    std::unique_lock<std::mutex> lk(mu_);
    return cv_.wait_for(lk, timeout, [&] { return eof_; });
  }
  bool send(const ByteVec& b, Millis timeout = kWait, std::mt19937* rng = nullptr) {
    return t::send_raw(fd_, codec::Bytes(b), Clock::now() + timeout, rng);
  }
  void shutdown_write() { ::shutdown(fd_, SHUT_WR); }

 private:
  friend class Upstream;
  void append(const ByteVec& b) {
    {
      std::lock_guard<std::mutex> lk(mu_);
      got_.insert(got_.end(), b.begin(), b.end());
    }
    cv_.notify_all();
  }
  void mark_eof() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      eof_ = true;
    }
    cv_.notify_all();
  }
  // The fd stays open (and the test may still write) until released.
  void wait_released() {
    std::unique_lock<std::mutex> lk(mu_);
    cv_.wait(lk, [&] { return released_; });
  }
  void release() {
    std::lock_guard<std::mutex> lk(mu_);
    if (released_) return;
    released_ = true;
    ::shutdown(fd_, SHUT_RDWR);  // wakes the reader; the handler then closes the fd
    cv_.notify_all();
  }

  int fd_ = -1;
  mutable std::mutex mu_;
  mutable std::condition_variable cv_;
  ByteVec got_;
  bool eof_ = false;
  bool released_ = false;
};

class Upstream {
 public:
  Upstream() : server_([this](Conn& c) { run(c); }) {}
  ~Upstream() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      for (auto& c : conns_) c->release();
    }
    server_.stop();
  }
  Upstream(const Upstream&) = delete;
  Upstream& operator=(const Upstream&) = delete;

  bool ok() const { return server_.ok(); }
  std::uint16_t port() const { return server_.port(); }
  std::size_t count() const {
    std::lock_guard<std::mutex> lk(mu_);
    return conns_.size();
  }
  // The index-th connection the proxy made (0 = first).
  std::shared_ptr<UpConn> wait_conn(std::size_t index, Millis timeout = kWait) {
    std::unique_lock<std::mutex> lk(mu_);
    if (!cv_.wait_for(lk, timeout, [&] { return conns_.size() > index; })) return nullptr;
    return conns_[index];
  }
  bool wait_finished(std::size_t n, Millis timeout = kWait) const { return server_.wait_finished(n, timeout); }
  void release(const std::shared_ptr<UpConn>& c) {
    std::lock_guard<std::mutex> lk(mu_);
    c->release();
  }

 private:
  void run(Conn& c) {
    auto u = std::make_shared<UpConn>();
    u->fd_ = c.fd();
    set_nodelay(c.fd());
    {
      std::lock_guard<std::mutex> lk(mu_);
      conns_.push_back(u);
    }
    cv_.notify_all();
    for (;;) {
      auto chunk = c.recv_some(65536, Millis(std::chrono::hours(1)));
      if (!chunk) break;
      u->append(*chunk);
    }
    u->mark_eof();
    u->wait_released();
  }

  // Declared before the server: its threads use them from the start.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::shared_ptr<UpConn>> conns_;
  TestServer server_;
};

// ---------------------------------------------------------------------------
// The proxy

struct Options {
  std::string filters = R"(["reserved", "annotate"])";  // as conf/isoproxy.toml
  std::string reserved_tpdu = R"(["CC"])";
  std::string reserved_directions;  // empty: the default (both)
  std::string listener_extra;       // more listener keys, one per line
};

std::string config(std::uint16_t upstream_port, const Options& o) {
  std::string s = "[global]\ndrain_timeout = \"5s\"\n\n[[listener]]\nname = \"relay\"\nlisten = \"127.0.0.1:0\"\n";
  s += "upstream = \"127.0.0.1:" + std::to_string(upstream_port) + "\"\n";
  s += "filters = " + o.filters + "\n" + o.listener_extra + "\n";
  s += "[filter.reserved]\nkind = \"tpkt-reserved\"\ntpdu = " + o.reserved_tpdu + "\n";
  if (!o.reserved_directions.empty()) s += "directions = " + o.reserved_directions + "\n";
  s += "\n[filter.annotate]\nkind = \"tsap-annotate\"\n";
  return s;
}

// One client connection through the proxy and the upstream connection it caused.
struct Session {
  Conn client;
  std::string client_addr;     // as the close line names it
  std::shared_ptr<UpConn> up;  // null if the proxy never connected
};

struct Rig {
  Upstream upstream;
  std::string toml;
  std::unique_ptr<t::ProxyProcess> proxy;
  std::uint16_t port = 0;
  std::size_t sessions = 0;

  explicit Rig(const Options& o = {}) : toml(config(upstream.port(), o)) {
    proxy = std::make_unique<t::ProxyProcess>(toml);
    if (proxy->started()) port = proxy->listen_port("relay").value_or(0);
  }
  std::string log() const { return "config:\n" + toml + "\nproxy output:\n" + proxy->text(); }

  // Connects a client; with `with_upstream`, waits for the proxy's upstream connection too.
  Session open(bool with_upstream = true) {
    Session s;
    s.client = t::connect_to("127.0.0.1", port);
    INFO(s.client.error());
    REQUIRE(s.client.valid());
    s.client.set_nodelay();
    s.client_addr = s.client.local_address();
    if (with_upstream) {
      s.up = upstream.wait_conn(sessions);
      INFO(log());
      REQUIRE(s.up);
      ++sessions;
    }
    return s;
  }

  // The close line of the session whose client had `client_addr`, as fields.
  std::map<std::string, std::string> close_fields(const std::string& client_addr, Millis timeout = kWait) {
    const auto line = proxy->wait_for_line(t::close_line_of(client_addr), timeout);
    INFO(log());
    REQUIRE(line);
    UNSCOPED_INFO("close line: " << *line);
    return t::parse_fields(*line);
  }

  // SIGTERM, and the process must exit 0 (item 7).
  void stop() {
    INFO(log());
    REQUIRE(proxy->signal(SIGTERM));
    const auto status = proxy->wait_exit();
    CHECK(status.has_value());
    CHECK(status.value_or(-1) == 0);
  }
};

#define REQUIRE_RIG(rig)             \
  do {                               \
    INFO((rig).log());               \
    REQUIRE((rig).upstream.ok());    \
    REQUIRE((rig).proxy->started()); \
    REQUIRE((rig).port != 0);        \
  } while (false)

std::string field(const std::map<std::string, std::string>& f, const std::string& key) {
  const auto it = f.find(key);
  return it == f.end() ? "<absent>" : it->second;
}

// The filters= field with its items sorted ("a.b=1,c.d=2"; "-" is none), so
// that a check does not depend on the order filters first acted in.
std::string filter_counts(const std::map<std::string, std::string>& f) {
  const std::string v = field(f, "filters");
  if (v == "-" || v == "<absent>") return v;
  std::vector<std::string> items;
  std::size_t start = 0;
  for (;;) {
    const auto comma = v.find(',', start);
    items.push_back(v.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  std::sort(items.begin(), items.end());
  std::string out;
  for (const auto& i : items) out += (out.empty() ? "" : ",") + i;
  return out;
}

// A strict receiver, like libiec61850's CotpConnection_readToTpktBuffer: a TPKT
// whose version is not 3 or whose reserved byte is not 0 is refused (it would
// drop the connection). On refusal, `why` says so and nullopt is returned.
std::optional<ByteVec> strict_recv(Conn& c, std::string& why, Millis timeout = kWait) {
  const auto head = c.recv_exact(4, timeout);
  if (!head) {
    why = "no TPKT header: " + c.error();
    return std::nullopt;
  }
  if ((*head)[0] != 0x03 || (*head)[1] != 0x00) {
    why = "refused: TPKT header " + hex(*head) + " (version must be 3, reserved 0)";
    return std::nullopt;
  }
  const std::size_t len = (static_cast<std::size_t>((*head)[2]) << 8) | (*head)[3];
  if (len < 7) {
    why = "refused: TPKT length " + std::to_string(len);
    return std::nullopt;
  }
  const auto rest = c.recv_exact(len - 4, timeout);
  if (!rest) {
    why = "truncated TPKT: " + c.error();
    return std::nullopt;
  }
  return cat({*head, *rest});
}

#define REQUIRE_STRICT_FRAME(conn, expected)         \
  do {                                               \
    std::string why_;                                \
    const auto got_ = strict_recv((conn), why_);     \
    INFO(why_);                                      \
    REQUIRE(got_);                                   \
    CHECK(hex(*got_) == hex(expected));              \
  } while (false)

// True if nothing arrives on the client within `quiet` (what did arrive stays buffered).
bool client_quiet(Conn& c, Millis quiet = kQuiet) {
  if (c.buffered() > 0) return false;
  const auto got = c.recv_some(65536, quiet);
  if (!got) return c.error() == "timeout";
  return false;
}

const ByteVec& vendor_cr() {
  static const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");  // the CR V1 answers
  return cr;
}

// CR from the client, `cc` from the upstream, received exactly on both sides.
void handshake(Rig& rig, Session& s, const ByteVec& cr, const ByteVec& cc, const ByteVec& cc_expected) {
  INFO(rig.log());
  REQUIRE(s.client.send_all(codec::Bytes(cr)));
  REQUIRE(s.up->wait_bytes(cr.size()));
  REQUIRE(hex(s.up->bytes()) == hex(cr));
  REQUIRE(s.up->send(cc));
  const auto got = s.client.recv_frame();
  INFO(s.client.error());
  REQUIRE(got);
  REQUIRE(hex(*got) == hex(cc_expected));
}

// Client FIN first, then the upstream's: the session ends "client-closed".
std::map<std::string, std::string> close_by_client(Rig& rig, Session& s) {
  INFO(rig.log());
  s.client.shutdown_write();
  REQUIRE(s.up->wait_eof());
  s.up->shutdown_write();
  REQUIRE(s.client.wait_eof());
  CHECK(s.client.take_buffered().empty());
  auto f = rig.close_fields(s.client_addr);
  s.client.close();
  rig.upstream.release(s.up);
  return f;
}

// A class 0 DT stream: `count` DTs with random payloads of 0..max_payload
// octets (empty only with EOT, so the stream has no anomalies), plus
// `full_frames` DTs of the largest TPKT, 65535 octets, at random places.
ByteVec dt_stream(std::mt19937& rng, std::size_t count, std::size_t max_payload, std::size_t full_frames,
                  std::size_t& frames) {
  ByteVec out;
  std::vector<bool> full(count, false);
  for (std::size_t i = 0; i < full_frames && count > 0; ++i) full[rng() % count] = true;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t n = full[i] ? 65535 - 7 : rng() % (max_payload + 1);
    ByteVec payload(n);
    for (auto& b : payload) b = static_cast<std::uint8_t>(rng());
    const bool eot = n == 0 || rng() % 2 == 0;
    const ByteVec dt = t::make_dt(codec::Bytes(payload), eot);
    out.insert(out.end(), dt.begin(), dt.end());
  }
  frames += count;
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// 1. Byte-exact relay under random splits and coalescing

TEST_CASE("relay-stream: a healthy session passes byte-exact both ways under random splits and coalescing",
          "[relay-stream]") {
  // The default filters: reserved (CC) and annotate, framed to the end: the
  // counts below are of every frame (pass-through would stop counting at its
  // first quiet point, which a loaded machine may give mid-stream).
  Options o;
  o.listener_extra = "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();

  const std::uint32_t seed = 0x1006u;
  INFO("seed " << seed);
  std::mt19937 gen(seed);
  std::size_t c2u_frames = 1, u2c_frames = 1;
  const ByteVec cr = t::vector_bytes("V3");  // a real MMS CR, reserved 0
  const ByteVec cc = t::vector_bytes("V4");  // its real CC, reserved 0
  const ByteVec c2u = cat({cr, dt_stream(gen, 3000, 1200, 8, c2u_frames)});
  const ByteVec u2c = cat({cc, dt_stream(gen, 3000, 1200, 8, u2c_frames)});
  REQUIRE(c2u.size() > 2'000'000);
  REQUIRE(u2c.size() > 2'000'000);

  // Both ends write in random chunks at the same time, full duplex.
  std::atomic<bool> client_sent{false}, upstream_sent{false};
  {
    std::jthread client_writer([&] {
      std::mt19937 rng(seed + 1);
      client_sent = t::send_raw(s.client.fd(), codec::Bytes(c2u), Clock::now() + kBulkWait, &rng);
    });
    std::jthread upstream_writer([&] {
      if (!s.up->wait_bytes(cr.size(), kBulkWait)) return;  // answer the CR, as a responder does
      std::mt19937 rng(seed + 2);
      upstream_sent = s.up->send(u2c, kBulkWait, &rng);
    });
    const auto got = s.client.recv_exact(u2c.size(), kBulkWait);
    INFO(s.client.error() << ", " << s.client.buffered() << " bytes buffered");
    REQUIRE(got);
    CHECK(mismatch(*got, u2c) == "");
  }
  CHECK(client_sent);
  CHECK(upstream_sent);
  REQUIRE(s.up->wait_bytes(c2u.size(), kBulkWait));
  CHECK(mismatch(s.up->bytes(), c2u) == "");
  CHECK(client_quiet(s.client));  // and nothing more

  const auto f = close_by_client(rig, s);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "c2u_bytes") == std::to_string(c2u.size()));
  CHECK(field(f, "c2u_frames") == std::to_string(c2u_frames));
  CHECK(field(f, "u2c_bytes") == std::to_string(u2c.size()));
  CHECK(field(f, "u2c_frames") == std::to_string(u2c_frames));
  CHECK(field(f, "anomalies") == "<absent>");
  CHECK(field(f, "decode_errors") == "<absent>");
  CHECK(field(f, "raw") == "<absent>");
  CHECK(field(f, "non_rfc1006") == "<absent>");
  // Nothing repaired: the annotation filter saw the CR and the CC, nothing else acted.
  CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1");
  CHECK(field(f, "calling") == "hex:0001");  // as a filter's configuration writes it
  CHECK(field(f, "called") == "hex:0001");
  CHECK(field(f, "tpdu_size") == "1024");
  CHECK(rig.proxy->count_lines(std::regex("TPKT reserved byte")) == 0);
  rig.stop();
}

TEST_CASE("relay-stream: an echo of every frame size from 7 to 65535 octets comes back unchanged", "[relay-stream]") {
  // Framed through the data phase, and spliced in pass-through (the default).
  const bool passthrough = GENERATE(false, true);
  INFO("passthrough = " << passthrough);
  Options o;
  o.listener_extra = passthrough ? "" : "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  handshake(rig, s, vendor_cr(), t::vendor_cc_repaired(), t::vendor_cc_repaired());

  // Every size class: empty, tiny, around the 2048 TPDU size, around 64 KiB, the maximum.
  ByteVec stream;
  std::size_t frames = 0;
  std::mt19937 gen(7);
  for (const std::size_t n : {0u, 1u, 2u, 100u, 2041u, 2045u, 4096u, 65000u, 65527u, 65528u, 65528u}) {
    ByteVec payload(n);
    for (auto& b : payload) b = static_cast<std::uint8_t>(gen());
    const ByteVec dt = t::make_dt(codec::Bytes(payload), true);
    stream.insert(stream.end(), dt.begin(), dt.end());
    ++frames;
  }
  REQUIRE(stream.size() > 2 * 65535);
  const std::size_t base = s.up->size();
  // The client sends everything in one write; the upstream echoes in random chunks.
  REQUIRE(s.client.send_all(codec::Bytes(stream)));
  REQUIRE(s.up->wait_bytes(base + stream.size()));
  CHECK(mismatch(slice(s.up->bytes(), base, s.up->size()), stream) == "");
  std::mt19937 rng(8);
  REQUIRE(s.up->send(stream, kWait, &rng));
  for (std::size_t i = 0, off = 0; i < frames; ++i) {
    const auto f = s.client.recv_frame();
    INFO("frame " << i << ": " << s.client.error());
    REQUIRE(f);
    const std::size_t len = f->size();
    CHECK(mismatch(*f, slice(stream, off, off + len)) == "");
    off += len;
  }
  CHECK(client_quiet(s.client));

  const auto f = close_by_client(rig, s);
  CHECK(field(f, "c2u_bytes") == std::to_string(vendor_cr().size() + stream.size()));
  CHECK(field(f, "u2c_bytes") == std::to_string(t::vendor_cc_repaired().size() + stream.size()));
  CHECK(field(f, "passthrough") == (passthrough ? "1" : "<absent>"));
  if (passthrough) {
    // Pass-through counts bytes, not frames: frames are counted until the
    // switch, which comes after the first read of the data phase.
    CHECK(std::stoul(field(f, "c2u_frames")) <= 1 + frames);
    CHECK(std::stoul(field(f, "u2c_frames")) <= 1 + frames);
  } else {
    CHECK(field(f, "c2u_frames") == std::to_string(1 + frames));
    CHECK(field(f, "u2c_frames") == std::to_string(1 + frames));
  }
  CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1");
  rig.stop();
}

// ---------------------------------------------------------------------------
// 2. The vendor CC (V1) is repaired to V2, however it is split or coalesced

TEST_CASE("relay-stream: the vendor CC reaches a strict client with reserved 0, whole, split or coalesced",
          "[relay-stream]") {
  Rig rig;
  REQUIRE_RIG(rig);
  const ByteVec v1 = t::vendor_cc();
  const ByteVec v2 = t::vendor_cc_repaired();
  REQUIRE(v1.size() == 44);
  REQUIRE(v1[1] == 0x11);
  const ByteVec& cr = vendor_cr();
  std::size_t repaired_sessions = 0;

  auto expect_repaired_close = [&](Session& s, std::size_t u2c_bytes, std::size_t u2c_frames) {
    const auto f = close_by_client(rig, s);
    CHECK(field(f, "reason") == "client-closed");
    CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1,reserved.repaired=1");
    CHECK(field(f, "c2u_bytes") == std::to_string(cr.size()));
    CHECK(field(f, "c2u_frames") == "1");
    CHECK(field(f, "u2c_bytes") == std::to_string(u2c_bytes));
    CHECK(field(f, "u2c_frames") == std::to_string(u2c_frames));
    CHECK(field(f, "anomalies") == "1");  // the reserved byte, seen before the repair
    CHECK(field(f, "calling") == "SWISSLIFETSAP");
    CHECK(field(f, "called") == "EXCHANGETSAP1");
    CHECK(field(f, "tpdu_size") == "2048");
    ++repaired_sessions;
  };

  SECTION("sent whole") {
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    REQUIRE(s.up->wait_bytes(cr.size()));
    REQUIRE(s.up->send(v1));
    REQUIRE_STRICT_FRAME(s.client, v2);
    CHECK(client_quiet(s.client));
    expect_repaired_close(s, 44, 1);
  }

  SECTION("split at every byte position, the proxy holding the first part") {
    for (std::size_t k = 1; k < v1.size(); ++k) {
      INFO("split after byte " << k);
      Session s = rig.open();
      REQUIRE(s.client.send_all(codec::Bytes(cr)));
      REQUIRE(s.up->wait_bytes(cr.size()));
      REQUIRE(s.up->send(slice(v1, 0, k)));
      CHECK(client_quiet(s.client));  // nothing of an incomplete frame is forwarded
      REQUIRE(s.up->send(slice(v1, k, v1.size())));
      REQUIRE_STRICT_FRAME(s.client, v2);
      expect_repaired_close(s, 44, 1);
    }
  }

  SECTION("one byte per write") {
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    REQUIRE(s.up->wait_bytes(cr.size()));
    for (const std::uint8_t b : v1) REQUIRE(s.up->send(ByteVec{b}));
    REQUIRE_STRICT_FRAME(s.client, v2);
    expect_repaired_close(s, 44, 1);
  }

  SECTION("coalesced with a following DT in one write") {
    const ByteVec dt = t::vector_bytes("V10r");
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    REQUIRE(s.up->wait_bytes(cr.size()));
    REQUIRE(s.up->send(cat({v1, dt})));
    REQUIRE_STRICT_FRAME(s.client, v2);
    REQUIRE_STRICT_FRAME(s.client, dt);  // unchanged, right after
    CHECK(client_quiet(s.client));
    expect_repaired_close(s, 44 + dt.size(), 2);
  }

  SECTION("split inside the header, the rest coalesced with a DT and half of another") {
    const ByteVec dt = t::make_dt("after the CC", true);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    REQUIRE(s.up->wait_bytes(cr.size()));
    REQUIRE(s.up->send(slice(v1, 0, 3)));  // inside the TPKT header
    CHECK(client_quiet(s.client));
    REQUIRE(s.up->send(cat({slice(v1, 3, v1.size()), dt, slice(dt, 0, 5)})));
    REQUIRE_STRICT_FRAME(s.client, v2);
    REQUIRE_STRICT_FRAME(s.client, dt);
    CHECK(client_quiet(s.client));
    REQUIRE(s.up->send(slice(dt, 5, dt.size())));
    REQUIRE_STRICT_FRAME(s.client, dt);
    expect_repaired_close(s, 44 + 2 * dt.size(), 3);
  }

  // Each repair is logged once, with the byte before and after.
  INFO(rig.log());
  CHECK(rig.proxy->count_lines(std::regex(R"(\[S\d+\] reserved: CC upstream-to-client: TPKT reserved byte 0x11 -> 0x00)")) ==
        repaired_sessions);
  rig.stop();
}

TEST_CASE("relay-stream: without the tpkt-reserved filter the vendor CC arrives unchanged (and a strict client refuses it)",
          "[relay-stream]") {
  Options o;
  o.filters = R"(["annotate"])";
  Rig rig(o);
  REQUIRE_RIG(rig);
  const ByteVec v1 = t::vendor_cc();
  Session s = rig.open();
  REQUIRE(s.client.send_all(codec::Bytes(vendor_cr())));
  REQUIRE(s.up->wait_bytes(vendor_cr().size()));
  REQUIRE(s.up->send(v1));
  const auto got = s.client.recv_frame();
  REQUIRE(got);
  CHECK(hex(*got) == hex(v1));

  // The strict client is not a tautology: given V1 it refuses it.
  {
    const ByteVec dt = t::make_dt("x", true, 0x11);
    REQUIRE(s.up->send(dt));
    std::string why;
    CHECK_FALSE(strict_recv(s.client, why));
    CHECK(why.find("refused") != std::string::npos);
    CHECK(s.client.recv_exact(dt.size() - 4));  // the rest of that DT
  }
  const auto f = close_by_client(rig, s);
  CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1");
  CHECK(rig.proxy->count_lines(std::regex("TPKT reserved byte")) == 0);
  rig.stop();
}

// ---------------------------------------------------------------------------
// 3. tpdu = ["any"] and directions

TEST_CASE("relay-stream: tpdu any repairs every TPDU type, directions limit the repair", "[relay-stream]") {
  const ByteVec cr33 = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1", 0x0B, 0x01CA, 0x33);
  const ByteVec dt_c22 = t::make_dt("from the client", true, 0x22);
  const ByteVec dt_u11 = t::make_dt("from the upstream", false, 0x11);
  auto zeroed = [](ByteVec v) {
    v[1] = 0;
    return v;
  };

  SECTION("tpdu any, both directions") {
    Options o;
    o.reserved_tpdu = R"(["any"])";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr33)));
    REQUIRE(s.up->wait_bytes(cr33.size()));
    CHECK(hex(s.up->bytes()) == hex(zeroed(cr33)));
    REQUIRE(s.up->send(t::vendor_cc()));
    REQUIRE_STRICT_FRAME(s.client, t::vendor_cc_repaired());
    REQUIRE(s.client.send_all(codec::Bytes(dt_c22)));
    REQUIRE(s.up->wait_bytes(cr33.size() + dt_c22.size()));
    CHECK(hex(slice(s.up->bytes(), cr33.size(), s.up->size())) == hex(zeroed(dt_c22)));
    REQUIRE(s.up->send(cat({dt_u11, dt_u11})));  // coalesced: both repaired
    REQUIRE_STRICT_FRAME(s.client, zeroed(dt_u11));
    REQUIRE_STRICT_FRAME(s.client, zeroed(dt_u11));
    CHECK(client_quiet(s.client));
    const auto f = close_by_client(rig, s);
    CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1,reserved.repaired=5");
    CHECK(field(f, "c2u_frames") == "2");
    CHECK(field(f, "u2c_frames") == "3");
    CHECK(field(f, "c2u_bytes") == std::to_string(cr33.size() + dt_c22.size()));
    CHECK(field(f, "u2c_bytes") == std::to_string(44 + 2 * dt_u11.size()));
    rig.stop();
  }

  SECTION("tpdu any, to-upstream only: the CC and the upstream's DTs pass unchanged") {
    Options o;
    o.reserved_tpdu = R"(["any"])";
    o.reserved_directions = R"(["to-upstream"])";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr33)));
    REQUIRE(s.up->wait_bytes(cr33.size()));
    CHECK(hex(s.up->bytes()) == hex(zeroed(cr33)));
    REQUIRE(s.up->send(t::vendor_cc()));
    const auto cc = s.client.recv_frame();
    REQUIRE(cc);
    CHECK(hex(*cc) == hex(t::vendor_cc()));  // V1 as it was
    REQUIRE(s.client.send_all(codec::Bytes(dt_c22)));
    REQUIRE(s.up->wait_bytes(cr33.size() + dt_c22.size()));
    CHECK(hex(slice(s.up->bytes(), cr33.size(), s.up->size())) == hex(zeroed(dt_c22)));
    REQUIRE(s.up->send(dt_u11));
    const auto dt = s.client.recv_frame();
    REQUIRE(dt);
    CHECK(hex(*dt) == hex(dt_u11));
    const auto f = close_by_client(rig, s);
    CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1,reserved.repaired=2");
    rig.stop();
  }

  SECTION("tpdu CC (the default) leaves the CR and DTs alone") {
    Rig rig;
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr33)));
    REQUIRE(s.up->wait_bytes(cr33.size()));
    CHECK(hex(s.up->bytes()) == hex(cr33));
    REQUIRE(s.up->send(cat({t::vendor_cc(), dt_u11})));
    REQUIRE_STRICT_FRAME(s.client, t::vendor_cc_repaired());
    const auto dt = s.client.recv_frame();
    REQUIRE(dt);
    CHECK(hex(*dt) == hex(dt_u11));
    REQUIRE(s.client.send_all(codec::Bytes(dt_c22)));
    REQUIRE(s.up->wait_bytes(cr33.size() + dt_c22.size()));
    CHECK(hex(slice(s.up->bytes(), cr33.size(), s.up->size())) == hex(dt_c22));
    const auto f = close_by_client(rig, s);
    CHECK(filter_counts(f) == "annotate.cc=1,annotate.cr=1,reserved.repaired=1");
    rig.stop();
  }
}

// ---------------------------------------------------------------------------
// 4. Non-RFC 1006 input

TEST_CASE("relay-stream: a non-RFC 1006 stream is relayed untouched by default, refused with non_rfc1006 = close",
          "[relay-stream]") {
  const std::string request = "GET / HTTP/1.0\r\n\r\n";
  const ByteVec req = t::ascii(request);
  // A reply that looks like a TPKT header in places: it must not be framed either.
  const ByteVec reply = cat({t::ascii("HTTP/1.0 200 OK\r\n\r\n"), ByteVec{0x03, 0x00, 0xFF, 0xFF, 0x03, 0x11, 0x00}});

  SECTION("pass (the default)") {
    Rig rig;
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(request));
    REQUIRE(s.up->wait_bytes(req.size()));
    CHECK(hex(s.up->bytes()) == hex(req));
    REQUIRE(s.up->send(reply));
    s.up->shutdown_write();  // an HTTP/1.0 server closes after its reply
    const auto got = s.client.recv_exact(reply.size());
    INFO(s.client.error());
    REQUIRE(got);
    CHECK(hex(*got) == hex(reply));
    CHECK(s.client.wait_eof());
    CHECK(s.client.take_buffered().empty());
    s.client.shutdown_write();
    CHECK(s.up->wait_eof());
    CHECK(s.up->size() == req.size());
    const auto f = rig.close_fields(s.client_addr);
    CHECK(field(f, "reason") == "upstream-closed");
    CHECK(field(f, "non_rfc1006") == "1");
    CHECK(field(f, "c2u_bytes") == std::to_string(req.size()));
    CHECK(field(f, "u2c_bytes") == std::to_string(reply.size()));
    CHECK(field(f, "c2u_frames") == "0");
    CHECK(field(f, "u2c_frames") == "0");
    rig.stop();
  }

  SECTION("close") {
    Options o;
    o.listener_extra = "non_rfc1006 = \"close\"";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open(false);
    REQUIRE(s.client.send_all(request));
    CHECK(s.client.wait_eof());
    CHECK(s.client.take_buffered().empty());
    const auto f = rig.close_fields(s.client_addr);
    CHECK(field(f, "reason").rfind("not-rfc1006", 0) == 0);
    // The upstream may have been connected; it must have received nothing.
    if (auto up = rig.upstream.wait_conn(0, Millis(200))) {
      CHECK(up->wait_eof());
      CHECK(up->size() == 0);
    }
    CHECK(field(f, "c2u_bytes") == "0");
    rig.stop();
  }

  SECTION("close, with the first read shorter than a TPKT header") {
    // The framer keeps "GE" until a whole header is there to judge; what it
    // kept is no frame, so the close line says nothing held.
    Options o;
    o.listener_extra = "non_rfc1006 = \"close\"";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open(false);
    REQUIRE(s.client.send_all(codec::Bytes(req.data(), 2)));
    const auto until = std::chrono::steady_clock::now() + kWait;
    while (t::rx_queue(rig.port, s.client.local_port()) != 0 && std::chrono::steady_clock::now() < until) {
      std::this_thread::yield();
    }
    REQUIRE(t::rx_queue(rig.port, s.client.local_port()) == 0);
    REQUIRE(s.client.send_all(codec::Bytes(req.data() + 2, req.size() - 2)));
    CHECK(s.client.wait_eof());
    const auto f = rig.close_fields(s.client_addr);
    CHECK(field(f, "reason").rfind("not-rfc1006", 0) == 0);
    CHECK(f.count("c2u_held") == 0);
    rig.stop();
  }
}

// ---------------------------------------------------------------------------
// 5. A malformed frame mid-session

TEST_CASE("relay-stream: a malformed frame mid-session is passed on and the rest of that direction relayed raw",
          "[relay-stream]") {
  const std::string id = GENERATE(as<std::string>{}, "N3", "N4");
  INFO("bad frame " << id);
  const ByteVec bad = t::vector_bytes(id);
  REQUIRE_FALSE(codec::decode_frame(codec::Bytes(bad)).ok());

  // malformed = "pass" is the default; framing in the data phase is what
  // this tests, so pass-through (which splices it unframed) is off.
  Options o;
  o.listener_extra = "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V5");
  const ByteVec cc = t::vector_bytes("V6");
  handshake(rig, s, cr, cc, cc);

  const ByteVec dt = t::vector_bytes("V10");
  // After the bad frame: a DT, garbage, a V1 that framing would repair (the
  // reserved filter acts in both directions) but raw mode must not, and a
  // header announcing 65535 octets that must not be held back.
  const std::vector<ByteVec> later = {
      dt,
      ByteVec{0x04, 0x00, 0x00, 0x02, 'z', 'z', 0xFF, 0x00},
      t::vendor_cc(),
      ByteVec{0x03, 0x00, 0xFF, 0xFF, 0x01, 0x02},
  };
  ByteVec expected = cat({cr, bad});
  REQUIRE(s.client.send_all(codec::Bytes(bad)));
  REQUIRE(s.up->wait_bytes(expected.size()));
  CHECK(hex(s.up->bytes()) == hex(expected));
  for (const auto& piece : later) {
    REQUIRE(s.client.send_all(codec::Bytes(piece)));
    expected = cat({expected, piece});
    INFO("after " << hex(piece));
    REQUIRE(s.up->wait_bytes(expected.size()));  // at once: nothing held back
    CHECK(hex(s.up->bytes()) == hex(expected));
  }
  // The other direction is still framed, and still repaired.
  const ByteVec reply = t::vector_bytes("V10r");
  REQUIRE(s.up->send(cat({reply, t::vendor_cc()})));
  REQUIRE_STRICT_FRAME(s.client, reply);
  REQUIRE_STRICT_FRAME(s.client, t::vendor_cc_repaired());

  const auto f = close_by_client(rig, s);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "raw") == "1");
  CHECK(field(f, "decode_errors") == "1");
  CHECK(field(f, "c2u_bytes") == std::to_string(expected.size()));
  CHECK(field(f, "c2u_frames") == "2");  // the CR and the bad frame
  CHECK(field(f, "u2c_frames") == "3");
  CHECK(field(f, "u2c_bytes") == std::to_string(cc.size() + reply.size() + 44));
  CHECK(field(f, "anomalies") == "1");  // V1's reserved byte, upstream to client; raw bytes are not decoded
  CHECK(filter_counts(f) == "annotate.cc=2,annotate.cr=1,reserved.repaired=1");
  rig.stop();
}

TEST_CASE("relay-stream: a CC that does not decode is relayed raw, and the handshake timeout then leaves the session alone",
          "[relay-stream]") {
  // The CC cannot be told from anything else once it does not decode: the
  // proxy no longer follows the handshake, so it must not time it either
  // (a session that works would be closed as "no CC or DR").
  Options o;
  o.listener_extra = "handshake_timeout = \"300ms\"";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V5");
  const ByteVec bad_cc = t::vector_bytes("N3");
  REQUIRE_FALSE(codec::decode_frame(codec::Bytes(bad_cc)).ok());
  handshake(rig, s, cr, bad_cc, bad_cc);
  // Data both ways for three times the handshake timeout.
  const ByteVec dt = t::vector_bytes("V10"), reply = t::vector_bytes("V10r");
  std::size_t up_bytes = cr.size();
  const auto until = std::chrono::steady_clock::now() + Millis(900);
  int rounds = 0;
  while (std::chrono::steady_clock::now() < until && rounds < 10000) {
    REQUIRE(s.client.send_all(codec::Bytes(dt)));
    up_bytes += dt.size();
    REQUIRE(s.up->wait_bytes(up_bytes));
    REQUIRE(s.up->send(reply));
    INFO(rig.log());
    const auto back = s.client.recv_exact(reply.size(), kWait);
    REQUIRE(back);
    CHECK(hex(*back) == hex(reply));
    ++rounds;
  }
  CHECK(rounds > 0);
  const auto f = close_by_client(rig, s);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "raw") == "1");
  rig.stop();
}

TEST_CASE("relay-stream: malformed = close with malformed_send_er sends an ER to the sender, then closes",
          "[relay-stream]") {
  const std::string id = GENERATE(as<std::string>{}, "N3", "N4");
  INFO("bad frame " << id);
  const ByteVec bad = t::vector_bytes(id);

  Options o;
  o.listener_extra = "malformed = \"close\"\nmalformed_send_er = true";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V5");
  const ByteVec cc = t::vector_bytes("V6");
  handshake(rig, s, cr, cc, cc);

  // A good DT, the bad frame and another good DT: coalesced in one write, or
  // the good DT delivered on its own first.
  const bool coalesced = GENERATE(true, false);
  INFO((coalesced ? "DT, bad frame, DT in one write" : "DT alone, then bad frame + DT"));
  const ByteVec dt1 = t::vector_bytes("V10");
  const ByteVec dt2 = t::make_dt("after the bad frame", true);
  if (coalesced) {
    REQUIRE(s.client.send_all(codec::Bytes(cat({dt1, bad, dt2}))));
  } else {
    REQUIRE(s.client.send_all(codec::Bytes(dt1)));
    REQUIRE(s.up->wait_bytes(cr.size() + dt1.size()));
    REQUIRE(s.client.send_all(codec::Bytes(cat({bad, dt2}))));
  }

  const auto er = s.client.recv_frame();
  INFO(s.client.error());
  REQUIRE(er);
  const auto decoded = codec::decode_frame(codec::Bytes(*er));
  INFO("ER " << hex(*er));
  REQUIRE(decoded.ok());
  CHECK(decoded->tpdu.type == codec::TpduType::kER);
  CHECK(decoded->header.reserved == 0);
  // Its invalid-TPDU parameter echoes the start of the rejected TPDU (protocol.md §5.6).
  const codec::Param* p = decoded->tpdu.find(codec::param::kInvalidTpdu);
  REQUIRE(p != nullptr);
  REQUIRE_FALSE(p->value.empty());
  const ByteVec echoed(p->value.begin(), p->value.end());
  CHECK(hex(echoed) == hex(slice(bad, 4, 4 + echoed.size())));
  CHECK(s.client.wait_eof());
  CHECK(s.client.take_buffered().empty());  // nothing after the ER

  // The upstream got the frames before the bad one, and nothing else.
  CHECK(s.up->wait_eof());
  CHECK(hex(s.up->bytes()) == hex(cat({cr, dt1})));

  const auto f = rig.close_fields(s.client_addr);
  CHECK(field(f, "reason").rfind("malformed-frame", 0) == 0);
  CHECK(field(f, "decode_errors") == "1");
  CHECK(field(f, "u2c_frames") == "1");
  rig.stop();
}

TEST_CASE("relay-stream: a first TPKT longer than max_frame is a malformed frame, not a stream that is not RFC 1006",
          "[relay-stream]") {
  const ByteVec cr = t::make_cr(std::string(40, 'A'), std::string(40, 'B'));
  REQUIRE(cr.size() > 64);
  SECTION("malformed = close: an ER to the client, nothing upstream") {
    Options o;
    o.listener_extra = "max_frame = 64\nmalformed = \"close\"\nmalformed_send_er = true";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    CHECK(s.client.wait_eof());
    const ByteVec got = s.client.take_buffered();
    INFO("client received " << hex(got));
    const auto decoded = codec::decode_frame(codec::Bytes(got));
    CHECK((decoded.ok() && decoded->tpdu.type == codec::TpduType::kER));
    CHECK(s.up->wait_eof());
    CHECK(s.up->size() == 0);
    const auto f = rig.close_fields(s.client_addr);
    CHECK(field(f, "reason") == "malformed-frame: tpkt-length-too-long");
    CHECK(f.count("non_rfc1006") == 0);
    rig.stop();
  }
  SECTION("malformed = pass: relayed raw in its direction, the upstream's CC still repaired") {
    Options o;
    o.listener_extra = "max_frame = 64";
    Rig rig(o);
    REQUIRE_RIG(rig);
    Session s = rig.open();
    REQUIRE(s.client.send_all(codec::Bytes(cr)));
    REQUIRE(s.up->wait_bytes(cr.size()));
    CHECK(hex(s.up->bytes()) == hex(cr));
    REQUIRE(s.up->send(t::vector_bytes("V1")));  // the vendor CC: reserved 0x11
    const auto got = s.client.recv_exact(t::vector_bytes("V2").size());
    REQUIRE(got);
    CHECK(hex(*got) == hex(t::vector_bytes("V2")));
    const auto f = close_by_client(rig, s);
    CHECK(field(f, "raw") == "1");
    CHECK(f.count("non_rfc1006") == 0);
    CHECK(field(f, "filters").find("reserved.repaired=1") != std::string::npos);
    rig.stop();
  }
}

// ---------------------------------------------------------------------------
// 6. Garbage

TEST_CASE("relay-stream: a TPKT length under 7 mid-session is relayed raw by default", "[relay-stream]") {
  // Framing in the data phase is what this tests: pass-through (which
  // splices the data phase unframed) is off.
  Options o;
  o.listener_extra = "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  const ByteVec cr = t::vector_bytes("V9a");
  const ByteVec cc = t::vector_bytes("V9b");
  for (const std::uint8_t len : std::initializer_list<std::uint8_t>{0, 1, 4, 5, 6}) {
    INFO("TPKT length " << int(len));
    Session s = rig.open();
    handshake(rig, s, cr, cc, cc);
    const ByteVec dt = t::vector_bytes("V10");
    const ByteVec garbage = cat({dt, ByteVec{0x03, 0x00, 0x00, len, 0xAA, 0xBB, 0xCC}, dt, t::ascii("tail")});
    REQUIRE(s.client.send_all(codec::Bytes(garbage)));
    REQUIRE(s.up->wait_bytes(cr.size() + garbage.size()));
    CHECK(hex(s.up->bytes()) == hex(cat({cr, garbage})));
    const auto f = close_by_client(rig, s);
    CHECK(field(f, "raw") == "1");
    CHECK(field(f, "decode_errors") == "1");
    CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + garbage.size()));
    CHECK(field(f, "c2u_frames") == "2");  // the CR and the first DT
  }
  rig.stop();
}

TEST_CASE("relay-stream: a TPKT length under 7 with malformed = close (+ER) ends the session after the good frames",
          "[relay-stream]") {
  Options o;
  o.listener_extra = "malformed = \"close\"\nmalformed_send_er = true";
  Rig rig(o);
  REQUIRE_RIG(rig);
  const ByteVec cr = t::vector_bytes("V9a");
  const ByteVec cc = t::vector_bytes("V9b");
  Session s = rig.open();
  handshake(rig, s, cr, cc, cc);
  const ByteVec dt = t::vector_bytes("V10");
  REQUIRE(s.client.send_all(codec::Bytes(cat({dt, t::vector_bytes("V16d"), dt}))));  // length 6
  CHECK(s.client.wait_eof());
  // malformed_send_er: "send an ER TPDU toward the sender of the bad frame before closing" (conf/schema.md).
  const ByteVec got = s.client.take_buffered();
  INFO("client received " << hex(got));
  const auto decoded = codec::decode_frame(codec::Bytes(got));
  CHECK((decoded.ok() && decoded->tpdu.type == codec::TpduType::kER));
  CHECK(s.up->wait_eof());
  CHECK(hex(s.up->bytes()) == hex(cat({cr, dt})));
  const auto f = rig.close_fields(s.client_addr);
  CHECK(field(f, "reason").rfind("malformed-frame", 0) == 0);
  CHECK(field(f, "decode_errors") == "1");
  rig.stop();
}

TEST_CASE("relay-stream: 10000 tiny DTs in one write arrive complete and in order", "[relay-stream]") {
  const bool passthrough = GENERATE(false, true);
  INFO("passthrough = " << passthrough);
  Options o;
  o.listener_extra = passthrough ? "" : "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V3");
  const ByteVec cc = t::vector_bytes("V4");
  handshake(rig, s, cr, cc, cc);

  // 7-octet DTs; a pseudo-random EOT bit makes the order visible. An empty
  // DT without EOT is legal to relay but an anomaly (X.224 §6.3.3), one each.
  std::mt19937 gen(10000);
  ByteVec flood;
  flood.reserve(70000);
  std::size_t non_eot = 0;
  for (int i = 0; i < 10000; ++i) {
    const bool eot = gen() % 2 == 0;
    non_eot += eot ? 0 : 1;
    const ByteVec dt = t::make_dt("", eot);
    REQUIRE(dt.size() == 7);
    flood.insert(flood.end(), dt.begin(), dt.end());
  }
  REQUIRE(flood.size() == 70000);
  REQUIRE(s.client.send_all(codec::Bytes(flood)));
  REQUIRE(s.up->wait_bytes(cr.size() + flood.size()));
  CHECK(mismatch(slice(s.up->bytes(), cr.size(), s.up->size()), flood) == "");
  // And the other way, while we are at it.
  REQUIRE(s.up->send(flood));
  const auto back = s.client.recv_exact(flood.size());
  REQUIRE(back);
  CHECK(mismatch(*back, flood) == "");
  CHECK(client_quiet(s.client));

  const auto f = close_by_client(rig, s);
  CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + 70000));
  CHECK(field(f, "u2c_bytes") == std::to_string(cc.size() + 70000));
  if (passthrough) {
    // Framed until the switch (after the data phase's first read), then
    // spliced: not counted, and their anomalies not seen.
    CHECK(field(f, "passthrough") == "1");
    CHECK(std::stoul(field(f, "c2u_frames")) <= 10001);
    CHECK(std::stoul(field(f, "u2c_frames")) <= 10001);
    const std::string a = field(f, "anomalies");
    CHECK((a == "<absent>" || std::stoul(a) <= 2 * non_eot));
  } else {
    CHECK(field(f, "c2u_frames") == "10001");
    CHECK(field(f, "u2c_frames") == "10001");
    CHECK(field(f, "anomalies") == std::to_string(2 * non_eot));
  }
  CHECK(field(f, "decode_errors") == "<absent>");
  CHECK(field(f, "raw") == "<absent>");
  rig.stop();
}

TEST_CASE("relay-stream: a stalled half frame is held without spinning, then delivered whole", "[relay-stream]") {
  // Framing in the data phase is what this tests: pass-through (which
  // splices the data phase unframed) is off.
  Options o;
  o.listener_extra = "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V5");
  const ByteVec cc = t::vector_bytes("V6");
  handshake(rig, s, cr, cc, cc);

  ByteVec payload(93);
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i * 7);
  const ByteVec frame = t::make_dt(codec::Bytes(payload), true);
  REQUIRE(frame.size() == 100);
  REQUIRE(s.client.send_all(codec::Bytes(slice(frame, 0, 10))));

  // About one second of stall: nothing of the frame reaches the upstream, and
  // the proxy sleeps (a busy loop would burn ~100 ticks in that second).
  const auto before = cpu_ticks(rig.proxy->pid());
  REQUIRE(before);
  CHECK_FALSE(s.up->wait_bytes(cr.size() + 1, Millis(1000)));
  const auto after = cpu_ticks(rig.proxy->pid());
  REQUIRE(after);
  INFO("CPU ticks during the stall: " << (*after - *before) << " (" << ::sysconf(_SC_CLK_TCK) << " per second)");
  CHECK(*after - *before < 20);
  CHECK(s.up->size() == cr.size());

  REQUIRE(s.client.send_all(codec::Bytes(slice(frame, 10, frame.size()))));
  REQUIRE(s.up->wait_bytes(cr.size() + frame.size()));
  CHECK(hex(slice(s.up->bytes(), cr.size(), s.up->size())) == hex(frame));

  // A fresh session meanwhile works as ever.
  {
    Session fresh = rig.open();
    handshake(rig, fresh, vendor_cr(), t::vendor_cc(), t::vendor_cc_repaired());
    const ByteVec dt = t::make_dt("fresh", true);
    REQUIRE(fresh.client.send_all(codec::Bytes(dt)));
    REQUIRE(fresh.up->wait_bytes(vendor_cr().size() + dt.size()));
    CHECK(hex(slice(fresh.up->bytes(), vendor_cr().size(), fresh.up->size())) == hex(dt));
    REQUIRE(fresh.up->send(dt));
    REQUIRE_STRICT_FRAME(fresh.client, dt);
    const auto f = close_by_client(rig, fresh);
    CHECK(field(f, "reason") == "client-closed");
    CHECK(filter_counts(f).find("reserved.repaired=1") != std::string::npos);
  }

  const auto f = close_by_client(rig, s);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "c2u_frames") == "2");
  CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + frame.size()));
  CHECK(field(f, "decode_errors") == "<absent>");
  rig.stop();
}

TEST_CASE("relay-stream: a client that closes mid-frame still has its bytes relayed", "[relay-stream]") {
  // Framing in the data phase is what this tests: pass-through (which
  // splices the data phase unframed) is off.
  Options o;
  o.listener_extra = "passthrough = false";
  Rig rig(o);
  REQUIRE_RIG(rig);
  Session s = rig.open();
  const ByteVec cr = t::vector_bytes("V5");
  const ByteVec cc = t::vector_bytes("V6");
  handshake(rig, s, cr, cc, cc);

  ByteVec payload(93, 0x5A);
  const ByteVec frame = t::make_dt(codec::Bytes(payload), true);
  const ByteVec part = slice(frame, 0, 10);
  REQUIRE(s.client.send_all(codec::Bytes(part)));
  CHECK_FALSE(s.up->wait_bytes(cr.size() + 1, kQuiet));  // held: the frame is incomplete
  s.client.shutdown_write();

  // Do no harm: what the client sent reaches the upstream, then its FIN.
  REQUIRE(s.up->wait_eof());
  CHECK(hex(s.up->bytes()) == hex(cat({cr, part})));
  s.up->shutdown_write();
  CHECK(s.client.wait_eof());
  CHECK(s.client.take_buffered().empty());

  const auto f = rig.close_fields(s.client_addr);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "decode_errors") == "1");  // the truncated frame
  CHECK(field(f, "c2u_frames") == "1");
  // c2u_bytes counts what went toward the upstream, the relayed partial frame included.
  CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + part.size()));
  CHECK(f.count("c2u_held") == 0);  // relayed, so not held at the close
  rig.stop();
}
