// Transparent mode (TPROXY) end to end, in network namespaces of its own:
//
//   client ns            router ns (isoproxy)             server ns
//   10.77.1.2 ---veth--- 10.77.1.1 | 10.77.2.1 ---veth--- 10.77.2.2:102 (rfc1006-peer respond)
//
// The client dials the server's own address, 10.77.2.2:102; the router's
// nftables TPROXY rule diverts the connection to isoproxy's transparent
// listener (127.0.0.1:10102), which relays it to its original destination.
// The namespaces, veths, routes and nft rules are made and removed by
// tests/integration/netns/tproxy-setup.sh (the recipe, readable on its own);
// nothing outside them is touched. A Namespaces object tears them down when
// it goes out of scope, also when an assertion fails; the processes started
// in them are declared after it, so they are killed first.
//
// Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN for `ip netns`), ip and nft, and a
// kernel with nft_tproxy/nft_socket. Without them each test passes with a
// WARN saying what is missing; set ISOPROXY_REQUIRE_TRANSPARENT_TEST=1 to
// make that a failure instead (CI machines that must run it).
#include <catch2/catch.hpp>

#include <signal.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include "support/process.h"
#include "support/proxy_process.h"

namespace t = isoproxy::test;
using t::BackgroundProcess;
using t::Millis;
using Out = BackgroundProcess::Stream;

namespace {

constexpr const char* kClientIp = "10.77.1.2";
constexpr const char* kRouterServerSideIp = "10.77.2.1";
constexpr const char* kRouterClientSideIp = "10.77.1.1";
constexpr const char* kServer = "10.77.2.2:102";
// Where the nft rule diverts new port-102 connections (tproxy-setup.sh's default).
constexpr const char* kTproxyTarget = "127.0.0.1:10102";

using t::isoproxy_binary;
using t::peer_binary;

std::string setup_script() {
#ifdef ISOPROXY_SOURCE_DIR
  return std::string(ISOPROXY_SOURCE_DIR) + "/tests/integration/netns/tproxy-setup.sh";
#else
  return {};
#endif
}

// The full path of `name` on PATH (or in the sbin directories a non-login
// root shell may lack); empty if none. posix_spawn does not search PATH.
std::string which(const std::string& name) {
  std::string dirs = std::getenv("PATH") ? std::getenv("PATH") : "";
  dirs += ":/usr/sbin:/sbin:/usr/bin:/bin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    const std::size_t end = dirs.find(':', start);
    const std::string dir = dirs.substr(start, end == std::string::npos ? std::string::npos : end - start);
    if (!dir.empty()) {
      const std::string p = dir + "/" + name;
      if (::access(p.c_str(), X_OK) == 0) return p;
    }
    if (end == std::string::npos) break;
    start = end + 1;
  }
  return {};
}

bool required_here() {
  const char* v = std::getenv("ISOPROXY_REQUIRE_TRANSPARENT_TEST");
  return v != nullptr && *v != '\0' && std::string(v) != "0";
}

// What keeps the test from running here ("" if nothing).
std::string missing_prerequisites() {
  std::string missing;
  auto add = [&](const std::string& what) { missing += (missing.empty() ? "" : ", ") + what; };
  if (::geteuid() != 0) add("root (running as uid " + std::to_string(::geteuid()) + ")");
  if (which("ip").empty()) add("ip (iproute2)");
  if (which("nft").empty()) add("nft (nftables)");
  if (which("sh").empty()) add("sh");
  const std::string script = setup_script();
  if (script.empty() || ::access(script.c_str(), R_OK) != 0) add("the setup script " + script);
  if (isoproxy_binary().empty()) add("ISOPROXY_BINARY");
  if (peer_binary().empty()) add("RFC1006_PEER_BINARY");
  return missing;
}

std::string tail(const std::string& s, std::size_t n = 1500) { return s.size() <= n ? s : "..." + s.substr(s.size() - n); }

