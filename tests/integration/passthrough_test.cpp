// Pass-through (issue 7) through the real binary and real sockets: once the
// CC has been relayed and no filter needs the data phase, isoproxy splices
// the bytes (socket -> pipe -> socket) instead of framing them. The switch
// mid-session is exact, streams are byte-exact both ways, half-close, resets,
// idle_timeout, SIGTERM drain and backpressure behave as in the framed path,
// and passthrough = false or a data-phase filter keep framing.
//
// Every wait is on an event with a deadline (bytes or EOF arriving, a log
// line, the process exiting). The only polling, bounded, is of what no event
// announces: the admin endpoint's counters and the proxy's RSS and CPU time.
// The one deliberate pause is the backpressure stall whose CPU is measured.
// Helper threads never use Catch2 assertions; the test thread checks.
#include <catch2/catch.hpp>

#include <poll.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
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

#include <nlohmann/json.hpp>

#include "codec/text.h"
#include "support/handover.h"
#include "support/http.h"
#include "support/peers.h"
#include "support/proxy_process.h"

using namespace std::chrono_literals;
using isoproxy::test::ByteVec;
using isoproxy::test::Conn;
using isoproxy::test::Millis;
using isoproxy::test::ProxyProcess;
using isoproxy::test::TestServer;
using isoproxy::test::cat;
using isoproxy::test::mismatch;
using Upstream = isoproxy::test::HandoverUpstream;
using json = nlohmann::json;
namespace codec = isoproxy::codec;
namespace t = isoproxy::test;

namespace {

using Clock = std::chrono::steady_clock;
constexpr Millis kWait{10000};

std::string hex(const ByteVec& v) { return codec::to_hex(codec::Bytes(v)); }

// DT frames with random payloads of 0..max octets (EOT set), `total` octets or a little more.
ByteVec dt_stream(std::uint32_t seed, std::size_t total, std::size_t max_payload = 8185) {
  std::mt19937 rng(seed);
  ByteVec out;
  out.reserve(total + max_payload + 7);
  while (out.size() < total) {
    ByteVec payload(rng() % (max_payload + 1));
    for (auto& b : payload) b = static_cast<std::uint8_t>(rng());
    const ByteVec dt = t::make_dt(codec::Bytes(payload), true);
    out.insert(out.end(), dt.begin(), dt.end());
  }
  return out;
}

// Writes all of `data` in chunks of random size (1 octet to 150 KB), each its own send().
bool send_split(int fd, const ByteVec& data, std::uint32_t seed, Clock::time_point deadline) {
  std::mt19937 rng(seed);
  return t::send_raw(fd, codec::Bytes(data), deadline, &rng);
}

// Reads until `n` octets have arrived (or EOF/error/deadline).
ByteVec recv_n(int fd, std::size_t n, Clock::time_point deadline) {
  ByteVec out;
  out.reserve(n);
  std::vector<std::uint8_t> buf(1 << 16);
  while (out.size() < n) {
    const auto left = std::chrono::duration_cast<Millis>(deadline - Clock::now()).count();
    if (left <= 0) break;
    pollfd p{fd, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(left)) <= 0) continue;
    const ssize_t r = ::recv(fd, buf.data(), std::min(buf.size(), n - out.size()), MSG_DONTWAIT);
    if (r > 0) out.insert(out.end(), buf.begin(), buf.begin() + r);
    else if (r == 0 || (errno != EAGAIN && errno != EINTR)) break;
  }
  return out;
}

