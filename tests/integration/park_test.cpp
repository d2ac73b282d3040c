// Parked sessions (issue 7) through the real binary and real sockets: bytes
// exact across park/unpark, framed and in pass-through; FIN, reset, admin
// close, SIGTERM and idle_timeout reach a parked session; park_after = "0"
// never parks; bad values fail `check`; /stats sessions.parked sums the workers.
// Waits are on events with deadlines; the only polling, bounded, is of the
// admin endpoint and /proc (no event announces a park); the one deliberate
// window is the absence check of park_after = "0". Helper threads never
// use Catch2 assertions.
#include <catch2/catch.hpp>

#include <signal.h>
#include <unistd.h>

#include <algorithm>
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

#include "support/handover.h"
#include "support/http.h"
#include "support/peers.h"
#include "support/process.h"
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
constexpr const char* kToken = "0123456789abcdef-test";
constexpr const char* kPark = "park_after = \"50ms\"\n";
constexpr const char* kFramed = "passthrough = false\n";

// A DT with n octets of payload derived from seed.
ByteVec dt_of(std::size_t n, std::uint8_t seed, bool eot = true) {
  ByteVec p(n);
  for (std::size_t i = 0; i < n; ++i) p[i] = static_cast<std::uint8_t>(seed + i * 13);
  return t::make_dt(codec::Bytes(p), eot);
}

// DTs of 0..8185 octets of payload, `total` octets or a little more.
ByteVec dt_stream(std::uint32_t seed, std::size_t total) {
  ByteVec out;
  for (std::uint32_t i = seed; out.size() < total; ++i) {
    const ByteVec dt = dt_of((i * 7919u) % 8186u, static_cast<std::uint8_t>(i), i % 3 != 0);
    out.insert(out.end(), dt.begin(), dt.end());
  }
  return out;
}

const ByteVec& test_cr() {
  static const ByteVec cr = t::make_cr("CALLING", "CALLED");
  return cr;
}
const ByteVec& test_cc() {
  static const ByteVec cc = [] {
    const auto d = codec::decode_frame(codec::Bytes(test_cr()));
    return t::make_cc_reply(d->tpdu, 0x0029, 0x00);
  }();
  return cc;
}
const ByteVec first_dt_ = t::make_dt("the first data", true);
const ByteVec& first_dt() { return first_dt_; }


bool is_parked(const json& s) { return s.contains("parked") && s["parked"] == true; }
bool in_passthrough(const json& s) { return s.value("passthrough", false); }
// A number of a JSON object, or -1 when absent or not a number.
std::int64_t num(const json& j, const char* key) {
  return j.is_object() && j.contains(key) && j[key].is_number() ? j[key].get<std::int64_t>() : -1;
}
std::int64_t parks(const json& s) { return num(s, "parks"); }
// GET /stats: sessions parked right now, all workers (sessions.parked).
std::int64_t stats_parked(const json& st) {
  const std::int64_t n = st.contains("sessions") ? num(st["sessions"], "parked") : -1;
  if (n < 0) UNSCOPED_INFO("/stats has no number sessions.parked: " << st.dump());
  return n;
}
// A counter of one direction ("to_upstream", "to_client") of a session.
std::int64_t dir_num(const json& s, const char* dir, const char* key) { return s.contains(dir) ? num(s[dir], key) : -1; }
std::int64_t frames(const json& s, const char* dir) { return dir_num(s, dir, "frames"); }

std::string field(const std::map<std::string, std::string>& f, const std::string& key) {
  const auto it = f.find(key);
  return it == f.end() ? "<absent>" : it->second;
}

// One proxy with listeners "pk0", "pk1"... (each with its extra TOML) toward one Upstream.
struct Rig {
  Upstream upstream;
  std::unique_ptr<ProxyProcess> proxy;
  std::vector<std::uint16_t> ports;
  std::uint16_t port = 0;  // pk0's
  std::uint16_t admin = 0;
  std::size_t sessions = 0;