// The three namespaces of one test, made by `tproxy-setup.sh setup PREFIX`
// and removed by `tproxy-setup.sh teardown PREFIX` (explicitly, or at the
// latest in the destructor, whatever happened in between).
class Namespaces {
 public:
  Namespaces() : ip_(which("ip")), sh_(which("sh")) {
    static std::atomic<unsigned> serial{0};
    prefix_ = "isoproxy-t-" + std::to_string(::getpid()) + "-" + std::to_string(serial++);
    const auto r = t::run_process({sh_, setup_script(), "setup", prefix_}, {}, std::chrono::seconds(30));
    setup_log_ = r.out + r.err;
    ok_ = r.exit_code == 0;
  }
  Namespaces(const Namespaces&) = delete;
  Namespaces& operator=(const Namespaces&) = delete;
  ~Namespaces() {
    if (!torn_down_ && !teardown()) {
      // No Catch2 assertion here: this may run while an exception unwinds.
      std::cerr << "transparent_test: teardown of namespaces " << prefix_ << "-* failed:\n" << teardown_log_ << '\n';
    }
  }

  bool ok() const { return ok_; }
  const std::string& setup_log() const { return setup_log_; }
  const std::string& teardown_log() const { return teardown_log_; }
  const std::string& prefix() const { return prefix_; }
  std::string client() const { return prefix_ + "-c"; }
  std::string router() const { return prefix_ + "-r"; }
  std::string server() const { return prefix_ + "-s"; }

  // argv run inside namespace ns: ip netns exec NS ARGV... (ip execs it, no fork:
  // the spawned pid is the program's own, so signals reach it).
  std::vector<std::string> in(const std::string& ns, std::vector<std::string> argv) const {
    std::vector<std::string> out = {ip_, "netns", "exec", ns};
    out.insert(out.end(), argv.begin(), argv.end());
    return out;
  }

  bool teardown() {
    torn_down_ = true;
    const auto r = t::run_process({sh_, setup_script(), "teardown", prefix_}, {}, std::chrono::seconds(30));
    teardown_log_ = r.out + r.err;
    return r.exit_code == 0;
  }

  // Namespaces PREFIX-* still present.
  std::vector<std::string> leftovers() const {
    std::vector<std::string> left;
    for (const auto& ns : {client(), router(), server()}) {
      if (std::filesystem::exists("/run/netns/" + ns)) left.push_back(ns);
    }
    return left;
  }

 private:
  std::string ip_, sh_;
  std::string prefix_;
  std::string setup_log_, teardown_log_;
  bool ok_ = false;
  bool torn_down_ = false;
};

// A config file in a temporary directory, removed with the object.
class TempConfig {
 public:
  explicit TempConfig(const std::string& toml) {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-transparent-XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    dir_ = tmpl;
    path_ = dir_ / "isoproxy.toml";
    std::ofstream out(path_);
    out << toml;
    REQUIRE(out.flush());
  }
  TempConfig(const TempConfig&) = delete;
  TempConfig& operator=(const TempConfig&) = delete;
  ~TempConfig() {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }
  std::string path() const { return path_.string(); }

 private:
  std::filesystem::path dir_, path_;
};

std::string proxy_config(const std::string& source_lines) {
  return std::string(R"(
[[listener]]
name = "intercept"
listen = [")") + kTproxyTarget + R"("]
transparent = true
)" + source_lines + R"(
filters = ["reserved"]

[filter.reserved]
kind = "tpkt-reserved"
tpdu = ["CR", "CC"]
)";
}

// The address part of "[Cn] accepted from IP:PORT" of connection n.
std::optional<std::string> accepted_from(BackgroundProcess& responder, int n) {
  const auto line = responder.wait_for_line(
      Out::kOut, std::regex("^\\[C" + std::to_string(n) + "\\] accepted from "), Millis(10000));
  if (!line) return std::nullopt;
  std::smatch m;
  if (!std::regex_search(*line, m, std::regex(R"(accepted from (\d+\.\d+\.\d+\.\d+):\d+)"))) return std::nullopt;
  return m[1].str();
}

