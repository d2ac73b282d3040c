// The admin endpoint through the real binary: live sessions, closed ones,
// totals, Prometheus metrics, and the token that guards actions.
#include <signal.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>
#include <thread>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"
#include "support/http.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

// A strict reading of the Prometheus text exposition format (0.0.4): every
// sample belongs to a family announced by HELP and TYPE, names and labels
// are well-formed, values are numbers, no sample appears twice.
std::vector<std::string> prometheus_problems(const std::string& text) {
  std::vector<std::string> problems;
  std::set<std::string> typed, helped, samples;
  static const std::regex kHelp(R"(# HELP ([a-zA-Z_:][a-zA-Z0-9_:]*) .+)");
  static const std::regex kType(R"(# TYPE ([a-zA-Z_:][a-zA-Z0-9_:]*) (counter|gauge|histogram|summary|untyped))");
  static const std::regex kSample(
      R"(([a-zA-Z_:][a-zA-Z0-9_:]*)(\{([a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")(,[a-zA-Z_][a-zA-Z0-9_]*="(\\.|[^"\\])*")*\})? (-?[0-9.eE+-]+|NaN|\+Inf|-Inf))");
  std::istringstream in(text);
  int n = 0;
  for (std::string line; std::getline(in, line);) {
    ++n;
    std::smatch m;
    if (line.rfind("# HELP", 0) == 0) {
      if (!std::regex_match(line, m, kHelp)) problems.push_back("line " + std::to_string(n) + ": bad HELP");
      else helped.insert(m[1]);
    } else if (line.rfind("# TYPE", 0) == 0) {
      if (!std::regex_match(line, m, kType)) problems.push_back("line " + std::to_string(n) + ": bad TYPE");
      else if (!typed.insert(m[1]).second) problems.push_back("line " + std::to_string(n) + ": TYPE twice");
    } else if (!line.empty()) {
      if (!std::regex_match(line, m, kSample)) {
        problems.push_back("line " + std::to_string(n) + ": not a sample: " + line);
      } else {
        if (!typed.count(m[1]) || !helped.count(m[1])) problems.push_back("line " + std::to_string(n) + ": no HELP/TYPE for " + std::string(m[1]));
        const std::string key = line.substr(0, line.rfind(' '));
        if (!samples.insert(key).second) problems.push_back("line " + std::to_string(n) + ": duplicate sample " + key);
      }
    }
  }
  return problems;
}

}  // namespace

