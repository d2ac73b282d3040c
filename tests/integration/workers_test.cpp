// `workers = N` through the real binary: N event loops on SO_REUSEPORT
// listeners. Relays byte-exact on every worker, the kernel spreads
// connections over them, the admin endpoint sums and merges what each
// holds, max_sessions stays process-wide, a reload reaches every worker and
// SIGTERM drains them all.
#include <signal.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <fstream>
#include <regex>
#include <set>
#include <string>
#include <vector>

#include "support/http.h"
#include "support/peers.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// Enough connections that the kernel's 4-tuple hash cannot put them all on
// one of two workers except with probability 2^-(kConns-1).
constexpr int kConns = 24;

std::string config(std::uint16_t upstream, int workers, const std::string& extra_global = "",
                   const std::string& extra_listener = "") {
  return "[global]\nworkers = " + std::to_string(workers) + "\n" + extra_global +
         "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef-test\"\n"
         "[[listener]]\nname = \"w\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream) + "\"\n" + extra_listener;
}

// CR/CC through the proxy, then one DT whose payload must come back unchanged.
bool relay_one(Conn& c, int n) {
  if (!c.send_all(make_cr("CALLING" + std::to_string(n), "CALLED"))) return false;
  auto cc = c.recv_frame(5s);
  if (!cc) return false;
  std::vector<std::uint8_t> payload(1000 + static_cast<std::size_t>(n));
  for (std::size_t i = 0; i < payload.size(); ++i) payload[i] = static_cast<std::uint8_t>(i * 7 + static_cast<std::size_t>(n));
  const auto dt = make_dt(payload);
  if (!c.send_all(dt)) return false;
  auto back = c.recv_frame(5s);
  return back && *back == dt;
}

json get_json(std::uint16_t aport, const std::string& path) {
  auto r = http(aport, "GET", path);
  REQUIRE(r.status == 200);
  return json::parse(r.body);
}

}  // namespace

