// `isoproxy stats` through the real binary against a running isoproxy: the
// table, --json, --closed, the width rule, --watch, the error path, -c with a
// Unix admin socket, and usage errors.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <regex>
#include <sstream>
#include <thread>

#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

const std::string kCalling = "STATSCALLING1";
const std::string kCalled = "STATSCALLED42";

// The admin endpoint's address, from "admin endpoint on ADDR".
std::optional<std::string> admin_address(ProxyProcess& p) {
  auto line = p.wait_for_line(std::regex(R"(admin endpoint on (\S+))"), 10s);
  if (!line) return std::nullopt;
  std::smatch m;
  std::regex_search(*line, m, std::regex(R"(admin endpoint on (\S+))"));
  return m[1].str();
}

// `isoproxy stats ARGS...` with environment assignments first (through env(1),
// so the test process's own environment is left alone). COLUMNS is unset
// unless given: the width rule must not depend on the shell running the tests.
ProcessResult stats(const std::vector<std::string>& env, const std::vector<std::string>& args) {
  std::vector<std::string> argv = {"/usr/bin/env", "-u", "COLUMNS", "LC_ALL=C.UTF-8"};
  argv.insert(argv.end(), env.begin(), env.end());
  argv.push_back(isoproxy::test::isoproxy_binary());
  argv.push_back("stats");
  argv.insert(argv.end(), args.begin(), args.end());
  return run_process(argv, {}, 30s);
}

// A fake endpoint's side of one request: its head, or nothing if the client
// went away first.
std::optional<std::string> read_request(Conn& c) {
  std::string req;
  while (req.find("\r\n\r\n") == std::string::npos) {
    auto some = c.recv_some(65536, 5s);
    if (!some || some->empty()) return std::nullopt;
    req.append(some->begin(), some->end());
  }
  return req;
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string l; std::getline(in, l);) out.push_back(l);
  return out;
}

// Columns a line takes: its UTF-8 code points (the table only prints
// one-column characters).
std::size_t columns_of(const std::string& line) {
  std::size_t n = 0;
  for (char c : line) n += (static_cast<unsigned char>(c) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

std::optional<std::string> line_with(const std::string& text, const std::string& part) {
  for (const auto& l : lines_of(text)) {
    if (l.find(part) != std::string::npos) return l;
  }
  return std::nullopt;
}

bool has_control_bytes(const std::string& text) {
  for (char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if ((c < 0x20 && c != '\n') || c == 0x7F) return true;
  }
  return false;
}

// Framed through the data phase (passthrough = false): the views show DT
// frame counts and a DR sent mid-session, which pass-through does not decode.
std::string proxy_toml(std::uint16_t upstream, const std::string& admin = "127.0.0.1:0") {
  return "[admin]\nlisten = \"" + admin + "\"\n\n[[listener]]\nname = \"stats\"\nlisten = \"127.0.0.1:0\"\n"
         "passthrough = false\nupstream = \"127.0.0.1:" + std::to_string(upstream) + "\"\nfilters = [\"annotate\", \"reserved\"]\n\n"
         "[filter.annotate]\nkind = \"tsap-annotate\"\n[filter.reserved]\nkind = \"tpkt-reserved\"\n";
}

// A port nothing listens on: bound, read, closed.
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&sin), sizeof sin);
  socklen_t len = sizeof sin;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sin), &len);
  ::close(fd);
  return ntohs(sin.sin_port);
}

// A proxy in front of the vendor-like responder, with one established session.
struct LiveSession {
  TestServer upstream{responder_handler({.reserved = 0x11})};
  ProxyProcess proxy;
  std::string admin;
  Conn client;