TEST_CASE("admin: counters move while a session streams, closed sessions keep reason and DR", "[admin][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const std::string config_text =
      "[admin]\nlisten = \"127.0.0.1:0\"\ntoken = \"0123456789abcdef-test\"\nallowed_hosts = [\"Proxy1.example.net\"]\n\n[[listener]]\nname = \"live\"\n"
      // Framed through the data phase: DT counts and the DR are what this watches.
      "passthrough = false\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
      std::to_string(up.port()) + "\"\nfilters = [\"annotate\", \"reserved\"]\n\n"
      "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n";
  ProxyProcess proxy(config_text);
  auto port = proxy.listen_port("live", 10s);
  REQUIRE(port);
  auto aport = admin_port(proxy);
  REQUIRE(aport);

  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
  REQUIRE(c.recv_frame(5s));

  // While the session streams, its byte counters move.
  std::uint64_t last = 0;
  for (int round = 0; round < 3; ++round) {
    const ByteVec dt = make_dt(std::string(1000, static_cast<char>('a' + round)));
    REQUIRE(c.send_all(dt));
    REQUIRE(c.recv_exact(dt.size(), 5s));
    auto r = http(*aport, "GET", "/sessions");
    REQUIRE(r.status == 200);
    const json j = json::parse(r.body);
    REQUIRE(j["sessions"].size() == 1);
    const json& s = j["sessions"][0];
    CHECK(s["state"] == "established");
    CHECK(s["listener"] == "live");
    CHECK(s["calling_tsap"]["ascii"] == "SWISSLIFETSAP");
    CHECK(s["called_tsap"]["ascii"] == "EXCHANGETSAP1");
    CHECK(s["tpdu_size"] == 2048);
    CHECK(s["filters"]["reserved.repaired"] == 1);
    const std::uint64_t now = s["to_upstream"]["bytes"];
    CHECK(now > last);
    CHECK(s["to_upstream"]["tpdus"]["DT"] == round + 1);
    last = now;
  }
  // Filtering by TSAP and by peer; an unknown state is a 400.
  CHECK(json::parse(http(*aport, "GET", "/sessions?tsap=EXCHANGETSAP1").body)["sessions"].size() == 1);
  CHECK(json::parse(http(*aport, "GET", "/sessions?tsap=NOPE").body)["sessions"].empty());
  // In hex, bare or as the close line shows a TSAP ("hex:..."), in either case.
  CHECK(json::parse(http(*aport, "GET", "/sessions?tsap=45584348414E4745545341503").body)["sessions"].empty());
  CHECK(json::parse(http(*aport, "GET", "/sessions?tsap=45584348414e47455453415031").body)["sessions"].size() == 1);
  CHECK(json::parse(http(*aport, "GET", "/sessions?tsap=hex:45584348414E47455453415031").body)["sessions"].size() == 1);
  CHECK(json::parse(http(*aport, "GET", "/sessions?peer=127.0.0.1").body)["sessions"].size() == 1);
  CHECK(http(*aport, "GET", "/sessions?state=sideways").status == 400);
  // A filter that could never match is a typo: a 400 that says so, not an empty list.
  for (const char* bad : {"tsap=hex:EXCHANGETSAP1", "tsap=hex:0", "tsap=", "closed=true", "closed=yes", "peer=garbage",
                          "peer=127.0.0.1:99999", "peer=host.example:102", "sate=established"}) {
    INFO(bad);
    const auto reply = http(*aport, "GET", std::string("/sessions?") + bad);
    CHECK(reply.status == 400);
    CHECK(json::parse(reply.body)["error"].get<std::string>().size() > 10);
  }
  CHECK(http(*aport, "GET", "/sessions?closed=0&peer=[::1]:102&tsap=hex:0102").status == 200);
  // Compact JSON by default (one line), indented with ?pretty=1; the same document.
  const std::string compact = http(*aport, "GET", "/stats").body;
  const std::string pretty = http(*aport, "GET", "/stats?pretty=1").body;
  CHECK(std::count(compact.begin(), compact.end(), '\n') == 1);
  CHECK(pretty.find("\n  \"sessions\"") != std::string::npos);
  CHECK(json::parse(pretty)["sessions"]["accepted"] == json::parse(compact)["sessions"]["accepted"]);

  // The client closes: the session is then listed as closed, with its reason.
  const auto id = json::parse(http(*aport, "GET", "/sessions").body)["sessions"][0]["id"].get<std::uint64_t>();
  REQUIRE(c.send_all(make_dt("bye")));
  REQUIRE(c.recv_frame(5s));
  c.close();
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  auto closed = http(*aport, "GET", "/sessions?state=closed");
  REQUIRE(closed.status == 200);
  const json cj = json::parse(closed.body);
  REQUIRE(cj["sessions"].size() == 1);
  CHECK(cj["sessions"][0]["state"] == "closed");
  CHECK(cj["sessions"][0]["close_reason"] == "client-closed");
  auto one = http(*aport, "GET", "/sessions/" + std::to_string(id));
  REQUIRE(one.status == 200);
  CHECK(json::parse(one.body)["id"] == id);
  CHECK(http(*aport, "GET", "/sessions/999999").status == 404);
  // DNS rebinding: a Host that is a name (not an IP literal, localhost or
  // a configured name) is refused; IP literals and localhost are served.
  {
    auto host = [&](const std::string& h) {
      Conn hc = connect_to("127.0.0.1", *aport);
      hc.send_all("GET /stats HTTP/1.1\r\nHost: " + h + "\r\nConnection: close\r\n\r\n");
      std::string all;
      for (;;) {
        auto some = hc.recv_some(65536, 5s);
        if (!some || some->empty()) break;
        all.append(some->begin(), some->end());
      }
      return all.size() > 12 ? std::stoi(all.substr(9, 3)) : 0;
    };
    CHECK(host("attacker.example:9102") == 403);
    CHECK(host("attacker.example") == 403);
    CHECK(host("127.0.0.1:" + std::to_string(*aport)) == 200);
    CHECK(host("localhost") == 200);
    CHECK(host("LOCALHOST:1") == 200);
    CHECK(host("[::1]:9102") == 200);
    CHECK(host("proxy1.example.net") == 200);  // in admin.allowed_hosts
    CHECK(host("127.0.0.1:x") == 403);
  }
  // closed=1 adds the closed sessions, but not to a list of another state.
  CHECK(json::parse(http(*aport, "GET", "/sessions?closed=1").body)["sessions"].size() == 1);
  CHECK(json::parse(http(*aport, "GET", "/sessions?state=established&closed=1").body)["sessions"].empty());

  // Totals.
  const json st = json::parse(http(*aport, "GET", "/stats").body);
  CHECK(st["sessions"]["accepted"] == 1);
  CHECK(st["sessions"]["closed"] == 1);
  CHECK(st["filter_actions"]["reserved.repaired"] == 1);
  CHECK(st["listeners"][0]["name"] == "live");

  // Actions need the token.
  CHECK(http(*aport, "POST", "/reload").status == 401);
  CHECK(http(*aport, "POST", "/reload", "Authorization: Bearer wrong-token-wrong-token\r\n").status == 401);
  CHECK(http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-tesT\r\n").status == 401);
  CHECK(http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-test-\r\n").status == 401);
  CHECK(http(*aport, "POST", "/reload", "Authorization: Basic 0123456789abcdef-test\r\n").status == 401);
  // Refusals are logged (once a second at most): a deploy script with a stale
  // token, or someone guessing, shows in the log.
  CHECK(proxy.wait_for_line(std::regex(R"(admin: POST /reload from 127\.0\.0\.1:\d+ refused \(401\): no Authorization header)"), 10s));
  // An action asked for with GET: 405 naming the method to use, not 404.
  auto got = http(*aport, "GET", "/reload");
  CHECK(got.status == 405);
  CHECK(json::parse(got.body)["error"] ==
        "POST /reload is an action: send it with POST and 'Authorization: Bearer <admin.token>'");
  CHECK(http(*aport, "GET", "/sessions/1/close").status == 405);
  // The reload has run when the answer comes: it says how it ended.
  auto done = http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-test\r\n");
  CHECK(done.status == 200);
  CHECK(json::parse(done.body)["reload"] == "done");
  CHECK(json::parse(done.body)["warnings"].empty());
  CHECK(proxy.wait_for_line(std::regex("reloaded "), 10s));  // logged before the answer; read from the pipe since
  CHECK(proxy.wait_for_line(std::regex("POST /reload: reloading "), 10s));  // not "SIGHUP": the log says what asked
  // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
  CHECK(http(*aport, "POST", "/reload", "Authorization: bearer 0123456789abcdef-test\r\n").status == 200);
  // A configuration that does not load: 422, with the errors, and the old one stays.
  REQUIRE(proxy.write_config("[[listener]]\nname = \"live\"\nlisten = \"127.0.0.1:0\"\nupstream = \"nowhere\"\n"));
  auto failed = http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-test\r\n");
  CHECK(failed.status == 422);
  const json fj = json::parse(failed.body);
  CHECK(fj["reload"] == "failed");
  REQUIRE(fj["errors"].size() == 1);
  CHECK(fj["errors"][0].get<std::string>().find("listener[0].upstream") != std::string::npos);
  CHECK(http(*aport, "GET", "/stats").status == 200);
  // One that loads with something to say: 200, and the warnings with it
  // (here an access log that cannot be opened, which stays as it was).
  REQUIRE(proxy.write_config(config_text + "\n[global]\naccess_log = \"/proc/isoproxy-access.log\"\n"));
  auto warned = http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-test\r\n");
  CHECK(warned.status == 200);
  const json wj = json::parse(warned.body);
  CHECK(wj["reload"] == "done");
  REQUIRE(wj["warnings"].size() == 1);
  CHECK(wj["warnings"][0].get<std::string>().find("the access log stays as it was") != std::string::npos);
  // What a reload cannot apply is said in the answer too, not only in the log.
  REQUIRE(proxy.write_config(config_text + "\n[global]\nworkers = 2\n"));
  auto later = http(*aport, "POST", "/reload", "Authorization: Bearer 0123456789abcdef-test\r\n");
  CHECK(later.status == 200);
  const json lj = json::parse(later.body);
  CHECK(lj["reload"] == "done");
  REQUIRE(lj["warnings"].size() == 1);
  CHECK(lj["warnings"][0] == "workers = 2 takes effect at the next start; 1 worker keeps running");
  CHECK(http(*aport, "DELETE", "/sessions").status == 405);
  CHECK(http(*aport, "GET", "/nothing-here").status == 404);

  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin: an endpoint that cannot listen stops the start with one clear line", "[admin][integration]") {
  ProxyProcess proxy("[admin]\nlisten = \"unix:/nonexistent-isoproxy-dir/admin.sock\"\n\n[[listener]]\nlisten = \"127.0.0.1:0\"\n"
                     "upstream = \"127.0.0.1:9\"\n");
  REQUIRE(proxy.started());
  CHECK(proxy.wait_exit(10s) == 1);
  INFO(proxy.text());
  CHECK(proxy.count_lines(std::regex(R"(error admin endpoint: cannot listen on unix:/nonexistent-isoproxy-dir/admin\.sock: )"
                                     R"(bind: No such file or directory \(set \[admin\] listen, or "off"\)$)")) == 1);
  CHECK(proxy.count_lines(std::regex("listening on")) == 0);
}

TEST_CASE("admin: a DR from the upstream is decoded in the closed session", "[admin][integration]") {
  // An upstream that refuses every CR with DR reason 0x80.
  TestServer up([](Conn& conn) {
    auto cr = conn.recv_frame(5s);
    if (!cr) return;
    conn.send_all(make_dr(0x80, 0x01CA, 0x0029));
    conn.shutdown_write();
    conn.wait_eof(5s);
  });
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"dr\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"annotate\"]\n[filter.annotate]\nkind = \"tsap-annotate\"\n");
  auto port = proxy.listen_port("dr", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    auto got = c.recv_frame(5s);
    REQUIRE(got);
    CHECK(c.wait_eof(5s));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  const json j = json::parse(http(*aport, "GET", "/sessions?closed=1").body);
  REQUIRE(j["sessions"].size() == 1);
  const json& s = j["sessions"][0];
  CHECK(s["close_reason"] == "upstream-closed");
  CHECK(s["dr"]["reason"] == 0x80);
  CHECK(s["dr"]["name"] == "normal disconnect initiated by session entity");
  CHECK(s["dr"]["from"] == "upstream");
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin: /metrics is valid Prometheus text", "[admin][integration][metrics]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  ProxyProcess proxy("[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_tsap_labels = 2\n\n[[listener]]\nname = \"m\"\n"
                     "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"annotate\", \"reserved\"]\n\n"
                     "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n");
  auto port = proxy.listen_port("m", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  // Three sessions with three called TSAPs: the label set stays bounded at
  // two; the third is counted apart, and a TSAP named "other" is just a TSAP.
  // A TSAP is counted at close: each session is closed before the next, so
  // that which two get labels does not depend on the workers' timing.
  std::size_t closed = 0;
  for (const char* called : {"ONE", "other", "THREE"}) {
    {
      Conn c = connect_to("127.0.0.1", *port);
      REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", called)));
      REQUIRE(c.recv_frame(5s));
    }
    REQUIRE(proxy.wait_for_lines(std::regex("close reason="), ++closed, 10s));
  }
  auto r = http(*aport, "GET", "/metrics");
  REQUIRE(r.status == 200);
  CHECK(r.headers.find("Content-Type: text/plain; version=0.0.4") != std::string::npos);
  INFO(r.body);
  CHECK(prometheus_problems(r.body).empty());
  CHECK(r.body.find("isoproxy_sessions_accepted_total{listener=\"m\"} 3\n") != std::string::npos);
  CHECK(r.body.find("isoproxy_filter_actions_total{filter=\"reserved\",action=\"repaired\"} 3\n") != std::string::npos);
  CHECK(r.body.find("isoproxy_called_tsap_sessions_total{called_tsap=\"ONE\"} 1\n") != std::string::npos);
  CHECK(r.body.find("isoproxy_called_tsap_sessions_total{called_tsap=\"other\"} 1\n") != std::string::npos);
  CHECK(r.body.find("called_tsap=\"THREE\"") == std::string::npos);
  CHECK(r.body.find("\nisoproxy_called_tsap_other_sessions_total 1\n") != std::string::npos);
  // The validator itself must reject bad text.
  CHECK_FALSE(prometheus_problems("isoproxy_x{a=\"b\"} 1\n").empty());
  CHECK_FALSE(prometheus_problems("# HELP a x\n# TYPE a counter\na{b=c} 1\n").empty());
  if (on_path("promtool")) {
    // promtool reads the metrics from standard input.
    auto pt = run_process({"/usr/bin/env", "promtool", "check", "metrics"}, r.body);
    INFO(pt.out << pt.err);
    CHECK(pt.exit_code == 0);
  } else {
    WARN("promtool is not installed (Debian package prometheus): checked with the test's own parser only");
  }
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin: a reload that changes metrics_tsap_labels never moves a count back", "[admin][integration][metrics]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  auto config = [&](int labels) {
    return "[admin]\nlisten = \"127.0.0.1:0\"\nmetrics_tsap_labels = " + std::to_string(labels) +
           "\n\n[global]\nworkers = 2\n\n[[listener]]\nname = \"m\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
           std::to_string(up.port()) + "\"\nfilters = [\"annotate\"]\n\n[filter.annotate]\nkind = \"tsap-annotate\"\n";
  };
  ProxyProcess proxy(config(2));
  auto port = proxy.listen_port("m", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  INFO(proxy.text());
  std::size_t closed = 0;
  auto session = [&](const char* called) {
    {
      Conn c = connect_to("127.0.0.1", *port);
      REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", called)));
      REQUIRE(c.recv_frame(5s));
    }
    REQUIRE(proxy.wait_for_lines(std::regex("close reason="), ++closed, 10s));
  };
  auto metric = [&](const std::string& series) -> long {
    const std::string body = http(*aport, "GET", "/metrics").body;
    const auto at = body.find("\n" + series + " ");
    return at == std::string::npos ? -1 : std::stol(body.substr(at + series.size() + 2));
  };
  const std::string zz = "isoproxy_called_tsap_sessions_total{called_tsap=\"ZZ\"}";
  const std::string aa = "isoproxy_called_tsap_sessions_total{called_tsap=\"AA\"}";
  const std::string other = "isoproxy_called_tsap_other_sessions_total";
  // The first two values get labels, whatever their order in the alphabet.
  for (const char* called : {"ZZ", "YY", "AA", "BB"}) session(called);
  CHECK(metric(zz) == 1);
  CHECK(metric(aa) == -1);
  CHECK(metric(other) == 2);
  auto reload = [&](int labels, int n) {
    REQUIRE(proxy.write_config(config(labels)));
    REQUIRE(proxy.signal(SIGHUP));
    REQUIRE(proxy.wait_for_lines(std::regex("reloaded "), static_cast<std::size_t>(n), 10s));
  };
  // Fewer labels: the labelled series go on, nothing moves into "other".
  reload(1, 1);
  CHECK(metric(zz) == 1);
  CHECK(metric(other) == 2);
  session("ZZ");
  session("CC");
  CHECK(metric(zz) == 2);
  CHECK(metric(other) == 3);
  // More again: "other" does not give anything back; a new value gets a label.
  reload(3, 2);
  CHECK(metric(other) == 3);
  session("DD");
  CHECK(metric("isoproxy_called_tsap_sessions_total{called_tsap=\"DD\"}") == 1);
  CHECK(metric(other) == 3);
  // The upstreams are counted under a bounded label set too.
  CHECK(metric("isoproxy_upstream_sessions_total{upstream=\"127.0.0.1:" + std::to_string(up.port()) + "\"}") == 7);
  CHECK(metric("isoproxy_upstream_other_sessions_total") == 0);
  CHECK(json::parse(http(*aport, "GET", "/stats").body)["upstreams_other"] == 0);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("access log: one JSON line per session at close, the same fields as /sessions", "[admin][access-log][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-access-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto log = dir / "access.log";
  ProxyProcess proxy("[global]\naccess_log = \"" + log.string() + "\"\n\n[[listener]]\nname = \"acc\"\nlisten = \"127.0.0.1:0\"\n"
                     "upstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\nfilters = [\"annotate\", \"reserved\"]\n\n"
                     "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n");
  auto port = proxy.listen_port("acc", 10s);
  REQUIRE(port);
  for (int i = 0; i < 2; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    REQUIRE(c.recv_frame(5s));
  }
  REQUIRE(proxy.wait_for_lines(std::regex("close reason="), 2, 10s));
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);
  std::ifstream in(log);
  std::vector<json> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(json::parse(l));
  REQUIRE(lines.size() == 2);
  for (const json& j : lines) {
    CHECK(j["state"] == "closed");
    CHECK(j["close_reason"] == "client-closed");
    CHECK(j["listener"] == "acc");
    CHECK(j["calling_tsap"]["ascii"] == "SWISSLIFETSAP");
    CHECK(j["filters"]["reserved.repaired"] == 1);
    CHECK(j["to_upstream"]["frames"] == 1);
    CHECK(j["duration_s"].is_number());
  }
  CHECK(lines[0]["id"] != lines[1]["id"]);
  std::filesystem::remove_all(dir);
}

TEST_CASE("admin: the closed list keeps the last closed_sessions, newest first, as they were at close",
          "[admin][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  auto config = [&](int keep) {
    return "[admin]\nlisten = \"127.0.0.1:0\"\nclosed_sessions = " + std::to_string(keep) +
           "\n\n[[listener]]\nname = \"kept\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) +
           "\"\nfilters = [\"annotate\", \"reserved\"]\n\n"
           "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n";
  };
  ProxyProcess proxy(config(2));
  auto port = proxy.listen_port("kept", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  // Three sessions, one after the other, each with its own called TSAP.
  for (int i = 0; i < 3; ++i) {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "CALLED" + std::to_string(i))));
    REQUIRE(c.recv_frame(5s));
    c.close();
    REQUIRE(proxy.wait_for_lines(std::regex("close reason="), static_cast<std::size_t>(i + 1), 10s));
  }
  const json first = json::parse(http(*aport, "GET", "/sessions?closed=1").body);
  REQUIRE(first["sessions"].size() == 2);
  CHECK(first["sessions"][0]["called_tsap"]["ascii"] == "CALLED2");
  CHECK(first["sessions"][1]["called_tsap"]["ascii"] == "CALLED1");
  for (const json& s : first["sessions"]) {
    CHECK(s["state"] == "closed");
    CHECK(s["close_reason"] == "client-closed");
    CHECK(s["filters"]["reserved.repaired"] == 1);
    CHECK(s["age_s"].is_null());
  }
  // The oldest is gone from every view; the kept ones are found by TSAP.
  const auto oldest = first["sessions"][1]["id"].get<std::uint64_t>() - 1;
  CHECK(http(*aport, "GET", "/sessions/" + std::to_string(oldest)).status == 404);
  CHECK(json::parse(http(*aport, "GET", "/sessions?closed=1&tsap=CALLED0").body)["sessions"].empty());
  CHECK(json::parse(http(*aport, "GET", "/sessions?closed=1&tsap=CALLED1").body)["sessions"].size() == 1);
  CHECK(json::parse(http(*aport, "GET", "/sessions?closed=1&peer=127.0.0.1").body)["sessions"].size() == 2);
  // Their durations stay those at close while time goes on: an open session
  // grows older than the longest of them, and the list reads the same.
  double longest = 0;
  for (const json& s : first["sessions"]) longest = std::max(longest, s["duration_s"].get<double>());
  Conn open = connect_to("127.0.0.1", *port);
  REQUIRE(open.send_all(make_cr("SWISSLIFETSAP", "OPEN")));
  REQUIRE(open.recv_frame(5s));
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  for (;;) {
    const json live = json::parse(http(*aport, "GET", "/sessions?state=established").body);
    REQUIRE(live["sessions"].size() == 1);
    if (live["sessions"][0]["age_s"].get<double>() > longest + 0.05) break;
    REQUIRE(std::chrono::steady_clock::now() < deadline);
    std::this_thread::sleep_for(20ms);  // polling the session's own age, not guessing a time
  }
  const json again = json::parse(http(*aport, "GET", "/sessions?state=closed").body);
  CHECK(again["sessions"] == first["sessions"]);
  // A reload that lowers closed_sessions drops the oldest at once, from every view.
  // (The admin endpoint keeps its port: the [admin] table is unchanged but for the count.)
  REQUIRE(proxy.write_config(config(1)));
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded "), 10s));
  const json after = json::parse(http(*aport, "GET", "/sessions?closed=1&state=closed").body);
  REQUIRE(after["sessions"].size() == 1);
  CHECK(after["sessions"][0]["id"] == first["sessions"][0]["id"]);
  CHECK(http(*aport, "GET", "/sessions/" + std::to_string(first["sessions"][1]["id"].get<std::uint64_t>())).status == 404);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin: a reload that moves the endpoint says it waits for a restart", "[admin][integration]") {
  const std::string listener = "[[listener]]\nname = \"l\"\nlisten = \"127.0.0.1:0\"\nupstream = \"192.0.2.10:102\"\n";
  ProxyProcess proxy("[admin]\nlisten = \"127.0.0.1:0\"\n\n" + listener);
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  REQUIRE(proxy.write_config("[admin]\nlisten = \"off\"\n\n" + listener));
  REQUIRE(proxy.signal(SIGHUP));
  auto line = proxy.wait_for_line(std::regex("reload: \\[admin\\] listen"), 10s);
  INFO(proxy.text());
  REQUIRE(line);
  CHECK(line->find(" warning reload: [admin] listen = \"off\" takes effect at the next start; the admin endpoint stays on 127.0.0.1:" +
                   std::to_string(*aport)) != std::string::npos);
  REQUIRE(proxy.wait_for_line(std::regex("reloaded "), 10s));
  CHECK(http(*aport, "GET", "/stats").status == 200);
  // Back to the address the endpoint runs on: nothing waits for a restart now.
  REQUIRE(proxy.write_config("[admin]\nlisten = \"127.0.0.1:0\"\n\n" + listener));
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_lines(std::regex("reloaded "), 2, 10s));
  CHECK(proxy.count_lines(std::regex("reload: \\[admin\\] listen")) == 1);
}

