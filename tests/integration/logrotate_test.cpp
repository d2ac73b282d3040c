// SIGUSR1 reopens the access-log file, as logrotate's postrotate does it:
// the file is renamed, the signal sent, and the next lines land in a new
// file of the configured name while the renamed one keeps what it had.
#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <thread>
#include <vector>

#include "support/http.h"
#include "support/peers.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

std::vector<nlohmann::json> read_lines(const fs::path& file) {
  std::vector<nlohmann::json> out;
  std::ifstream in(file);
  for (std::string l; std::getline(in, l);) out.push_back(nlohmann::json::parse(l));
  return out;
}

// One session with a calling TSAP of our choice; returns once it is logged closed.
void one_session(ProxyProcess& proxy, std::uint16_t port, const std::string& calling, std::size_t closed_so_far) {
  Conn c = connect_to("127.0.0.1", port);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr(calling, "EXCHANGETSAP1")));
  REQUIRE(c.recv_frame(5s));
  c.close();
  REQUIRE(proxy.wait_for_lines(std::regex("close reason="), closed_so_far + 1, 10s));
}

// Listener "r" toward the upstream on `up_port`, annotating, with the access log at `log`.
std::string access_log_config(const fs::path& log, std::uint16_t up_port) {
  return "[global]\naccess_log = \"" + log.string() + "\"\n\n[[listener]]\nname = \"r\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
         std::to_string(up_port) + "\"\nfilters = [\"annotate\"]\n\n[filter.annotate]\nkind = \"tsap-annotate\"\n";
}

struct TempDir {
  fs::path path;
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "isoproxy-rotate-XXXXXX").string();
    if (::mkdtemp(tmpl.data()) != nullptr) path = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path.empty()) fs::remove_all(path, ec);
  }
};

}  // namespace

TEST_CASE("SIGUSR1 reopens the access log after it was renamed", "[access-log][logrotate][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  TempDir dir;
  REQUIRE(!dir.path.empty());
  const fs::path log = dir.path / "access.log";
  ProxyProcess proxy(access_log_config(log, up.port()));
  auto port = proxy.listen_port("r", 10s);
  REQUIRE(port);
  INFO(proxy.text());

  one_session(proxy, *port, "BEFORE", 0);
  // logrotate: rename, then signal.
  const fs::path rotated = dir.path / "access.log.1";
  fs::rename(log, rotated);
  one_session(proxy, *port, "STILLOLD", 1);  // before the signal: still the old (renamed) file
  REQUIRE(proxy.signal(SIGUSR1));
  REQUIRE(proxy.wait_for_line(std::regex("SIGUSR1: reopened access log " + log.string()), 10s));
  REQUIRE(fs::exists(log));
  one_session(proxy, *port, "AFTER1", 2);
  one_session(proxy, *port, "AFTER2", 3);
  // Read once the process is gone: the line is written just after the close line.
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);

  const auto old_lines = read_lines(rotated);
  REQUIRE(old_lines.size() == 2);
  CHECK(old_lines[0]["calling_tsap"]["ascii"] == "BEFORE");
  CHECK(old_lines[1]["calling_tsap"]["ascii"] == "STILLOLD");
  const auto new_lines = read_lines(log);
  REQUIRE(new_lines.size() == 2);
  CHECK(new_lines[0]["calling_tsap"]["ascii"] == "AFTER1");
  CHECK(new_lines[1]["calling_tsap"]["ascii"] == "AFTER2");
}

TEST_CASE("SIGUSR1: a log that cannot be reopened keeps the old file", "[access-log][logrotate][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  TempDir dir;
  REQUIRE(!dir.path.empty());
  fs::create_directories(dir.path / "logs");
  const fs::path log = dir.path / "logs" / "access.log";
  ProxyProcess proxy(access_log_config(log, up.port()));
  auto port = proxy.listen_port("r", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  one_session(proxy, *port, "FIRST", 0);
  // The whole directory moves away: the configured path cannot be created.
  fs::rename(dir.path / "logs", dir.path / "moved");
  REQUIRE(proxy.signal(SIGUSR1));
  REQUIRE(proxy.wait_for_line(
      std::regex("SIGUSR1: cannot reopen access_log " + log.string() +
                 ": No such file or directory; still writing to the file opened before"),
      10s));
  one_session(proxy, *port, "SECOND", 1);
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);
  const auto lines = read_lines(dir.path / "moved" / "access.log");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["calling_tsap"]["ascii"] == "SECOND");
  CHECK_FALSE(fs::exists(log));
}

