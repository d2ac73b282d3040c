// A relay whose upstream leads back to isoproxy itself (a listener pointed
// at its own address, or a TPROXY rule that diverts the router's own
// addresses) would dial itself without end. It is recognised the moment the
// looped connection arrives: both sessions close, named `loop`.
#include <netinet/in.h>
#include <net/if.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cstring>
#include <fstream>
#include <functional>
#include <regex>
#include <thread>
#include <vector>

#include "support/peers.h"
#include "support/proxy_process.h"

using namespace isoproxy::test;
using namespace std::chrono_literals;

namespace {

// A loopback port free right now (bound, read, released).
std::uint16_t free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) != 0) return 0;
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

}  // namespace

TEST_CASE("loop: two listeners relaying to each other close the looped chain, once", "[loop][integration]") {
  // (One listener pointed at its own address is refused by the loader.)
  const std::uint16_t pa = free_port(), pb = free_port();
  REQUIRE((pa != 0 && pb != 0 && pa != pb));
  const std::string a = "127.0.0.1:" + std::to_string(pa), b = "127.0.0.1:" + std::to_string(pb);
  ProxyProcess proxy("[[listener]]\nname = \"a\"\nlisten = \"" + a + "\"\nupstream = \"" + b + "\"\n\n" +
                     "[[listener]]\nname = \"b\"\nlisten = \"" + b + "\"\nupstream = \"" + a + "\"\n");
  REQUIRE(proxy.wait_listening(10s, 2));

  Conn c = connect_to("127.0.0.1", pa);
  REQUIRE(c.valid());
  REQUIRE(c.send_all(make_cr("LOOPCALLING", "LOOPCALLED")));
  CHECK(c.wait_eof(10s));  // closed, never answered

  // S1 on a, S2 on b (a chain, allowed), S3 on a again: the loop.
  const auto warn = proxy.wait_for_line(
      std::regex(R"(warning \[S3\] loop: the upstream connection of session S2 came back to isoproxy \(listener a\))"), 10s);
  REQUIRE(warn);
  REQUIRE(proxy.wait_for_lines(std::regex(R"(\[S[123]\] close reason="loop: )"), 3, 10s));
  REQUIRE(proxy.signal(SIGTERM));
  REQUIRE(proxy.wait_exit(10s) == 0);
  // Nothing more was dialled: three sessions in all.
  CHECK(proxy.count_lines(std::regex(R"(\[S4\])")) == 0);
  CHECK(proxy.wait_for_line(std::regex(R"(stopped: 3 sessions served.*close_reasons=loop=3)"), 5s));
}

TEST_CASE("loop: listeners chained on purpose are not a loop", "[loop][integration]") {
  TestServer up(responder_handler({.reserved = 0x11}));
  REQUIRE(up.ok());
  const std::uint16_t pb = free_port();
  REQUIRE(pb != 0);
  const std::string b = "127.0.0.1:" + std::to_string(pb);
  // front -> back -> responder, both in one process.
  ProxyProcess proxy("[[listener]]\nname = \"front\"\nlisten = \"127.0.0.1:0\"\nupstream = \"" + b + "\"\n\n" +
                     "[[listener]]\nname = \"back\"\nlisten = \"" + b + "\"\nupstream = \"127.0.0.1:" +
                     std::to_string(up.port()) + "\"\nfilters = [\"reserved\"]\n\n[filter.reserved]\nkind = \"tpkt-reserved\"\n");
  auto port = proxy.listen_port("front", 10s);
  REQUIRE(port);
  Conn c = connect_to("127.0.0.1", *port);
  REQUIRE(c.send_all(make_cr("CHAINCALLING", "CHAINCALLED")));
  auto cc = c.recv_frame(5s);
  REQUIRE(cc);
  CHECK((*cc)[1] == 0x00);  // repaired by the back listener
  const ByteVec dt = make_dt("through two listeners");
  REQUIRE(c.send_all(dt));
  CHECK(c.recv_exact(dt.size(), 5s) == dt);
  c.close();
  REQUIRE(proxy.wait_for_lines(std::regex(R"(close reason=(client|upstream)-closed)"), 2, 10s));
  CHECK(proxy.count_lines(std::regex("loop")) == 0);
}

namespace {

// Runs `body` on a thread of its own in a new network namespace (a thread's
// namespace is its own; what it spawns inherits it), with lo up and the
// ephemeral port range narrowed to `ports` ports. Returns "" or why it could not.
std::string in_small_netns(int ports, const std::function<void()>& body) {
  std::string why;
  std::thread t([&] {
    if (::unshare(CLONE_NEWNET) != 0) {
      why = std::string("unshare(CLONE_NEWNET): ") + std::strerror(errno);
      return;
    }
    const int fd = ::socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ifreq ifr{};
    std::snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (::ioctl(fd, SIOCGIFFLAGS, &ifr) != 0 || (ifr.ifr_flags |= IFF_UP, ::ioctl(fd, SIOCSIFFLAGS, &ifr) != 0)) {
      why = std::string("bringing lo up: ") + std::strerror(errno);
      ::close(fd);
      return;
    }
    ::close(fd);
    std::ofstream range("/proc/sys/net/ipv4/ip_local_port_range");
    range << "40000 " << (40000 + ports - 1) << "\n";
    if (!range.flush()) {
      why = "cannot set net.ipv4.ip_local_port_range";
      return;
    }
    body();
  });
  t.join();
  return why;
}

}  // namespace

TEST_CASE("loop: a client from an upstream connection's source port is not a loop", "[loop][integration]") {
  // An ephemeral source port is reused toward other destinations: a client
  // may arrive from the very 127.0.0.1:PORT an upstream connection uses.
  // Only source AND destination identify a looped connection. With 100
  // ephemeral ports and 40 sessions (80 connections), ports are shared.
  if (::geteuid() != 0) {
    WARN("not run: needs root for a network namespace of its own (CI runs as root)");
    return;
  }
  const std::size_t n = 40;
  std::size_t loops = 0, closes = 0, ccs = 0;
  std::string text;
  const std::string why = in_small_netns(100, [&] {
    TestServer up(responder_handler({}));
    if (!up.ok()) return;
    ProxyProcess proxy("[global]\nreverse_dns = false\n\n[[listener]]\nname = \"many\"\nlisten = \"127.0.0.1:0\"\n"
                       "upstream = \"127.0.0.1:" + std::to_string(up.port()) + "\"\n");
    auto port = proxy.listen_port("many", 10s);
    if (!port) return;
    std::vector<Conn> held;
    for (std::size_t i = 0; i < n; ++i) {
      Conn c = connect_to("127.0.0.1", *port);
      if (!c.valid() || !c.send_all(make_cr("MANYCALLING", "MANYCALLED"))) break;
      if (c.recv_frame(5s)) ++ccs;
      held.push_back(std::move(c));
    }
    loops = proxy.count_lines(std::regex("loop"));
    closes = proxy.count_lines(std::regex("close reason="));
    text = proxy.text();
  });
  REQUIRE(why.empty());
  INFO(text);
  CHECK(ccs == n);  // every session got its CC
  CHECK(loops == 0);
  CHECK(closes == 0);
}