// A field of a parsed log line, or "<missing>".
std::string field(const std::map<std::string, std::string>& f, const std::string& key) {
  const auto it = f.find(key);
  return it == f.end() ? "<missing>" : it->second;
}

std::string ip_of(const std::string& addr) { return addr.substr(0, addr.rfind(':')); }

// Namespaces of earlier runs of this test whose process is gone (killed
// mid-test: a SIGKILL or Ctrl-C runs no destructor). Reported, not removed:
// only the run that made a namespace deletes it.
std::vector<std::string> stale_namespaces() {
  std::vector<std::string> stale;
  std::error_code ec;
  static const std::regex kOurs(R"(^(isoproxy-t-(\d+)-\d+)-r$)");
  for (const auto& entry : std::filesystem::directory_iterator("/run/netns", ec)) {
    const std::string name = entry.path().filename().string();
    std::smatch m;
    if (!std::regex_match(name, m, kOurs) || m[2].length() > 9) continue;
    const pid_t pid = static_cast<pid_t>(std::stol(m[2].str()));
    if (::kill(pid, 0) != 0 && errno == ESRCH) stale.push_back(m[1].str());
  }
  return stale;
}

struct Expect {
  std::string source_lines;  // the listener's source settings
  std::string server_sees;   // the IP the server must see the connection come from
  // source = "client": the upstream leg's ICMP errors are addressed to the
  // client's IP, and the recipe must bring them to isoproxy's socket too.
  bool icmp_to_client_ip = false;
};