  explicit Rig(const std::string& listener_extra = kPark, const std::string& global = "",
               const std::vector<std::string>& more_listeners = {}) {
    std::vector<std::string> extras{listener_extra};
    extras.insert(extras.end(), more_listeners.begin(), more_listeners.end());
    std::string toml = "[global]\ndrain_timeout = \"5s\"\n" + global + "\n[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"" +
                       kToken + "\"\n\n";
    // A listener whose extra TOML has a tsap-route filter has no upstream
    // line; "{UPSTREAM}" in the extra stands for the upstream's port.
    const std::string up_port = std::to_string(upstream.port());
    for (std::size_t i = 0; i < extras.size(); ++i) {
      std::string extra = extras[i];
      for (std::size_t at; (at = extra.find("{UPSTREAM}")) != std::string::npos;) extra.replace(at, 10, up_port);
      const bool routed = extra.find("kind = \"tsap-route\"") != std::string::npos;
      toml += "[[listener]]\nname = \"pk" + std::to_string(i) + "\"\nlisten = \"127.0.0.1:0\"\n" +
              (routed ? std::string() : "upstream = \"127.0.0.1:" + up_port + "\"\n") + extra + "\n\n";
    }
    REQUIRE(upstream.ok());
    proxy = std::make_unique<ProxyProcess>(toml);
    INFO(proxy->text());
    REQUIRE(proxy->started());
    for (std::size_t i = 0; i < extras.size(); ++i) ports.push_back(proxy->listen_port("pk" + std::to_string(i)).value_or(0));
    port = ports.front();
    admin = t::admin_port(*proxy).value_or(0);
    REQUIRE(std::count(ports.begin(), ports.end(), 0) == 0);
    REQUIRE(admin != 0);
  }
  std::string log() const { return proxy->text(); }

  struct Pair {
    Conn client;
    Conn* up = nullptr;
    std::string addr;  // the client's address, as /sessions and the close line show it
  };
  // A client and its upstream connection, CR and CC exchanged (and with
  // `data`, one DT each way: what starts pass-through where it applies).
  Pair open(bool data = false, std::uint16_t to = 0) {
    Pair p;
    p.client = t::connect_to("127.0.0.1", to != 0 ? to : port);
    INFO(p.client.error());
    REQUIRE(p.client.valid());
    p.client.set_nodelay();
    p.addr = p.client.local_address();
    // The CR first, as a client sends it: the upstream connection is
    // complete at the upstream when the CR arrives (smart_connect).
    REQUIRE(p.client.send_all(codec::Bytes(test_cr())));
    p.up = upstream.wait_conn(sessions);
    INFO(log());
    REQUIRE(p.up != nullptr);
    ++sessions;
    REQUIRE(mismatch(p.up->recv_exact(test_cr().size()), test_cr()) == "");
    REQUIRE(p.up->send_all(codec::Bytes(test_cc())));
    REQUIRE(mismatch(p.client.recv_exact(test_cc().size()), test_cc()) == "");
    if (data) {
      for (auto [from, to_] : {std::pair{&p.client, p.up}, std::pair{p.up, &p.client}}) {
        REQUIRE(from->send_all(codec::Bytes(first_dt())));
        REQUIRE(mismatch(to_->recv_exact(first_dt().size()), first_dt()) == "");
      }
    }
    return p;
  }

  json sessions_json() {
    const auto r = t::http(admin, "GET", "/sessions");
    const json j = r.status == 200 ? json::parse(r.body, nullptr, false) : json();
    return j.is_object() && j.contains("sessions") && j["sessions"].is_array() ? j["sessions"] : json::array();
  }
  json stats() {
    const auto r = t::http(admin, "GET", "/stats");
    return r.status == 200 ? json::parse(r.body, nullptr, false) : json();
  }
  std::optional<json> session(const std::string& addr) {
    for (const auto& s : sessions_json()) {
      if (s.value("client", "") == addr) return s;
    }
    return std::nullopt;
  }
  // Polls /sessions (bounded) until pred holds for the client's session;
  // nullopt at the deadline (the last one seen goes to the failure message).
  std::optional<json> wait_session(const std::string& addr, const std::function<bool(const json&)>& pred) {
    const auto deadline = Clock::now() + kWait;
    for (;;) {
      auto s = session(addr);
      if (s && pred(*s)) return s;
      if (Clock::now() >= deadline) {
        UNSCOPED_INFO("session " << addr << " last seen: " << (s ? s->dump() : std::string("not listed")));
        return std::nullopt;
      }
      std::this_thread::sleep_for(5ms);
    }
  }
  // Waits for the session to be parked (and parked more than `after` times).
  json wait_parked(const std::string& addr, std::int64_t after = 0) {
    const auto s = wait_session(addr, [&](const json& j) { return is_parked(j) && parks(j) > after; });
    INFO(log());
    INFO("waiting for parked = true and parks > " << after);
    REQUIRE(s);
    return *s;
  }

