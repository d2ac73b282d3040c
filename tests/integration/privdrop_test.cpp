// `isoproxy run --user NAME`, started as root: the process binds port 102,
// becomes NAME, and keeps only the capabilities its configuration needs,
// checked from /proc/PID/status (Uid, Gid, Groups, CapInh/CapPrm/CapEff/
// CapBnd/CapAmb, NoNewPrivs) for every thread. It still relays on the port
// it bound, and a reload binds a new port below 1024 as the user.
//
// Needs root; the user is `nobody` (present on every Debian system), so
// nothing is added to the machine. Without root each test passes with a WARN
// saying so (CI runs as root, so there they run).
#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <map>
#include <optional>
#include <regex>
#include <sstream>
#include <string>
#include <vector>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kNetBindService = std::uint64_t{1} << 10;  // CAP_NET_BIND_SERVICE
constexpr std::uint64_t kNetAdmin = std::uint64_t{1} << 12;        // CAP_NET_ADMIN

struct User {
  std::string name;
  uid_t uid;
  gid_t gid;
};

std::optional<User> nobody() {
  const passwd* pw = ::getpwnam("nobody");
  if (pw == nullptr) return std::nullopt;
  return User{"nobody", pw->pw_uid, pw->pw_gid};
}

// Why these tests cannot run here ("" when they can).
std::string cannot_run() {
  if (::geteuid() != 0) return "needs root (running as uid " + std::to_string(::geteuid()) + ")";
  if (!nobody()) return "needs the user nobody";
  return {};
}

// /proc/PID/status of one task as name -> value.
std::map<std::string, std::string> status_of(const fs::path& status_file) {
  std::map<std::string, std::string> out;
  std::ifstream in(status_file);
  for (std::string line; std::getline(in, line);) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    std::string v = line.substr(colon + 1);
    v.erase(0, v.find_first_not_of(" \t"));
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.pop_back();
    out[line.substr(0, colon)] = v;
  }
  return out;
}

std::uint64_t hex(const std::string& s) { return std::stoull(s, nullptr, 16); }

// Every thread of `pid` runs as `user` with exactly `caps` effective,
// permitted and in the bounding set, nothing inheritable or ambient.
void check_credentials(pid_t pid, const User& user, std::uint64_t caps) {
  const std::string u = std::to_string(user.uid), g = std::to_string(user.gid);
  std::size_t tasks = 0;
  for (const auto& task : fs::directory_iterator("/proc/" + std::to_string(pid) + "/task")) {
    ++tasks;
    auto st = status_of(task.path() / "status");
    INFO("task " << task.path().filename().string());
    CHECK(st["Uid"] == u + "\t" + u + "\t" + u + "\t" + u);
    CHECK(st["Gid"] == g + "\t" + g + "\t" + g + "\t" + g);
    // Supplementary groups: the user's own, never root's.
    std::istringstream groups(st["Groups"]);
    for (std::string gid; groups >> gid;) CHECK(gid != "0");
    CHECK(hex(st["CapEff"]) == caps);
    CHECK(hex(st["CapPrm"]) == caps);
    CHECK(hex(st["CapBnd"]) == caps);
    CHECK(hex(st["CapInh"]) == 0);
    CHECK(hex(st["CapAmb"]) == 0);
    CHECK(st["NoNewPrivs"] == "1");
  }
  CHECK(tasks >= 1);
}

// An address 127.0.0.N whose port 102 is free right now, so that parallel
// runs (and anything else on port 102 of 127.0.0.1) do not clash.
std::string free_port_102() {
  static int next = static_cast<int>(::getpid() % 250);
  for (int tries = 0; tries < 250; ++tries) {
    const int n = 2 + (next++ % 250);
    const std::string ip = "127.0.0." + std::to_string(n);
    auto sa = make_sockaddr(ip, 102);
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool free = ::bind(fd, sa->get(), sa->length) == 0;
    ::close(fd);
    if (free) return ip;
  }
  return {};
}

// The config must be readable by the user, as the README tells operators
// (a reload re-reads it as that user). ProxyProcess writes it into a private
// directory, so at start-up it may not be yet: the warning about it is
// tested in the second test.
void let_user_read(const ProxyProcess& proxy) {
  ::chmod(proxy.config_path().parent_path().c_str(), 0755);
  ::chmod(proxy.config_path().c_str(), 0644);
}

