// Turns one TOML file into a validated Config. The TOML syntax is toml++'s
// business (one error, it cannot go on); everything after that is checked
// here, collecting every error so that one `isoproxy check` run shows all of
// them (DESIGN.md §2.4).
#include "conf/loader.h"

#include <arpa/inet.h>
#include <sys/un.h>
#include <unistd.h>

#include <toml++/toml.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <sstream>
#include <tuple>

#include "conf/tls_reader.h"
#include "filters/filter.h"
#include "filters/registry.h"

namespace isoproxy::conf {

namespace {

using namespace std::chrono_literals;

constexpr std::int64_t kMaxSessionsLimit = 1000000;
constexpr std::uint64_t kMinFrame = 7;  // TPKT header + the smallest TPDU (RFC 1006 §6)
constexpr std::uint64_t kMaxFrame = 65535;  // the TPKT length field is 16 bits
constexpr std::uint64_t kMinHighWater = 4 * 1024;
constexpr std::uint64_t kMaxHighWater = 64 * 1024 * 1024;
// A configuration is a few kilobytes; this only stops `check -c /dev/zero`.
constexpr std::uintmax_t kMaxFileSize = 4 * 1024 * 1024;

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }


bool valid_filter_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-';
  });
}

// Address bytes and port of a socket address, for comparisons.
struct Endpoint {
  int family = AF_UNSPEC;
  std::uint8_t bytes[16] = {};
  std::uint16_t port = 0;
};

Endpoint endpoint_of(const SocketAddress& a) {
  Endpoint e;
  e.family = a.family();
  e.port = a.port();
  if (e.family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &a.storage, sizeof sin);
    std::memcpy(e.bytes, &sin.sin_addr, 4);
  } else if (e.family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &a.storage, sizeof sin6);
    std::memcpy(e.bytes, &sin6.sin6_addr, 16);
  }
  return e;
}

bool is_v4_mapped(const SocketAddress& a) {
  const Endpoint e = endpoint_of(a);
  static constexpr std::uint8_t kPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
  return e.family == AF_INET6 && std::memcmp(e.bytes, kPrefix, 12) == 0;
}

bool is_loopback(const SocketAddress& a) {
  const Endpoint e = endpoint_of(a);
  if (e.family == AF_INET) return e.bytes[0] == 127;
  static constexpr std::uint8_t kLoop6[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  return std::memcmp(e.bytes, kLoop6, 16) == 0;
}

// Whether connecting to `up` (v4-mapped already unmapped) lands on the
// listening address `a`: the same endpoint, or a loopback address of a's
// family through a wildcard ([::] is bound IPv6-only, proxy/listener.cpp).
bool reaches(const SocketAddress& a, const SocketAddress& up) {
  const bool via_wildcard = a.is_wildcard() && a.family() == up.family() && a.port() == up.port() && is_loopback(up);
  return a.same_endpoint(up) || via_wildcard;
}

const char* family_name(int family) { return family == AF_INET6 ? "IPv6" : "IPv4"; }

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (const auto& s : items) out += (out.empty() ? "" : ", ") + s;
  return out;
}

std::vector<std::string> kind_names() {
  std::vector<std::string> out;
  for (const auto& k : filters::filter_kinds()) out.emplace_back(k.kind);
  return out;
}

// A listen address already taken, and by whom, for duplicate detection.
struct ListenSeen {
  SocketAddress address;
  std::size_t listener;
};

// sun_path's size less its terminating NUL.
constexpr std::size_t kMaxUnixPath = sizeof(sockaddr_un::sun_path) - 1;

class Loader {
 public:
  Loader(const toml::table& root, ErrorSink& sink, Config& config) : root_(root), sink_(sink), config_(config) {}

  void run() {
    TableReader r(root_, "", sink_);
    const toml::table* global = r.table("global");
    const toml::table* admin = r.table("admin");
    const toml::node* filter = r.node("filter");
    const toml::node* listener = r.node("listener");
    r.finish();

    if (global != nullptr) load_global(*global);
    if (admin != nullptr) {
      load_admin(*admin);
    } else if (auto addr = parse_socket_address(config_.admin.listen, 9102, true)) {
      admin_address_ = *addr;  // the default
    }
    // Filters before listeners, so that references can be checked.
    if (filter != nullptr) {
      if (const auto* t = filter->as_table()) {
        filter_tables_ = t;
        load_filters(*t);
      } else {
        r.error("filter", std::string("expected [filter.NAME] tables, found ") + type_name(*filter));
      }
    }
    load_listeners(r, listener);
  }