  // The client's FIN reaches the upstream, the upstream's the client: the close line's fields.
  std::map<std::string, std::string> close_cleanly(Pair& p) {
    p.client.shutdown_write();
    REQUIRE(p.up->wait_eof(kWait));
    p.up->shutdown_write();
    REQUIRE(p.client.wait_eof(kWait));
    auto f = close_fields(p.addr);
    CHECK(std::regex_match(field(f, "duration"), std::regex(R"(\d+\.\d{3}s)")));  // seconds, three decimals
    return f;
  }
  std::map<std::string, std::string> close_fields(const std::string& addr) {
    const auto line = proxy->wait_for_line(t::close_line_of(addr), kWait);
    INFO(log());
    REQUIRE(line);
    UNSCOPED_INFO("close line: " << *line);
    return t::parse_fields(*line);
  }
};

// Streams `a` client -> upstream and `b` upstream -> client at the same time,
// each written in random splits; what each end received.
std::pair<std::optional<ByteVec>, std::optional<ByteVec>> exchange(Rig::Pair& p, const ByteVec& a, const ByteVec& b,
                                                                   std::uint32_t seed) {
  const auto deadline = Clock::now() + 30s;
  std::atomic<bool> ok_a{false}, ok_b{false};
  std::thread wa([&] {
    std::mt19937 rng(seed);
    ok_a = t::send_raw(p.client.fd(), codec::Bytes(a), deadline, &rng);
  });
  std::thread wb([&] {
    std::mt19937 rng(seed + 1);
    ok_b = t::send_raw(p.up->fd(), codec::Bytes(b), deadline, &rng);
  });
  std::optional<ByteVec> at_client;
  std::thread rc([&] { at_client = p.client.recv_exact(b.size(), 30s); });
  auto at_up = p.up->recv_exact(a.size(), 30s);
  wa.join();
  wb.join();
  rc.join();
  CHECK(ok_a);
  CHECK(ok_b);
  return {std::move(at_up), std::move(at_client)};
}

}  // namespace

TEST_CASE("park: a framed session parks when idle, DTs both ways unpark it byte-exact, and it parks again", "[park]") {
  Rig rig(std::string(kFramed) + kPark);
  auto p = rig.open();
  const json s1 = rig.wait_parked(p.addr);
  CHECK(s1.at("state") == "established");
  CHECK(frames(s1, "to_upstream") == 1);  // the CR
  CHECK(frames(s1, "to_client") == 1);    // the CC
  CHECK(stats_parked(rig.stats()) == 1);  // the only session, idle: nothing unparks it

  // Client -> upstream: four DTs in one write, the first bytes the parked session sees.
  const ByteVec a = cat({dt_of(1, 1), dt_of(100, 2), dt_of(3000, 3, false), dt_of(8000, 4)});
  REQUIRE(p.client.send_all(codec::Bytes(a)));
  CHECK(mismatch(p.up->recv_exact(a.size()), a) == "");
  // Upstream -> client: three DTs written in random splits (inside headers too).
  const ByteVec b = cat({dt_of(0, 5), dt_of(2047, 6), dt_of(60000, 7)});
  std::mt19937 rng(42);
  REQUIRE(t::send_raw(p.up->fd(), codec::Bytes(b), Clock::now() + kWait, &rng));
  CHECK(mismatch(p.client.recv_exact(b.size()), b) == "");
  // Right after: half a TPKT header from the client. A partial frame held
  // is no quiet point, so once it is read the session stays unparked.
  const ByteVec c = dt_of(500, 8);
  REQUIRE(p.client.send_all(codec::Bytes(c.data(), 3)));
  const auto s2 = rig.wait_session(p.addr, [](const json& j) {
    return j.contains("parked") && !is_parked(j) && frames(j, "to_upstream") == 5 && frames(j, "to_client") == 4;
  });
  CHECK(s2);  // unparked, and the frame counts include both batches
  REQUIRE(p.client.send_all(codec::Bytes(c.data() + 3, c.size() - 3)));
  CHECK(mismatch(p.up->recv_exact(c.size()), c) == "");

  // Quiet again: it parks again.
  const json s3 = rig.wait_parked(p.addr, parks(s1));
  CHECK(parks(s3) >= 2);
  // A frame split across writes that starts while parked, upstream -> client.
  const ByteVec d = dt_of(1200, 9);
  REQUIRE(p.up->send_all(codec::Bytes(d.data(), 2)));
  REQUIRE(rig.wait_session(p.addr, [](const json& j) { return j.contains("parked") && !is_parked(j); }));
  REQUIRE(p.up->send_all(codec::Bytes(d.data() + 2, d.size() - 2)));
  CHECK(mismatch(p.client.recv_exact(d.size()), d) == "");
  CHECK(rig.wait_session(p.addr, [](const json& j) { return frames(j, "to_upstream") == 6 && frames(j, "to_client") == 5; }));
  rig.wait_parked(p.addr, parks(s3));

  // The close line counts everything, as without parking.
  const auto f = rig.close_cleanly(p);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "c2u_frames") == "6");
  CHECK(field(f, "u2c_frames") == "5");
  CHECK(field(f, "c2u_bytes") == std::to_string(test_cr().size() + a.size() + c.size()));
  CHECK(field(f, "u2c_bytes") == std::to_string(test_cc().size() + b.size() + d.size()));
}