// utime + stime of a process, in clock ticks.
std::optional<long long> cpu_ticks(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string all((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto paren = all.rfind(')');
  if (paren == std::string::npos) return std::nullopt;
  std::istringstream rest(all.substr(paren + 1));
  std::vector<std::string> f;
  for (std::string w; rest >> w;) f.push_back(w);
  if (f.size() < 13) return std::nullopt;
  return std::stoll(f[11]) + std::stoll(f[12]);
}


std::string config(std::uint16_t upstream_port, const std::string& listener_extra = "",
                   const std::string& filters = R"(["reserved", "annotate"])", const std::string& global = "") {
  return "[global]\n" + (global.empty() ? std::string("drain_timeout = \"5s\"\n") : global) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n\n" +
         "[[listener]]\nname = \"pt\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream_port) + "\"\nfilters = " + filters + "\n" + listener_extra + "\n\n" +
         "[filter.reserved]\nkind = \"tpkt-reserved\"\n\n[filter.annotate]\nkind = \"tsap-annotate\"\n\n" +
         "[filter.any]\nkind = \"tpkt-reserved\"\ntpdu = [\"any\"]\n";
}

struct Rig {
  Upstream upstream;
  std::unique_ptr<ProxyProcess> proxy;
  std::uint16_t port = 0;
  std::uint16_t admin = 0;
  std::size_t sessions = 0;

  explicit Rig(const std::string& listener_extra = "", const std::string& filters = R"(["reserved", "annotate"])",
               const std::string& global = "") {
    proxy = std::make_unique<ProxyProcess>(config(upstream.port(), listener_extra, filters, global));
    if (!proxy->started()) return;
    port = proxy->listen_port("pt").value_or(0);
    admin = t::admin_port(*proxy).value_or(0);
  }
  std::string log() const { return proxy->text(); }

  // A client connected and its upstream connection; CR (vendor TSAPs) and
  // the vendor CC (reserved 0x11) exchanged, the CC arriving repaired.
  struct Pair {
    Conn client;
    Conn* up = nullptr;
    std::string client_addr;
  };
  Pair open(bool handshake = true) {
    Pair p;
    p.client = t::connect_to("127.0.0.1", port);
    INFO(p.client.error());
    REQUIRE(p.client.valid());
    p.client.set_nodelay();
    p.client_addr = p.client.local_address();
    p.up = upstream.wait_conn(sessions);
    INFO(log());
    REQUIRE(p.up != nullptr);
    ++sessions;
    if (!handshake) return p;
    const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
    REQUIRE(p.client.send_all(codec::Bytes(cr)));
    const auto got_cr = p.up->recv_exact(cr.size());
    REQUIRE(got_cr);
    REQUIRE(*got_cr == cr);
    REQUIRE(p.up->send_all(codec::Bytes(t::vendor_cc())));
    const auto cc = p.client.recv_exact(t::vendor_cc_repaired().size());
    REQUIRE(cc);
    REQUIRE(hex(*cc) == hex(t::vendor_cc_repaired()));  // reserved 0x11 -> 0x00
    // Pass-through starts with the data phase (an idle session never
    // allocates it): one DT each way, relayed framed, begins it.
    for (auto [from, to] : {std::pair{&p.client, p.up}, std::pair{p.up, &p.client}}) {
      REQUIRE(from->send_all(codec::Bytes(first_dt())));
      const auto got = to->recv_exact(first_dt().size());
      REQUIRE(got);
      REQUIRE(*got == first_dt());
    }
    return p;
  }
  static const ByteVec& first_dt() {
    static const ByteVec dt = t::make_dt("the first data", true);
    return dt;
  }

  // The live session of a client, from GET /sessions.
  std::optional<json> session(const std::string& client_addr) {
    const auto r = t::http(admin, "GET", "/sessions");
    if (r.status != 200) return std::nullopt;
    const json j = json::parse(r.body, nullptr, false);
    if (!j.is_object() || !j.contains("sessions")) return std::nullopt;
    for (const auto& s : j["sessions"]) {
      if (s.value("client", "") == client_addr) return s;
    }
    return std::nullopt;
  }
  // Polls /sessions (bounded) until pred holds for the client's session.
  std::optional<json> wait_session(const std::string& client_addr, const std::function<bool(const json&)>& pred,
                                   Millis timeout = kWait) {
    const auto deadline = Clock::now() + timeout;
    std::optional<json> s;
    for (;;) {
      s = session(client_addr);
      if (s && pred(*s)) return s;
      if (Clock::now() >= deadline) return s;
      std::this_thread::sleep_for(5ms);
    }
  }

  std::map<std::string, std::string> close_fields(const std::string& client_addr, Millis timeout = kWait) {
    const auto line = proxy->wait_for_line(t::close_line_of(client_addr), timeout);
    INFO(log());
    REQUIRE(line);
    UNSCOPED_INFO("close line: " << *line);
    return t::parse_fields(*line);
  }
};

#define REQUIRE_RIG(rig)             \
  do {                               \
    INFO((rig).log());               \
    REQUIRE((rig).upstream.ok());    \
    REQUIRE((rig).proxy->started()); \
    REQUIRE((rig).port != 0);        \
    REQUIRE((rig).admin != 0);       \
  } while (false)

std::string field(const std::map<std::string, std::string>& f, const std::string& key) {
  const auto it = f.find(key);
  return it == f.end() ? "<absent>" : it->second;
}

bool in_passthrough(const json& s) { return s.value("passthrough", false); }

// Streams `a` client -> upstream and `b` upstream -> client at the same
// time, both written in random splits; returns what each end received.
// `client_gets` octets are awaited at the client (b's size unless given).
std::pair<ByteVec, ByteVec> exchange(Rig::Pair& p, const ByteVec& a, const ByteVec& b, std::uint32_t seed,
                                     std::size_t client_gets = 0) {
  if (client_gets == 0) client_gets = b.size();
  const auto deadline = Clock::now() + 60s;
  std::atomic<bool> ok_a{false}, ok_b{false};
  std::thread wa([&] { ok_a = send_split(p.client.fd(), a, seed, deadline); });
  std::thread wb([&] { ok_b = send_split(p.up->fd(), b, seed + 1, deadline); });
  ByteVec at_client;
  std::thread rc([&] { at_client = recv_n(p.client.fd(), client_gets, deadline); });
  ByteVec at_up = recv_n(p.up->fd(), a.size(), deadline);
  wa.join();
  wb.join();
  rc.join();
  CHECK(ok_a);
  CHECK(ok_b);
  return {at_up, at_client};
}

}  // namespace

TEST_CASE("passthrough: with the default filters the CC is repaired, then megabytes both ways arrive byte-exact",
          "[passthrough]") {
  Rig rig;
  REQUIRE_RIG(rig);
  auto p = rig.open();
  const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  const std::size_t dt1 = Rig::first_dt().size();
  const auto s0 = rig.wait_session(p.client_addr, in_passthrough);
  INFO(rig.log());
  REQUIRE(s0);
  CHECK(in_passthrough(*s0));

  const ByteVec a = dt_stream(1, 24u << 20);
  const ByteVec b = dt_stream(2, 16u << 20);
  const auto [at_up, at_client] = exchange(p, a, b, 11);
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, b) == "");

  // The counters count what was spliced; frames stop at the handshake.
  const auto s = rig.wait_session(p.client_addr, [&](const json& j) {
    return j["to_upstream"]["bytes"] == cr.size() + dt1 + a.size() && j["to_client"]["bytes"] == t::vendor_cc().size() + dt1 + b.size();
  });
  REQUIRE(s);
  INFO(s->dump());
  CHECK((*s)["passthrough"] == true);
  CHECK((*s)["to_upstream"]["bytes"] == cr.size() + dt1 + a.size());
  CHECK((*s)["to_client"]["bytes"] == t::vendor_cc().size() + dt1 + b.size());
  // Framed until the switch (the CR, the CC, and the first DT if it came
  // before), spliced after it: frames and passthrough_bytes split `bytes`.
  for (const char* d : {"to_upstream", "to_client"}) {
    INFO(d);
    const auto frames = (*s)[d]["frames"].get<std::uint64_t>();
    const auto spliced = (*s)[d]["passthrough_bytes"].get<std::uint64_t>();
    const auto bytes = (*s)[d]["bytes"].get<std::uint64_t>();
    const std::uint64_t first = std::string(d) == "to_upstream" ? cr.size() : t::vendor_cc().size();
    CHECK((frames == 1 || frames == 2));
    CHECK(bytes - spliced == first + (frames == 2 ? dt1 : 0));
  }
  CHECK((*s)["filters"]["reserved.repaired"] == 1);
  const auto stats = json::parse(t::http(rig.admin, "GET", "/stats").body, nullptr, false);
  INFO(stats.dump());

  // A clean close, as in the framed path.
  p.client.shutdown_write();
  REQUIRE(p.up->wait_eof());
  p.up->shutdown_write();
  REQUIRE(p.client.wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "passthrough") == "1");
  CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + dt1 + a.size()));
  CHECK(field(f, "u2c_bytes") == std::to_string(t::vendor_cc().size() + dt1 + b.size()));
  CHECK(std::stoul(field(f, "c2u_frames")) <= 2);
}