TEST_CASE("workers: two loops relay byte-exact, both get connections, the admin endpoint sums them",
          "[workers][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy(config(up.port(), 2));
  auto port = proxy.listen_port("w", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  REQUIRE(proxy.wait_for_line(std::regex(R"(isoproxy ready: 1 listener, config .* \(2 workers\))"), 10s));

  std::vector<Conn> conns;
  for (int i = 0; i < kConns; ++i) {
    conns.push_back(connect_to("127.0.0.1", *port));
    REQUIRE(conns.back());
    REQUIRE(relay_one(conns.back(), i));
  }

  // Every session is open: the per-worker split, and totals equal to its sum.
  const json st = get_json(*aport, "/stats");
  REQUIRE(st["workers"].size() == 2);
  std::uint64_t accepted = 0, active = 0;
  for (const json& w : st["workers"]) {
    INFO(st["workers"].dump());
    CHECK(w["accepted"].get<std::uint64_t>() > 0);  // the kernel spread them
    CHECK(w["active"].get<std::uint64_t>() > 0);
    accepted += w["accepted"].get<std::uint64_t>();
    active += w["active"].get<std::uint64_t>();
  }
  CHECK(accepted == kConns);
  CHECK(active == kConns);
  CHECK(st["sessions"]["accepted"] == kConns);
  CHECK(st["sessions"]["active"] == kConns);
  CHECK(st["listeners"].size() == 1);
  CHECK(st["listeners"][0]["accepted"] == kConns);
  CHECK(st["listeners"][0]["active"] == kConns);
  const std::uint64_t per_session = 2 * (1000 + 0);  // lower bound: CR + DT each way at least
  CHECK(st["bytes"]["to_upstream"].get<std::uint64_t>() >= per_session);

  // /sessions: every worker's, ids unique and in order; each found by id.
  const json all = get_json(*aport, "/sessions");
  REQUIRE(all["sessions"].size() == static_cast<std::size_t>(kConns));
  CHECK_FALSE(all.contains("workers_missing"));
  std::vector<std::uint64_t> ids;
  for (const json& s : all["sessions"]) ids.push_back(s["id"].get<std::uint64_t>());
  CHECK(std::is_sorted(ids.begin(), ids.end()));
  CHECK(std::set<std::uint64_t>(ids.begin(), ids.end()).size() == ids.size());
  for (std::uint64_t id : ids) {
    const json one = get_json(*aport, "/sessions/" + std::to_string(id));
    CHECK(one["id"] == id);
  }

  // Prometheus: the same totals.
  const auto metrics = http(*aport, "GET", "/metrics").body;
  CHECK(metrics.find("isoproxy_sessions_accepted_total{listener=\"w\"} " + std::to_string(kConns) + "\n") != std::string::npos);

  // An admin close reaches the session on whichever worker holds it.
  REQUIRE(http(*aport, "POST", "/sessions/" + std::to_string(ids.back()) + "/close",
               "Authorization: Bearer 0123456789abcdef-test\r\n").status == 200);
  CHECK(conns.back().wait_eof(5s));
  conns.pop_back();

  // Closed: listed from every worker, most recent first.
  for (auto& c : conns) c.close();
  REQUIRE(proxy.wait_for_lines(std::regex(R"(\[S\d+\] close )"), kConns, 10s));
  const json closed = get_json(*aport, "/sessions?closed=1");
  CHECK(closed["sessions"].size() == static_cast<std::size_t>(kConns));
  // The admin close came first: it is the oldest, listed last.
  CHECK(closed["sessions"].back()["id"] == ids.back());
  CHECK(closed["sessions"].back()["close_reason"] == "admin-close");
  const json after = get_json(*aport, "/stats");
  CHECK(after["sessions"]["closed"] == kConns);
  CHECK(after["sessions"]["active"] == 0);

  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
  CHECK(proxy.wait_for_line(std::regex("stopped: " + std::to_string(kConns) + " sessions served"), 5s));
}

TEST_CASE("workers: max_sessions, global and per listener, is one limit for the whole process",
          "[workers][integration][limits]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  const bool global = GENERATE(true, false);
  const int limit = global ? 5 : 3;
  INFO((global ? "[global] max_sessions = " : "[[listener]] max_sessions = ") << limit);
  ProxyProcess proxy(global ? config(up.port(), 2, "max_sessions = 5\n")
                            : config(up.port(), 2, "", "max_sessions = 3\n"));
  auto port = proxy.listen_port("w", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  std::vector<Conn> held;
  for (int i = 0; i < limit; ++i) {
    held.push_back(connect_to("127.0.0.1", *port));
    REQUIRE(relay_one(held.back(), i));
  }
  // Every further connection is refused (accepted and closed at once),
  // whichever worker the kernel hands it to: a limit per worker would let
  // more through on the other one.
  for (int i = 0; i < kConns; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c);
    CHECK(c.wait_eof(5s));
  }
  const json st = get_json(*aport, "/stats");
  CHECK(st["sessions"]["active"] == limit);
  CHECK(st["sessions"]["refused"] == kConns);
  CHECK(st["listeners"][0]["refused"] == kConns);
  // A slot freed on one worker is free for both.
  held.pop_back();
  REQUIRE(proxy.wait_for_line(std::regex(R"(close reason=client-closed)"), 10s));
  Conn again = connect_to("127.0.0.1", *port);
  REQUIRE(relay_one(again, 99));
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("workers: a reload reaches every worker, a bind failure keeps the old config on all",
          "[workers][integration][reload]") {
  TestServer old_up(responder_handler());
  TestServer new_up(responder_handler());
  REQUIRE(old_up.ok());
  REQUIRE(new_up.ok());
  // A port held by someone else, for the failing reload.
  TestServer squatter(echo_handler());
  REQUIRE(squatter.ok());
  ProxyProcess proxy(config(old_up.port(), 2));
  auto port = proxy.listen_port("w", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  const auto path = proxy.config_path();

  // A listener that cannot bind: refused, the old upstream stays everywhere.
  {
    std::ofstream(path) << config(new_up.port(), 2) << "[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:" +
                                                          std::to_string(squatter.port()) + "\"\nupstream = \"127.0.0.1:1\"\n";
  }
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reload failed: listener x: cannot listen on 127.0.0.1:" +
                                         std::to_string(squatter.port()) + ": bind: address already in use"), 10s));
  for (int i = 0; i < kConns; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(relay_one(c, i));
  }
  CHECK(old_up.accepted_count() == static_cast<std::size_t>(kConns));
  CHECK(new_up.accepted_count() == 0);

  // The upstream changes and a listener is added: both workers serve both.
  {
    std::ofstream(path) << config(new_up.port(), 2)
                        << "[[listener]]\nname = \"added\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                               std::to_string(new_up.port()) + "\"\n";
  }
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded .*: 2 listeners"), 10s));
  auto added = proxy.listen_port("added", 10s);
  REQUIRE(added);
  const json before = get_json(*aport, "/stats");
  for (int i = 0; i < kConns; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(relay_one(c, i));
    Conn d = connect_to("127.0.0.1", *added);
    REQUIRE(relay_one(d, i));
  }
  CHECK(old_up.accepted_count() == static_cast<std::size_t>(kConns));
  CHECK(new_up.accepted_count() == static_cast<std::size_t>(2 * kConns));
  const json st = get_json(*aport, "/stats");
  for (std::size_t w = 0; w < 2; ++w) {
    INFO("worker " << w << ": " << st["workers"].dump() << " before " << before["workers"].dump());
    CHECK(st["workers"][w]["accepted"].get<std::uint64_t>() > before["workers"][w]["accepted"].get<std::uint64_t>());
  }
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("workers: SIGTERM drains the sessions of every worker and the process exits 0",
          "[workers][integration][drain]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy(config(up.port(), 2, "drain_timeout = \"5s\"\n"));
  auto port = proxy.listen_port("w", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  std::vector<Conn> conns;
  for (int i = 0; i < kConns; ++i) {
    conns.push_back(connect_to("127.0.0.1", *port));
    REQUIRE(relay_one(conns.back(), i));
  }
  const json st = get_json(*aport, "/stats");
  for (const json& w : st["workers"]) CHECK(w["active"].get<std::uint64_t>() > 0);
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_for_line(std::regex("SIGTERM: draining " + std::to_string(kConns) + " sessions"), 5s));
  // Every session, on either worker, ends cleanly at its frame boundary.
  for (auto& c : conns) CHECK(c.wait_eof(5s));
  CHECK(proxy.wait_exit(10s) == 0);
  CHECK(proxy.count_lines(std::regex(R"(\[S\d+\] close .*reason=drain)")) == static_cast<std::size_t>(kConns));
  CHECK(proxy.count_lines(std::regex("handles still open")) == 0);
  CHECK(proxy.wait_for_line(std::regex("stopped: " + std::to_string(kConns) + " sessions served"), 5s));
}

