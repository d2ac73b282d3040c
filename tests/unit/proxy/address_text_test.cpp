// address_text (proxy/upstream.h) writes IPv4 addresses itself: it must
// agree with inet_ntop for every octet value and port.
#include <arpa/inet.h>
#include <netinet/in.h>

#include <catch2/catch.hpp>
#include <random>
#include <string>

#include "upstream.h"

TEST_CASE("address_text: IPv4 as inet_ntop writes it, IPv6 in brackets", "[address_text]") {
  std::mt19937 rng(7);
  for (int i = 0; i < 5000; ++i) {
    sockaddr_in in{};
    in.sin_family = AF_INET;
    // The edges (0, 9, 10, 99, 100, 255 per octet; ports 0 and 65535) first, then random.
    static constexpr unsigned kEdge[] = {0, 9, 10, 99, 100, 255};
    const std::uint32_t host = i < 1296 ? (kEdge[i % 6] << 24 | kEdge[(i / 6) % 6] << 16 | kEdge[(i / 36) % 6] << 8 | kEdge[(i / 216) % 6])
                                        : static_cast<std::uint32_t>(rng());
    in.sin_addr.s_addr = htonl(host);
    in.sin_port = htons(static_cast<std::uint16_t>(i == 0 ? 0 : i == 1 ? 65535 : rng()));
    char ip[INET_ADDRSTRLEN];
    REQUIRE(inet_ntop(AF_INET, &in.sin_addr, ip, sizeof ip) != nullptr);
    const std::string want = std::string(ip) + ":" + std::to_string(ntohs(in.sin_port));
    const std::string got = isoproxy::address_text(reinterpret_cast<const sockaddr*>(&in));
    if (got != want) FAIL("address_text " << got << " != " << want);
  }
  sockaddr_in6 in6{};
  in6.sin6_family = AF_INET6;
  REQUIRE(inet_pton(AF_INET6, "2001:db8::10", &in6.sin6_addr) == 1);
  in6.sin6_port = htons(102);
  CHECK(isoproxy::address_text(reinterpret_cast<const sockaddr*>(&in6)) == "[2001:db8::10]:102");
  sockaddr none{};
  CHECK(isoproxy::address_text(&none) == "?");
}
