// Reverse-DNS names in the live stats and the close line, the start-up check
// of a fixed source IP's PTR record, and the access log to journald, through
// the real binary. Expected names come from the system's own getnameinfo.
#include <arpa/inet.h>
#include <netdb.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <poll.h>
#include <cstring>
#include <signal.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <sstream>
#include <iomanip>
#include <ctime>
#include <chrono>

#include "support/http.h"
#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

std::optional<std::string> system_name(const char* ip) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  inet_pton(AF_INET, ip, &a.sin_addr);
  char host[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<sockaddr*>(&a), sizeof a, host, sizeof host, nullptr, 0, NI_NAMEREQD) != 0) {
    return std::nullopt;
  }
  return std::string(host);
}

std::string config_for(std::uint16_t upstream, const std::string& global = "") {
  return "[global]\n" + global + "\n[[listener]]\nname = \"names\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(upstream) + "\"\nfilters = [\"annotate\"]\n\n[filter.annotate]\nkind = \"tsap-annotate\"\n";
}

// Polls /sessions/ID until pred holds or 10 s pass (the lookup runs on
// libuv's thread pool; its end is not announced otherwise).
std::optional<json> wait_session(std::uint16_t aport, std::uint64_t id, const std::function<bool(const json&)>& pred) {
  const auto deadline = std::chrono::steady_clock::now() + 10s;
  while (std::chrono::steady_clock::now() < deadline) {
    auto r = http(aport, "GET", "/sessions/" + std::to_string(id));
    if (r.status == 200) {
      json j = json::parse(r.body);
      if (pred(j)) return j;
    }
    std::this_thread::sleep_for(20ms);
  }
  return std::nullopt;
}

// Whether isoproxy can be given a mount namespace of its own: root with
// CAP_SYS_ADMIN (which a container's default seccomp profile withholds).
bool can_unshare_mounts() {
  if (geteuid() != 0 || !std::filesystem::exists("/usr/bin/unshare")) return false;
  return run_process({"/usr/bin/unshare", "--mount", "/bin/true"}).exit_code == 0;
}

// A script in `dir` that runs isoproxy (exec: the same pid) in a mount
// namespace of its own, after `setup` (shell lines, paths in single quotes).
// The host's mounts are never touched: unshare makes the namespace private.
std::filesystem::path write_ns_wrapper(const std::filesystem::path& dir, const std::string& setup) {
  const auto wrapper = dir / "isoproxy-in-ns";
  std::ofstream(wrapper) << "#!/bin/sh\nset -e\n"
                         << "[ -n \"$ISOPROXY_TEST_IN_NS\" ] || ISOPROXY_TEST_IN_NS=1 exec /usr/bin/unshare --mount \"$0\" \"$@\"\n"
                         << setup << "exec '" << ProxyProcess::default_binary() << "' \"$@\"\n";
  std::filesystem::permissions(wrapper, std::filesystem::perms::owner_all);
  return wrapper;
}

}  // namespace

TEST_CASE("rdns: client and upstream names appear in /sessions and the close line", "[rdns][integration]") {
  const auto expected = system_name("127.0.0.1");
  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  ProxyProcess proxy(config_for(up.port()));
  auto port = proxy.listen_port("names", 10s);
  REQUIRE(port);
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("NAMECALLING", "NAMECALLED")));
    REQUIRE(c.recv_frame(5s));
    const json list = json::parse(http(*aport, "GET", "/sessions").body)["sessions"];
    REQUIRE(list.size() == 1);
    const std::uint64_t id = list[0]["id"];
    // "started" is the wall clock in RFC 3339, UTC.
    CHECK(std::regex_match(list[0]["started"].get<std::string>(),
                           std::regex(R"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)")));
    {
      // And it is now (within a minute): every field in its place.
      std::tm tm{};
      std::istringstream in(list[0]["started"].get<std::string>());
      in >> std::get_time(&tm, "%Y-%m-%dT%H:%M:%S");
      REQUIRE_FALSE(in.fail());
      const auto started = static_cast<long long>(timegm(&tm));
      // system_clock, as isoproxy reads it: time() reads the kernel's coarse
      // clock, which can still show the previous second a few ms after it.
      const auto now = static_cast<long long>(
          std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count());
      CHECK(started <= now);
      CHECK(started >= now - 60);
    }
    auto s = wait_session(*aport, id, [](const json& j) { return j.contains("client_name"); });
    REQUIRE(s);
    if (expected) {
      // The lookups have finished once /stats says so.
      auto done = wait_session(*aport, id, [&](const json& j) { return j["client_name"] == *expected && j["upstream_name"] == *expected; });
      REQUIRE(done);
    } else {
      const json st = json::parse(http(*aport, "GET", "/stats").body);
      CHECK((*s)["client_name"].is_null());
      CHECK(st["reverse_dns"]["lookups"].get<int>() >= 1);
    }
  }
  auto close = proxy.wait_for_line(std::regex("close reason=client-closed"), 10s);
  REQUIRE(close);
  if (expected) CHECK(close->find(" client_name=" + *expected) != std::string::npos);
  const json st = json::parse(http(*aport, "GET", "/stats").body);
  CHECK(st["reverse_dns"]["enabled"] == true);
  CHECK(st["reverse_dns"]["lookups"] == 1);  // client and upstream are the same host: one lookup, shared
  CHECK(st["reverse_dns"]["cache_hits"] == 1);
  CHECK(http(*aport, "GET", "/metrics").body.find("isoproxy_reverse_dns_lookups_total{result=\"found\"}") != std::string::npos);
}

