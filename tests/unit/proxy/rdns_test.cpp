// The reverse-DNS cache on a real libuv loop. Expected names come from the
// system's own getnameinfo, so the tests hold on any machine's /etc/hosts.
#include "rdns.h"

#include <arpa/inet.h>
#include <netdb.h>

#include <catch2/catch.hpp>
#include <optional>
#include <string>

using isoproxy::ReverseDns;

namespace {

sockaddr_in v4(const char* ip, std::uint16_t port = 102) {
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  inet_pton(AF_INET, ip, &a.sin_addr);
  return a;
}

const sockaddr* sa(const sockaddr_in& a) { return reinterpret_cast<const sockaddr*>(&a); }

// What the C library says, synchronously (the oracle).
std::optional<std::string> system_name(const char* ip) {
  sockaddr_in a = v4(ip, 0);
  char host[NI_MAXHOST];
  if (getnameinfo(sa(a), sizeof a, host, sizeof host, nullptr, 0, NI_NAMEREQD) != 0) return std::nullopt;
  return std::string(host);
}

struct Loop {
  uv_loop_t loop{};
  Loop() { uv_loop_init(&loop); }
  ~Loop() {
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
  }
  void run() { uv_run(&loop, UV_RUN_DEFAULT); }  // until every lookup ended
};

}  // namespace

TEST_CASE("rdns: a name is looked up once, then answered from the cache", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  d.configure({});
  const sockaddr_in a = v4("127.0.0.1", 40000);
  CHECK_FALSE(d.name(sa(a)));  // nothing known before the lookup ends
  d.want(sa(a));
  d.want(sa(a));  // under way: not started twice
  CHECK(d.in_flight() == 1);
  l.run();
  CHECK(d.in_flight() == 0);
  CHECK(d.name(sa(a)) == system_name("127.0.0.1"));
  // Another port of the same host is the same entry.
  const sockaddr_in b = v4("127.0.0.1", 40001);
  d.want(sa(b));
  l.run();
  CHECK(d.counters().lookups == 1);
  CHECK(d.counters().hits == 2);  // the second want while under way, and this one
  CHECK(d.counters().found + d.counters().failed == 1);
}

TEST_CASE("rdns: an expired entry is looked up again", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  ReverseDns::Options o;
  o.ttl_ms = 0;
  o.failure_ttl_ms = 0;
  d.configure(o);
  const sockaddr_in a = v4("127.0.0.1");
  d.want(sa(a));
  l.run();
  uv_update_time(&l.loop);
  d.want(sa(a));
  l.run();
  CHECK(d.counters().lookups == 2);
  CHECK(d.counters().hits == 0);
  CHECK(d.name(sa(a)) == system_name("127.0.0.1"));
}

TEST_CASE("rdns: the cache and the lookups under way are bounded", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  ReverseDns::Options o;
  o.max_entries = 2;
  o.max_in_flight = 1;
  d.configure(o);
  const sockaddr_in a = v4("127.0.0.1"), b = v4("127.0.0.2"), c = v4("127.0.0.3");
  d.want(sa(a));
  d.want(sa(b));  // one already under way: skipped, not queued
  CHECK(d.counters().skipped == 1);
  l.run();
  d.want(sa(b));
  l.run();
  d.want(sa(c));
  l.run();
  CHECK(d.counters().lookups == 3);
  CHECK(d.entries() <= 2);
  // The oldest (127.0.0.1) was evicted; the newest is answered.
  CHECK_FALSE(d.name(sa(a)));
  CHECK(d.name(sa(c)) == system_name("127.0.0.3"));
}

TEST_CASE("rdns: off means no lookup at all", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  ReverseDns::Options o;
  o.enabled = false;
  d.configure(o);
  const sockaddr_in a = v4("127.0.0.1");
  d.want(sa(a));
  l.run();
  CHECK(d.counters().lookups == 0);
  CHECK_FALSE(d.name(sa(a)));
}

TEST_CASE("rdns: one-off lookups report the name or why there is none, none after shutdown", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  d.configure({});
  std::optional<std::string> got;
  std::string error = "not called";
  const sockaddr_in a = v4("127.0.0.1");
  d.lookup(sa(a), [&](std::optional<std::string> name, std::string e) {
    got = std::move(name);
    error = std::move(e);
  });
  l.run();
  CHECK(got == system_name("127.0.0.1"));
  if (!got) CHECK_FALSE(error.empty());

  std::vector<std::string> hosts;
  std::string ferror = "not called";
  d.forward("localhost", [&](std::vector<std::string> h, std::string e) {
    hosts = std::move(h);
    ferror = std::move(e);
  });
  l.run();
  CHECK(ferror.empty());
  CHECK_FALSE(hosts.empty());

  d.shutdown();
  std::string after;
  d.lookup(sa(a), [&](std::optional<std::string> name, std::string e) {
    CHECK_FALSE(name);
    after = std::move(e);
  });
  CHECK(after == "shutting down");
  d.want(sa(v4("127.0.0.9")));
  CHECK(d.in_flight() == 0);
}

TEST_CASE("rdns: numeric_host drops the port", "[rdns]") {
  CHECK(isoproxy::numeric_host(sa(v4("192.0.2.5", 102))) == "192.0.2.5");
  sockaddr_in6 a{};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(102);
  inet_pton(AF_INET6, "2001:db8::5", &a.sin6_addr);
  CHECK(isoproxy::numeric_host(reinterpret_cast<const sockaddr*>(&a)) == "2001:db8::5");
}

TEST_CASE("rdns: eviction takes the least recently wanted address", "[rdns]") {
  Loop l;
  ReverseDns d(&l.loop);
  ReverseDns::Options o;
  o.max_entries = 2;
  d.configure(o);
  const sockaddr_in a = v4("127.0.0.1"), b = v4("127.0.0.2"), c = v4("127.0.0.3");
  d.want(sa(a));
  l.run();
  d.want(sa(b));
  l.run();
  d.want(sa(a));  // a is wanted again: b is now the least recent
  d.want(sa(c));
  l.run();
  CHECK(d.entries() == 2);
  CHECK(d.name(sa(a)) == system_name("127.0.0.1"));
  CHECK(d.counters().lookups == 3);
  // b was evicted: wanting it again is a new lookup, not a hit.
  const auto hits = d.counters().hits;
  d.want(sa(b));
  l.run();
  CHECK(d.counters().lookups == 4);
  CHECK(d.counters().hits == hits);
}