TEST_CASE("workers: the called-TSAP labels of /metrics are one set for every worker", "[workers][integration][metrics]") {
  // metrics_tsap_labels = 1: the first called TSAP any worker sees keeps its
  // series; every other value is counted apart, whichever worker has it.
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[global]\nworkers = 2\n[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_tsap_labels = 1\n"
                     "[[listener]]\nname = \"w\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"annotate\"]\n\n[filter.annotate]\nkind = \"tsap-annotate\"\n");
  auto port = proxy.listen_port("w", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  auto session = [&](const std::string& called) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c);
    REQUIRE(c.send_all(make_cr("CALLING", called)));
    REQUIRE(c.recv_frame(5s));
  };
  auto series = [&](const std::string& label) -> std::optional<std::uint64_t> {
    const std::string body = http(*aport, "GET", "/metrics").body;
    const std::string key = "isoproxy_called_tsap_sessions_total{called_tsap=\"" + label + "\"} ";
    const auto at = body.find(key);
    if (at == std::string::npos) return std::nullopt;
    return std::stoull(body.substr(at + key.size()));
  };
  session("ZZZ");
  // Counted at close: wait for it.
  REQUIRE(proxy.wait_for_line(std::regex("close reason=.* called=ZZZ"), 10s));
  // Enough sessions that both workers take some (kConns as above).
  for (int i = 0; i < kConns; ++i) session("AAA");
  REQUIRE(proxy.wait_for_lines(std::regex("close reason=.* called=AAA"), kConns, 10s));
  INFO(http(*aport, "GET", "/metrics").body);
  CHECK(series("ZZZ") == 1);
  const std::string body = http(*aport, "GET", "/metrics").body;
  CHECK(body.find("\nisoproxy_called_tsap_other_sessions_total " + std::to_string(kConns) + "\n") != std::string::npos);
  CHECK_FALSE(series("AAA"));
}
