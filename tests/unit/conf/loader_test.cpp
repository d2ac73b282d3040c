// The loader against whole files: the shipped configurations load; each kind
// of mistake gives its message at the right line:col, alone (no follow-on
// errors); several mistakes are all reported; the effective configuration
// loads back to the same configuration; `isoproxy check` prints and exits as
// documented. Runs against the real filter registry.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "check_cmd.h"
#include "conf/loader.h"
#include "filters/filter.h"

#ifndef ISOPROXY_SOURCE_DIR
#error "ISOPROXY_SOURCE_DIR must name the source tree (tests/CMakeLists.txt)"
#endif

namespace isoproxy::conf {
namespace {

using namespace std::chrono_literals;
namespace fs = std::filesystem;

std::string all_errors(const LoadResult& r) {
  std::string out;
  if (!r.ok())
    for (const auto& e : r.error()) out += e.to_string() + "\n";
  return out;
}

LoadResult load(std::string_view text) { return load_config_string(text, "test.toml"); }

// The shipped configuration and every example.
std::vector<fs::path> shipped_files() {
  const fs::path root = ISOPROXY_SOURCE_DIR;
  std::vector<fs::path> files = {root / "conf" / "isoproxy.toml"};
  for (const auto& e : fs::directory_iterator(root / "conf" / "examples"))
    if (e.path().extension() == ".toml") files.push_back(e.path());
  return files;
}

TEST_CASE("the shipped configuration and every example load without error", "[conf][loader]") {
  const auto files = shipped_files();
  REQUIRE(files.size() >= 4);  // isoproxy.toml and at least the three examples
  for (const auto& f : files) {
    INFO(f.string());
    auto r = load_config_file(f.string());
    INFO(all_errors(r));
    REQUIRE(r.ok());
    CHECK(r->path == f.string());
    CHECK_FALSE(r->listeners.empty());
    for (const auto& l : r->listeners)
      for (const auto& name : l.filters) CHECK(r->filters.at(name).factory != nullptr);
  }
}

TEST_CASE("the shipped configuration says what the documentation says", "[conf][loader]") {
  auto r = load_config_file(std::string(ISOPROXY_SOURCE_DIR) + "/conf/isoproxy.toml");
  REQUIRE(r.ok());
  REQUIRE(r->listeners.size() == 1);
  const auto& l = r->listeners[0];
  REQUIRE(l.listen.size() == 1);
  CHECK(l.listen[0].text == "0.0.0.0:102");
  REQUIRE(l.upstream);
  CHECK(l.upstream->text == "192.0.2.10:102");
  CHECK(l.filters == std::vector<std::string>{"reserved", "annotate"});
  CHECK(r->filters.at("reserved").kind == "tpkt-reserved");
  CHECK(r->filters.at("annotate").kind == "tsap-annotate");
}

TEST_CASE("a minimal listener gets every default", "[conf][loader]") {
  auto r = load(R"([[listener]]
listen = "0.0.0.0"
upstream = "192.0.2.10"
)");
  INFO(all_errors(r));
  REQUIRE(r.ok());
  const Config& c = *r;
  CHECK(c.path == "test.toml");
  CHECK(c.global.max_sessions == 10000);
  CHECK(c.global.drain_timeout == 10s);
  CHECK(c.global.log_level == "info");
  CHECK(c.filters.empty());
  REQUIRE(c.listeners.size() == 1);
  const ListenerConfig& l = c.listeners[0];
  CHECK(l.name == "listener-0");
  REQUIRE(l.listen.size() == 1);
  CHECK(l.listen[0].port() == 102);
  CHECK(l.upstream->port() == 102);
  CHECK_FALSE(l.transparent);
  CHECK(l.source.mode == SourceMode::kAuto);
  CHECK_FALSE(l.source.address);
  CHECK(l.filters.empty());
  CHECK(l.max_sessions == 0);
  CHECK(l.non_rfc1006 == NonRfc1006Policy::kPass);
  CHECK(l.malformed == MalformedPolicy::kPass);
  CHECK_FALSE(l.malformed_send_er);
  CHECK(l.max_frame == 65535);
  CHECK(l.connect_timeout == 5s);
  CHECK(l.handshake_timeout == 30s);
  CHECK(l.idle_timeout == 0s);
  CHECK(l.high_water == 256 * 1024);
  CHECK(l.low_water == 64 * 1024);
  CHECK(l.keepalive);
  CHECK(l.keepalive_interval == 60s);
  CHECK(l.passthrough);
}

TEST_CASE("every key is read into the config", "[conf][loader]") {
  auto r = load(R"([global]
max_sessions = 7
drain_timeout = "1m30s"
log_level = "debug"

[[listener]]
name = "out.v6"
listen = ["[2001:db8::1]:1102", "192.0.2.1:1102"]
upstream = "[2001:db8::10]:102"
source = "fixed"
source_address = "2001:db8::5"
filters = ["b", "a"]
max_sessions = 3
non_rfc1006 = "close"
malformed = "close"
malformed_send_er = true
max_frame = "8KiB"
connect_timeout = "250ms"
handshake_timeout = "0"
idle_timeout = "2h"
high_water = "1MiB"
low_water = 1000
keepalive = false
keepalive_interval = "2m"
passthrough = false

[[listener]]
listen = "0.0.0.0:10102"
transparent = true
source = "client"

[filter.a]
kind = "tsap-annotate"

[filter.b]
kind = "tpkt-reserved"
tpdu = ["CR", "CC"]
directions = ["to-client"]
)");
  INFO(all_errors(r));
  REQUIRE(r.ok());
  const Config& c = *r;
  CHECK(c.global.max_sessions == 7);
  CHECK(c.global.drain_timeout == 90s);
  CHECK(c.global.log_level == "debug");
  REQUIRE(c.listeners.size() == 2);
  const ListenerConfig& l = c.listeners[0];
  CHECK(l.name == "out.v6");
  REQUIRE(l.listen.size() == 2);
  CHECK(l.listen[0].family() == AF_INET6);
  CHECK(l.listen[1].family() == AF_INET);
  CHECK(l.upstream->text == "[2001:db8::10]:102");
  CHECK(l.source.mode == SourceMode::kFixed);
  CHECK(l.source.address->family() == AF_INET6);
  CHECK(l.filters == std::vector<std::string>{"b", "a"});
  CHECK(l.max_sessions == 3);
  CHECK(l.non_rfc1006 == NonRfc1006Policy::kClose);
  CHECK(l.malformed == MalformedPolicy::kClose);
  CHECK(l.malformed_send_er);
  CHECK(l.max_frame == 8192);
  CHECK(l.connect_timeout == 250ms);
  CHECK(l.handshake_timeout == 0s);
  CHECK(l.idle_timeout == 2h);
  CHECK(l.high_water == 1024 * 1024);
  CHECK(l.low_water == 1000);
  CHECK_FALSE(l.keepalive);
  CHECK(l.keepalive_interval == 2min);
  CHECK_FALSE(l.passthrough);
  const ListenerConfig& t = c.listeners[1];
  CHECK(t.name == "listener-1");
  CHECK(t.transparent);
  CHECK_FALSE(t.upstream);
  CHECK(t.source.mode == SourceMode::kClient);
  REQUIRE(c.filters.size() == 2);
  CHECK(c.filters.at("a").kind == "tsap-annotate");
  CHECK(c.filters.at("a").name == "a");
  CHECK(c.filters.at("b").kind == "tpkt-reserved");
  CHECK(c.filters.at("b").line == 35);
  CHECK(c.filters.at("b").column == 1);
  REQUIRE(c.filters.at("b").factory);
  CHECK(c.filters.at("b").factory->name() == "b");
}

// One mistake per file: the error it must give, where, and that it is the
// only one (a mistake must not drag follow-on errors along).
struct BadConfig {
  const char* what;
  const char* toml;
  const char* at;   // "LINE:COL"
  const char* key;  // "" for TOML syntax errors
  const char* says;
};

// A valid listener for the cases about something else.
#define LISTENER "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\n"

const BadConfig kBadConfigs[] = {
    // TOML syntax: toml++'s own message and position, nothing else.
    {"unterminated string", "[[listener]]\nlisten = \"0.0.0.0:102\nupstream = \"192.0.2.10\"\n", "2:22", "",
     "control characters"},
    {"key defined twice", "[global]\nmax_sessions = 1\nmax_sessions = 2\n" LISTENER, "3:16", "", "redefine"},
    {"stray comma in a list", LISTENER "filters = [\"a\",,]\n", "4:16", "", "saw comma"},

    // Top level.
    {"no listener", "[global]\nlog_level = \"info\"\n", "1:1", "listener", "at least one [[listener]] is required"},
    {"single-bracket listener", "[listener]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n", "1:1", "listener",
     "double brackets"},
    {"misspelt top-level table", LISTENER "\n[filters.a]\nkind = \"tsap-annotate\"\n", "5:2", "filters",
     "unknown table; did you mean \"filter\"?"},
    {"unknown top-level key", "version = 2\n" LISTENER, "1:1", "version", "unknown key"},

    // [global]
    {"max_sessions out of range", "[global]\nmax_sessions = 0\n" LISTENER, "2:16", "global.max_sessions",
     "must be between 1 and 1000000 (found 0)"},
    {"max_sessions as a float", "[global]\nmax_sessions = 1e4\n" LISTENER, "2:16", "global.max_sessions",
     "expected an integer, found a floating-point number"},
    {"workers zero", "[global]\nworkers = 0\n" LISTENER, "2:11", "global.workers", "must be between 1 and 64 (found 0)"},
    {"workers too many", "[global]\nworkers = 65\n" LISTENER, "2:11", "global.workers", "must be between 1 and 64 (found 65)"},
    {"workers as a word", "[global]\nworkers = \"many\"\n" LISTENER, "2:11", "global.workers",
     "expected an integer between 1 and 64 or \"auto\" (one event loop per CPU), found \"many\""},
    {"workers as a float", "[global]\nworkers = 2.0\n" LISTENER, "2:11", "global.workers",
     "expected an integer between 1 and 64 or \"auto\""},
    {"duration without a unit", "[global]\ndrain_timeout = 10\n" LISTENER, "2:17", "global.drain_timeout",
     "10 has no unit"},
    {"unknown log level", "[global]\nlog_level = \"warning\"\n" LISTENER, "2:13", "global.log_level",
     "did you mean \"warn\"?"},

    // [[listener]]: addresses.
    {"listen missing", "[[listener]]\nupstream = \"192.0.2.10:102\"\n", "1:1", "listener[0].listen", "required"},
    {"upstream missing", "[[listener]]\nlisten = \"0.0.0.0:102\"\n", "1:1", "listener[0].upstream",
     "required unless transparent = true"},
    {"empty listen list", "[[listener]]\nlisten = []\nupstream = \"192.0.2.10:102\"\n", "2:10", "listener[0].listen",
     "at least one address"},
    {"host name", "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"mta.example.com:102\"\n", "3:12",
     "listener[0].upstream", "not a numeric address"},
    {"access log relative path", "[global]\naccess_log = \"access.log\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:14", "global.access_log", "absolute file path"},
    {"reverse_dns not a boolean", "[global]\nreverse_dns = \"yes\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:15", "global.reverse_dns", "expected true or false"},
    {"reverse_dns_ttl without unit", "[global]\nreverse_dns_ttl = \"300\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:19", "global.reverse_dns_ttl", "unit"},
    {"admin listen host name", "[admin]\nlisten = \"admin.example:9102\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:10", "admin.listen", "not a numeric address"},
    {"admin token too short", "[admin]\ntoken = \"secret\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:9", "admin.token", "at least 16 characters"},
    // What HTTP cannot carry: every action would get 401.
    {"admin token ends in a space", "[admin]\ntoken = \"0123456789abcdef   \"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:9", "admin.token", "a space at its start or end is dropped from HTTP headers: every action would be refused"},
    {"admin token with a newline", "[admin]\ntoken = \"0123456789ab\\ncdef\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:9", "admin.token", "a control character (10) cannot be sent in an HTTP header"},
    {"admin unix socket relative", "[admin]\nlisten = \"unix:admin.sock\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n",
     "2:10", "admin.listen", "absolute path"},
    {"upstream port 0", "[[listener]]\nlisten = [\"0.0.0.0:102\", \"[::]:0\"]\nupstream = \"192.0.2.10:0\"\n", "3:12",
     "listener[0].upstream", "out of range (1..65535)"},
    {"listen port 70000", "[[listener]]\nlisten = [\"0.0.0.0:102\", \"[::]:70000\"]\nupstream = \"192.0.2.10\"\n", "2:26",
     "listener[0].listen[1]", "out of range (0..65535)"},
    {"port 65536", "[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10:65536\"\n", "3:12", "listener[0].upstream",
     "port 65536"},
    {"IPv6 without brackets", "[[listener]]\nlisten = \"::1:102\"\nupstream = \"192.0.2.10\"\n", "2:10",
     "listener[0].listen", "brackets"},
    {"address listed twice across listeners", LISTENER "\n[[listener]]\nlisten = [\"[::]\", \"0.0.0.0\"]\nupstream = \"192.0.2.11\"\n",
     "6:19", "listener[1].listen[1]", "0.0.0.0:102 is already a listen address of listener[0]"},
    {"upstream loops back", "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"127.0.0.1\"\n", "3:12",
     "listener[0].upstream", "loop back into the proxy"},
    {"listen is a number", "[[listener]]\nlisten = 102\nupstream = \"192.0.2.10\"\n", "2:10", "listener[0].listen",
     "expected an address or a list of addresses, found an integer"},

    // [[listener]]: names, modes.
    {"duplicate listener name", "[[listener]]\nname = \"mta\"\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n"
                                "[[listener]]\nname = \"mta\"\nlisten = \"[::]\"\nupstream = \"192.0.2.10\"\n",
     "6:8", "listener[1].name", "already used by listener[0]"},
    {"bad listener name", "[[listener]]\nname = \"my mta\"\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n", "2:8",
     "listener[0].name", "letters, digits"},
    {"upstream with transparent", "[[listener]]\nlisten = \"0.0.0.0:10102\"\ntransparent = true\nupstream = \"192.0.2.10\"\n",
     "4:12", "listener[0].upstream", "not used with transparent = true"},
    {"bad upstream with transparent", "[[listener]]\nlisten = \"0.0.0.0:10102\"\ntransparent = true\nupstream = \"mta\"\n",
     "4:12", "listener[0].upstream", "not used with transparent = true"},
    {"transparent in quotes", LISTENER "transparent = \"false\"\n", "4:15", "listener[0].transparent",
     "write false without quotes"},
    {"fixed source without address", LISTENER "source = \"fixed\"\n", "4:10", "listener[0].source_address",
     "required when source = \"fixed\""},
    {"source address without fixed", LISTENER "source_address = \"192.0.2.5\"\n", "4:18",
     "listener[0].source_address", "only used with source = \"fixed\""},
    {"source address of the other family", LISTENER "source = \"fixed\"\nsource_address = \"2001:db8::5\"\n", "5:18",
     "listener[0].source_address", "is an IPv6 address but upstream 192.0.2.10:102 is IPv4"},
    {"source address with a port", LISTENER "source = \"fixed\"\nsource_address = \"192.0.2.5:102\"\n", "5:18",
     "listener[0].source_address", "without a port"},
    {"misspelt source mode", LISTENER "source = \"fixd\"\n", "4:10", "listener[0].source",
     "expected one of \"auto\", \"fixed\", \"client\", found \"fixd\"; did you mean \"fixed\"?"},
    {"ER without close", LISTENER "malformed_send_er = true\n", "4:21", "listener[0].malformed_send_er",
     "only meaningful with malformed = \"close\""},

    // [[listener]]: sizes and durations.
    {"max_frame 64KiB", LISTENER "max_frame = \"64KiB\"\n", "4:13", "listener[0].max_frame",
     "must be between 7 and 65535 bytes (found \"64KiB\" = 65536)"},
    {"ambiguous size", LISTENER "high_water = \"512K\"\n", "4:14", "listener[0].high_water", "ambiguous"},
    {"high_water too small", LISTENER "high_water = \"1KiB\"\n", "4:14", "listener[0].high_water",
     "must be between 4KiB (4096) and 64MiB (67108864) bytes"},
    {"negative size", LISTENER "low_water = -1\n", "4:13", "listener[0].low_water", "negative"},
    {"low_water not below high_water", LISTENER "high_water = \"64KiB\"\nlow_water = \"64KiB\"\n", "5:13",
     "listener[0].low_water", "must be below high_water (64KiB)"},
    {"connect_timeout 0", LISTENER "connect_timeout = \"0s\"\n", "4:19", "listener[0].connect_timeout",
     "must be greater than 0"},
    {"fractional duration", LISTENER "idle_timeout = \"1.5h\"\n", "4:16", "listener[0].idle_timeout", "fractions"},
    {"keepalive in milliseconds", LISTENER "keepalive_interval = \"1500ms\"\n", "4:22",
     "listener[0].keepalive_interval", "whole number of seconds"},
    {"max_sessions negative", LISTENER "max_sessions = -1\n", "4:16", "listener[0].max_sessions",
     "must be between 0 and 1000000"},

    // [[listener]]: keys and filters.
    {"misspelt listener key", LISTENER "conect_timeout = \"5s\"\n", "4:1", "listener[0].conect_timeout",
     "unknown key; did you mean \"connect_timeout\"?"},
    {"filters as a string", LISTENER "filters = \"a\"\n\n[filter.a]\nkind = \"tsap-annotate\"\n", "4:11",
     "listener[0].filters", "write [\"a\"]"},
    {"filter not defined", LISTENER "filters = [\"reserved\", \"anotate\"]\n\n[filter.reserved]\nkind = \"tpkt-reserved\"\n"
                           "[filter.annotate]\nkind = \"tsap-annotate\"\n",
     "4:24", "listener[0].filters[1]", "no filter named \"anotate\": define it in a [filter.anotate] table, or did you mean \"annotate\"?"},
    {"filter listed twice", LISTENER "filters = [\"a\", \"a\"]\n\n[filter.a]\nkind = \"tsap-annotate\"\n", "4:17",
     "listener[0].filters[1]", "already in this list at filters[0]"},

    // [filter.NAME]
    {"filter without kind", LISTENER "\n[filter.a]\ntpdu = [\"CC\"]\n", "5:1", "filter.a.kind", "required"},
    {"misspelt kind", LISTENER "\n[filter.a]\nkind = \"tpkt-reserve\"\n", "6:8", "filter.a.kind",
     "unknown filter kind \"tpkt-reserve\"; did you mean \"tpkt-reserved\"?"},
    {"bad filter name", LISTENER "\n[filter.Reserved]\nkind = \"tsap-annotate\"\n", "5:9", "filter.\"Reserved\"",
     "a-z, 0-9, _ and -"},
    {"filter is not a table", LISTENER "\n[filter]\na = \"tsap-annotate\"\n", "6:5", "filter.a", "expected a [filter.a] table"},
    {"unknown key of a kind", LISTENER "\n[filter.a]\nkind = \"tsap-annotate\"\nverbose = true\n", "7:1", "filter.a.verbose",
     "unknown key"},
    {"kind's own value check", LISTENER "\n[filter.r]\nkind = \"tpkt-reserved\"\ntpdu = [\"XX\"]\n", "7:9",
     "filter.r.tpdu[0]", "XX"},
    {"a list element, at its own place", LISTENER "\n[filter.r]\nkind = \"tpkt-reserved\"\ndirections = [\n  \"to-client\",\n  \"upstream\",\n]\n",
     "9:3", "filter.r.directions[1]", "unknown direction \"upstream\""},
    {"keepalive_interval above what Linux takes", "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\nkeepalive_interval = \"10h\"\n",
     "4:22", "listener[0].keepalive_interval", "must be at most 32767s"},
    {"a negative integer duration", "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\nidle_timeout = -5\n",
     "4:16", "listener[0].idle_timeout", "-5 is negative"},
    {"a wildcard and a specific address on one port", "[[listener]]\nlisten = [\"0.0.0.0:2641\", \"127.0.0.1:2641\"]\nupstream = \"192.0.2.10:102\"\n",
     "2:27", "listener[0].listen[1]", "127.0.0.1:2641 overlaps 0.0.0.0:2641 of this listener: a wildcard address takes its port"},
    {"an IPv4-mapped IPv6 listen address", "[[listener]]\nlisten = \"[::ffff:127.0.0.1]:2641\"\nupstream = \"192.0.2.10:102\"\n",
     "2:10", "listener[0].listen", "is an IPv4-mapped IPv6 address: write the IPv4 address itself"},
    {"a listener on the admin endpoint's port", "[admin]\nlisten = \"127.0.0.1:9102\"\n\n[[listener]]\nlisten = \"0.0.0.0:9102\"\nupstream = \"192.0.2.10:102\"\n",
     "5:10", "listener[0].listen", "0.0.0.0:9102 is taken by the admin endpoint ([admin] listen = \"127.0.0.1:9102\")"},
    {"an upstream that is the listener itself, written v4-mapped", "[[listener]]\nlisten = \"127.0.0.1:2641\"\nupstream = \"[::ffff:127.0.0.1]:2641\"\n",
     "3:12", "listener[0].upstream", "[::ffff:127.0.0.1]:2641 is this listener's own address (listen 127.0.0.1:2641): every connection would loop back into the proxy"},
    {"an admin Unix socket path the kernel cannot take", "[admin]\nlisten = \"unix:/xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"\n\n" LISTENER, "2:10",
     "admin.listen", "the Unix socket path is 108 bytes long; the kernel takes at most 107 (sockaddr_un): choose a shorter one"},
    {"an access log that is a directory", "[global]\naccess_log = \"/tmp\"\n\n" LISTENER, "2:14", "global.access_log", "/tmp: is a directory"},
    {"an access log in no directory", "[global]\naccess_log = \"/nonexistent-isoproxy/access.log\"\n\n" LISTENER, "2:14", "global.access_log",
     "/nonexistent-isoproxy: no such directory"},
    {"upstream beside a routing filter", "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\nfilters = [\"r\"]\n"
     "\n[filter.r]\nkind = \"tsap-route\"\ndefault = \"192.0.2.11:102\"\n",
     "3:12", "listener[0].upstream", "not used when the listener lists a routing filter"},
    {"two routing filters on one listener", "[[listener]]\nlisten = \"0.0.0.0:102\"\nfilters = [\"r1\", \"r2\"]\n"
     "\n[filter.r1]\nkind = \"tsap-route\"\ndefault = \"192.0.2.11:102\"\n\n[filter.r2]\nkind = \"tsap-route\"\ndefault = \"192.0.2.12:102\"\n",
     "3:11", "listener[0].filters", "lists 2 routing filters (\"r1\", \"r2\"): one tsap-route chooses a session's upstream"},
    {"a route's default that is the listener itself", "[[listener]]\nlisten = \"127.0.0.1:2641\"\nfilters = [\"r\"]\n"
     "\n[filter.r]\nkind = \"tsap-route\"\ndefault = \"127.0.0.1:2641\"\n",
     "3:11", "listener[0].filters", "filter \"r\" default goes to 127.0.0.1:2641, this listener's own address (listen 127.0.0.1:2641)"},
    {"a route's upstream reached through the listener's wildcard", "[[listener]]\nlisten = \"0.0.0.0:2641\"\nfilters = [\"r\"]\n"
     "\n[filter.r]\nkind = \"tsap-route\"\n[[filter.r.route]]\nname = \"back\"\ncalled = \"X\"\nupstream = \"127.0.0.1:2641\"\n",
     "3:11", "listener[0].filters", "filter \"r\" route back goes to 127.0.0.1:2641, this listener's own address (listen 0.0.0.0:2641)"},
    {"a route's default that is the listener itself, written v4-mapped", "[[listener]]\nlisten = \"127.0.0.1:2641\"\nfilters = [\"r\"]\n"
     "\n[filter.r]\nkind = \"tsap-route\"\ndefault = \"[::ffff:127.0.0.1]:2641\"\n",
     "3:11", "listener[0].filters", "filter \"r\" default goes to [::ffff:127.0.0.1]:2641, this listener's own address (listen 127.0.0.1:2641)"},
    {"a fixed source that is the wildcard address", LISTENER "source = \"fixed\"\nsource_address = \"0.0.0.0\"\n", "5:18",
     "listener[0].source_address", "0.0.0.0 is the wildcard address: with source = \"fixed\" write the address to connect from"},
};

#undef LISTENER

TEST_CASE("the malformed configurations have unique names", "[conf][loader]") {
  STATIC_REQUIRE(std::size(kBadConfigs) >= 25);
  std::set<std::string> names;
  for (const auto& c : kBadConfigs) CHECK(names.insert(c.what).second);  // DYNAMIC_SECTION needs unique names
}

TEST_CASE("each malformed configuration gives its one error at its line:col", "[conf][loader]") {
  for (const auto& c : kBadConfigs) {
    DYNAMIC_SECTION(c.what) {
      INFO(c.toml);
      auto r = load(c.toml);
      REQUIRE_FALSE(r.ok());
      INFO(all_errors(r));
      REQUIRE(r.error().size() == 1);
      const ConfigError& e = r.error()[0];
      CHECK(e.file == "test.toml");
      CHECK(std::to_string(e.line) + ":" + std::to_string(e.column) == c.at);
      CHECK(e.key == c.key);
      CHECK_THAT(e.message, Catch::Contains(c.says));
    }
  }
}

TEST_CASE("all errors are reported, in file order", "[conf][loader]") {
  auto r = load(R"([global]
log_level = "loud"

[[listener]]
listen = "0.0.0.0:102"
upstream = "192.0.2.10:102"
conect_timeout = "5s"
max_frame = 70000
)");
  REQUIRE_FALSE(r.ok());
  const auto& errors = r.error();
  INFO(all_errors(r));
  REQUIRE(errors.size() == 3);
  CHECK(errors[0].to_string() ==
        "test.toml:2:13: global.log_level: expected one of \"trace\", \"debug\", \"info\", \"warn\", \"error\", found \"loud\"");
  CHECK(errors[1].to_string() == "test.toml:7:1: listener[0].conect_timeout: unknown key; did you mean \"connect_timeout\"?");
  CHECK(errors[2].to_string() == "test.toml:8:13: listener[0].max_frame: must be between 7 and 65535 bytes (found 70000)");
}

TEST_CASE("with several workers a wildcard and a specific address may share a port", "[conf][loader]") {
  auto r = load("[global]\nworkers = 2\n\n[[listener]]\nlisten = [\"0.0.0.0:2641\", \"127.0.0.1:2641\"]\nupstream = \"192.0.2.10:102\"\n");
  INFO(all_errors(r));
  CHECK(r.ok());
}

TEST_CASE("errors in several listeners and filters are all reported", "[conf][loader]") {
  auto r = load(R"([[listener]]
listen = "0.0.0.0:102"
upstream = "192.0.2.10:102"
filters = ["x"]

[[listener]]
listen = "0.0.0.0:102"

[filter.x]
kind = "nope"
)");
  REQUIRE_FALSE(r.ok());
  INFO(all_errors(r));
  std::vector<std::string> keys;
  for (const auto& e : r.error()) keys.push_back(e.key);
  CHECK(keys == std::vector<std::string>{"listener[1].upstream", "listener[1].listen", "filter.x.kind"});
}

TEST_CASE("did you mean: a misspelt key and a misspelt kind", "[conf][loader]") {
  auto r = load(R"([[listener]]
listen = "0.0.0.0:102"
upstream = "192.0.2.10:102"
conect_timeout = "5s"
filters = ["r"]

[filter.r]
kind = "tpkt_reserved"
)");
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.error().size() == 2);
  CHECK_THAT(r.error()[0].to_string(), Catch::Equals("test.toml:4:1: listener[0].conect_timeout: unknown key; did you mean \"connect_timeout\"?"));
  CHECK_THAT(r.error()[1].to_string(), Catch::StartsWith("test.toml:8:8: filter.r.kind: unknown filter kind \"tpkt_reserved\"; did you mean \"tpkt-reserved\"?"));
}

TEST_CASE("workers: one by default, a number, or auto for the CPUs", "[conf][loader][workers]") {
#define LISTENER "[[listener]]\nlisten = \"0.0.0.0:102\"\nupstream = \"192.0.2.10:102\"\n"
  auto one = load(LISTENER);
  REQUIRE(one.ok());
  CHECK(one->global.workers == 1);
  auto two = load("[global]\nworkers = 2\n" LISTENER);
  REQUIRE(two.ok());
  CHECK(two->global.workers == 2);
  auto top = load("[global]\nworkers = 64\n" LISTENER);
  REQUIRE(top.ok());
  CHECK(top->global.workers == 64);
  auto cpus = load("[global]\nworkers = \"auto\"\n" LISTENER);
  REQUIRE(cpus.ok());
  const long n = ::sysconf(_SC_NPROCESSORS_ONLN);
  CHECK(cpus->global.workers == static_cast<std::uint32_t>(std::clamp<long>(n, 1, 64)));
  // The effective configuration keeps "auto": copied to another host, it
  // must not pin this one's count; it loads back to the same.
  const std::string effective = effective_config_toml(*cpus);
  CHECK_THAT(effective, Catch::Contains("workers = \"auto\"  # " + std::to_string(cpus->global.workers) + " on this host\n"));
  auto again = load(effective);
  REQUIRE(again.ok());
  CHECK(again->global.workers == cpus->global.workers);
  CHECK(again->global.workers_auto);
  CHECK_THAT(effective_config_toml(*two), Catch::Contains("workers = 2\n"));
#undef LISTENER
}

TEST_CASE("an unknown key far from every known one lists the known ones", "[conf][loader]") {
  auto r = load("[global]\nxyzzy = 1\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n");
  REQUIRE_FALSE(r.ok());
  REQUIRE(r.error().size() == 1);
  CHECK(r.error()[0].message == "unknown key; expected one of: access_log, drain_timeout, log_level, max_sessions, reverse_dns, reverse_dns_failure_ttl, reverse_dns_ttl, workers");
}

TEST_CASE("ConfigError::to_string leaves out what it does not have", "[conf][loader]") {
  CHECK(ConfigError{"f.toml", 3, 7, "global.x", "bad"}.to_string() == "f.toml:3:7: global.x: bad");
  CHECK(ConfigError{"f.toml", 3, 7, "", "bad"}.to_string() == "f.toml:3:7: bad");
  CHECK(ConfigError{"f.toml", 0, 0, "", "cannot read"}.to_string() == "f.toml: cannot read");
}

// Field by field; filters by kind and effective settings (a factory has no ==).
void require_same(const Config& a, const Config& b) {
  CHECK(a.global.max_sessions == b.global.max_sessions);
  CHECK(a.global.workers == b.global.workers);
  CHECK(a.global.drain_timeout == b.global.drain_timeout);
  CHECK(a.global.log_level == b.global.log_level);
  REQUIRE(a.listeners.size() == b.listeners.size());
  for (std::size_t i = 0; i < a.listeners.size(); ++i) {
    const ListenerConfig& x = a.listeners[i];
    const ListenerConfig& y = b.listeners[i];
    INFO("listener " << i);
    CHECK(x.name == y.name);
    REQUIRE(x.listen.size() == y.listen.size());
    for (std::size_t j = 0; j < x.listen.size(); ++j) {
      CHECK(x.listen[j].text == y.listen[j].text);
      CHECK(x.listen[j].length == y.listen[j].length);
      CHECK(std::memcmp(&x.listen[j].storage, &y.listen[j].storage, sizeof x.listen[j].storage) == 0);
    }
    REQUIRE(x.upstream.has_value() == y.upstream.has_value());
    if (x.upstream) {
      CHECK(x.upstream->text == y.upstream->text);
      CHECK(std::memcmp(&x.upstream->storage, &y.upstream->storage, sizeof x.upstream->storage) == 0);
    }
    CHECK(x.transparent == y.transparent);
    CHECK(x.source.mode == y.source.mode);
    REQUIRE(x.source.address.has_value() == y.source.address.has_value());
    if (x.source.address) {
      CHECK(x.source.address->text == y.source.address->text);
      CHECK(std::memcmp(&x.source.address->storage, &y.source.address->storage, sizeof x.source.address->storage) == 0);
    }
    CHECK(x.filters == y.filters);
    CHECK(x.max_sessions == y.max_sessions);
    CHECK(x.non_rfc1006 == y.non_rfc1006);
    CHECK(x.malformed == y.malformed);
    CHECK(x.malformed_send_er == y.malformed_send_er);
    CHECK(x.max_frame == y.max_frame);
    CHECK(x.connect_timeout == y.connect_timeout);
    CHECK(x.handshake_timeout == y.handshake_timeout);
    CHECK(x.idle_timeout == y.idle_timeout);
    CHECK(x.high_water == y.high_water);
    CHECK(x.low_water == y.low_water);
    CHECK(x.keepalive == y.keepalive);
    CHECK(x.keepalive_interval == y.keepalive_interval);
    CHECK(x.passthrough == y.passthrough);
  }
  REQUIRE(a.filters.size() == b.filters.size());
  for (const auto& [name, f] : a.filters) {
    INFO("filter " << name);
    REQUIRE(b.filters.count(name) == 1);
    const FilterConfig& g = b.filters.at(name);
    CHECK(f.name == g.name);
    CHECK(f.kind == g.kind);
    REQUIRE(f.factory);
    REQUIRE(g.factory);
    CHECK(f.factory->kind() == g.factory->kind());
    CHECK(f.factory->settings_toml() == g.factory->settings_toml());
  }
}

void check_round_trip(const Config& original) {
  const std::string text = effective_config_toml(original);
  INFO(text);
  auto again = load_config_string(text, "effective.toml");
  INFO(all_errors(again));
  REQUIRE(again.ok());
  require_same(original, *again);
  // And the text is a fixed point: printing the reloaded config changes nothing.
  CHECK(effective_config_toml(*again) == text);
}

TEST_CASE("the effective configuration loads back to the same configuration", "[conf][loader]") {
  SECTION("every non-default value") {
    auto r = load(R"([global]
max_sessions = 12345
drain_timeout = "1500ms"
log_level = "trace"

[[listener]]
name = "a"
listen = ["[2001:db8::1]:1102", "192.0.2.1"]
upstream = "[2001:db8::10]:1102"
source = "fixed"
source_address = "[2001:db8::5]"
filters = ["r", "n"]
max_sessions = 99
non_rfc1006 = "close"
malformed = "close"
malformed_send_er = true
max_frame = 4000
connect_timeout = "1m30s"
handshake_timeout = "0"
idle_timeout = "1d"
high_water = 100000
low_water = "1kB"
keepalive = false
keepalive_interval = "3600s"

[[listener]]
listen = "[::]:10102"
transparent = true
source = "client"

[filter.r]
kind = "tpkt-reserved"
tpdu = ["any"]
directions = ["to-upstream"]

[filter.n]
kind = "tsap-annotate"
)");
    INFO(all_errors(r));
    REQUIRE(r.ok());
    check_round_trip(*r);
    const std::string text = effective_config_toml(*r);
    CHECK_THAT(text, Catch::Contains("drain_timeout = \"1500ms\"\n"));
    CHECK_THAT(text, Catch::Contains("listen = [\"[2001:db8::1]:1102\", \"192.0.2.1:102\"]\n"));
    CHECK_THAT(text, Catch::Contains("connect_timeout = \"90s\"\n"));
    CHECK_THAT(text, Catch::Contains("max_frame = 4000\n"));
    CHECK_THAT(text, Catch::Contains("low_water = 1000\n"));
    CHECK_THAT(text, Catch::Contains("idle_timeout = \"1d\"\n"));
  }
  SECTION("TSAPs that need quoting") {
    auto r = load(R"([[listener]]
listen = "0.0.0.0"
filters = ["r"]

[filter.r]
kind = "tsap-route"

[[filter.r.route]]
name = "we.ird-x"
upstream = "192.0.2.10"
called = ["Q\"X", "A\nB", "back\\slash*"]
calling = ["plain"]
)");
    INFO(all_errors(r));
    REQUIRE(r.ok());
    check_round_trip(*r);
    const std::string text = effective_config_toml(*r);
    CHECK_THAT(text, Catch::Contains("name = \"we.ird-x\"\n"));
    CHECK_THAT(text, Catch::Contains("calling = [\"plain\"]\n"));
  }
  SECTION("all defaults") {
    auto r = load("[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n");
    REQUIRE(r.ok());
    check_round_trip(*r);
    const std::string text = effective_config_toml(*r);
    for (const char* line : {"max_sessions = 10000\n", "drain_timeout = \"10s\"\n", "log_level = \"info\"\n",
                             "name = \"listener-0\"\n", "transparent = false\n", "source = \"auto\"\n", "filters = []\n",
                             "max_frame = 65535\n", "high_water = \"256KiB\"\n", "low_water = \"64KiB\"\n",
                             "keepalive_interval = \"1m\"\n", "idle_timeout = \"0s\"\n"}) {
      CHECK_THAT(text, Catch::Contains(line));
    }
  }
  SECTION("the shipped files") {
    for (const auto& f : shipped_files()) {
      INFO(f.string());
      auto r = load_config_file(f.string());
      REQUIRE(r.ok());
      check_round_trip(*r);
    }
  }
}

// A file in a fresh temporary directory, removed with it.
class TempFile {
 public:
  explicit TempFile(const std::string& content) {
    char tmpl[] = "/tmp/isoproxy-conf-test-XXXXXX";
    REQUIRE(mkdtemp(tmpl) != nullptr);
    dir_ = tmpl;
    path_ = dir_ / "isoproxy.toml";
    std::ofstream(path_) << content;
  }
  ~TempFile() {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  std::string path() const { return path_.string(); }
  std::string dir() const { return dir_.string(); }

 private:
  fs::path dir_;
  fs::path path_;
};

TEST_CASE("load_config_file reads the file, or says why it cannot", "[conf][loader]") {
  SECTION("a valid file") {
    TempFile f("[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n");
    auto r = load_config_file(f.path());
    REQUIRE(r.ok());
    CHECK(r->path == f.path());
  }
  SECTION("errors name the file") {
    TempFile f("[[listener]]\nlisten = \"0.0.0.0\"\n");
    auto r = load_config_file(f.path());
    REQUIRE_FALSE(r.ok());
    CHECK(r.error()[0].to_string() == f.path() + ":1:1: listener[0].upstream: required unless transparent = true or a "
                                                 "routing filter (tsap-route) is listed: the address to connect each client "
                                                 "to, e.g. \"192.0.2.10:102\"");
  }
  SECTION("missing") {
    auto r = load_config_file("/nonexistent/isoproxy.toml");
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.error().size() == 1);
    CHECK(r.error()[0].to_string() == "/nonexistent/isoproxy.toml: cannot read: No such file or directory");
  }
  SECTION("a directory") {
    TempFile f("");
    auto r = load_config_file(f.dir());
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error()[0].message, Catch::Contains("is a directory"));
  }
  SECTION("a FIFO: refused, not waited on (a reload would block until a writer came)") {
    TempFile f("");
    const std::string fifo = f.dir() + "/fifo.toml";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    auto r = load_config_file(fifo);
    REQUIRE_FALSE(r.ok());
    CHECK(r.error()[0].to_string() == fifo + ": cannot read: not a regular file (a FIFO, a socket or a device)");
    // The same for an access log that is one.
    auto a = load_config_string("[global]\naccess_log = \"" + fifo + "\"\n\n[[listener]]\nlisten = \"127.0.0.1:2641\"\nupstream = \"192.0.2.10:102\"\n", "x.toml");
    REQUIRE_FALSE(a.ok());
    CHECK(a.error()[0].message == fifo + ": not a regular file (a FIFO, a socket or a device): name a file");
    ::unlink(fifo.c_str());
  }
  SECTION("not a text file") {
    TempFile f(std::string("[[listener]]\nlisten = \"\xff\xfe\"\n"));
    auto r = load_config_file(f.path());
    REQUIRE_FALSE(r.ok());
    REQUIRE(r.error().size() == 1);
    CHECK(r.error()[0].line == 2);
  }
}