TEST_CASE("passthrough: the switch mid-session is exact: CC and DTs coalesced, client DTs sent before the CC",
          "[passthrough]") {
  Rig rig;
  REQUIRE_RIG(rig);
  const bool half_frame = GENERATE(false, true);
  INFO((half_frame ? "the CC's write ends inside a DT" : "the CC's write ends at a frame boundary"));
  auto p = rig.open(/*handshake=*/false);
  const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  // The client does not wait for the CC: CR and two DTs in one write.
  const ByteVec early = cat({t::make_dt("early one", false), t::make_dt("early two", true)});
  REQUIRE(p.client.send_all(codec::Bytes(cat({cr, early}))));
  const auto got = p.up->recv_exact(cr.size() + early.size());
  REQUIRE(got);
  CHECK(hex(*got) == hex(cat({cr, early})));

  // The upstream's CC and its first DTs in one write (half a DT more with half_frame).
  const ByteVec dts = dt_stream(3, 20000, 3000);
  const ByteVec more = dt_stream(4, 300000, 8000);
  const std::size_t cut = half_frame ? 5 : 0;  // octets of `more` in the coalesced write
  REQUIRE(p.up->send_all(codec::Bytes(cat({t::vendor_cc(), dts, ByteVec(more.begin(), more.begin() + cut)}))));
  // Whole frames go on at once; a partial one waits in the framer for its end.
  const ByteVec want_first = cat({t::vendor_cc_repaired(), dts});
  const auto first = p.client.recv_exact(want_first.size());
  REQUIRE(first);
  CHECK(mismatch(*first, want_first) == "");
  // Then the rest, both ways at once.
  const ByteVec rest(more.begin() + cut, more.end());
  const ByteVec a = dt_stream(5, 2u << 20);
  const auto [at_up, at_client] = exchange(p, a, rest, 21, more.size());
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, more) == "");
  const auto s = rig.wait_session(p.client_addr, in_passthrough);
  REQUIRE(s);
  CHECK(in_passthrough(*s));

  p.up->shutdown_write();
  REQUIRE(p.client.wait_eof());
  p.client.shutdown_write();
  REQUIRE(p.up->wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "reason") == "upstream-closed");
  CHECK(field(f, "passthrough") == "1");
  CHECK(field(f, "c2u_bytes") == std::to_string(cr.size() + early.size() + a.size()));
  CHECK(field(f, "u2c_bytes") == std::to_string(t::vendor_cc().size() + dts.size() + more.size()));
  CHECK(field(f, "filters").find("reserved.repaired=1") != std::string::npos);
}