TEST_CASE("park: a routed session woken from parking goes on relaying, its route is not chosen again", "[park]") {
  // The route was chosen by the CR. A woken session's DTs are not a first
  // frame to route by: without a default they would end it (no-route), with
  // one they would count as routed by default.
  std::string fallback;
  SECTION("without a default route") {}
  SECTION("with a default route") { fallback = "default = \"127.0.0.1:{UPSTREAM}\"\n"; }
  Rig rig(std::string(kFramed) + kPark + "filters = [\"route\"]\n\n[filter.route]\nkind = \"tsap-route\"\n" + fallback +
          "[[filter.route.route]]\nname = \"called\"\ncalled = [\"CALLED\"]\nupstream = \"127.0.0.1:{UPSTREAM}\"\n");
  auto p = rig.open();
  const json s1 = rig.wait_parked(p.addr);
  for (int round = 0; round < 2; ++round) {
    const ByteVec a = dt_of(300 + round, static_cast<std::uint8_t>(10 + round));
    REQUIRE(p.client.send_all(codec::Bytes(a)));
    CHECK(mismatch(p.up->recv_exact(a.size()), a) == "");
    const ByteVec b = dt_of(200 + round, static_cast<std::uint8_t>(20 + round));
    REQUIRE(p.up->send_all(codec::Bytes(b)));
    CHECK(mismatch(p.client.recv_exact(b.size()), b) == "");
    rig.wait_parked(p.addr, parks(s1) + round);
  }
  const auto f = rig.close_cleanly(p);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "route") == "route/called");
  CHECK(field(f, "filters") == "route.routed=1");
  CHECK(field(f, "c2u_frames") == "3");
}

TEST_CASE("park: a pass-through session parks, a bulk transfer unparks it byte-exact and still spliced", "[park]") {
  Rig rig;
  auto p = rig.open(/*data=*/true);
  const auto s0 = rig.wait_session(p.addr, [](const json& j) { return in_passthrough(j) && is_parked(j); });
  INFO(rig.log());
  REQUIRE(s0);
  INFO("before: " << s0->dump());

  const ByteVec a = dt_stream(1, 1u << 20);
  const ByteVec b = dt_stream(2, 1u << 20);
  const auto [at_up, at_client] = exchange(p, a, b, 11);
  CHECK(mismatch(at_up, a) == "");
  CHECK(mismatch(at_client, b) == "");
  // Counted in full, and back in pass-through: the bulk was spliced (all of
  // it, or all but what the waking read may have framed), not framed.
  const auto grew = [&](const json& j, const char* dir, const char* key) { return dir_num(j, dir, key) - dir_num(*s0, dir, key); };
  const auto n_a = static_cast<std::int64_t>(a.size()), n_b = static_cast<std::int64_t>(b.size());
  const auto s = rig.wait_session(p.addr, [&](const json& j) {
    return grew(j, "to_upstream", "bytes") == n_a && grew(j, "to_client", "bytes") == n_b;
  });
  REQUIRE(s);
  INFO("after: " << s->dump());
  CHECK(in_passthrough(*s));
  CHECK(grew(*s, "to_upstream", "passthrough_bytes") > n_a / 2);
  CHECK(grew(*s, "to_client", "passthrough_bytes") > n_b / 2);
  // Its pipes empty again, it parks again, still in pass-through.
  const json s2 = rig.wait_parked(p.addr, parks(*s0));
  CHECK(in_passthrough(s2));

  const auto f = rig.close_cleanly(p);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "passthrough") == "1");
  CHECK(field(f, "c2u_bytes") == std::to_string(test_cr().size() + first_dt().size() + a.size()));
  CHECK(field(f, "u2c_bytes") == std::to_string(test_cc().size() + first_dt().size() + b.size()));
}