  // Only [admin] (isoproxy stats -c): the rest may be unreadable by the
  // user asking (a TLS key), or mid-edit, and is none of its business.
  void run_admin_only() {
    const toml::node* admin = root_.get("admin");
    if (admin == nullptr) return;
    if (const auto* t = admin->as_table()) {
      load_admin(*t);
    } else {
      TableReader(root_, "", sink_).table("admin");  // says what it should be
    }
  }

 private:
  void load_admin(const toml::table& t) {
    TableReader r(t, "admin", sink_);
    AdminConfig& a = config_.admin;
    const std::string listen = r.string("listen", a.listen);
    if (listen == "off") {
      a.enabled = false;
    } else if (listen.rfind("unix:", 0) == 0) {
      if (listen.size() <= 5 || listen[5] != '/') {
        r.error("listen", "a Unix socket needs an absolute path: \"unix:/run/isoproxy/admin.sock\"");
      } else if (listen.size() - 5 > kMaxUnixPath) {
        r.error("listen", "the Unix socket path is " + std::to_string(listen.size() - 5) + " bytes long; the kernel takes at most " +
                              std::to_string(kMaxUnixPath) + " (sockaddr_un): choose a shorter one");
      }
      a.listen = listen;
    } else {
      auto addr = parse_socket_address(listen, 9102, /*allow_port_zero=*/true);
      if (!addr) {
        r.error("listen", addr.error().message + " (or \"unix:/path\", or \"off\")");
      } else {
        a.listen = addr->text;
        admin_address_ = *addr;
      }
    }
    a.token = r.string("token", a.token);
    if (!a.token.empty() && a.token.size() < 16) r.error("token", "at least 16 characters (it guards close and reload)");
    // HTTP strips the spaces around a header value and carries no control
    // characters: such a token could never be sent, and every action would get 401.
    if (const auto bad = std::find_if(a.token.begin(), a.token.end(),
                                      [](char ch) { return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7F; });
        bad != a.token.end()) {
      r.error("token", "a control character (" + std::to_string(static_cast<unsigned char>(*bad)) +
                           ") cannot be sent in an HTTP header: every action would be refused");
    } else if (!a.token.empty() && (a.token.front() == ' ' || a.token.back() == ' ')) {
      r.error("token", "a space at its start or end is dropped from HTTP headers: every action would be refused");
    }
    a.closed_sessions = static_cast<std::uint32_t>(r.integer("closed_sessions", a.closed_sessions, 0, 100000));
    a.metrics_tsap_labels = static_cast<std::uint32_t>(r.integer("metrics_tsap_labels", a.metrics_tsap_labels, 0, 10000));
    a.allowed_hosts = r.string_list("allowed_hosts", a.allowed_hosts);
    for (auto& h : a.allowed_hosts) {
      for (auto& ch : h) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
      if (h.empty() || h.find_first_of(":/ []") != std::string::npos) {
        r.error("allowed_hosts", "each entry is a host name without port or scheme, such as \"proxy1.example.net\"");
        break;
      }
    }
    r.finish();
  }

  // workers = N (1..64) or "auto" (the CPUs this process may run on).
  static void load_workers(TableReader& r, GlobalConfig& g) {
    const toml::node* n = r.node("workers");
    if (n == nullptr) return;
    const std::string expected = "expected an integer between 1 and " + std::to_string(GlobalConfig::kMaxWorkers) +
                                 " or \"auto\" (one event loop per CPU)";
    if (const auto* s = n->as_string()) {
      if (s->get() != "auto") {
        r.error("workers", expected + ", found \"" + s->get().substr(0, 40) + "\"");
        return;
      }
      const long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
      g.workers = static_cast<std::uint32_t>(std::clamp<long>(cpus, 1, GlobalConfig::kMaxWorkers));
      g.workers_auto = true;
      return;
    }
    if (n->as_integer() == nullptr) {
      r.error("workers", expected);
      return;
    }
    g.workers = static_cast<std::uint32_t>(r.integer("workers", g.workers, 1, GlobalConfig::kMaxWorkers));
  }