void relays(const std::string& ip, std::uint16_t port, const std::string& text) {
  Conn c = connect_to(ip, port);
  REQUIRE(c.valid());
  const ByteVec dt = make_dt(text);
  REQUIRE(c.send_all(dt));
  CHECK(c.recv_exact(dt.size(), 5s) == dt);
}

}  // namespace

TEST_CASE("run --user: binds port 102 as root, serves as the user with CAP_NET_BIND_SERVICE only",
          "[privdrop][integration]") {
  if (const auto why = cannot_run(); !why.empty()) {
    WARN("privilege-drop test skipped: " + why);
    return;
  }
  const User user = *nobody();
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::string ip = free_port_102();
  REQUIRE(!ip.empty());
  const std::string upstream = "upstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n";
  // A fixed source: its start-up PTR check runs on libuv's thread pool,
  // whose threads must start after the drop (each thread has its own sets).
  // With two workers too: their threads start after the drop, with the reduced sets.
  const int workers = GENERATE(1, 2);
  INFO("workers = " << workers);
  const std::string first = "[global]\nworkers = " + std::to_string(workers) + "\n[[listener]]\nname = \"mta\"\nlisten = \"" +
                            ip + ":102\"\n" + upstream + "source = \"fixed\"\nsource_address = \"127.0.0.1\"\n";
  ProxyProcess proxy(first, {"--user", "nobody"});
  REQUIRE(proxy.started());
  let_user_read(proxy);
  INFO(proxy.text());
  REQUIRE(proxy.wait_for_line(std::regex("running as user nobody \\(uid " + std::to_string(user.uid) +
                                         ", gid " + std::to_string(user.gid) +
                                         "\\); capabilities kept: cap_net_bind_service \\(listener mta on " + ip +
                                         ":102\\)"),
                              10s));
  REQUIRE(proxy.wait_for_line(std::regex("source_address 127\\.0\\.0\\.1 (is|has no)"), 10s));
  check_credentials(proxy.pid(), user, kNetBindService);
  // The main thread and one per worker (libuv's pool may add more).
  CHECK(std::distance(fs::directory_iterator("/proc/" + std::to_string(proxy.pid()) + "/task"), fs::directory_iterator{}) >=
        1 + workers);
  relays(ip, 102, "relayed by nobody on port 102");

  // A reload re-reads the file as the user and binds another port 102 with
  // the capability it kept.
  const std::string ip2 = free_port_102();
  REQUIRE(!ip2.empty());
  REQUIRE(proxy.write_config(first + "\n[[listener]]\nname = \"mta2\"\nlisten = \"" + ip2 + ":102\"\n" + upstream));
  let_user_read(proxy);
  REQUIRE(proxy.signal(SIGHUP));
  REQUIRE(proxy.wait_for_line(std::regex("reloaded .*: 2 listeners"), 10s));
  CHECK(proxy.count_lines(std::regex("listening on " + ip2 + ":102 \\(listener mta2\\)")) == 1);
  relays(ip2, 102, "a port bound after the drop");
  relays(ip, 102, "the first one still");
  check_credentials(proxy.pid(), user, kNetBindService);

  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("run --user: a configuration without privileged needs keeps no capability at all", "[privdrop][integration]") {
  if (const auto why = cannot_run(); !why.empty()) {
    WARN("privilege-drop test skipped: " + why);
    return;
  }
  const User user = *nobody();
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  const std::string upstream = "upstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n";
  const std::string first = "[[listener]]\nname = \"high\"\nlisten = \"127.0.0.1:0\"\n" + upstream;
  // The config stays in root's private directory: a warning names the problem.
  ProxyProcess proxy(first, {"--user", "nobody"});
  INFO(proxy.text());
  auto port = proxy.listen_port("high", 10s);
  REQUIRE(port);
  REQUIRE(proxy.wait_for_line(std::regex("running as user nobody .*capabilities kept: none"), 10s));
  CHECK(proxy.wait_for_line(std::regex("warning .*isoproxy.toml is not readable by user nobody \\(Permission denied\\): "
                                       "a reload \\(SIGHUP\\) will fail"),
                            10s));
  check_credentials(proxy.pid(), user, 0);
  relays("127.0.0.1", *port, "no capability needed");

  // Now readable, asking for port 102: refused clearly, the old listener serves on.
  const std::string ip = free_port_102();
  REQUIRE(!ip.empty());
  REQUIRE(proxy.write_config("[[listener]]\nname = \"low\"\nlisten = \"" + ip + ":102\"\n" + upstream + "\n" + first));
  let_user_read(proxy);
  REQUIRE(proxy.signal(SIGHUP));
  CHECK(proxy.wait_for_line(std::regex("reload failed: listener low: cannot listen on " + ip +
                                       ":102: bind: permission denied \\(ports below 1024 need root or "
                                       "CAP_NET_BIND_SERVICE\\)"),
                            10s));
  relays("127.0.0.1", *port, "still here");
  // source = "client" needs CAP_NET_ADMIN on every connection: refused at
  // the reload, not session by session after it.
  REQUIRE(proxy.write_config(first + "source = \"client\"\n"));
  let_user_read(proxy);
  REQUIRE(proxy.signal(SIGHUP));
  CHECK(proxy.wait_for_line(std::regex("reload failed: listener high uses source = \"client\", which needs "
                                       "CAP_NET_ADMIN, and this process does not have it"),
                            10s));
  relays("127.0.0.1", *port, "and still");
  check_credentials(proxy.pid(), user, 0);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("run --user: transparent mode and source = client keep CAP_NET_ADMIN", "[privdrop][integration]") {
  if (const auto why = cannot_run(); !why.empty()) {
    WARN("privilege-drop test skipped: " + why);
    return;
  }
  const User user = *nobody();
  SECTION("a transparent listener") {
    ProxyProcess proxy("[[listener]]\nname = \"t\"\nlisten = \"127.0.0.1:0\"\ntransparent = true\n", {"--user", "nobody"});
    INFO(proxy.text());
    REQUIRE(proxy.wait_for_line(
        std::regex("capabilities kept: cap_net_admin \\(listener t is transparent\\)$"), 10s));
    check_credentials(proxy.pid(), user, kNetAdmin);
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(10s) == 0);
  }
  SECTION("a route with source = client, on port 102") {
    const std::string ip = free_port_102();
    REQUIRE(!ip.empty());
    ProxyProcess proxy("[[listener]]\nname = \"r\"\nlisten = \"" + ip +
                           ":102\"\nfilters = [\"route\"]\n\n[filter.route]\nkind = \"tsap-route\"\n"
                           "[[filter.route.route]]\ncalled = \"MTA\"\nupstream = \"127.0.0.1:9\"\nsource = \"client\"\n",
                       {"--user", "nobody"});
    INFO(proxy.text());
    REQUIRE(proxy.wait_for_line(std::regex("capabilities kept: cap_net_bind_service \\(listener r on " + ip +
                                           ":102\\), cap_net_admin \\(filter route routes with source = \"client\"\\)"),
                                10s));
    check_credentials(proxy.pid(), user, kNetBindService | kNetAdmin);
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(10s) == 0);
  }
}