TEST_CASE("park: a client FIN reaches a parked session: half-close as usual, reason client-closed", "[park]") {
  const bool pt = GENERATE(false, true);
  INFO((pt ? "pass-through" : "framed"));
  Rig rig(std::string(pt ? "" : kFramed) + kPark);
  auto p = rig.open(pt);
  rig.wait_parked(p.addr);
  p.client.shutdown_write();
  CHECK(p.up->wait_eof(kWait));
  CHECK_FALSE(p.up->reset_seen());
  // Half-closed: the upstream's answer still reaches the client.
  const ByteVec answer = dt_of(700, 3);
  REQUIRE(p.up->send_all(codec::Bytes(answer)));
  CHECK(mismatch(p.client.recv_exact(answer.size()), answer) == "");
  p.up->shutdown_write();
  CHECK(p.client.wait_eof(kWait));
  CHECK_FALSE(p.client.reset_seen());
  const auto f = rig.close_fields(p.addr);
  CHECK(field(f, "reason") == "client-closed");
}

TEST_CASE("park: a client reset reaches a parked session: reason client-reset, the upstream leg ends, no fd left",
          "[park]") {
  const bool pt = GENERATE(false, true);
  INFO((pt ? "pass-through" : "framed"));
  Rig rig(std::string(pt ? "" : kFramed) + kPark);
  // The proxy's fd count once it settles at or below `limit` (bounded poll: no event announces it).
  auto fds_settled = [&](std::size_t limit) {
    std::optional<std::size_t> n;
    const auto deadline = Clock::now() + 5s;
    while ((n = rig.proxy->open_fds()).value_or(0) > limit && Clock::now() < deadline) std::this_thread::sleep_for(5ms);
    return n.value_or(0);
  };
  const std::size_t before = rig.proxy->open_fds().value_or(0);
  REQUIRE(before > 0);
  {
    // A first session parks and resets: what a worker keeps for parking
    // (an epoll set, at most one fd) exists before the baseline is taken.
    auto w = rig.open(pt);
    rig.wait_parked(w.addr);
    w.client.close_with_reset();
    rig.close_fields(w.addr);
  }
  const std::size_t baseline = fds_settled(before + 1);
  REQUIRE(baseline <= before + 1);
  auto p = rig.open(pt);
  rig.wait_parked(p.addr);
  p.client.close_with_reset();
  CHECK(p.up->wait_eof(kWait));
  const auto f = rig.close_fields(p.addr);
  CHECK(field(f, "reason") == "client-reset");
  // Nothing of the session (sockets, its place in the park set) is left behind.
  CHECK(fds_settled(baseline) <= baseline);
}

TEST_CASE("park: an admin close of a parked session closes both peers (admin-close)", "[park]") {
  Rig rig(std::string(kFramed) + kPark);
  auto p = rig.open();
  const json s = rig.wait_parked(p.addr);
  const auto r = t::http(rig.admin, "POST", "/sessions/" + std::to_string(s.at("id").get<std::uint64_t>()) + "/close",
                         std::string("Authorization: Bearer ") + kToken + "\r\n");
  INFO(r.body);
  CHECK(r.status == 200);
  CHECK(p.client.wait_eof(kWait));
  CHECK(p.up->wait_eof(kWait));
  const auto f = rig.close_fields(p.addr);
  CHECK(field(f, "reason") == "admin-close");
  CHECK(stats_parked(rig.stats()) == 0);
}