TEST_CASE("rdns: reverse_dns = false looks nothing up", "[rdns][integration]") {
  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  ProxyProcess proxy(config_for(up.port(), "reverse_dns = false\n"));
  auto port = proxy.listen_port("names", 10s);
  REQUIRE(port);
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.send_all(make_cr("NAMECALLING", "NAMECALLED")));
  REQUIRE(c.recv_frame(5s));
  const json s = json::parse(http(*aport, "GET", "/sessions").body)["sessions"][0];
  CHECK(s["client_name"].is_null());
  CHECK(s["upstream_name"].is_null());
  const json st = json::parse(http(*aport, "GET", "/stats").body);
  CHECK(st["reverse_dns"]["enabled"] == false);
  CHECK(st["reverse_dns"]["lookups"] == 0);
}

TEST_CASE("rdns: a fixed source IP without a PTR record is warned about at start-up", "[rdns][integration]") {
  // 127.0.0.1 normally has a name (/etc/hosts) and 127.0.0.2 none; the
  // expectation follows what this machine's resolver says for each.
  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  std::string toml;
  for (const char* ip : {"127.0.0.1", "127.0.0.2"}) {
    toml += "[[listener]]\nname = \"fixed-" + std::string(ip) + "\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
            std::to_string(up.port()) + "\"\nsource = \"fixed\"\nsource_address = \"" + ip + "\"\n\n";
  }
  ProxyProcess proxy(toml);
  REQUIRE(proxy.wait_listening(10s, 2));
  for (const char* ip : {"127.0.0.1", "127.0.0.2"}) {
    const std::string who = "source_address " + std::string(ip);
    const auto name = system_name(ip);
    if (name) {
      auto line = proxy.wait_for_line(std::regex(who + " is " + *name), 15s);
      REQUIRE(line);
    } else {
      auto line = proxy.wait_for_line(std::regex(who + R"( has no reverse-DNS \(PTR\) name .*will refuse)"), 15s);
      REQUIRE(line);
      CHECK(line->find(" warning ") != std::string::npos);
    }
  }
}

// A stop or a restart must not wait for a resolver that does not answer:
// glibc gives each nameserver resolv.conf's timeout, and a lookup already
// running in libuv's thread pool cannot be cancelled. isoproxy runs here in
// a mount namespace of its own (unshare -m) where /etc/resolv.conf names a
// nameserver this test holds and never answers, with a 30 s timeout; the
// host's own resolv.conf is not touched.
// A nameserver that never answers, and a wrapper that runs isoproxy in a
// mount namespace where /etc/resolv.conf names it, with `options`. The
// host's own resolv.conf is not touched. `why_not` says why it cannot run here.
struct MuteResolver {
  static constexpr const char* kNameserver = "127.0.83.1";
  int dns = -1;
  std::filesystem::path dir, wrapper;
  std::string why_not;