TEST_CASE("passthrough: passthrough = false, a data-phase filter or malformed = close keep framing", "[passthrough]") {
  struct Case {
    const char* what;
    std::string extra, filters;
  };
  const Case c = GENERATE(Case{"passthrough = false", "passthrough = false", R"(["reserved", "annotate"])"},
                          Case{"tpkt-reserved tpdu = any", "", R"(["any", "annotate"])"},
                          Case{"malformed = close", "malformed = \"close\"", R"(["reserved", "annotate"])"});
  INFO(c.what);
  Rig rig(c.extra, c.filters);
  REQUIRE_RIG(rig);
  auto p = rig.open();
  const ByteVec a = dt_stream(6, 1u << 20, 2000);
  const ByteVec b = dt_stream(7, 1u << 20, 2000);
  std::size_t frames_a = 0;
  {
    // Count a's frames with the codec's framer.
    codec::TpktFramer fr(65535);
    codec::Bytes in(a);
    for (;;) {
      auto r = fr.next(in);
      if (r.status != codec::TpktFramer::kFrame) break;
      ++frames_a;
    }
  }
  REQUIRE(frames_a > 100);
  const auto [at_up, at_client] = exchange(p, a, b, 31);
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, b) == "");
  const auto s = rig.wait_session(p.client_addr, [&](const json& j) { return j["to_upstream"]["frames"] == 2 + frames_a; });
  REQUIRE(s);
  INFO(s->dump());
  CHECK((*s)["passthrough"] == false);
  CHECK((*s)["to_upstream"]["frames"] == 2 + frames_a);  // CR, the first DT, a's
  CHECK((*s)["to_upstream"]["passthrough_bytes"] == 0);
  p.client.shutdown_write();
  REQUIRE(p.up->wait_eof());
  p.up->shutdown_write();
  REQUIRE(p.client.wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "passthrough") == "<absent>");
  CHECK(field(f, "c2u_frames") == std::to_string(2 + frames_a));
}