  void load_global(const toml::table& t) {
    TableReader r(t, "global", sink_);
    GlobalConfig& g = config_.global;
    g.max_sessions = static_cast<std::uint32_t>(r.integer("max_sessions", g.max_sessions, 1, kMaxSessionsLimit));
    g.drain_timeout = r.duration("drain_timeout", g.drain_timeout);
    g.log_level = r.choice("log_level", g.log_level, {"trace", "debug", "info", "warn", "error"});
    g.access_log = r.string("access_log", g.access_log);
    if (g.access_log.empty() ||
        (g.access_log != "off" && g.access_log != "stderr" && g.access_log != "journal" && g.access_log.front() != '/')) {
      r.error("access_log", "expected \"off\", \"stderr\", \"journal\" or an absolute file path");
    } else if (g.access_log.front() == '/') {
      // Opened at start (and by SIGUSR1); what would fail there is said here.
      const std::filesystem::path file(g.access_log);
      std::error_code ec;
      const auto st = std::filesystem::status(file, ec);
      if (std::filesystem::is_directory(st)) {
        r.error("access_log", g.access_log + ": is a directory: name a file in it, e.g. \"" + (file / "access.log").string() + "\"");
      } else if (std::filesystem::exists(st) && !std::filesystem::is_regular_file(st)) {
        r.error("access_log", g.access_log + ": not a regular file (a FIFO, a socket or a device): name a file");
      } else if (!std::filesystem::is_directory(file.parent_path(), ec)) {
        r.error("access_log", file.parent_path().string() + ": no such directory (isoproxy creates the file, not its directory)");
      }
    }
    g.reverse_dns = r.boolean("reverse_dns", g.reverse_dns);
    g.reverse_dns_ttl = r.duration("reverse_dns_ttl", g.reverse_dns_ttl);
    g.reverse_dns_failure_ttl = r.duration("reverse_dns_failure_ttl", g.reverse_dns_failure_ttl);
    load_workers(r, g);
    r.finish();
  }

  void load_filters(const toml::table& filters) {
    for (auto&& [k, v] : filters) {
      const std::string name(k.str());
      const std::string path = "filter." + (valid_filter_name(name) ? name : in_quotes(name));
      if (!valid_filter_name(name)) {
        sink_.add(static_cast<int>(k.source().begin.line), static_cast<int>(k.source().begin.column), path,
                  "filter names may use only a-z, 0-9, _ and - (at most 64): they name the filter in stats and logs");
      }
      const toml::table* t = v.as_table();
      if (t == nullptr) {
        sink_.add(&v, path, "expected a [" + path + std::string("] table with a kind, found ") + type_name(v));
        continue;
      }
      TableReader r(*t, path, sink_);
      FilterConfig fc;
      fc.name = name;
      fc.line = r.line();
      fc.column = r.column();
      const bool has_kind = r.node("kind") != nullptr;
      const auto kind = r.optional_string("kind");
      if (!has_kind) {
        r.error("kind", "required: the kind of filter, one of " + join(kind_names()));
      } else if (kind) {
        if (const auto* fk = filters::find_filter_kind(*kind)) {
          fc.kind = *kind;
          fc.factory = fk->parse(name, r);
          // The kind's parser reports its own unknown keys; this only catches
          // a parser that forgot to. After a failed parse some keys were
          // never asked for, and calling them unknown would be wrong.
          if (fc.factory) r.finish();
        } else {
          std::string msg = "unknown filter kind " + in_quotes(*kind);
          if (auto hint = did_you_mean(*kind, kind_names())) msg += "; did you mean " + in_quotes(*hint) + "?";
          msg += " (kinds: " + join(kind_names()) + ")";
          r.error("kind", std::move(msg));
        }
      }
      config_.filters.emplace(name, std::move(fc));
    }
  }