TEST_CASE("run_check: ok, verbose, and every error", "[conf][check]") {
  SECTION("ok") {
    TempFile f("[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n");
    std::ostringstream out, err;
    CHECK(isoproxy::run_check(f.path(), false, out, err) == 0);
    CHECK(out.str() == f.path() + ": ok\n");
    CHECK(err.str().empty());
  }
  SECTION("verbose prints the effective configuration after ok") {
    TempFile f("[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"192.0.2.10\"\n");
    std::ostringstream out, err;
    CHECK(isoproxy::run_check(f.path(), true, out, err) == 0);
    const std::string s = out.str();
    CHECK_THAT(s, Catch::StartsWith(f.path() + ": ok\n"));
    CHECK_THAT(s, Catch::Contains("\n[global]\nmax_sessions = 10000\n"));
    CHECK_THAT(s, Catch::Contains("connect_timeout = \"5s\"\n"));
    // What follows "ok" is itself a valid configuration.
    auto again = load_config_string(s.substr(s.find('\n') + 1), "verbose.toml");
    CHECK(again.ok());
  }
  SECTION("errors, one per line, exit 1") {
    TempFile f("[global]\nlog_level = \"loud\"\n[[listener]]\nlisten = \"0.0.0.0\"\nupstream = \"mta.example.com\"\n");
    std::ostringstream out, err;
    CHECK(isoproxy::run_check(f.path(), true, out, err) == 1);
    CHECK(out.str().empty());
    std::istringstream lines(err.str());
    std::vector<std::string> got;
    for (std::string line; std::getline(lines, line);) got.push_back(line);
    REQUIRE(got.size() == 2);
    CHECK_THAT(got[0], Catch::StartsWith(f.path() + ":2:13: global.log_level: expected one of"));
    CHECK_THAT(got[1], Catch::StartsWith(f.path() + ":5:12: listener[0].upstream: \"mta.example.com\" is not a numeric address"));
  }
  SECTION("unreadable file") {
    std::ostringstream out, err;
    CHECK(isoproxy::run_check("/nonexistent/isoproxy.toml", false, out, err) == 1);
    CHECK(err.str() == "/nonexistent/isoproxy.toml: cannot read: No such file or directory\n");
  }
}

}  // namespace
}  // namespace isoproxy::conf