  LiveSession() : proxy(proxy_toml(upstream.port())) {
    REQUIRE(upstream.ok());
    auto port = proxy.listen_port("stats", 10s);
    REQUIRE(port);
    auto a = admin_address(proxy);
    REQUIRE(a);
    admin = *a;
    client = connect_to("127.0.0.1", *port);
    REQUIRE(client.valid());
    REQUIRE(client.send_all(make_cr(kCalling, kCalled)));
    REQUIRE(client.recv_frame(5s));  // the CC: established
    const ByteVec dt = make_dt(std::string(700, 'x'));
    REQUIRE(client.send_all(dt));
    REQUIRE(client.recv_exact(dt.size(), 5s));
  }
};

}  // namespace

TEST_CASE("stats: a TSAP that is not printable is shown as hex:, as the close line and the config write it",
          "[stats-cmd][integration]") {
  LiveSession live;
  auto port = live.proxy.listen_port("stats", 10s);
  REQUIRE(port);
  // S7's binary TSAPs: the octets 01 00 and 01 02, not the text "0100".
  Conn s7 = connect_to("127.0.0.1", *port);
  REQUIRE(s7.valid());
  const ByteVec calling = {0x01, 0x00}, called = {0x01, 0x02};
  REQUIRE(s7.send_all(make_cr(isoproxy::codec::Bytes(calling), isoproxy::codec::Bytes(called))));
  REQUIRE(s7.recv_frame(5s));
  auto r = stats({"COLUMNS=250"}, {"--admin", live.admin});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  auto row = line_with(r.out, "hex:0100");
  REQUIRE(row);
  CHECK(row->find("hex:0102") != std::string::npos);
  s7.close();
  const auto line = live.proxy.wait_for_line(std::regex(R"(close reason=.* calling=hex:0100 called=hex:0102 )"), 10s);
  CHECK(line);
  // A TSAP that is the text "-" is quoted: a bare - says there was none.
  Conn dash = connect_to("127.0.0.1", *port);
  REQUIRE(dash.send_all(make_cr("-", "DASH")));
  REQUIRE(dash.recv_frame(5s));
  dash.close();
  CHECK(live.proxy.wait_for_line(std::regex(R"(close reason=.* calling="-" called=DASH )"), 10s));
}

TEST_CASE("stats: a live relayed session appears in the table, and --json has it", "[stats-cmd][integration]") {
  LiveSession live;
  auto r = stats({}, {"--admin", live.admin});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.empty());
  const auto lines = lines_of(r.out);
  REQUIRE(lines.size() >= 3);
  // The totals, then the header and the session's row.
  CHECK(lines[0].rfind("isoproxy " + live.admin + "  active 1  accepted 1  refused 0  closed 0  ", 0) == 0);
  CHECK(lines[1].find("CALLING") != std::string::npos);
  auto row = line_with(r.out, kCalling);
  REQUIRE(row);
  CHECK(row->find(kCalled) != std::string::npos);
  CHECK(row->find("established") != std::string::npos);
  // The client: its address, or its reverse-DNS name once the lookup ended.
  const auto json_now = nlohmann::json::parse(stats({}, {"--admin", live.admin, "--json"}).out);
  const auto& name = json_now["sessions"][0]["client_name"];
  const std::string client_shown = name.is_string() ? name.get<std::string>() + ":" : std::string("127.0.0.1:");
  CHECK((row->find(client_shown) != std::string::npos || row->find("127.0.0.1:") != std::string::npos));
  // Not a terminal and no COLUMNS: 80 columns.
  for (const auto& l : lines) CHECK(columns_of(l) <= 80);

  // Wide: every column, with the session's counters (CR + DT each way,
  // 700 bytes of data, one reserved-byte repair).
  auto wide = stats({"COLUMNS=250"}, {"--admin", live.admin});
  REQUIRE(wide.exit_code == 0);
  auto wrow = line_with(wide.out, kCalling);
  REQUIRE(wrow);
  CHECK(std::regex_search(*wrow, std::regex(R"(\s1\s+stats\s+established\s)")));
  CHECK(std::regex_search(*wrow, std::regex(R"(\s2/2\s+1\s+-$)")));  // frames, repairs, last DR

  auto j = stats({}, {"--admin", live.admin, "--json"});
  REQUIRE(j.exit_code == 0);
  const json doc = json::parse(j.out);  // one document
  REQUIRE(doc["sessions"].is_array());
  REQUIRE(doc["sessions"].size() == 1);
  const json& s = doc["sessions"][0];
  CHECK(s["calling_tsap"]["ascii"] == kCalling);
  CHECK(s["called_tsap"]["ascii"] == kCalled);
  CHECK(s["state"] == "established");
  CHECK(s["filters"]["reserved.repaired"] == 1);
  CHECK(doc["stats"]["sessions"]["active"] == 1);
  CHECK(doc["stats"]["sessions"]["accepted"] == 1);

  // Filters pass through to the endpoint.
  auto match = stats({"COLUMNS=250"}, {"--admin", live.admin, "--tsap", kCalled, "--state", "established", "--peer", "127.0.0.1"});
  REQUIRE(match.exit_code == 0);
  CHECK(line_with(match.out, kCalling));
  CHECK(lines_of(match.out)[0].find("[state=established tsap=" + kCalled + " peer=127.0.0.1]") != std::string::npos);
  auto none = stats({}, {"--admin", live.admin, "--tsap", "NO SUCH TSAP"});
  REQUIRE(none.exit_code == 0);
  CHECK_FALSE(line_with(none.out, kCalling));
  CHECK(line_with(none.out, "no open sessions"));
  auto other = stats({}, {"--admin", live.admin, "--state", "connecting", "--json"});
  REQUIRE(other.exit_code == 0);
  CHECK(json::parse(other.out)["sessions"].empty());
}