  void load_listeners(TableReader& root, const toml::node* node) {
    constexpr const char* kRequired =
        "at least one [[listener]] is required: it says where to accept connections and where to send them";
    if (node == nullptr) {
      sink_.add(&root_, "listener", kRequired);
      return;
    }
    if (node->is_table()) {
      root.error("listener", "write [[listener]] with double brackets: listeners are an array of tables, one per listener");
      return;
    }
    const toml::array* arr = node->as_array();
    if (arr == nullptr) {
      root.error("listener", std::string("expected [[listener]] tables, found ") + type_name(*node));
      return;
    }
    if (arr->empty()) {
      root.error("listener", kRequired);
      return;
    }
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::node& e = *arr->get(i);
      if (const auto* t = e.as_table()) {
        load_listener(*t, i);
      } else {
        sink_.add(&e, "listener[" + std::to_string(i) + "]", std::string("expected a listener table, found ") + type_name(e));
      }
    }
  }

  // The node of element `i` of a key holding one value or a list of them.
  static const toml::node* element(const toml::node* n, std::size_t i) {
    if (n == nullptr) return nullptr;
    if (const auto* a = n->as_array()) return a->get(i);
    return n;
  }

  void load_listener(const toml::table& t, std::size_t index) {
    const std::string path = "listener[" + std::to_string(index) + "]";
    TableReader r(t, path, sink_);
    ListenerConfig l;
    auto errors_now = [this] { return sink_.errors().size(); };

    // name
    const toml::node* name_node = r.node("name");
    l.name = r.string("name", "listener-" + std::to_string(index));
    if (name_node != nullptr && name_node->is_string()) {
      if (!valid_listener_name(l.name)) {
        r.error("name", in_quotes(l.name) + ": listener names may use only letters, digits, _, - and . (at most 64): "
                                         "they appear in logs, stats and metric labels");
      }
    }
    if (auto [it, inserted] = listener_names_.emplace(l.name, index); !inserted) {
      r.error("name", "name " + in_quotes(l.name) + (name_node == nullptr ? " (the default for " + path + ")" : "") +
                          " is already used by listener[" + std::to_string(it->second) + "]");
    }

    // listen
    std::size_t before = errors_now();
    l.listen = r.socket_addresses("listen", 102, /*allow_port_zero=*/true);
    const toml::node* listen_node = r.node("listen");
    if (listen_node == nullptr) {
      r.error("listen", "required: the address(es) to accept connections on, e.g. \"0.0.0.0:102\"");
    } else if (errors_now() == before && l.listen.empty()) {
      r.error("listen", "must list at least one address, e.g. [\"0.0.0.0:102\"]");
    }
    for (std::size_t i = 0; i < l.listen.size(); ++i) {
      const SocketAddress& a = l.listen[i];
      const std::string key = path + ".listen" + (listen_node->is_array() ? "[" + std::to_string(i) + "]" : "");
      if (is_v4_mapped(a)) {
        // IPv6 listeners are IPv6-only (proxy/listener.cpp): bind refuses these.
        sink_.add(element(listen_node, i), key, a.text + " is an IPv4-mapped IPv6 address: write the IPv4 address itself");
        continue;
      }
      if (a.port() == 0) continue;  // each port 0 gets its own free port
      auto same = std::find_if(listen_seen_.begin(), listen_seen_.end(),
                               [&](const ListenSeen& s) { return s.address.same_endpoint(a); });
      // A wildcard and a specific address of one family on one port cannot
      // both be bound by one worker; several bind with SO_REUSEPORT, which
      // lets them (proxy/listener.cpp).
      auto covered = config_.global.workers > 1
                         ? listen_seen_.end()
                         : std::find_if(listen_seen_.begin(), listen_seen_.end(),
                                        [&](const ListenSeen& s) { return s.address.overlaps(a); });
      if (same != listen_seen_.end()) {
        const std::string owner = same->listener == index ? "this listener" : "listener[" + std::to_string(same->listener) + "]";
        sink_.add(element(listen_node, i), key, a.text + " is already a listen address of " + owner);
      } else if (const auto& adm = admin_address_;
                 adm && adm->port() != 0 && adm->overlaps(a)) {
        sink_.add(element(listen_node, i), key, a.text + " is taken by the admin endpoint ([admin] listen = \"" + adm->text +
                                                    "\"): choose another port for one of them");
      } else if (covered != listen_seen_.end()) {
        const std::string owner = covered->listener == index ? "this listener" : "listener[" + std::to_string(covered->listener) + "]";
        sink_.add(element(listen_node, i), key, a.text + " overlaps " + covered->address.text + " of " + owner +
                                                    ": a wildcard address takes its port on every address of its family");
      } else {
        listen_seen_.push_back({a, index});
      }
    }

    // upstream, transparent
    l.transparent = r.boolean("transparent", l.transparent);
    const toml::node* upstream_node = r.node("upstream");
    if (upstream_node != nullptr && l.transparent) {
      // Not parsed: whatever it says, it is the wrong thing to say here.
      r.error("upstream", "not used with transparent = true (each intercepted connection goes to the address its client "
                          "dialled): remove upstream, or set transparent = false");
    } else if (upstream_node == nullptr && !l.transparent) {
      if (!lists_routing_filter(t)) {
        r.error("upstream", "required unless transparent = true or a routing filter (tsap-route) is listed: the "
                            "address to connect each client to, e.g. \"192.0.2.10:102\"");
      }
    } else if (upstream_node != nullptr && lists_routing_filter(t, /*loaded_only=*/true)) {
      // It would never be used: the CR's route decides, and a CR no route
      // takes is refused unless the filter has a default.
      r.error("upstream", "not used when the listener lists a routing filter (tsap-route): the CR's route picks the "
                          "upstream; to send CRs no route takes there, make it the filter's default");
    } else {
      l.upstream = r.socket_address("upstream");
      if (l.upstream) check_upstream(r, l);
    }

    // source, source_address
    before = errors_now();
    const std::string source = r.choice("source", "auto", {"auto", "fixed", "client"});
    const bool source_ok = errors_now() == before;
    l.source.mode = source == "fixed" ? SourceMode::kFixed : source == "client" ? SourceMode::kClient : SourceMode::kAuto;
    const toml::node* source_address_node = r.node("source_address");
    l.source.address = r.ip("source_address");
    if (source_ok && l.source.mode == SourceMode::kFixed && source_address_node == nullptr) {
      sink_.add(r.node("source"), path + ".source_address",
                "required when source = \"fixed\": the local IP address to connect to the upstream from");
    } else if (source_ok && l.source.mode != SourceMode::kFixed && source_address_node != nullptr) {
      r.error("source_address", "only used with source = \"fixed\" (source is " + in_quotes(source) +
                                    "): set source = \"fixed\" or remove source_address");
    } else if (l.source.mode == SourceMode::kFixed && l.source.address && l.source.address->is_wildcard()) {
      r.error("source_address", l.source.address->text + " is the wildcard address: with source = \"fixed\" write the "
                                "address to connect from (source = \"auto\" lets the kernel choose)");
    }
    if (l.source.address && l.upstream && l.source.address->family() != l.upstream->family()) {
      r.error("source_address", std::string("is an ") + family_name(l.source.address->family()) + " address but upstream " +
                                    l.upstream->text + " is " + family_name(l.upstream->family()) +
                                    ": a connection can only come from an address of its own family");
    }

    // filters
    l.filters = r.string_list("filters", {});
    check_filter_references(r.node("filters"), path);
    check_routing_filters(r, l);

    l.max_sessions = static_cast<std::uint32_t>(r.integer("max_sessions", l.max_sessions, 0, kMaxSessionsLimit));
    l.non_rfc1006 = r.choice("non_rfc1006", "pass", {"pass", "close"}) == "close" ? NonRfc1006Policy::kClose
                                                                                   : NonRfc1006Policy::kPass;
    before = errors_now();
    const std::string malformed = r.choice("malformed", "pass", {"pass", "close"});
    const bool malformed_ok = errors_now() == before;
    l.malformed = malformed == "close" ? MalformedPolicy::kClose : MalformedPolicy::kPass;
    l.malformed_send_er = r.boolean("malformed_send_er", l.malformed_send_er);
    if (malformed_ok && l.malformed_send_er && l.malformed == MalformedPolicy::kPass) {
      r.error("malformed_send_er", "only meaningful with malformed = \"close\" (the ER goes out just before the close); "
                                   "set malformed = \"close\" or remove malformed_send_er");
    }
    l.max_frame = static_cast<std::uint32_t>(r.size("max_frame", l.max_frame, kMinFrame, kMaxFrame));

    before = errors_now();
    l.connect_timeout = r.duration("connect_timeout", l.connect_timeout);
    if (errors_now() == before && l.connect_timeout == 0ms) {
      // Without a bound, a connect into a silently dropping firewall holds
      // the client for the kernel's SYN retries (minutes).
      r.error("connect_timeout", "must be greater than 0");
    }
    before = errors_now();
    l.handshake_timeout = r.duration("handshake_timeout", l.handshake_timeout);
    if (errors_now() == before && l.handshake_timeout > 0ms && l.handshake_timeout <= l.connect_timeout) {
      // Counted from accept, it ends a slow connect first (said then as a
      // connect timeout, but after handshake_timeout, not connect_timeout).
      r.warning("handshake_timeout", format_duration(l.handshake_timeout) + " is not longer than connect_timeout (" +
                                         format_duration(l.connect_timeout) +
                                         "): a connect still under way at handshake_timeout ends there");
    }
    l.idle_timeout = r.duration("idle_timeout", l.idle_timeout);

    before = errors_now();
    l.high_water = r.size("high_water", l.high_water, kMinHighWater, kMaxHighWater);
    l.low_water = r.size("low_water", l.low_water, 0, kMaxHighWater);
    if (errors_now() == before && l.low_water >= l.high_water) {
      r.error(r.node("low_water") != nullptr ? "low_water" : "high_water",
              "low_water (" + format_size(l.low_water) + ") must be below high_water (" + format_size(l.high_water) +
                  "): reading resumes below low_water after pausing above high_water");
    }

    l.keepalive = r.boolean("keepalive", l.keepalive);
    before = errors_now();
    l.keepalive_interval = r.duration("keepalive_interval", l.keepalive_interval);
    if (errors_now() == before && (l.keepalive_interval < 1s || l.keepalive_interval % 1s != 0ms)) {
      // TCP_KEEPIDLE counts whole seconds; anything else would be rounded.
      r.error("keepalive_interval", "must be a whole number of seconds, at least 1s (found " +
                                        format_duration(l.keepalive_interval) + ")");
    } else if (errors_now() == before && l.keepalive_interval > 32767s) {
      // Linux refuses a larger TCP_KEEPIDLE, and its default (2 h) would apply silently.
      r.error("keepalive_interval", "must be at most 32767s (9h6m7s), Linux's largest TCP_KEEPIDLE (found " +
                                        format_duration(l.keepalive_interval) + ")");
    }

    l.passthrough = r.boolean("passthrough", l.passthrough);
    l.park_after = r.duration("park_after", l.park_after);
    l.smart_connect = r.boolean("smart_connect", l.smart_connect);

    // TLS toward clients and toward the upstream ([listener.tls], [listener.upstream_tls]).
    l.tls = read_tls_server(r, "tls");
    bool tls_ok = true;
    if (auto up = read_tls_client(r, "upstream_tls", /*allow_off=*/false, tls_ok)) l.upstream_tls = *up;

    r.finish();
    config_.listeners.push_back(std::move(l));
  }

  // A listener has one routing filter at most (two would each choose an
  // upstream, the first's choice taken and either's refusal ending the
  // session), and none of its routes may lead back into the listener.
  void check_routing_filters(TableReader& r, const ListenerConfig& l) {
    std::vector<std::string> routing;
    for (const auto& name : l.filters) {
      auto it = config_.filters.find(name);
      if (it == config_.filters.end() || !it->second.factory || !it->second.factory->routes()) continue;
      if (std::find(routing.begin(), routing.end(), name) != routing.end()) continue;  // listed twice: said already
      routing.push_back(name);
      for (const auto& up : it->second.factory->route_upstreams()) {
        for (const auto& a : l.listen) {
          if (reaches(a, up.address.unmapped())) {
            r.error("filters", "filter " + in_quotes(name) + " " + up.who + " goes to " + up.address.text +
                                   ", this listener's own address (listen " + a.text +
                                   "): every connection it takes would loop back into the proxy");
            break;
          }
        }
      }
    }
    if (routing.size() > 1) {
      r.error("filters", "lists " + std::to_string(routing.size()) + " routing filters (" + in_quotes(routing[0]) +
                             ", " + in_quotes(routing[1]) +
                             "): one tsap-route chooses a session's upstream; put the routes in one filter");
    }
  }

  // Catches an upstream that can only lead back into this proxy or nowhere.
  void check_upstream(TableReader& r, const ListenerConfig& l) {
    // An IPv4 upstream written v4-mapped ([::ffff:127.0.0.1]:102) is the same
    // endpoint as the IPv4 one, and loops back the same way.
    const SocketAddress up = l.upstream->unmapped();
    if (up.is_wildcard()) {
      r.error("upstream", up.text + " is the wildcard address, which cannot be connected to: write the upstream's own address");
      return;
    }
    for (const auto& a : l.listen) {
      if (reaches(a, up)) {
        r.error("upstream", l.upstream->text + " is this listener's own address (listen " + a.text +
                                "): every connection would loop back into the proxy");
        return;
      }
    }
  }

  // True if the listener's `filters` names a filter that chooses the upstream
  // itself (tsap-route): such a listener needs no `upstream`. A filter that
  // failed to load counts unless `loaded_only`.
  bool lists_routing_filter(const toml::table& t, bool loaded_only = false) const {
    const toml::array* arr = t["filters"].as_array();
    if (arr == nullptr) return false;
    for (const auto& e : *arr) {
      const auto* s = e.as_string();
      if (s == nullptr) continue;
      auto it = config_.filters.find(s->get());
      if (it == config_.filters.end()) continue;
      // A filter that failed to load has reported its errors already; not
      // knowing whether it routes, don't add a follow-on error here.
      if (!it->second.factory) {
        if (!loaded_only) return true;
      } else if (it->second.factory->routes()) {
        return true;
      }
    }
    return false;
  }

  void check_filter_references(const toml::node* n, const std::string& path) {
    const toml::array* arr = n != nullptr ? n->as_array() : nullptr;
    if (arr == nullptr) return;  // absent, or string_list has said what is wrong
    std::vector<std::string> defined;
    if (filter_tables_ != nullptr)
      for (auto&& [k, v] : *filter_tables_) defined.emplace_back(k.str());
    std::map<std::string, std::size_t, std::less<>> seen;
    for (std::size_t i = 0; i < arr->size(); ++i) {
      const toml::node& e = *arr->get(i);
      const auto* s = e.as_string();
      if (s == nullptr) continue;
      const std::string& name = s->get();
      const std::string key = path + ".filters[" + std::to_string(i) + "]";
      if (std::find(defined.begin(), defined.end(), name) == defined.end()) {
        std::string msg = "no filter named " + in_quotes(name) + ": define it in a [filter." + name + "] table";
        if (auto hint = did_you_mean(name, defined)) msg += ", or did you mean " + in_quotes(*hint) + "?";
        sink_.add(&e, key, std::move(msg));
      } else if (auto [it, inserted] = seen.emplace(name, i); !inserted) {
        sink_.add(&e, key, in_quotes(name) + " is already in this list at filters[" + std::to_string(it->second) +
                               "]: a filter runs once per listener");
      }
    }
  }

  const toml::table& root_;
  ErrorSink& sink_;
  Config& config_;
  const toml::table* filter_tables_ = nullptr;
  std::vector<ListenSeen> listen_seen_;
  std::optional<SocketAddress> admin_address_;  // the admin endpoint's TCP address, if it has one
  std::map<std::string, std::size_t, std::less<>> listener_names_;
};