TEST_CASE("admin: closed_sessions = 0 keeps no closed session", "[admin][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[admin]\nlisten = \"127.0.0.1:0\"\nclosed_sessions = 0\n\n[[listener]]\nname = \"none\"\n"
                     "listen = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n");
  auto port = proxy.listen_port("none", 10s);
  auto aport = admin_port(proxy);
  REQUIRE(port);
  REQUIRE(aport);
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    REQUIRE(c.recv_frame(5s));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  CHECK(json::parse(http(*aport, "GET", "/sessions?closed=1").body)["sessions"].empty());
  CHECK(http(*aport, "GET", "/sessions/1").status == 404);
  CHECK(json::parse(http(*aport, "GET", "/stats").body)["sessions"]["closed"] == 1);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("admin: ?peer= finds an IPv6 peer however its address is written", "[admin][integration]") {
  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  ProxyProcess proxy("[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"v6\"\nlisten = \"[::1]:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\n");
  auto port = proxy.listen_port("v6", 10s);
  REQUIRE(port);
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  Conn c = connect_to("::1", *port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
  REQUIRE(c.recv_frame(5s));
  const json all = json::parse(http(*aport, "GET", "/sessions").body);
  REQUIRE(all["sessions"].size() == 1);
  const std::string client = all["sessions"][0]["client"];  // "[::1]:PORT"
  REQUIRE(client.rfind("[::1]:", 0) == 0);
  const std::string client_port = client.substr(6);
  // One address, written as /sessions writes it or otherwise: each finds the session.
  for (const std::string& written : {std::string("::1"), std::string("[::1]"), std::string("0:0:0:0:0:0:0:1"),
                                     std::string("::0:1"), "[0::1]:" + client_port}) {
    INFO(written);
    const auto reply = http(*aport, "GET", "/sessions?peer=" + written);
    REQUIRE(reply.status == 200);
    CHECK(json::parse(reply.body)["sessions"].size() == 1);
  }
  // "[::1]" is the address, not [::1]:102; another port finds nothing.
  CHECK(json::parse(http(*aport, "GET", "/sessions?peer=[::1]:102").body)["sessions"].empty());
  // A filter given twice is a 400 naming it, not the last one silently.
  const auto twice = http(*aport, "GET", "/sessions?state=bogus&state=established");
  CHECK(twice.status == 400);
  CHECK(json::parse(twice.body)["error"] == "parameter \"state\" given more than once: give each filter once");
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}