TEST_CASE("passthrough: half-close each way: the other direction still flows in full", "[passthrough]") {
  const bool client_first = GENERATE(true, false);
  INFO((client_first ? "client FIN first" : "upstream FIN first"));
  Rig rig;
  REQUIRE_RIG(rig);
  auto p = rig.open();
  REQUIRE(rig.wait_session(p.client_addr, in_passthrough));
  Conn& first = client_first ? p.client : *p.up;
  Conn& second = client_first ? *p.up : p.client;
  const ByteVec last_words = dt_stream(8, 64 * 1024);
  REQUIRE(first.send_all(codec::Bytes(last_words)));
  first.shutdown_write();
  const auto got = second.recv_exact(last_words.size());
  REQUIRE(got);
  CHECK(mismatch(*got, last_words) == "");
  REQUIRE(second.wait_eof());  // the FIN followed the bytes
  // The half-closed peer still receives everything the other sends.
  const ByteVec answer = dt_stream(9, 3u << 20);
  std::thread w([&] { send_split(second.fd(), answer, 41, Clock::now() + 30s); });
  const ByteVec back = recv_n(first.fd(), answer.size(), Clock::now() + 30s);
  w.join();
  CHECK(mismatch(back, answer) == "");
  second.shutdown_write();
  REQUIRE(first.wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "reason") == (client_first ? "client-closed" : "upstream-closed"));
  CHECK(field(f, "passthrough") == "1");
}

// The bytes waiting in the receive queue of isoproxy's socket whose local port
// is `local` and remote port `remote` (loopback IPv4), from /proc/net/tcp.
std::optional<std::size_t> rx_queue(std::uint16_t local, std::uint16_t remote) {
  std::ifstream in("/proc/net/tcp");
  std::string line;
  std::getline(in, line);  // the header
  char want_local[8], want_remote[8];
  std::snprintf(want_local, sizeof want_local, ":%04X", local);
  std::snprintf(want_remote, sizeof want_remote, ":%04X", remote);
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string sl, loc, rem, st, queues;
    f >> sl >> loc >> rem >> st >> queues;
    if (loc.ends_with(want_local) && rem.ends_with(want_remote)) {
      const auto colon = queues.find(':');
      if (colon == std::string::npos) return std::nullopt;
      return static_cast<std::size_t>(std::stoul(queues.substr(colon + 1), nullptr, 16));
    }
  }
  return std::nullopt;
}

