// smart_connect through the real binary: the upstream connection's last
// handshake ACK travels with the CR (one segment less at the upstream), and
// with smart_connect = false it travels alone. The upstream counts the
// segments its socket received (TCP_INFO tcpi_segs_in) once the CR is in.
#include <catch2/catch.hpp>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <optional>
#include <regex>
#include <string>

#include "codec/x224.h"
#include "support/peers.h"
#include "support/process.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;

namespace {

// glibc's struct tcp_info stops at tcpi_total_retrans; the kernel's goes on
// (linux/tcp.h, which cannot be included next to netinet/tcp.h). The ABI
// only ever appends, so these offsets are fixed.
struct TcpInfoSegs {
  tcp_info base;
  std::uint64_t pacing_rate, max_pacing_rate, bytes_acked, bytes_received;
  std::uint32_t segs_out, segs_in;
};
static_assert(offsetof(TcpInfoSegs, segs_in) == 140);

// Segments the upstream's socket received, read once the CR is complete:
// the SYN, then either the ACK and the CR apart (3) or together (2).
std::optional<std::uint32_t> run_one(bool smart) {
  std::atomic<std::int64_t> segs{-1};
  std::atomic<bool> cr_ok{false};
  TestServer up([&](Conn& conn) {
    auto cr = conn.recv_frame(5s);
    if (!cr) return;
    cr_ok = *cr == make_cr("SWISSLIFETSAP", "EXCHANGETSAP1");
    TcpInfoSegs info{};
    socklen_t len = sizeof info;
    if (::getsockopt(conn.fd(), IPPROTO_TCP, TCP_INFO, &info, &len) == 0 && len >= sizeof info) segs = info.segs_in;
    conn.send_all(make_cc("SWISSLIFETSAP", "EXCHANGETSAP1"));
    conn.wait_eof(5s);
  });
  if (!up.ok()) return std::nullopt;
  ProxyProcess proxy(std::string("[[listener]]\nname = \"sc\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:") +
                     std::to_string(up.port()) + "\"\n" + (smart ? "" : "smart_connect = false\n"));
  auto port = proxy.listen_port("sc", 10s);
  REQUIRE(port);
  {
    Conn c = connect_to("127.0.0.1", *port);
    REQUIRE(c.send_all(make_cr("SWISSLIFETSAP", "EXCHANGETSAP1")));
    auto cc = c.recv_frame(5s);
    REQUIRE(cc);
    CHECK(*cc == make_cc("SWISSLIFETSAP", "EXCHANGETSAP1"));
  }
  REQUIRE(proxy.wait_for_line(std::regex("close reason=client-closed"), 10s));
  CHECK(cr_ok);
  REQUIRE(proxy.signal(SIGTERM));
  CHECK(proxy.wait_exit(10s) == 0);
  if (segs < 0) return std::nullopt;
  return static_cast<std::uint32_t>(segs.load());
}

}  // namespace

TEST_CASE("smart_connect: the handshake's last ACK goes with the CR, or alone when off", "[smart-connect][integration]") {
  const auto on = run_one(true);
  REQUIRE(on);
  CHECK(*on == 2);  // SYN, then the ACK and the CR in one segment
  const auto off = run_one(false);
  REQUIRE(off);
  CHECK(*off == 3);  // SYN, ACK, CR
}

TEST_CASE("smart_connect: check --verbose shows it, a non-boolean is refused", "[smart-connect][integration][config]") {
  const auto dir = std::filesystem::temp_directory_path() / ("isoproxy-smart-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  const std::string listener = "[[listener]]\nname = \"a\"\nlisten = \"127.0.0.1:0\"\nupstream = \"127.0.0.1:1\"\n";
  std::ofstream(dir / "ok.toml") << listener;
  std::ofstream(dir / "bad.toml") << listener << "smart_connect = \"yes\"\n";
  auto ok = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", (dir / "ok.toml").string(), "--verbose"});
  CHECK(ok.exit_code == 0);
  CHECK(ok.out.find("\nsmart_connect = true\n") != std::string::npos);
  auto bad = run_process({isoproxy::test::isoproxy_binary(), "check", "-c", (dir / "bad.toml").string()});
  CHECK(bad.exit_code == 1);
  CHECK(bad.err.find(":5:17: listener[0].smart_connect:") != std::string::npos);
  std::filesystem::remove_all(dir);
}