TEST_CASE("park: SIGTERM with a parked session drains it at once, logs its close and exits 0", "[park]") {
  const bool pt = GENERATE(false, true);
  INFO((pt ? "pass-through" : "framed"));
  Rig rig(std::string(pt ? "" : kFramed) + kPark);
  auto p = rig.open(pt);
  rig.wait_parked(p.addr);
  const auto t0 = Clock::now();
  REQUIRE(rig.proxy->signal(SIGTERM));
  // A parked session is quiet: FIN to both peers well before drain_timeout (5 s).
  CHECK(p.client.wait_eof(3000ms));
  CHECK(p.up->wait_eof(3000ms));
  p.client.shutdown_write();
  p.up->shutdown_write();
  const auto f = rig.close_fields(p.addr);
  CHECK(field(f, "reason") == "drain");
  const auto status = rig.proxy->wait_exit(kWait);
  INFO(rig.log());
  CHECK(status.value_or(-1) == 0);
  CHECK(Clock::now() - t0 < 4000ms);
  CHECK(rig.proxy->count_lines(std::regex("handles still open")) == 0);
}

TEST_CASE("park: idle_timeout closes a parked session", "[park]") {
  const bool pt = GENERATE(false, true);
  INFO((pt ? "pass-through" : "framed"));
  Rig rig(std::string(pt ? "" : kFramed) + "idle_timeout = \"200ms\"\n" + kPark);
  auto p = rig.open(pt);
  rig.wait_parked(p.addr);
  CHECK(p.client.wait_eof(kWait));
  CHECK(p.up->wait_eof(kWait));
  const auto f = rig.close_fields(p.addr);
  CHECK(field(f, "reason") == "idle-timeout: no byte either way for 200ms");
}