void run_scenario(const Expect& e) {
  if (const std::string missing = missing_prerequisites(); !missing.empty()) {
    if (required_here()) FAIL("transparent-mode test required but cannot run: missing " << missing);
    WARN("transparent-mode test skipped: needs root and nft (missing: " << missing << ")");
    return;
  }

  for (const auto& prefix : stale_namespaces()) {
    WARN("namespaces " << prefix << "-* are left from a run of this test that was killed; remove them with: "
                       << setup_script() << " teardown " << prefix);
  }

  Namespaces net;  // first declared, last destroyed: the processes below die before teardown
  if (!net.ok()) {
    if (required_here()) FAIL("namespace/TPROXY setup failed:\n" << tail(net.setup_log()));
    WARN("transparent-mode test skipped: root, ip and nft are here, but the namespace/TPROXY setup failed "
         "(no CAP_SYS_ADMIN? kernel without nft_tproxy/nft_socket?):\n"
         << tail(net.setup_log()));
    return;
  }
  INFO("namespaces " << net.prefix() << "-{c,r,s}");

  // The server: the vendor MTA (CC with reserved 0x11), on its own address.
  BackgroundProcess responder(net.in(net.server(), {peer_binary(), "respond", "--listen", kServer}));
  INFO(responder.spawn_error());
  REQUIRE(responder.started());
  {
    const auto listening = responder.wait_for_line(Out::kOut, std::regex(R"(^listening on 10\.77\.2\.2:102$)"));
    INFO(responder.text(Out::kOut) << responder.text(Out::kErr));
    REQUIRE(listening);
  }

  const std::vector<std::string> connect = {peer_binary(), "connect", "--to", kServer, "--strict", "--timeout", "5s"};

  // Control, before isoproxy listens: no transparent socket takes the
  // diverted SYN, the tproxy rule does not match and the router forwards the
  // connection unchanged. It proves the namespaces route, and that the
  // repairs below are isoproxy's: unrepaired, the strict client refuses the
  // vendor CC (exit 3). (So the recipe fails open while isoproxy is down.)
  {
    const auto r = t::run_process(net.in(net.client(), connect), {}, std::chrono::seconds(30));
    INFO("control client (no isoproxy):\n" << r.out << r.err);
    INFO("responder:\n" << responder.text(Out::kOut) << responder.text(Out::kErr));
    const auto from = accepted_from(responder, 1);
    REQUIRE(from);  // else the namespaces do not route client -> router -> server
    CHECK(*from == kClientIp);
    CHECK(r.exit_code == 3);
  }

  // isoproxy on the router, transparent listener at the TPROXY target.
  TempConfig cfg(proxy_config(e.source_lines));
  BackgroundProcess proxy(net.in(net.router(), {isoproxy_binary(), "run", "-c", cfg.path()}));
  INFO(proxy.spawn_error());
  REQUIRE(proxy.started());
  {
    const auto listening = proxy.wait_for_line(
        Out::kErr, std::regex(R"(listening on 127\.0\.0\.1:10102 \(listener intercept, transparent\))"));
    INFO("isoproxy:\n" << proxy.text(Out::kErr));
    REQUIRE(listening);
  }

  // The client dials the server's own address; it never learns of the proxy.
  const auto client = t::run_process(net.in(net.client(), connect), {}, std::chrono::seconds(30));
  INFO("client:\n" << client.out << client.err);
  INFO("responder:\n" << responder.text(Out::kOut) << responder.text(Out::kErr));
  INFO("isoproxy:\n" << proxy.text(Out::kErr));

  // The session passes: the vendor CC (0x11) was repaired on the way.
  CHECK(client.exit_code == 0);
  CHECK(client.out.find(std::string("connected to ") + kServer + " from " + kClientIp + ":") != std::string::npos);
  CHECK(client.out.find("CC reserved=0x00") != std::string::npos);
  CHECK(client.out.find("DT echoed ok") != std::string::npos);
  CHECK(responder.wait_for_line(Out::kOut, std::regex(R"(^\[C2\] sent CC reserved=0x11$)")));

  // Who the server saw.
  const auto from = accepted_from(responder, 2);
  REQUIRE(from);
  CHECK(*from == e.server_sees);

  // isoproxy's close line: the original destination as upstream.
  const auto close = proxy.wait_for_line(Out::kErr, std::regex(R"(\[S1\] close )"));
  REQUIRE(close);
  const auto f = t::parse_fields(*close);
  INFO("close line: " << *close);
  CHECK(field(f, "upstream") == kServer);
  CHECK(field(f, "listener") == "intercept");
  CHECK(ip_of(field(f, "client")) == kClientIp);
  CHECK(ip_of(field(f, "source")) == e.server_sees);
  CHECK(field(f, "reason") == "client-closed");
  CHECK(field(f, "filters").find("reserved.repaired=1") != std::string::npos);

  if (e.icmp_to_client_ip) {
    // The server's host now refuses port 102 with an ICMP error: the
    // connect must fail at once (EHOSTUNREACH), not wait for connect_timeout
    // while the router forwards the error to the client.
    const auto rej = t::run_process(
        net.in(net.server(), {which("nft"), "-f", "-"}),
        "table ip rej {\n  chain input {\n    type filter hook input priority 0; policy accept;\n"
        "    tcp dport 102 reject with icmp type host-unreachable\n  }\n}\n",
        std::chrono::seconds(30));
    INFO("nft reject:\n" << rej.out << rej.err);
    REQUIRE(rej.exit_code == 0);
    const auto refused = t::run_process(net.in(net.client(), connect), {}, std::chrono::seconds(30));
    CHECK(refused.exit_code != 0);
    const auto line = proxy.wait_for_line(Out::kErr, std::regex(R"(\[S2\] close )"));
    REQUIRE(line);
    INFO("close line: " << *line);
    CHECK(field(t::parse_fields(*line), "reason").rfind(std::string("connect-failed: ") + kServer + ": EHOSTUNREACH", 0) == 0);
  }

  CHECK(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit() == 0);
  CHECK(responder.signal(SIGTERM));
  CHECK(responder.wait_exit().has_value());

  // Teardown leaves nothing behind.
  const bool torn_down = net.teardown();
  INFO("teardown:\n" << net.teardown_log());
  CHECK(torn_down);
  CHECK(net.leftovers().empty());
}

}  // namespace

TEST_CASE("transparent: source = client, the server sees the client's own address and the CC is repaired",
          "[transparent]") {
  run_scenario({R"(source = "client")", kClientIp, true});
}

TEST_CASE("transparent: source = fixed, the server sees source_address", "[transparent]") {
  run_scenario({std::string(R"(source = "fixed")") + "\nsource_address = \"" + kRouterServerSideIp + "\"",
                kRouterServerSideIp});
}