TEST_CASE("passthrough: a FIN right behind a burst that fills a wake-up's splice rounds still reaches the peer",
          "[passthrough]") {
  // One wake-up splices at most 16 pipes of 256 KiB. A burst of 15 pipes'
  // worth with the FIN behind it is read in rounds 0-14, and round 15 meets
  // the FIN: it was left to a round that never came, and the session never
  // ended. The proxy is stopped while the burst and the FIN queue up, so
  // that one wake-up sees them all.
  Rig rig;
  REQUIRE_RIG(rig);
  for (const std::size_t pipes : {15u}) {
    INFO(pipes << " pipes of 256 KiB, then FIN");
    auto p = rig.open();
    REQUIRE(rig.wait_session(p.client_addr, in_passthrough));
    // The upstream reads everything, to EOF.
    std::atomic<std::size_t> got{0};
    std::atomic<bool> eof{false};
    std::thread reader([&] {
      std::vector<std::uint8_t> buf(1 << 20);
      const auto deadline = Clock::now() + 60s;
      while (Clock::now() < deadline) {
        pollfd pf{p.up->fd(), POLLIN, 0};
        if (::poll(&pf, 1, 100) <= 0) continue;
        const ssize_t r = ::recv(p.up->fd(), buf.data(), buf.size(), MSG_DONTWAIT);
        if (r > 0) got += static_cast<std::size_t>(r);
        if (r == 0) {
          eof = true;
          return;
        }
        if (r < 0 && errno != EAGAIN && errno != EINTR) return;
      }
    });
    // 64 MiB first, so that the socket buffers grow large enough to hold the burst.
    const ByteVec warm = dt_stream(100 + pipes, 64u << 20, 32 * 1024 - 7);
    REQUIRE(p.client.send_all(codec::Bytes(warm)));
    const auto warm_deadline = Clock::now() + 30s;
    while (got < warm.size() && Clock::now() < warm_deadline) std::this_thread::sleep_for(1ms);
    REQUIRE(got == warm.size());
    const ByteVec burst = dt_stream(200 + pipes, pipes * 256 * 1024, 32 * 1024 - 7);
    ByteVec exact(burst.begin(), burst.begin() + static_cast<std::ptrdiff_t>(pipes * 256 * 1024));
    REQUIRE(rig.proxy->signal(SIGSTOP));
    struct Resume {
      ProxyProcess& proxy;
      ~Resume() { proxy.signal(SIGCONT); }
    } resume{*rig.proxy};
    std::thread writer([&] {
      p.client.send_all(codec::Bytes(exact));
      p.client.shutdown_write();
    });
    // Until the burst waits whole in isoproxy's receive queue (if the
    // buffers are too small for that, the test still checks the FIN).
    const auto queued_deadline = Clock::now() + 5s;
    while (Clock::now() < queued_deadline && rx_queue(rig.port, p.client.local_port()).value_or(0) < exact.size()) {
      std::this_thread::sleep_for(1ms);
    }
    REQUIRE(rig.proxy->signal(SIGCONT));
    writer.join();
    reader.join();
    CHECK(got == warm.size() + exact.size());
    CHECK(eof);  // the client's FIN reached the upstream
    p.up->close();
    const auto f = rig.close_fields(p.client_addr);
    CHECK(field(f, "reason") == "client-closed");
  }
}

TEST_CASE("passthrough: a peer reset each way closes with the framed path's reason and resets the other peer",
          "[passthrough]") {
  const bool client_resets = GENERATE(true, false);
  // The other peer may have half-closed already: it still reads, and must
  // learn that the stream failed, not that it ended.
  const bool other_half_closed = GENERATE(false, true);
  INFO((client_resets ? "the client resets" : "the upstream resets") << (other_half_closed ? ", the other half-closed" : ""));
  Rig rig;
  REQUIRE_RIG(rig);
  const auto baseline = rig.proxy->open_fds();
  REQUIRE(baseline);
  {
    auto p = rig.open();
    REQUIRE(rig.wait_session(p.client_addr, in_passthrough));
    const ByteVec a = dt_stream(10, 256 * 1024);
    const auto [at_up, at_client] = exchange(p, a, a, 51);
    CHECK(mismatch(at_up, a) == "");
    Conn& resetter = client_resets ? p.client : *p.up;
    Conn& other = client_resets ? *p.up : p.client;
    if (other_half_closed) {
      other.shutdown_write();
      REQUIRE(resetter.wait_eof());  // its FIN went through isoproxy
    }
    resetter.close_with_reset();
    CHECK(other.wait_eof());
    CHECK(other.reset_seen());
    const auto f = rig.close_fields(p.client_addr);
    CHECK(field(f, "reason") == (client_resets ? "client-reset" : "upstream-reset"));
    CHECK(field(f, "passthrough") == "1");
  }
  // No pipe or socket is left behind.
  std::optional<std::size_t> now;
  const auto deadline = Clock::now() + 5s;
  while ((now = rig.proxy->open_fds()) != baseline && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
  INFO("fds at start " << *baseline << ", now " << now.value_or(0));
  CHECK(now == baseline);
}

TEST_CASE("passthrough: idle_timeout ends a quiet session in pass-through, spliced bytes count as activity",
          "[passthrough]") {
  Rig rig("idle_timeout = \"600ms\"");
  REQUIRE_RIG(rig);
  auto p = rig.open();
  REQUIRE(rig.wait_session(p.client_addr, in_passthrough));
  const auto start = Clock::now();
  // Traffic every 200 ms for about 1.2 s keeps it alive (twice the timeout).
  const ByteVec dt = t::make_dt("keepalive", true);
  for (int i = 0; i < 6; ++i) {
    REQUIRE(p.client.send_all(codec::Bytes(dt)));
    const auto got = p.up->recv_exact(dt.size());
    REQUIRE(got);
    std::this_thread::sleep_for(200ms);  // pacing, shorter than the timeout
  }
  CHECK_FALSE(p.client.eof_seen());
  // Then silence: the session ends.
  CHECK(p.client.wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "reason").rfind("idle-timeout", 0) == 0);
  CHECK(field(f, "passthrough") == "1");
  CHECK(Clock::now() - start >= 1200ms);
}