TEST_CASE("stats: --closed shows a closed session's close reason and decoded DR", "[stats-cmd][integration]") {
  LiveSession live;
  // The client disconnects with a DR (reason 0x80) and closes.
  REQUIRE(live.client.send_all(make_dr(0x80)));
  live.client.close();
  REQUIRE(live.proxy.wait_for_line(std::regex("close reason="), 10s));

  auto r = stats({"COLUMNS=250"}, {"--admin", live.admin, "--closed"});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(line_with(r.out, "no open sessions"));
  CHECK(line_with(r.out, "recently closed, newest first: 1 session"));
  CHECK(line_with(r.out, "CLOSE REASON"));
  auto row = line_with(r.out, kCalling);
  REQUIRE(row);
  CHECK(row->find(kCalled) != std::string::npos);
  CHECK(std::regex_search(*row, std::regex(R"(\s(client|upstream)-(closed|reset)\s)")));
  CHECK(row->find("0x80 normal disconnect initiated by session entity (client)") != std::string::npos);

  // Without --closed it is gone; at 60 columns the reason stays.
  auto open_only = stats({"COLUMNS=250"}, {"--admin", live.admin});
  REQUIRE(open_only.exit_code == 0);
  CHECK_FALSE(line_with(open_only.out, kCalling));
  auto narrow = stats({"COLUMNS=60"}, {"--admin", live.admin, "--closed"});
  REQUIRE(narrow.exit_code == 0);
  CHECK(std::regex_search(narrow.out, std::regex(R"(\s(client|upstream)-(closed|reset))")));
  for (const auto& l : lines_of(narrow.out)) CHECK(columns_of(l) <= 60);
}