TEST_CASE("transparent: a connection to the router's own address loops back once, then both sessions close", "[transparent]") {
  if (const std::string missing = missing_prerequisites(); !missing.empty()) {
    if (required_here()) FAIL("transparent-mode test required but cannot run: missing " << missing);
    WARN("transparent-mode test skipped: needs root and nft (missing: " << missing << ")");
    return;
  }
  Namespaces net;
  if (!net.ok()) {
    if (required_here()) FAIL("namespace/TPROXY setup failed:\n" << tail(net.setup_log()));
    WARN("transparent-mode test skipped: the namespace/TPROXY setup failed:\n" << tail(net.setup_log()));
    return;
  }
  // On 0.0.0.0 the listener also takes what the rule diverts to the router's
  // own addresses (the recipe without "fib daddr type local return").
  TempConfig cfg("[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"intercept\"\nlisten = [\"0.0.0.0:10102\"]\n"
                 "transparent = true\nsource = \"fixed\"\nsource_address = \"" + std::string(kRouterServerSideIp) + "\"\n");
  BackgroundProcess proxy(net.in(net.router(), {isoproxy_binary(), "run", "-c", cfg.path()}));
  REQUIRE(proxy.started());
  REQUIRE(proxy.wait_for_line(Out::kErr, std::regex(R"(listening on 0\.0\.0\.0:10102)")));
  const std::vector<std::string> to_router = {peer_binary(), "connect", "--to", std::string(kRouterClientSideIp) + ":102",
                                              "--timeout", "5s"};
  const auto r = t::run_process(net.in(net.client(), to_router), {}, std::chrono::seconds(30));
  INFO("client to the router:\n" << r.out << r.err);
  INFO("isoproxy:\n" << proxy.text(Out::kErr));
  CHECK(r.exit_code != 0);
  // S1 is the client's session; its upstream connection, to the router's
  // own address, was diverted back to isoproxy as S2.
  const auto loop = proxy.wait_for_line(
      Out::kErr, std::regex(R"(\[S2\] loop: the upstream connection of session S1 came back to isoproxy \(listener intercept\))"));
  REQUIRE(loop);
  CHECK(loop->find("fib daddr type local return") != std::string::npos);
  REQUIRE(proxy.wait_for_lines(Out::kErr, std::regex(R"(\[S[12]\] close reason="loop: )"), 2));
  CHECK(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit() == 0);
  // Two sessions in all: the loop was cut at its first turn.
  CHECK(proxy.count_lines(Out::kErr, std::regex(R"(\[S3\] )")) == 0);
  CHECK(proxy.wait_for_line(Out::kErr, std::regex(R"(stopped: 2 sessions served.*close_reasons=loop=2)")));

  // With source = "client" the looped connection never reaches isoproxy (its
  // SYN carries the client's address): the connect times out, and the close
  // line says why that is likely.
  TempConfig cfg2("[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"intercept\"\nlisten = [\"0.0.0.0:10102\"]\n"
                  "transparent = true\nsource = \"client\"\nconnect_timeout = \"1s\"\n");
  BackgroundProcess proxy2(net.in(net.router(), {isoproxy_binary(), "run", "-c", cfg2.path()}));
  REQUIRE(proxy2.started());
  REQUIRE(proxy2.wait_for_line(Out::kErr, std::regex(R"(listening on 0\.0\.0\.0:10102)")));
  const auto r2 = t::run_process(net.in(net.client(), to_router), {}, std::chrono::seconds(30));
  INFO("isoproxy (source = client):\n" << proxy2.text(Out::kErr));
  const auto hint = proxy2.wait_for_line(Out::kErr, std::regex(R"(\[S1\] close reason="connect-timeout: 10\.77\.1\.1:102 .*this host's own address)"));
  CHECK(hint);
  CHECK(proxy2.signal(SIGTERM));
  CHECK(proxy2.wait_exit() == 0);
  CHECK(net.teardown());
}