TEST_CASE("park: park_after = '0' never parks, the default does", "[park]") {
  const std::string zero = GENERATE(as<std::string>{}, "0", "0s");
  INFO("park_after = \"" << zero << "\"");
  // pk0: never; pk1: 50 ms, the control; pk2: the default.
  Rig rig(std::string(kFramed) + "park_after = \"" + zero + "\"\n", "", {std::string(kFramed) + kPark, kFramed});
  auto never = rig.open(false, rig.ports[0]);
  auto control = rig.open(false, rig.ports[1]);
  auto by_default = rig.open(false, rig.ports[2]);
  // The control parks: the same polling sees a park when there is one.
  rig.wait_parked(control.addr);
  // At least 300 ms of idleness (six times the control's park_after) and
  // five looks at it, however slow /sessions answers on a loaded machine
  // (bounded): never parked.
  const auto until = Clock::now() + 300ms;
  const auto bound = Clock::now() + kWait;
  int samples = 0;
  std::optional<json> last;
  bool ever_parked = false;
  while ((Clock::now() < until || samples < 5) && Clock::now() < bound) {
    last = rig.session(never.addr);
    if (!last) break;
    ++samples;
    ever_parked = ever_parked || is_parked(*last) || parks(*last) != 0;
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(last);
  INFO(last->dump());
  CHECK(last->contains("parked"));
  CHECK(parks(*last) == 0);
  CHECK_FALSE(ever_parked);
  CHECK(samples >= 5);
  // The default (500 ms) parks, within a bounded wait.
  rig.wait_parked(by_default.addr);
}

TEST_CASE("park: a listener whose filters see the data phase does not park", "[park]") {
  // tpkt-reserved on DTs keeps per-session state (which values it logged)
  // that parking would drop; pk1, the control, repairs the CC only and parks.
  const std::string filters =
      "filters = [\"dt\"]\n\n[filter.dt]\nkind = \"tpkt-reserved\"\ntpdu = [\"CC\", \"DT\"]\n\n"
      "[filter.cc]\nkind = \"tpkt-reserved\"\ntpdu = [\"CC\"]\n";
  Rig rig(std::string(kPark) + filters, "", {std::string(kPark) + "filters = [\"cc\"]\n"});
  auto framed = rig.open(true, rig.ports[0]);
  auto control = rig.open(true, rig.ports[1]);
  rig.wait_parked(control.addr);
  const auto until = Clock::now() + 300ms;
  std::optional<json> last;
  bool ever_parked = false;
  while (Clock::now() < until) {
    last = rig.session(framed.addr);
    if (!last) break;
    ever_parked = ever_parked || is_parked(*last) || parks(*last) != 0;
    std::this_thread::sleep_for(10ms);
  }
  REQUIRE(last);
  INFO(last->dump());
  CHECK_FALSE(ever_parked);
  CHECK_FALSE(in_passthrough(*last));
}

TEST_CASE("park: a tsap-acl session is framed to its end (a later CR is judged) and still parks", "[park][acl]") {
  Rig rig(std::string(kPark) + "filters = [\"acl\"]\n\n[filter.acl]\nkind = \"tsap-acl\"\ndefault = \"allow\"\n");
  auto p = rig.open(true);
  rig.wait_parked(p.addr);
  auto s = rig.session(p.addr);
  REQUIRE(s);
  INFO(s->dump());
  CHECK_FALSE(in_passthrough(*s));
  // Woken by a DT, it relays it byte-exact, still framed.
  REQUIRE(p.client.send_all(codec::Bytes(first_dt())));
  REQUIRE(mismatch(p.up->recv_exact(first_dt().size()), first_dt()) == "");
  s = rig.session(p.addr);
  REQUIRE(s);
  CHECK(parks(*s) >= 1);
  CHECK_FALSE(in_passthrough(*s));
}

namespace {
// Voluntary context switches of every thread of `pid`: how often it slept
// and woke (a timer, a socket), from /proc.
long wakeups(pid_t pid) {
  long total = 0;
  std::error_code ec;
  for (const auto& task : std::filesystem::directory_iterator("/proc/" + std::to_string(pid) + "/task", ec)) {
    std::ifstream in(task.path() / "status");
    for (std::string line; std::getline(in, line);) {
      if (line.rfind("voluntary_ctxt_switches:", 0) == 0) total += std::stol(line.substr(24));
    }
  }
  return total;
}
}  // namespace

TEST_CASE("park: a session that can never park stops looking, instead of waking every park_after", "[park]") {
  // A data-phase filter keeps the session from parking for its whole life;
  // with park_after = 10ms, looking again each time would wake the worker
  // 100 times a second per idle session.
  const std::string filters = "park_after = \"10ms\"\nfilters = [\"dt\"]\n\n[filter.dt]\nkind = \"tpkt-reserved\"\ntpdu = [\"any\"]\n";
  Rig rig(filters, "log_level = \"debug\"\n");
  auto framed = rig.open(true, rig.ports[0]);
  INFO(rig.log());
  REQUIRE(rig.proxy->wait_for_line(std::regex(R"(\[S1\] will not park: a filter keeps per-session state)"), 10s));
  const long before = wakeups(rig.proxy->pid());
  const auto start = Clock::now();
  std::this_thread::sleep_for(1s);  // the span measured, not a wait for an event
  const long woke = wakeups(rig.proxy->pid()) - before;
  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start).count();
  INFO("wake-ups in " << ms << " ms: " << woke);
  CHECK(woke < 30);
  CHECK(rig.proxy->count_lines(std::regex("will not park")) == 1);
  // It still relays.
  const ByteVec dt = t::make_dt("after the idle second");
  REQUIRE(framed.client.send_all(codec::Bytes(dt)));
  REQUIRE(framed.up->recv_exact(dt.size(), 5s));
}

TEST_CASE("park: a peer that polls stops parking its session (back-off), one that goes quiet parks again", "[park]") {
  Rig rig(std::string(kFramed) + kPark);
  auto p = rig.open();
  const json first = rig.wait_parked(p.addr);
  // A request and its answer every 100 ms, twice park_after: without the
  // back-off, the session would park and wake on each of the 20.
  const ByteVec dt = t::make_dt("poll", true);
  for (int i = 0; i < 20; ++i) {
    REQUIRE(p.client.send_all(codec::Bytes(dt)));
    REQUIRE(mismatch(p.up->recv_exact(dt.size()), dt) == "");
    REQUIRE(p.up->send_all(codec::Bytes(dt)));
    REQUIRE(mismatch(p.client.recv_exact(dt.size()), dt) == "");
    std::this_thread::sleep_for(100ms);  // the polling period (the workload, not a wait for a result)
  }
  const auto polled = rig.session(p.addr);
  REQUIRE(polled);
  INFO(polled->dump());
  CHECK(parks(*polled) - parks(first) <= 4);
  // Quiet again: it parks (after its backed-off delay, at most 64 x 50 ms).
  // It may have parked already after the last answer (the snapshot above
  // can be taken just after), so: parked, and more often than before the
  // polling, whose requests each woke it.
  const json quiet = rig.wait_parked(p.addr, parks(first));
  CHECK(parks(quiet) >= parks(*polled));
}