TEST_CASE("stats: COLUMNS=60 gives no line longer than 60, in UTF-8 and in ASCII", "[stats-cmd][integration]") {
  LiveSession live;
  for (const std::string locale : {"LC_ALL=C.UTF-8", "LC_ALL=C"}) {
    auto r = stats({"COLUMNS=60", locale}, {"--admin", live.admin, "--closed"});
    INFO(locale << "\n" << r.out << r.err);
    REQUIRE(r.exit_code == 0);
    const auto lines = lines_of(r.out);
    REQUIRE(lines.size() >= 3);
    for (const auto& l : lines) CHECK(columns_of(l) <= 60);
    auto row = line_with(r.out, "established");
    REQUIRE(row);
    CHECK(row->find("STATSCAL") != std::string::npos);
    if (locale == "LC_ALL=C") CHECK(std::all_of(r.out.begin(), r.out.end(), [](char c) { return (c & 0x80) == 0; }));
  }
  // --width overrides COLUMNS.
  auto w = stats({"COLUMNS=60"}, {"--admin", live.admin, "--width", "200"});
  REQUIRE(w.exit_code == 0);
  auto row = line_with(w.out, kCalling);
  REQUIRE(row);
  CHECK(columns_of(*row) > 60);
}

TEST_CASE("stats: --watch prints frames whose counters move while the session streams", "[stats-cmd][integration]") {
  LiveSession live;
  // The client streams DTs (each echoed by the responder) while stats watches.
  std::atomic<bool> stop{false};
  std::atomic<std::uint64_t> rounds{0};
  std::thread streamer([&] {
    const ByteVec dt = make_dt(std::string(4000, 's'));
    for (int i = 0; i < 200000 && !stop; ++i) {  // bounded
      if (!live.client.send_all(dt) || !live.client.recv_exact(dt.size(), 5s)) break;
      ++rounds;
    }
  });
  auto r = stats({"COLUMNS=250"}, {"--admin", live.admin, "--watch", "0.2", "--count", "3"});
  stop = true;
  streamer.join();
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(rounds > 0);
  const auto lines = lines_of(r.out);
  // Three frames, each starting with the totals, separated by one blank line.
  std::vector<std::size_t> starts;
  for (std::size_t i = 0; i < lines.size(); ++i) {
    if (lines[i].rfind("isoproxy " + live.admin, 0) == 0) starts.push_back(i);
  }
  REQUIRE(starts.size() == 3);
  CHECK(std::regex_search(lines[starts[0]], std::regex(R"(  every 0\.2s \d\d:\d\d:\d\d$)")));
  for (std::size_t k = 1; k < starts.size(); ++k) CHECK(lines[starts[k] - 1].empty());
  CHECK_FALSE(has_control_bytes(r.out));  // not a terminal: no escape sequences
  // The session's bytes column (up/down) differs between the first and the last frame.
  std::vector<std::string> bytes;
  for (std::size_t k = 0; k < starts.size(); ++k) {
    const std::size_t end = k + 1 < starts.size() ? starts[k + 1] : lines.size();
    for (std::size_t i = starts[k]; i < end; ++i) {
      std::smatch m;
      if (lines[i].find(kCalling) != std::string::npos &&
          std::regex_search(lines[i], m, std::regex(R"(\s(\d[\d.]*[KMGTPE]?/\d[\d.]*[KMGTPE]?)\s)"))) {
        bytes.push_back(m[1]);
      }
    }
  }
  REQUIRE(bytes.size() == 3);
  CHECK(bytes.front() != bytes.back());

  // --json with --watch: one document per line.
  auto j = stats({}, {"--admin", live.admin, "--watch", "0.2", "--count", "2", "--json"});
  REQUIRE(j.exit_code == 0);
  const auto docs = lines_of(j.out);
  REQUIRE(docs.size() == 2);
  for (const auto& d : docs) CHECK(json::parse(d)["sessions"].size() == 1);
}

TEST_CASE("stats: --watch ends cleanly on SIGTERM", "[stats-cmd][integration]") {
  LiveSession live;
  BackgroundProcess watch({isoproxy::test::isoproxy_binary(), "stats", "--admin", live.admin, "--watch", "0.2"});
  REQUIRE(watch.started());
  // Two frames seen: it is in its loop.
  REQUIRE(watch.wait_for_lines(BackgroundProcess::Stream::kOut, std::regex("^isoproxy "), 2, 10s));
  REQUIRE(watch.signal(SIGTERM));
  CHECK(watch.wait_exit(10s) == 0);
}