// Errors in file order; those without a position (none today) last.
std::vector<ConfigError> sorted(std::vector<ConfigError> errors) {
  std::stable_sort(errors.begin(), errors.end(), [](const ConfigError& a, const ConfigError& b) {
    auto rank = [](const ConfigError& e) { return std::tuple(e.line == 0, e.line, e.column); };
    return rank(a) < rank(b);
  });
  return errors;
}


std::string toml_string_list(const std::vector<std::string>& items) {
  std::string out = "[";
  for (std::size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + toml_string(items[i]);
  return out + "]";
}

// A size as TOML: an integer when no binary unit fits exactly.
std::string toml_size(std::uint64_t bytes) {
  const std::string s = format_size(bytes);
  return s == std::to_string(bytes) ? s : toml_string(s);
}

}  // namespace

namespace {

LoadResult load_string(std::string_view toml_text, const std::string& file_name, bool admin_only) {
  toml::table root;
  try {
    root = toml::parse(toml_text, std::string_view(file_name));
  } catch (const toml::parse_error& e) {
    const auto& begin = e.source().begin;
    return unexpected(std::vector<ConfigError>{
        ConfigError{file_name, static_cast<int>(begin.line), static_cast<int>(begin.column), "", std::string(e.description())}});
  }
  ErrorSink sink(file_name);
  Config config;
  config.path = file_name;
  Loader loader(root, sink, config);
  if (admin_only) {
    loader.run_admin_only();
  } else {
    loader.run();
  }
  if (!sink.empty()) return unexpected(sorted(sink.errors()));
  for (const auto& w : sorted(sink.warnings())) config.warnings.push_back(w.to_string());
  return config;
}

LoadResult load_file(const std::string& path, bool admin_only) {
  auto fail = [&](std::string message) {
    return LoadResult(unexpected(std::vector<ConfigError>{ConfigError{path, 0, 0, "", std::move(message)}}));
  };
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec) return fail("cannot read: " + ec.message());
  if (std::filesystem::is_directory(status)) return fail("cannot read: is a directory");
  // A FIFO would block the reload (on the main loop) until a writer came.
  if (!std::filesystem::is_regular_file(status)) return fail("cannot read: not a regular file (a FIFO, a socket or a device)");
  if (std::filesystem::is_regular_file(status) && std::filesystem::file_size(path, ec) > kMaxFileSize && !ec)
    return fail("larger than 4MiB: not a configuration file");
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail(std::string("cannot read: ") + std::strerror(errno));
  std::string text;
  char buf[65536];
  while (in.read(buf, sizeof buf) || in.gcount() > 0) {
    text.append(buf, static_cast<std::size_t>(in.gcount()));
    if (text.size() > kMaxFileSize) return fail("larger than 4MiB: not a configuration file");
  }
  if (in.bad()) return fail(std::string("cannot read: ") + std::strerror(errno));
  return load_string(text, path, admin_only);
}

}  // namespace