TEST_CASE("park: isoproxy check rejects a bad park_after, naming the key", "[park][check]") {
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-park-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  auto check = [&](const std::string& value) {
    const auto file = dir / "park.toml";
    {
      std::ofstream(file) << "[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1102\"\n"
                             "park_after = " << value << "\n";
    }
    return t::run_process({isoproxy::test::isoproxy_binary(), "check", "-c", file.string()}, "", 20s);
  };
  for (const std::string good : {"\"0\"", "\"0s\"", "\"50ms\"", "\"2m\""}) {
    INFO("park_after = " << good);
    const auto r = check(good);
    INFO(r.out << r.err);
    CHECK(r.exit_code == 0);
  }
  for (const std::string bad : {"\"-1s\"", "5", "\"soon\"", "true", "\"\""}) {
    INFO("park_after = " << bad);
    const auto r = check(bad);
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("listener[0].park_after") != std::string::npos);
    CHECK(r.err.find("park.toml:5:") != std::string::npos);  // where, as for every key
  }
  std::filesystem::remove_all(dir);
}

TEST_CASE("park: with two workers, /stats parked is the number of parked sessions in /sessions", "[park][workers]") {
  constexpr std::size_t kConns = 12;
  Rig rig(std::string(kFramed) + kPark, "workers = 2\n");
  std::vector<Rig::Pair> pairs;
  for (std::size_t i = 0; i < kConns; ++i) pairs.push_back(rig.open());
  // Polls until /sessions counts `n` parked sessions and /stats says the same.
  auto wait_counts = [&](std::int64_t n) {
    std::int64_t listed = -1, stat = -1;
    json st;
    const auto deadline = Clock::now() + kWait;
    while (Clock::now() < deadline) {
      listed = 0;
      for (const auto& s : rig.sessions_json()) listed += is_parked(s) ? 1 : 0;
      st = rig.stats();
      stat = stats_parked(st);
      if (listed == n && stat == n) break;
      std::this_thread::sleep_for(5ms);
    }
    INFO("parked in /sessions " << listed << ", in /stats " << stat << "; " << st.dump());
    CHECK(listed == n);
    CHECK(stat == n);
    return st;
  };
  const json st = wait_counts(kConns);
  REQUIRE(st.contains("workers"));
  REQUIRE(st["workers"].size() == 2);
  for (const json& w : st["workers"]) CHECK(num(w, "active") > 0);  // both workers hold parked sessions

  // Five wake up with half a TPKT header each (held: they stay unparked).
  const ByteVec dt = dt_of(300, 4);
  for (std::size_t i = 0; i < 5; ++i) REQUIRE(pairs[i].client.send_all(codec::Bytes(dt.data(), 3)));
  wait_counts(kConns - 5);
  // Their frames complete and go through; all park again.
  for (std::size_t i = 0; i < 5; ++i) {
    REQUIRE(pairs[i].client.send_all(codec::Bytes(dt.data() + 3, dt.size() - 3)));
    CHECK(mismatch(pairs[i].up->recv_exact(dt.size()), dt) == "");
  }
  wait_counts(kConns);

  REQUIRE(rig.proxy->signal(SIGTERM));
  for (auto& p : pairs) {
    CHECK(p.client.wait_eof(kWait));
    p.client.shutdown_write();
    p.up->shutdown_write();
  }
  CHECK(rig.proxy->wait_exit(kWait).value_or(-1) == 0);
  CHECK(rig.proxy->count_lines(std::regex(R"(\[S\d+\] close reason=drain)")) == kConns);
}