TEST_CASE("stats: nothing listening gives exit 1 and one clear line", "[stats-cmd][integration]") {
  const std::string addr = "127.0.0.1:" + std::to_string(free_port());
  auto r = stats({}, {"--admin", addr});
  CHECK(r.exit_code == 1);
  CHECK(r.out.empty());
  CHECK(r.err == "isoproxy stats: cannot reach the admin endpoint at " + addr +
                     ": connection refused (is isoproxy running? is [admin] listen set?)\n");

  // --watch keeps trying and shows the error in each frame; --count ends it.
  auto w = stats({}, {"--admin", addr, "--watch", "0.2", "--count", "2"});
  CHECK(w.exit_code == 1);  // the last refresh failed
  const auto lines = lines_of(w.out);
  CHECK(std::count_if(lines.begin(), lines.end(), [](const std::string& l) {
          return l.find("connection refused (is isoproxy running?") != std::string::npos;
        }) == 2);

  // A Unix socket path that does not exist.
  auto u = stats({}, {"--admin", "unix:/nonexistent/isoproxy-admin.sock"});
  CHECK(u.exit_code == 1);
  CHECK(u.err.find("cannot reach the admin endpoint at unix:/nonexistent/isoproxy-admin.sock: no such file or directory") !=
        std::string::npos);
}

TEST_CASE("stats: -c reads [admin] listen, a Unix socket here, 'off' is a clear error", "[stats-cmd][integration]") {
  TestServer upstream(responder_handler({.reserved = 0x11}));
  REQUIRE(upstream.ok());
  std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-stats-XXXXXX").string();
  REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
  const std::filesystem::path dir = tmpl;
  const std::string sock = (dir / "admin.sock").string();
  {
    ProxyProcess proxy(proxy_toml(upstream.port(), "unix:" + sock));
    auto port = proxy.listen_port("stats", 10s);
    REQUIRE(port);
    REQUIRE(admin_address(proxy) == "unix:" + sock);
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr(kCalling, kCalled)));
    REQUIRE(c.recv_frame(5s));

    auto r = stats({"COLUMNS=200"}, {"-c", proxy.config_path().string()});
    INFO(r.out << r.err);
    REQUIRE(r.exit_code == 0);
    CHECK(lines_of(r.out)[0].rfind("isoproxy unix:" + sock + "  active 1", 0) == 0);
    CHECK(line_with(r.out, kCalling));
    auto j = stats({}, {"--config", proxy.config_path().string(), "--json"});
    REQUIRE(j.exit_code == 0);
    CHECK(json::parse(j.out)["sessions"][0]["called_tsap"]["ascii"] == kCalled);
  }
  // The same file with the endpoint off.
  const auto off = dir / "off.toml";
  {
    std::ofstream(off) << "[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:10102\"\nupstream = \"127.0.0.1:102\"\n";
  }
  auto r = stats({}, {"-c", off.string()});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("the admin endpoint is off in " + off.string() + " ([admin] listen = \"off\")") != std::string::npos);
  // A port-0 endpoint cannot be found from the file.
  const auto zero = dir / "zero.toml";
  {
    std::ofstream(zero) << "[admin]\nlisten = \"127.0.0.1:0\"\n\n[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:10102\"\nupstream = \"127.0.0.1:102\"\n";
  }
  auto z = stats({}, {"-c", zero.string()});
  CHECK(z.exit_code == 1);
  CHECK(z.err.find("port 0") != std::string::npos);
  // Only [admin] matters: a listener this user cannot load (a key it may
  // not read, a file mid-edit) does not keep stats from finding the
  // endpoint; an error in [admin] itself is named.
  const auto other = dir / "other.toml";
  {
    std::ofstream(other) << "[admin]\nlisten = \"off\"\n\n[[listener]]\nname = \"x\"\nlisten = \"127.0.0.1:10102\"\n"
                            "upstream = \"127.0.0.1:102\"\n[listener.tls]\ncert = \"/nonexistent/x.crt\"\nkey = \"/nonexistent/x.key\"\n";
  }
  auto o = stats({}, {"-c", other.string()});
  CHECK(o.exit_code == 1);
  CHECK(o.err.find("the admin endpoint is off in " + other.string()) != std::string::npos);
  const auto bad_admin = dir / "bad-admin.toml";
  { std::ofstream(bad_admin) << "[admin]\nlisten = \"nowhere\"\n\n[[listener]]\nbogus = 1\n"; }
  auto b = stats({}, {"-c", bad_admin.string()});
  CHECK(b.exit_code == 1);
  CHECK(b.err.find("admin.listen") != std::string::npos);
  CHECK(b.err.find("bogus") == std::string::npos);
  // A file that does not load.
  auto missing = stats({}, {"-c", (dir / "missing.toml").string()});
  CHECK(missing.exit_code == 1);
  CHECK(missing.err.rfind("isoproxy stats: cannot read the admin address from ", 0) == 0);
  std::filesystem::remove_all(dir);
}