LoadResult load_config_string(std::string_view toml_text, const std::string& file_name) {
  return load_string(toml_text, file_name, false);
}

LoadResult load_config_file(const std::string& path) { return load_file(path, false); }

LoadResult load_admin_config_file(const std::string& path) { return load_file(path, true); }

std::string effective_config_toml(const Config& c) {
  std::ostringstream o;
  o << "# Effective configuration: every key with the value in force, defaults included.\n";
  o << "\n[global]\n";
  o << "max_sessions = " << c.global.max_sessions << "\n";
  if (c.global.workers_auto) {
    // As written: copied to another host, it still means that host's CPUs.
    o << "workers = \"auto\"  # " << c.global.workers << " on this host\n";
  } else {
    o << "workers = " << c.global.workers << "\n";
  }
  o << "drain_timeout = " << toml_string(format_duration(c.global.drain_timeout)) << "\n";
  o << "log_level = " << toml_string(c.global.log_level) << "\n";
  o << "access_log = " << toml_string(c.global.access_log) << "\n";
  o << "reverse_dns = " << (c.global.reverse_dns ? "true" : "false") << "\n";
  o << "reverse_dns_ttl = " << toml_string(format_duration(c.global.reverse_dns_ttl)) << "\n";
  o << "reverse_dns_failure_ttl = " << toml_string(format_duration(c.global.reverse_dns_failure_ttl)) << "\n";
  o << "\n[admin]\n";
  o << "listen = " << toml_string(c.admin.enabled ? c.admin.listen : "off") << "\n";
  if (!c.admin.token.empty()) o << "token = " << toml_string(c.admin.token) << "\n";
  o << "closed_sessions = " << c.admin.closed_sessions << "\n";
  o << "metrics_tsap_labels = " << c.admin.metrics_tsap_labels << "\n";
  o << "allowed_hosts = [";
  for (std::size_t i = 0; i < c.admin.allowed_hosts.size(); ++i) o << (i ? ", " : "") << toml_string(c.admin.allowed_hosts[i]);
  o << "]\n";
  for (const auto& l : c.listeners) {
    std::vector<std::string> listen;
    for (const auto& a : l.listen) listen.push_back(a.text);
    o << "\n[[listener]]\n";
    o << "name = " << toml_string(l.name) << "\n";
    o << "listen = " << toml_string_list(listen) << "\n";
    if (l.upstream) o << "upstream = " << toml_string(l.upstream->text) << "\n";
    o << "transparent = " << (l.transparent ? "true" : "false") << "\n";
    o << "source = "
      << toml_string(l.source.mode == SourceMode::kFixed ? "fixed" : l.source.mode == SourceMode::kClient ? "client" : "auto")
      << "\n";
    if (l.source.address) o << "source_address = " << toml_string(l.source.address->text) << "\n";
    o << "filters = " << toml_string_list(l.filters) << "\n";
    o << "max_sessions = " << l.max_sessions << "\n";
    o << "non_rfc1006 = " << toml_string(l.non_rfc1006 == NonRfc1006Policy::kClose ? "close" : "pass") << "\n";
    o << "malformed = " << toml_string(l.malformed == MalformedPolicy::kClose ? "close" : "pass") << "\n";
    o << "malformed_send_er = " << (l.malformed_send_er ? "true" : "false") << "\n";
    o << "max_frame = " << toml_size(l.max_frame) << "\n";
    o << "connect_timeout = " << toml_string(format_duration(l.connect_timeout)) << "\n";
    o << "handshake_timeout = " << toml_string(format_duration(l.handshake_timeout)) << "\n";
    o << "idle_timeout = " << toml_string(format_duration(l.idle_timeout)) << "\n";
    o << "high_water = " << toml_size(l.high_water) << "\n";
    o << "low_water = " << toml_size(l.low_water) << "\n";
    o << "keepalive = " << (l.keepalive ? "true" : "false") << "\n";
    o << "keepalive_interval = " << toml_string(format_duration(l.keepalive_interval)) << "\n";
    o << "passthrough = " << (l.passthrough ? "true" : "false") << "\n";
    o << "park_after = " << toml_string(format_duration(l.park_after)) << "\n";
    o << "smart_connect = " << (l.smart_connect ? "true" : "false") << "\n";
    if (l.tls) o << "\n" << tls_server_toml(*l.tls, "listener.tls");
    if (l.upstream_tls) o << "\n" << tls_client_toml(*l.upstream_tls, "listener.upstream_tls");
  }
  for (const auto& [name, f] : c.filters) {
    o << "\n[filter." << name << "]\n";
    o << "kind = " << toml_string(f.kind) << "\n";
    if (f.factory) {
      std::string settings = f.factory->settings_toml();
      if (!settings.empty() && settings.back() != '\n') settings += '\n';
      o << settings;
    }
  }
  return o.str();
}

}  // namespace isoproxy::conf