TEST_CASE("run --user: the admin Unix socket belongs to the user", "[privdrop][integration]") {
  if (const auto why = cannot_run(); !why.empty()) {
    WARN("privilege-drop test skipped: " + why);
    return;
  }
  const User user = *nobody();
  // As /run/isoproxy would be: a directory the user owns, so that it can
  // remove its socket at exit (and replace a stale one at the next start).
  std::string tmpl = (fs::temp_directory_path() / "isoproxy-run-XXXXXX").string();
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  const fs::path run_dir = tmpl;
  REQUIRE(::chown(run_dir.c_str(), user.uid, user.gid) == 0);
  const fs::path sock = run_dir / "admin.sock";
  {
    ProxyProcess proxy("[admin]\nlisten = \"unix:" + sock.string() +
                       "\"\n\n[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n",
                       {"--user", "nobody"});
    INFO(proxy.text());
    REQUIRE(proxy.wait_for_line(std::regex("running as user nobody"), 10s));
    struct stat st{};
    REQUIRE(::stat(sock.c_str(), &st) == 0);
    CHECK(st.st_uid == user.uid);
    CHECK(st.st_gid == user.gid);
    CHECK((st.st_mode & 0777) == 0660);
    check_credentials(proxy.pid(), user, 0);
    REQUIRE(proxy.signal(SIGTERM));
    CHECK(proxy.wait_exit(10s) == 0);
    CHECK_FALSE(fs::exists(sock));  // removed by the user at exit
  }
  fs::remove_all(run_dir);
}