TEST_CASE("stats: bad options are usage errors (exit 2)", "[stats-cmd][integration]") {
  for (const std::vector<std::string>& args : std::vector<std::vector<std::string>>{
           {"--watch", "0.1"},
           {"--watch", "3601"},
           {"--watch", "soon"},
           {"--count", "3"},
           {"--watch", "--count", "0"},
           {"--watch", "--count", "-1"},
           {"--state", "sideways"},
           {"--admin", "::1:9102"},
           {"--admin", "127.0.0.1:0"},
           {"--admin", "127.0.0.1:1", "-c", "/dev/null"},
           {"--timeout", "0"},
           {"--width", "-1"},
           {"--bogus"},
           // Empty values: a shell variable that was not set, not "the default" or "no filter".
           {"--admin", ""},
           {"--tsap", ""},
           {"--peer", ""},
           {"--admin", "http://127.0.0.1:9102"},
       }) {
    auto r = stats({}, args);
    INFO(args[0] << " " << (args.size() > 1 ? args[1] : ""));
    CHECK(r.exit_code == 2);
    CHECK(r.out.empty());
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
  }
}

TEST_CASE("stats: an HTTP error from the endpoint is shown with its message", "[stats-cmd][integration]") {
  // A server that answers every request with a 503 and a JSON error.
  TestServer fake([](Conn& c) {
    if (!read_request(c)) return;
    const std::string body = "{\"error\": \"draining: try again \\u001b[2J later\"}";
    c.send_all("HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nContent-Length: " +
               std::to_string(body.size()) + "\r\n\r\n" + body);
    c.close();
  });
  REQUIRE(fake.ok());
  const std::string addr = "127.0.0.1:" + std::to_string(fake.port());
  auto r = stats({}, {"--admin", addr});
  CHECK(r.exit_code == 1);
  CHECK(r.err == "isoproxy stats: the admin endpoint at " + addr +
                     " answered 503 Service Unavailable: draining: try again \\x1B[2J later\n");
}

TEST_CASE("stats: a --peer or --tsap that can never match is a clear error and not an empty table",
          "[stats-cmd][integration]") {
  LiveSession live;
  for (const std::vector<std::string>& filter : {std::vector<std::string>{"--peer", "garbage"},
                                                std::vector<std::string>{"--tsap", "hex:zz"}}) {
    std::vector<std::string> args = {"--admin", live.admin};
    args.insert(args.end(), filter.begin(), filter.end());
    auto r = stats({}, args);
    INFO(filter[0] << " " << filter[1] << ": " << r.out << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.out.empty());
    CHECK(r.err.rfind("isoproxy stats: the admin endpoint at " + live.admin + " answered 400 Bad Request: " +
                          filter[0].substr(2) + " must be ", 0) == 0);
  }
  // The same filters, well written, find the session.
  auto r = stats({}, {"--admin", live.admin, "--peer", "127.0.0.1", "--tsap", kCalled});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(line_with(r.out, kCalling));
}