  explicit MuteResolver(const std::string& options) {
    if (!can_unshare_mounts()) {
      why_not = "needs root with CAP_SYS_ADMIN and unshare(1) for a private /etc/resolv.conf (CI runs as root)";
      return;
    }
    // The PTR query must reach resolv.conf's nameserver: not through
    // systemd-resolved (nss-resolve) or a caching nscd.
    std::ifstream ns("/etc/nsswitch.conf");
    std::string line;
    bool via_dns = false;
    bool other = false;
    while (std::getline(ns, line)) {
      if (line.rfind("hosts:", 0) == 0) {
        via_dns = line.find(" dns") != std::string::npos;
        other = line.find(" resolve") != std::string::npos;
      }
    }
    if (!via_dns || other || std::filesystem::exists("/var/run/nscd/socket")) {
      why_not = "host lookups here do not go to resolv.conf's nameserver (see /etc/nsswitch.conf, nscd)";
      return;
    }
    // A bound UDP socket that is never answered from.
    dns = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_in a{};
    a.sin_family = AF_INET;
    a.sin_port = htons(53);
    inet_pton(AF_INET, kNameserver, &a.sin_addr);
    if (dns < 0 || ::bind(dns, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) {
      why_not = std::string("cannot bind ") + kNameserver + ":53 (" + std::strerror(errno) + "; a local DNS server on 0.0.0.0?)";
      return;
    }
    char dir_template[] = "/tmp/isoproxy-rdns-XXXXXX";
    if (::mkdtemp(dir_template) == nullptr) {
      why_not = "mkdtemp failed";
      return;
    }
    dir = dir_template;
    const auto resolv = dir / "resolv.conf";
    std::ofstream(resolv) << "nameserver " << kNameserver << "\noptions " << options << "\n";
    wrapper = write_ns_wrapper(dir, "mount --bind '" + resolv.string() + "' /etc/resolv.conf\n");
  }
  MuteResolver(const MuteResolver&) = delete;
  MuteResolver& operator=(const MuteResolver&) = delete;
  ~MuteResolver() {
    if (dns >= 0) ::close(dns);
    std::error_code ec;
    if (!dir.empty()) std::filesystem::remove_all(dir, ec);
  }
  bool ready() const { return why_not.empty(); }
};

TEST_CASE("rdns: a stop does not wait for a resolver that does not answer", "[rdns][integration]") {
  MuteResolver mute("timeout:30 attempts:1");
  if (!mute.ready()) {
    WARN("not run: " << mute.why_not);
    return;
  }
  const int dns = mute.dns;
  const char* kClient = "127.0.83.2";  // not in /etc/hosts: its PTR query goes to the nameserver
  const auto& wrapper = mute.wrapper;

  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  ProxyProcess proxy(config_for(up.port(), "drain_timeout = \"5s\"\n"), {}, wrapper.string());
  auto port = proxy.listen_port("names", 10s);
  REQUIRE(port);
  {
    Conn c = connect_to("127.0.0.1", *port, kDefaultTimeout, kClient);
    REQUIRE(c.send_all(make_cr("NAMECALLING", "NAMECALLED")));
    REQUIRE(c.recv_frame(5s));
    // The client's PTR query reaches the nameserver: the lookup is running.
    pollfd p{dns, POLLIN, 0};
    REQUIRE(::poll(&p, 1, 10000) == 1);
    char query[512];
    REQUIRE(::recv(dns, query, sizeof query, 0) > 12);
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason=client-closed"), 10s));
  REQUIRE(proxy.signal(SIGTERM));
  // The session is gone, so the stop is immediate; the resolver would hold
  // it for 30 s.
  const auto status = proxy.wait_exit(5s);
  INFO(proxy.text());
  REQUIRE(status);
  CHECK(*status == 0);
  CHECK(proxy.count_lines(std::regex(R"(info not waiting for [12] reverse-DNS lookups? the resolver has not answered)")) == 1);
  CHECK(proxy.count_lines(std::regex(R"(info stopped: 1 sessions served)")) == 1);
}

TEST_CASE("rdns: a fixed source whose PTR cannot be checked for a mute resolver is said so, not called unnamed",
          "[rdns][integration]") {
  MuteResolver mute("timeout:1 attempts:1");
  if (!mute.ready()) {
    WARN("not run: " << mute.why_not);
    return;
  }
  TestServer up(responder_handler({}));
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"fixed\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                         std::to_string(up.port()) + "\"\nsource = \"fixed\"\nsource_address = \"127.0.83.3\"\n",
                     {}, mute.wrapper.string());
  REQUIRE(proxy.listen_port("fixed", 10s));
  auto line = proxy.wait_for_line(
      std::regex(R"(warning listener fixed: source_address 127\.0\.83\.3: its reverse-DNS \(PTR\) name could not be checked: )"
                 R"(the resolver did not answer \(temporary failure\); checked again at the next start or reload)"),
      15s);
  INFO(proxy.text());
  CHECK(line);
  CHECK(proxy.count_lines(std::regex("publish a PTR record")) == 0);  // nothing is known of the record
}

TEST_CASE("access log: journald target sends one entry per session with searchable fields", "[access-log][journal][integration]") {
  // isoproxy runs in its own mount namespace in which /run/systemd/journal/socket
  // is this test's datagram socket: what it sends to "the journal" lands here.
  if (!can_unshare_mounts()) {
    WARN("not run: needs root with CAP_SYS_ADMIN and unshare(1) to give isoproxy a private journal socket (CI runs as root)");
    return;
  }
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-journal-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const auto sock_path = dir / "journal.sock";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd >= 0);
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", sock_path.c_str());
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) == 0);
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);

  const auto wrapper = write_ns_wrapper(dir, "mount -t tmpfs isoproxy-test /run/systemd\nmkdir -p /run/systemd/journal\n"
                                            "touch /run/systemd/journal/socket\nmount --bind '" +
                                                sock_path.string() + "' /run/systemd/journal/socket\n");
  std::filesystem::create_directories("/run/systemd");

  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const auto config = dir / "isoproxy.toml";
  std::ofstream(config) << "[admin]\nlisten = \"127.0.0.1:0\"\n\n" << config_for(up.port(), "access_log = \"journal\"\n");
  BackgroundProcess ns({wrapper.string(), "run", "-c", config.string()});
  REQUIRE(ns.started());
  auto listening = ns.wait_for_line(BackgroundProcess::Stream::kErr, std::regex(R"(listening on 127\.0\.0\.1:(\d+) \(listener names\))"), 10s);
  REQUIRE(listening);
  std::smatch m;
  std::regex_search(*listening, m, std::regex(R"(127\.0\.0\.1:(\d+))"));
  const auto port = static_cast<std::uint16_t>(std::stoi(m[1]));
  {
    Conn c = connect_to("127.0.0.1", port);
    REQUIRE(c.send_all(make_cr("JOURNALCALLING", "JOURNALCALLED")));
    REQUIRE(c.recv_frame(5s));
  }
  char buf[65536];
  const ssize_t n = recv(fd, buf, sizeof buf, 0);
  REQUIRE(n > 0);
  // The native protocol: KEY=VALUE lines (no value here has a newline).
  std::map<std::string, std::string> fields;
  std::istringstream in(std::string(buf, static_cast<std::size_t>(n)));
  for (std::string line; std::getline(in, line);) {
    const auto eq = line.find('=');
    if (eq != std::string::npos) fields[line.substr(0, eq)] = line.substr(eq + 1);
  }
  CHECK(fields["SYSLOG_IDENTIFIER"] == "isoproxy-access");
  CHECK(fields["ISOPROXY_CALLING_TSAP"] == "JOURNALCALLING");
  CHECK(fields["ISOPROXY_CALLED_TSAP"] == "JOURNALCALLED");
  CHECK(fields["ISOPROXY_CLOSE_REASON"] == "client-closed");
  CHECK(fields["ISOPROXY_LISTENER"] == "names");
  const json j = json::parse(fields["MESSAGE"]);
  CHECK(j["state"] == "closed");
  CHECK(j["close_reason"] == "client-closed");
  CHECK(j["calling_tsap"]["ascii"] == "JOURNALCALLING");
  REQUIRE(ns.signal(SIGTERM));
  CHECK(ns.wait_exit(10s) == 0);

  // Without journald's socket, "journal" is a start-up error, not lines lost in silence.
  const auto bare = dir / "isoproxy-no-journal";
  {
    std::ofstream w(bare);
    w << "#!/bin/sh\nset -e\nmount -t tmpfs isoproxy-test /run/systemd\nexec '" << ProxyProcess::default_binary() << "' \"$@\"\n";
  }
  std::filesystem::permissions(bare, std::filesystem::perms::owner_all);
  BackgroundProcess none({"/usr/bin/unshare", "-m", bare.string(), "run", "-c", config.string()});
  REQUIRE(none.started());
  CHECK(none.wait_exit(10s) == 1);
  CHECK(none.wait_for_line(BackgroundProcess::Stream::kErr,
                           std::regex(R"(access_log journal: cannot reach journald at /run/systemd/journal/socket: No such file)"), 5s));
  // Found before any listener was bound and announced.
  CHECK(none.text(BackgroundProcess::Stream::kErr).find("listening on") == std::string::npos);
  close(fd);
  std::filesystem::remove_all(dir);
}