TEST_CASE("run --user: refused clearly before anything is bound", "[privdrop][integration]") {
  const std::string config_dir = (fs::temp_directory_path() / ("isoproxy-user-" + std::to_string(::getpid()))).string();
  fs::create_directories(config_dir);
  ::chmod(config_dir.c_str(), 0755);
  const std::string file = config_dir + "/isoproxy.toml";
  { std::ofstream(file) << "[admin]\nlisten = \"off\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n"; }
  ::chmod(file.c_str(), 0644);

  auto missing = run_process({isoproxy::test::isoproxy_binary(), "run", "-c", file, "--user", "no-such-user-isoproxy"}, "", 20s);
  CHECK(missing.exit_code == 1);
  CHECK(missing.err.find("--user no-such-user-isoproxy: no such user; not starting") != std::string::npos);
  CHECK(missing.err.find("listening on") == std::string::npos);
  // An empty name (a variable left unset in a unit file) is no user: it
  // must not mean "stay root".
  auto empty = run_process({isoproxy::test::isoproxy_binary(), "run", "-c", file, "--user", ""}, "", 20s);
  CHECK(empty.exit_code == 2);
  CHECK(empty.err == "isoproxy: --user: names no user (e.g. --user isoproxy) (see isoproxy --help)\n");
  // A command that does not exist is named as such.
  auto bogus = run_process({isoproxy::test::isoproxy_binary(), "bogus"}, "", 20s);
  CHECK(bogus.exit_code == 2);
  CHECK(bogus.err == "isoproxy: no command \"bogus\": the commands are run, check, decode and stats (see isoproxy --help)\n");

  if (::geteuid() == 0) {
    auto root = run_process({isoproxy::test::isoproxy_binary(), "run", "-c", file, "--user", "root"}, "", 20s);
    CHECK(root.exit_code == 1);
    CHECK(root.err.find("--user root: that is root; name an unprivileged user") != std::string::npos);
    if (on_path("setpriv") && nobody()) {
      auto unprivileged = run_process({"/usr/bin/setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
                                       "--inh-caps=-all", "--bounding-set=-all", isoproxy::test::isoproxy_binary(), "run", "-c", file,
                                       "--user", "nobody"},
                                      "", 20s);
      INFO(unprivileged.err);
      CHECK(unprivileged.exit_code == 1);
      CHECK(unprivileged.err.find("--user nobody: isoproxy must be started as root") != std::string::npos);
      CHECK(unprivileged.err.find("listening on") == std::string::npos);
    } else {
      WARN("setpriv or the user nobody missing: the not-root refusal is not tested");
    }
  } else {
    auto self = run_process({isoproxy::test::isoproxy_binary(), "run", "-c", file, "--user", "nobody"}, "", 20s);
    CHECK(self.exit_code == 1);
    CHECK(self.err.find("isoproxy must be started as root") != std::string::npos);
  }
  fs::remove_all(config_dir);
}

TEST_CASE("run --user: a drop that fails serves nothing and exits 1", "[privdrop][integration]") {
  if (const auto why = cannot_run(); !why.empty()) {
    WARN("privilege-drop test skipped: " + why);
    return;
  }
  if (!on_path("setpriv")) {
    WARN("setpriv (util-linux) missing: the failed-drop test is skipped");
    return;
  }
  const std::string dir = (fs::temp_directory_path() / ("isoproxy-dropfail-" + std::to_string(::getpid()))).string();
  fs::create_directories(dir);
  const std::string file = dir + "/isoproxy.toml";
  { std::ofstream(file) << "[admin]\nlisten = \"off\"\n[[listener]]\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:9\"\n"; }
  // Root without CAP_SETPCAP (a container may start it so) cannot reduce the
  // bounding set: the drop fails after binding, and the proxy must not serve.
  auto r = run_process({"/usr/bin/setpriv", "--bounding-set=-setpcap", isoproxy::test::isoproxy_binary(), "run", "-c", file, "--user",
                        "nobody"},
                       "", 20s);
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(std::regex_search(r.err, std::regex("error cannot drop privileges: removing cap_\\w+ from the bounding set: "
                                            "Operation not permitted\n")));
  CHECK(r.err.find("running as user") == std::string::npos);
  CHECK(r.err.find("stopped: 0 sessions served") != std::string::npos);
  fs::remove_all(dir);
}