TEST_CASE("passthrough: SIGTERM drains a quiet pass-through session at once, a stuck one at the drain timeout",
          "[passthrough]") {
  Rig rig("", R"(["reserved", "annotate"])", "drain_timeout = \"2s\"\n");
  REQUIRE_RIG(rig);
  auto quiet = rig.open();
  auto stuck = rig.open();
  REQUIRE(rig.wait_session(quiet.client_addr, in_passthrough));
  REQUIRE(rig.wait_session(stuck.client_addr, in_passthrough));
  // The quiet one delivered everything before the signal.
  const ByteVec a = dt_stream(12, 1u << 20);
  const auto [at_up, at_client] = exchange(quiet, a, a, 61);
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, a) == "");
  // The stuck one has bytes in its pipe that its upstream does not read:
  // never a quiet point (frame boundaries are not known in pass-through).
  const ByteVec big = dt_stream(13, 32u << 20);
  std::atomic<std::size_t> sent{0};
  std::atomic<bool> stop{false}, stalled{false};
  std::thread writer([&] {
    std::size_t off = 0;
    while (!stop && off < big.size()) {
      const ssize_t n = ::send(stuck.client.fd(), big.data() + off, std::min<std::size_t>(65536, big.size() - off),
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
        sent = off;
      } else if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        pollfd pf{stuck.client.fd(), POLLOUT, 0};
        if (::poll(&pf, 1, 50) == 0) stalled = true;  // 50 ms without room: everything on the way is full
      } else {
        break;
      }
    }
  });
  REQUIRE(rig.wait_session(stuck.client_addr,
                           [](const json& j) { return j["to_upstream"]["passthrough_bytes"].get<std::uint64_t>() > 0; }));
  // Until the upstream's buffers, the pipe and the client's socket are all
  // full, bytes still flow and a quiet moment may come (a legitimate stop).
  {
    const auto until = Clock::now() + 10s;
    while (!stalled && Clock::now() < until) std::this_thread::sleep_for(10ms);
    REQUIRE(stalled);
  }
  const auto t0 = Clock::now();
  REQUIRE(rig.proxy->signal(SIGTERM));
  // The quiet session: FIN to both peers at once, the peers close, reason drain.
  CHECK(quiet.client.wait_eof(1500ms));
  CHECK(quiet.up->wait_eof(1500ms));
  quiet.client.shutdown_write();
  quiet.up->shutdown_write();
  const auto fq = rig.close_fields(quiet.client_addr);
  CHECK(field(fq, "reason") == "drain");
  CHECK(field(fq, "passthrough") == "1");
  CHECK(Clock::now() - t0 < 1500ms);
  // The stuck one is closed at the deadline.
  const auto fb = rig.close_fields(stuck.client_addr);
  CHECK(field(fb, "reason") == "drain-timeout");
  CHECK(field(fb, "passthrough") == "1");
  CHECK(Clock::now() - t0 >= 1900ms);
  stop = true;
  writer.join();
  const auto status = rig.proxy->wait_exit();
  CHECK(status.value_or(-1) == 0);
}

