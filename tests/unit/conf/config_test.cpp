// The value parsers of conf/config.h: what each accepts, what it refuses and
// that the refusal says what to write instead; formatters round-trip.
#include <arpa/inet.h>

#include <catch2/catch.hpp>

#include <cstring>
#include <string>
#include <vector>

#include "conf/config.h"
#include "conf/toml_reader.h"

namespace isoproxy::conf {
namespace {

using namespace std::chrono_literals;

sockaddr_storage v4(const char* ip) {
  sockaddr_storage ss{};
  sockaddr_in sin{};
  sin.sin_family = AF_INET;
  REQUIRE(inet_pton(AF_INET, ip, &sin.sin_addr) == 1);
  std::memcpy(&ss, &sin, sizeof sin);
  return ss;
}

sockaddr_storage v6(const char* ip) {
  sockaddr_storage ss{};
  sockaddr_in6 sin6{};
  sin6.sin6_family = AF_INET6;
  REQUIRE(inet_pton(AF_INET6, ip, &sin6.sin6_addr) == 1);
  std::memcpy(&ss, &sin6, sizeof sin6);
  return ss;
}

const sockaddr* sa(const sockaddr_storage& ss) { return reinterpret_cast<const sockaddr*>(&ss); }

struct Refusal {
  const char* input;
  const char* says;  // a substring of the message
};

TEST_CASE("parse_duration accepts integers with a unit, and a bare 0", "[conf]") {
  struct Case {
    const char* in;
    Duration want;
  };
  const Case cases[] = {
      {"0", 0ms},         {"00", 0ms},        {"0s", 0ms},       {"0ms", 0ms},       {"250ms", 250ms},
      {"5s", 5s},         {"2m", 2min},       {"1h", 1h},        {"1d", 24h},        {"1m30s", 90s},
      {"1h0m1s", 3601s},  {"1500ms", 1500ms}, {"86400s", 24h},
  };
  for (const auto& c : cases) {
    INFO(c.in);
    auto d = parse_duration(c.in);
    REQUIRE(d.ok());
    CHECK(*d == c.want);
  }
}

TEST_CASE("parse_duration refuses what is ambiguous or malformed, saying why", "[conf]") {
  const Refusal cases[] = {
      {"5", "has no unit"},
      {"5", "ms, s, m, h"},
      {"30", "\"30s\""},
      {"", "empty duration"},
      {"-5s", "negative"},
      {"1.5s", "fractions"},
      {"5sec", "unknown unit \"sec\""},
      {"5 s", "unknown unit"},
      {"1w", "unknown unit \"w\""},
      {"5us", "unknown unit"},
      {"s", "not a duration"},
      {"1m30", "\"1m30\" ends in a number without a unit: every term needs one (ms, s, m, h or d), e.g. \"1m30s\""},
      {"5s0", "ends in a number without a unit"},
      {"0s5", "ends in a number without a unit"},
      {"99999999999999999999s", "too large"},
      {"999999999999999d", "too large"},
  };
  for (const auto& c : cases) {
    INFO(c.input);
    auto d = parse_duration(c.input);
    REQUIRE_FALSE(d.ok());
    CHECK_THAT(d.error().message, Catch::Contains(c.says));
    CHECK(d.error().kind == "bad-duration");
  }
}

TEST_CASE("format_duration picks the largest exact unit and parses back", "[conf]") {
  CHECK(format_duration(0ms) == "0s");
  CHECK(format_duration(250ms) == "250ms");
  CHECK(format_duration(1500ms) == "1500ms");
  CHECK(format_duration(5s) == "5s");
  CHECK(format_duration(90s) == "90s");
  CHECK(format_duration(2min) == "2m");
  CHECK(format_duration(1h) == "1h");
  CHECK(format_duration(48h) == "2d");
  for (const Duration d : std::vector<Duration>{0ms, 1ms, 999ms, 1001ms, 60s, 61s, 3600s, 3601s, 24h, Duration{123456789}}) {
    auto back = parse_duration(format_duration(d));
    REQUIRE(back.ok());
    CHECK(*back == d);
  }
}

TEST_CASE("parse_size takes bytes, IEC (1024) and SI (1000) units", "[conf]") {
  struct Case {
    const char* in;
    std::uint64_t want;
  };
  const Case cases[] = {
      {"0", 0},
      {"65535", 65535},
      {"7B", 7},
      {"256KiB", 256 * 1024},
      {"4MiB", 4 * 1024 * 1024},
      {"1GiB", 1024ull * 1024 * 1024},
      {"2TiB", 2ull << 40},
      {"64kB", 64000},
      {"64KB", 64000},
      {"1MB", 1000000},
      {"1GB", 1000000000},
      {"64 KiB", 65536},
      {"1TB", 1000000000000ull},
  };
  for (const auto& c : cases) {
    INFO(c.in);
    auto s = parse_size(c.in);
    REQUIRE(s.ok());
    CHECK(*s == c.want);
  }
}

TEST_CASE("parse_size refuses negative, overflowing, ambiguous and unknown sizes", "[conf]") {
  const Refusal cases[] = {
      {"", "empty size"},
      {"-1", "negative"},
      {"-1KiB", "negative"},
      {"64K", "ambiguous"},
      {"64K", "\"64KiB\""},
      {"64K", "\"64kB\""},
      {"4M", "\"4MiB\" (powers of 1024) or \"4MB\""},
      {"1.5MiB", "fractions"},
      {"64kb", "unknown unit \"kb\""},
      {"64kib", "unknown unit"},
      {"64 bytes", "unknown unit"},
      {"KiB", "not a size"},
      {"18446744073709551616", "too large"},
      {"17179869184GiB", "too large"},
  };
  for (const auto& c : cases) {
    INFO(c.input);
    auto s = parse_size(c.input);
    REQUIRE_FALSE(s.ok());
    CHECK_THAT(s.error().message, Catch::Contains(c.says));
  }
}

TEST_CASE("format_size uses exact binary units and parses back", "[conf]") {
  CHECK(format_size(0) == "0");
  CHECK(format_size(65535) == "65535");
  CHECK(format_size(65536) == "64KiB");
  CHECK(format_size(256 * 1024) == "256KiB");
  CHECK(format_size(4 * 1024 * 1024) == "4MiB");
  CHECK(format_size(1024ull * 1024 * 1024) == "1GiB");
  CHECK(format_size(1536) == "1536");
  for (const std::uint64_t b : {0ull, 1ull, 1000ull, 1024ull, 1025ull, 65535ull, 1ull << 20, 3ull << 30, 5ull << 40}) {
    auto back = parse_size(format_size(b));
    REQUIRE(back.ok());
    CHECK(*back == b);
  }
}

TEST_CASE("parse_socket_address takes numeric IPv4 and bracketed IPv6, port defaulted", "[conf]") {
  SECTION("IPv4 with port") {
    auto a = parse_socket_address("127.0.0.1:102");
    REQUIRE(a.ok());
    CHECK(a->family() == AF_INET);
    CHECK(a->port() == 102);
    CHECK(a->length == sizeof(sockaddr_in));
    CHECK(a->text == "127.0.0.1:102");
  }
  SECTION("IPv6 with port") {
    auto a = parse_socket_address("[::1]:1102");
    REQUIRE(a.ok());
    CHECK(a->family() == AF_INET6);
    CHECK(a->port() == 1102);
    CHECK(a->length == sizeof(sockaddr_in6));
    CHECK(a->text == "[::1]:1102");
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &a->storage, sizeof sin6);
    CHECK(IN6_IS_ADDR_LOOPBACK(&sin6.sin6_addr));
  }
  SECTION("no port: the default, written into the text") {
    auto a = parse_socket_address("0.0.0.0");
    REQUIRE(a.ok());
    CHECK(a->port() == 102);
    CHECK(a->text == "0.0.0.0:102");
    auto b = parse_socket_address("[::]");
    REQUIRE(b.ok());
    CHECK(b->family() == AF_INET6);
    CHECK(b->port() == 102);
    CHECK(b->text == "[::]:102");
    auto c = parse_socket_address("192.0.2.1", 10102);
    REQUIRE(c.ok());
    CHECK(c->port() == 10102);
  }
  SECTION("edge ports") {
    CHECK(parse_socket_address("192.0.2.1:1")->port() == 1);
    CHECK(parse_socket_address("192.0.2.1:65535")->port() == 65535);
  }
}

TEST_CASE("parse_socket_address refuses names, bad ports and unbracketed IPv6", "[conf]") {
  const Refusal cases[] = {
      {"mta.example.com:102", "not a numeric address"},
      {"mta.example.com:102", "host names are not resolved"},
      {"localhost", "not a numeric address"},
      {"192.0.2.1:0", "out of range (1..65535)"},
      {"192.0.2.1:65536", "out of range"},
      {"192.0.2.1:99999999999999999999999", "out of range"},
      {"192.0.2.1:", "missing port"},
      {"192.0.2.1:x", "is not a number"},
      {"192.0.2.1:-1", "is not a number"},
      {"192.0.2.1:+102", "is not a number"},
      {"::1:102", "brackets"},
      {"::", "brackets"},
      {"[::1", "missing ']'"},
      {"[::1]102", "expected ':PORT'"},
      {"[192.0.2.1]:102", "brackets are for IPv6"},
      {"[fe80::1%eth0]:102", "zone"},
      {"256.0.0.1:102", "not a valid IPv4 address"},
      {"192.0.2:102", "not a valid IPv4 address"},
      {"010.0.0.1:102", "not a valid IPv4 address"},
      {"[::g]:102", "not a valid IPv6 address"},
      {"*:102", "0.0.0.0"},
      {":102", "missing address"},
      {"", "missing address"},
  };
  for (const auto& c : cases) {
    INFO(c.input);
    auto a = parse_socket_address(c.input);
    REQUIRE_FALSE(a.ok());
    CHECK_THAT(a.error().message, Catch::Contains(c.says));
  }
}

TEST_CASE("parse_ip takes an address without a port", "[conf]") {
  auto a = parse_ip("192.0.2.5");
  REQUIRE(a.ok());
  CHECK(a->family() == AF_INET);
  CHECK(a->text == "192.0.2.5");
  auto b = parse_ip("2001:db8::5");
  REQUIRE(b.ok());
  CHECK(b->family() == AF_INET6);
  auto c = parse_ip("[2001:db8::5]");
  REQUIRE(c.ok());
  CHECK(c->family() == AF_INET6);

  const Refusal bad[] = {
      {"192.0.2.5:102", "without a port"},
      {"mta.example.com", "not a numeric address"},
      {"300.1.1.1", "not a valid IPv4"},
      {"", "missing address"},
  };
  for (const auto& r : bad) {
    INFO(r.input);
    auto e = parse_ip(r.input);
    REQUIRE_FALSE(e.ok());
    CHECK_THAT(e.error().message, Catch::Contains(r.says));
  }
}

TEST_CASE("parse_cidr checks family, prefix range and host bits", "[conf]") {
  SECTION("accepted") {
    auto a = parse_cidr("10.0.0.0/8");
    REQUIRE(a.ok());
    CHECK(a->family == AF_INET);
    CHECK(a->prefix == 8);
    CHECK(a->text == "10.0.0.0/8");
    auto b = parse_cidr("2001:db8::/32");
    REQUIRE(b.ok());
    CHECK(b->family == AF_INET6);
    CHECK(b->prefix == 32);
    CHECK(parse_cidr("0.0.0.0/0")->prefix == 0);
    CHECK(parse_cidr("::/0")->prefix == 0);
    CHECK(parse_cidr("192.0.2.7/32")->prefix == 32);
    CHECK(parse_cidr("2001:db8::7/128")->prefix == 128);
    CHECK(parse_cidr("192.0.2.7")->prefix == 32);  // a bare address is one host
    CHECK(parse_cidr("2001:db8::7")->prefix == 128);
    CHECK(parse_cidr("172.16.0.0/12")->prefix == 12);
  }
  SECTION("refused") {
    const Refusal cases[] = {
        {"10.1.2.3/8", "did you mean 10.0.0.0/8?"},
        {"172.31.0.0/12", "did you mean 172.16.0.0/12?"},
        {"2001:db8::1/32", "did you mean 2001:db8::/32?"},
        {"192.0.2.1/31", "did you mean 192.0.2.0/31?"},
        {"10.0.0.0/33", "out of range for IPv4 (0..32)"},
        {"::/129", "out of range for IPv6 (0..128)"},
        {"10.0.0.0/", "must be a number"},
        {"10.0.0.0/x", "must be a number"},
        {"10.0.0.0/-1", "must be a number"},
        {"mta.example.com/8", "not an address range"},
        {"10.0.0/8", "not an address range"},
    };
    for (const auto& c : cases) {
      INFO(c.input);
      auto r = parse_cidr(c.input);
      REQUIRE_FALSE(r.ok());
      CHECK_THAT(r.error().message, Catch::Contains(c.says));
    }
  }
}

TEST_CASE("Cidr::contains matches on the prefix, across v4-mapped addresses", "[conf]") {
  const Cidr net8 = *parse_cidr("10.0.0.0/8");
  CHECK(net8.contains(sa(v4("10.0.0.0"))));
  CHECK(net8.contains(sa(v4("10.255.255.255"))));
  CHECK_FALSE(net8.contains(sa(v4("11.0.0.0"))));
  CHECK_FALSE(net8.contains(sa(v4("9.255.255.255"))));
  CHECK_FALSE(net8.contains(nullptr));

  const Cidr net12 = *parse_cidr("172.16.0.0/12");  // not on a byte boundary
  CHECK(net12.contains(sa(v4("172.31.255.255"))));
  CHECK_FALSE(net12.contains(sa(v4("172.32.0.0"))));
  CHECK_FALSE(net12.contains(sa(v4("172.15.255.255"))));

  const Cidr any4 = *parse_cidr("0.0.0.0/0");
  CHECK(any4.contains(sa(v4("203.0.113.9"))));
  CHECK_FALSE(any4.contains(sa(v6("2001:db8::1"))));

  const Cidr host = *parse_cidr("192.0.2.7");
  CHECK(host.contains(sa(v4("192.0.2.7"))));
  CHECK_FALSE(host.contains(sa(v4("192.0.2.8"))));

  const Cidr doc6 = *parse_cidr("2001:db8::/33");
  CHECK(doc6.contains(sa(v6("2001:db8::1"))));
  CHECK(doc6.contains(sa(v6("2001:db8:7fff::1"))));
  CHECK_FALSE(doc6.contains(sa(v6("2001:db8:8000::1"))));
  CHECK_FALSE(doc6.contains(sa(v4("10.0.0.1"))));

  // An IPv4 client seen through an IPv6 socket.
  CHECK(net8.contains(sa(v6("::ffff:10.1.2.3"))));
  CHECK_FALSE(net8.contains(sa(v6("::ffff:11.1.2.3"))));
  CHECK_FALSE(net8.contains(sa(v6("::10.1.2.3"))));  // v4-compatible, not v4-mapped
  const Cidr mapped = *parse_cidr("::ffff:10.0.0.0/104");
  CHECK(mapped.contains(sa(v4("10.9.9.9"))));
  CHECK_FALSE(mapped.contains(sa(v4("11.9.9.9"))));

  // An IPv6 range wider than ::ffff:0:0/96 is about IPv6 clients only:
  // "::/0" is every IPv6 client, not every client.
  const Cidr any6 = *parse_cidr("::/0");
  CHECK(any6.contains(sa(v6("2001:db8::1"))));
  CHECK_FALSE(any6.contains(sa(v4("10.9.9.9"))));
  CHECK_FALSE(parse_cidr("::/1")->contains(sa(v4("10.9.9.9"))));
  CHECK_FALSE(parse_cidr("::fffe:0:0/95")->contains(sa(v4("10.9.9.9"))));
  CHECK(parse_cidr("::ffff:0:0/96")->contains(sa(v4("10.9.9.9"))));
}

TEST_CASE("SocketAddress::port reads either family", "[conf]") {
  CHECK(parse_socket_address("192.0.2.1:8080")->port() == 8080);
  CHECK(parse_socket_address("[2001:db8::1]:443")->port() == 443);
  CHECK(SocketAddress{}.port() == 0);
}

TEST_CASE("did_you_mean suggests close words only", "[conf]") {
  const std::vector<std::string> keys = {"connect_timeout", "handshake_timeout", "idle_timeout", "keepalive",
                                         "keepalive_interval", "listen", "name", "upstream"};
  CHECK(did_you_mean("conect_timeout", keys) == "connect_timeout");
  CHECK(did_you_mean("connect_timout", keys) == "connect_timeout");
  CHECK(did_you_mean("Connect_Timeout", keys) == "connect_timeout");
  CHECK(did_you_mean("upstrem", keys) == "upstream");
  CHECK(did_you_mean("listen_on", keys) == "listen");  // shared beginning
  CHECK(did_you_mean("keepalive_intvl", keys) == "keepalive_interval");
  CHECK(did_you_mean("nmae", keys) == "name");
  CHECK_FALSE(did_you_mean("zzz", keys));
  CHECK_FALSE(did_you_mean("ab", {"cd"}));  // two edits rewrite a two-letter word
  CHECK_FALSE(did_you_mean("anything", {}));
  CHECK(did_you_mean("tpkt-reserve", {"tpkt-reserved", "tsap-annotate"}) == "tpkt-reserved");
}

}  // namespace
}  // namespace isoproxy::conf