TEST_CASE("SIGUSR1 without an access-log file changes nothing", "[access-log][logrotate][integration]") {
  TestServer up(echo_handler());
  REQUIRE(up.ok());
  ProxyProcess proxy("[[listener]]\nname = \"r\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\n");
  auto port = proxy.listen_port("r", 10s);
  REQUIRE(port);
  REQUIRE(proxy.signal(SIGUSR1));
  CHECK(proxy.wait_for_line(std::regex("SIGUSR1: no access-log file to reopen \\(access_log = \"off\"\\)"), 10s));
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.valid());
  const ByteVec dt = make_dt("still relaying");
  REQUIRE(c.send_all(dt));
  CHECK(c.recv_exact(dt.size(), 5s) == dt);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
}

TEST_CASE("SIGUSR1: a FIFO put where the log was is refused at once, not waited on", "[access-log][logrotate][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  TempDir dir;
  REQUIRE(!dir.path.empty());
  const fs::path log = dir.path / "access.log";
  ProxyProcess proxy(access_log_config(log, up.port()));
  auto port = proxy.listen_port("r", 10s);
  REQUIRE(port);
  INFO(proxy.text());
  one_session(proxy, *port, "FIRST", 0);
  // open() of a FIFO for writing blocks until a reader comes: on the loop
  // that handles signals, that would be for ever.
  fs::rename(log, dir.path / "access.log.1");
  REQUIRE(::mkfifo(log.c_str(), 0600) == 0);
  REQUIRE(proxy.signal(SIGUSR1));
  REQUIRE(proxy.wait_for_line(std::regex("SIGUSR1: cannot reopen access_log " + log.string() +
                                         ": a FIFO with no reader: not a regular file; still writing to the file opened before"),
                              10s));
  one_session(proxy, *port, "SECOND", 1);
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);
  const auto lines = read_lines(dir.path / "access.log.1");
  REQUIRE(lines.size() == 2);
  CHECK(lines[1]["calling_tsap"]["ascii"] == "SECOND");
}

TEST_CASE("access log: a write that fails midway leaves every whole line readable, and is counted", "[access-log][integration]") {
  TestServer up(responder_handler());
  REQUIRE(up.ok());
  TempDir dir;
  REQUIRE(!dir.path.empty());
  const fs::path log = dir.path / "access.log";
  ProxyProcess proxy("[admin]\nlisten = \"127.0.0.1:0\"\n\n" + access_log_config(log, up.port()));
  auto port = proxy.listen_port("r", 10s);
  REQUIRE(port);
  auto aport = admin_port(proxy);
  REQUIRE(aport);
  INFO(proxy.text());
  one_session(proxy, *port, "WHOLE1", 0);
  REQUIRE(proxy.wait_for_line(std::regex("close reason="), 10s));
  // The line is written just after the close line: wait until it is there.
  for (int i = 0; i < 200 && read_lines(log).size() < 1; ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(read_lines(log).size() == 1);
  // A file size limit 40 bytes past the end: the next line is cut there
  // (EFBIG; SIGXFSZ must not kill the relay), the one after gets nothing.
  const auto size = fs::file_size(log);
  rlimit lim{size + 40, RLIM_INFINITY};  // the soft limit: raised again below
  REQUIRE(::prlimit(proxy.pid(), RLIMIT_FSIZE, &lim, nullptr) == 0);
  one_session(proxy, *port, "CUT", 1);
  REQUIRE(proxy.wait_for_line(std::regex("access log " + log.string() + ": write failed: File too large; lines are lost"), 10s));
  one_session(proxy, *port, "LOST", 2);
  // Its line is written after its close line: wait until it is counted lost.
  auto dropped = [&] {
    auto r = http(*aport, "GET", "/stats");
    return r.status == 200 ? nlohmann::json::parse(r.body)["access_log_dropped"].get<int>() : -1;
  };
  for (int i = 0; i < 500 && dropped() < 2; ++i) std::this_thread::sleep_for(10ms);
  REQUIRE(dropped() == 2);
  lim = {RLIM_INFINITY, RLIM_INFINITY};
  REQUIRE(::prlimit(proxy.pid(), RLIMIT_FSIZE, &lim, nullptr) == 0);
  one_session(proxy, *port, "WHOLE2", 3);
  REQUIRE(proxy.wait_for_line(std::regex("access log " + log.string() + R"(: writing again \(2 line\(s\) lost meanwhile\))"), 10s));
  CHECK(dropped() == 2);
  CHECK(proxy.count_lines(std::regex("write failed")) == 1);  // once per streak

  std::ifstream in(log);
  std::vector<std::string> lines;
  for (std::string l; std::getline(in, l);) lines.push_back(l);
  REQUIRE(lines.size() == 3);
  CHECK(nlohmann::json::parse(lines[0])["calling_tsap"]["ascii"] == "WHOLE1");
  CHECK(lines[1].size() == 40);  // the cut line, alone on its line
  CHECK_FALSE(nlohmann::json::accept(lines[1]));
  CHECK(nlohmann::json::parse(lines[2])["calling_tsap"]["ascii"] == "WHOLE2");
}