TEST_CASE("passthrough: backpressure: a reader that stops reading stops the source, RSS stays bounded, no spinning",
          "[passthrough][backpressure]") {
  Rig rig;
  REQUIRE_RIG(rig);
  auto p = rig.open();
  REQUIRE(rig.wait_session(p.client_addr, in_passthrough));
  const auto rss0 = rig.proxy->rss_kib();
  REQUIRE(rss0);
  // 64 MB toward an upstream that does not read: the client's writes must
  // stall once the kernel buffers and the one pipe are full.
  const ByteVec a = dt_stream(14, 64u << 20);
  std::atomic<std::size_t> sent{0};
  std::atomic<bool> done{false}, ok{false};
  std::thread writer([&] {
    std::size_t off = 0;
    const auto deadline = Clock::now() + 60s;
    while (off < a.size() && Clock::now() < deadline) {
      const ssize_t n = ::send(p.client.fd(), a.data() + off, std::min<std::size_t>(65536, a.size() - off),
                               MSG_NOSIGNAL | MSG_DONTWAIT);
      if (n > 0) {
        off += static_cast<std::size_t>(n);
        sent = off;
        continue;
      }
      if (n < 0 && (errno == EAGAIN || errno == EINTR)) {
        pollfd pf{p.client.fd(), POLLOUT, 0};
        ::poll(&pf, 1, 100);
        continue;
      }
      break;
    }
    ok = off == a.size();
    done = true;
  });
  // Let it stall: about one second in which the sent count stops moving.
  const auto before = cpu_ticks(rig.proxy->pid());
  std::size_t last = 0;
  for (int i = 0; i < 10; ++i) {
    std::this_thread::sleep_for(100ms);  // pacing: sample the stalled writer
    last = sent;
  }
  const auto after = cpu_ticks(rig.proxy->pid());
  const auto rss1 = rig.proxy->rss_kib();
  REQUIRE(before);
  REQUIRE(after);
  REQUIRE(rss1);
  INFO("sent " << last << " of " << a.size() << "; proxy CPU ticks in the stall " << (*after - *before)
               << "; RSS " << *rss0 << " -> " << *rss1 << " KiB");
  CHECK(last < a.size() / 2);               // the proxy stopped reading the client
  CHECK(*after - *before < 20);             // and does not spin meanwhile
  CHECK(*rss1 - *rss0 < 4096);              // the pipe, not user space, holds the backlog
  // The reader resumes: everything arrives, byte-exact.
  const ByteVec got = recv_n(p.up->fd(), a.size(), Clock::now() + 60s);
  writer.join();
  CHECK(ok);
  CHECK(mismatch(got, a) == "");
  p.client.shutdown_write();
  REQUIRE(p.up->wait_eof());
  p.up->shutdown_write();
  REQUIRE(p.client.wait_eof());
  const auto f = rig.close_fields(p.client_addr);
  CHECK(field(f, "passthrough") == "1");
  CHECK(field(f, "c2u_bytes") ==
        std::to_string(t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1").size() + Rig::first_dt().size() + a.size()));
}

TEST_CASE("passthrough: a session that exchanged only CR and CC stays framed, its first DT starts pass-through",
          "[passthrough]") {
  Rig rig;
  REQUIRE_RIG(rig);
  auto p = rig.open(/*handshake=*/false);
  const ByteVec cr = t::make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
  REQUIRE(p.client.send_all(codec::Bytes(cr)));
  REQUIRE(p.up->recv_exact(cr.size()));
  REQUIRE(p.up->send_all(codec::Bytes(t::vendor_cc())));
  REQUIRE(p.client.recv_exact(t::vendor_cc_repaired().size()));
  // Established and idle: no pass-through state (nothing to wait for: it
  // starts only after a read that carried a DT, and none was sent).
  const auto idle = rig.wait_session(p.client_addr, [](const json& j) { return j["state"] == "established"; });
  REQUIRE(idle);
  CHECK((*idle)["passthrough"] == false);
  const ByteVec dt = t::make_dt("first", true);
  REQUIRE(p.client.send_all(codec::Bytes(dt)));
  const auto got = p.up->recv_exact(dt.size());
  REQUIRE(got);
  CHECK(*got == dt);
  const auto s = rig.wait_session(p.client_addr, in_passthrough);
  REQUIRE(s);
  CHECK(in_passthrough(*s));
  CHECK((*s)["to_upstream"]["frames"] == 2);  // the CR and the DT, framed; nothing since
  // And it relays on, spliced.
  const ByteVec a = dt_stream(15, 1u << 20);
  const auto [at_up, at_client] = exchange(p, a, a, 81);
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, a) == "");
  const auto after = rig.wait_session(p.client_addr, [&](const json& j) {
    return j["to_upstream"]["passthrough_bytes"] == a.size() && j["to_client"]["passthrough_bytes"] == a.size();
  });
  REQUIRE(after);
  CHECK((*after)["to_upstream"]["frames"] == 2);
  CHECK((*after)["to_client"]["frames"] == 1);
}