TEST_CASE("stats: an answer that is not isoproxy's is a clear error, never a crash", "[stats-cmd][integration]") {
  // A server that answers every request with 200 and `body`.
  auto serving = [](std::string body) {
    return [body](Conn& c) {
      if (!read_request(c)) return;
      c.send_all("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                 "\r\n\r\n" + body);
      c.close();
    };
  };
  struct Case {
    const char* what;
    std::string body;
    std::vector<std::string> args;
    std::string says;
  };
  const std::vector<Case> cases = {
      {"a number no double holds", "{\"sessions\":{\"active\":1e400}}", {},
       "the answer to /stats is not one isoproxy gives: [json.exception.out_of_range.406] number overflow"},
      {"nesting 100000 deep", "{\"sessions\":[" + std::string(100000, '[') + std::string(100000, ']') + "]}", {"--json"},
       "the answer to /stats is not one isoproxy gives: nested deeper than 64 levels"},
  };
  for (const auto& k : cases) {
    INFO(k.what);
    TestServer fake(serving(k.body));
    REQUIRE(fake.ok());
    std::vector<std::string> args = {"--admin", "127.0.0.1:" + std::to_string(fake.port())};
    args.insert(args.end(), k.args.begin(), k.args.end());
    auto r = stats({}, args);
    INFO(r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.err.find(k.says) != std::string::npos);
  }
}

TEST_CASE("stats: a timeout says how much of the answer came", "[stats-cmd][integration]") {
  // A server that sends the start of a status line, then nothing.
  TestServer fake([](Conn& c) {
    auto some = c.recv_some(65536, 5s);
    if (!some || some->empty()) return;
    c.send_all(std::string("HTTP/1.1"));
    c.recv_some(65536, 10s);  // holds the connection until the client gives up
  });
  REQUIRE(fake.ok());
  auto r = stats({}, {"--admin", "127.0.0.1:" + std::to_string(fake.port()), "--timeout", "0.5"});
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("no whole answer within 0.5 s (8 bytes came)") != std::string::npos);
}

TEST_CASE("stats: a worker that did not answer makes the view incomplete, and exit 1", "[stats-cmd][integration]") {
  // What the endpoint answers with workers = 2 when worker 1 is stuck: the
  // totals and sessions of worker 0 alone, and which worker is missing.
  TestServer fake([](Conn& c) {
    const auto req = read_request(c);
    if (!req) return;
    const std::string body =
        req->rfind("GET /stats", 0) == 0
            ? R"({"sessions":{"active":3,"accepted":315,"refused":0,"closed":312},"bytes":{"to_upstream":1,"to_client":2},)"
              R"("workers":[{"index":0,"active":3,"accepted":315},{"index":1,"error":"no answer within 2000ms"}]})"
            : R"({"sessions":[],"workers_missing":[1]})";
    c.send_all("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
               "\r\n\r\n" + body);
    c.close();
  });
  REQUIRE(fake.ok());
  const std::string admin = "127.0.0.1:" + std::to_string(fake.port());
  auto r = stats({}, {"--admin", admin});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("INCOMPLETE: worker 1: no answer within 2000ms (the totals and sessions below leave out what it holds)") !=
        std::string::npos);
  CHECK(r.err == "isoproxy stats: incomplete: worker 1: no answer within 2000ms\n");
  auto j = stats({}, {"--admin", admin, "--json"});
  CHECK(j.exit_code == 1);
  CHECK(json::parse(j.out)["workers_missing"] == json::parse("[1]"));
  auto w = stats({}, {"--admin", admin, "--watch", "0.2", "--count", "1"});
  CHECK(w.exit_code == 1);
  CHECK(w.out.find("INCOMPLETE: worker 1") != std::string::npos);
}
