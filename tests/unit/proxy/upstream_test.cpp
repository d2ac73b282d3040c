// is_local_address: what a transparent listener treats as "this host", where
// a diverted connection must not be relayed (it would loop back to isoproxy).
#include "upstream.h"

#include <arpa/inet.h>
#include <ifaddrs.h>

#include <catch2/catch.hpp>
#include <cstring>

namespace {

sockaddr_storage ip(const char* text) {
  sockaddr_storage ss{};
  if (std::strchr(text, ':')) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    REQUIRE(inet_pton(AF_INET6, text, &a->sin6_addr) == 1);
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    REQUIRE(inet_pton(AF_INET, text, &a->sin_addr) == 1);
  }
  return ss;
}

bool local(const char* text) {
  const sockaddr_storage ss = ip(text);
  return isoproxy::is_local_address(reinterpret_cast<const sockaddr*>(&ss));
}

}  // namespace

TEST_CASE("is_local_address: loopback ranges, this host's interfaces, and nothing else", "[upstream]") {
  CHECK(local("127.0.0.1"));
  CHECK(local("127.45.6.7"));  // all of 127/8, though only 127.0.0.1 is on lo
  CHECK(local("::1"));
  CHECK(local("::ffff:127.0.0.1"));
  CHECK_FALSE(local("192.0.2.77"));     // TEST-NET-1: never assigned
  CHECK_FALSE(local("2001:db8::77"));   // documentation prefix
  CHECK_FALSE(local("::ffff:192.0.2.77"));
  // Every address an interface of this machine has is local.
  ifaddrs* list = nullptr;
  REQUIRE(getifaddrs(&list) == 0);
  int seen = 0;
  for (ifaddrs* i = list; i; i = i->ifa_next) {
    if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
    INFO("interface " << i->ifa_name);
    CHECK(isoproxy::is_local_address(i->ifa_addr));
    ++seen;
  }
  freeifaddrs(list);
  CHECK(seen > 0);
}
