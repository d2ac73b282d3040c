// The validated configuration: plain structs, filled with defaults, that the
// loader (conf/loader.cpp) produces from one TOML file and everything else
// reads. Every key is documented in conf/schema.md.
#pragma once

#include <netinet/in.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "result.h"

namespace isoproxy::filters {
class FilterFactory;
}
namespace isoproxy::tls {
class Context;
}

namespace isoproxy::conf {

using Duration = std::chrono::milliseconds;

// An IPv4 or IPv6 address with a port, ready for bind/connect.
struct SocketAddress {
  sockaddr_storage storage{};
  socklen_t length = 0;
  std::string text;  // as written: "127.0.0.1:102", "[::1]:102"

  int family() const { return storage.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  std::uint16_t port() const;
  bool is_wildcard() const;  // 0.0.0.0 or [::]: nothing to connect to
  bool same_endpoint(const SocketAddress& o) const;  // family, host and port, however written
  // Same family and port, and the same host or a wildcard on either side:
  // two listening sockets that one process binds only with SO_REUSEPORT.
  bool overlaps(const SocketAddress& o) const;
  // An IPv4 address written v4-mapped ([::ffff:127.0.0.1]:102) as the IPv4
  // one it is (the same endpoint, reached the same way); others as they are.
  SocketAddress unmapped() const;
};

// An address without a port (a fixed source IP).
struct IpAddress {
  sockaddr_storage storage{};  // port 0
  socklen_t length = 0;
  std::string text;
  int family() const { return storage.ss_family; }
  const sockaddr* sa() const { return reinterpret_cast<const sockaddr*>(&storage); }
  bool is_wildcard() const;  // 0.0.0.0 or ::: no address to send from
  // "FILE:LINE:COL: KEY" where the configuration gives it, if it does: the
  // checks that need this host (run, reload, check) point there too.
  std::string where;
};

struct Cidr {
  int family = AF_INET;
  std::uint8_t bytes[16] = {};
  int prefix = 0;
  std::string text;
  bool contains(const sockaddr* addr) const;
};

// A listener's or a route's name: letters, digits, _, - and ., at most 64.
// Names end up in log lines, the close line, stats and Prometheus labels.
bool valid_listener_name(std::string_view s);

// Parsers shared by the loader and the CLI; errors are sentences for humans.
Result<Duration> parse_duration(std::string_view s);      // "250ms", "5s", "2m", "1h", "0"
Result<std::uint64_t> parse_size(std::string_view s);     // "65535", "256KiB", "4MiB", "1GiB"
// Port 0 is refused unless `allow_port_zero` (listen addresses: the kernel
// picks a free port, which the "listening on" log line names).
Result<SocketAddress> parse_socket_address(std::string_view s, std::uint16_t default_port = 102,
                                           bool allow_port_zero = false);
Result<IpAddress> parse_ip(std::string_view s);
Result<Cidr> parse_cidr(std::string_view s);
std::string format_duration(Duration d);
std::string format_size(std::uint64_t bytes);

enum class SourceMode { kAuto, kFixed, kClient };
enum class NonRfc1006Policy { kPass, kClose };
enum class MalformedPolicy { kPass, kClose };

struct SourceConfig {
  SourceMode mode = SourceMode::kAuto;
  std::optional<IpAddress> address;  // kFixed: the local IP to bind
};

// One instance of a filter kind, by name. The kind's own settings are parsed
// and validated by that kind's parser (filters/registry.h) into the factory.
struct FilterConfig {
  std::string name;
  std::string kind;
  std::shared_ptr<const filters::FilterFactory> factory;
  int line = 0;  // of the [filter.NAME] table, for messages
  int column = 0;
};

// TLS toward clients: a listener's [listener.tls] table. Paths are resolved
// against the configuration file's directory; `context` is built from them at
// load (proxy/tls.h), so that a certificate that cannot be used is a
// configuration error.
struct TlsServerConfig {
  std::string cert;                 // PEM: the certificate, then its chain
  std::string key;                  // PEM private key
  std::string client_ca;            // CA file or directory for client certificates; empty: none asked
  std::string verify_client = "off";  // "off", "optional", "require" (default "require" with client_ca)
  std::string crl;                  // PEM CRLs that client certificates are checked against; empty: none
  std::vector<std::string> allow_subjects;  // RFC 2253 subjects let in (mutual TLS)
  std::vector<std::string> allow_sans;      // DNS names or IP addresses let in (mutual TLS)
  std::string min_version = "1.2";  // "1.2" or "1.3"
  std::string ciphers;              // TLS 1.2 cipher list (OpenSSL syntax); empty: OpenSSL's default
  std::string ciphersuites;         // TLS 1.3 suites; empty: OpenSSL's default
  std::string groups;               // key exchange groups, e.g. "X25519:P-256"; empty: default
  Duration handshake_timeout{10000};
  std::shared_ptr<const tls::Context> context;
};

// TLS toward an upstream: a listener's [listener.upstream_tls] or a route's
// `tls` table.
struct TlsClientConfig {
  bool verify = true;               // verify the upstream's certificate; false only when written
  std::string ca;                   // CA file or directory; empty: the system's store
  std::string crl;                  // PEM CRLs that the upstream's certificate is checked against; empty: none
  std::string server_name;          // checked in the certificate and sent as SNI; empty: the upstream IP
  std::string cert, key;            // optional client certificate
  std::string min_version = "1.2";
  std::string ciphers, ciphersuites, groups;
  Duration handshake_timeout{10000};
  std::shared_ptr<const tls::Context> context;
};

struct ListenerConfig {
  std::string name;
  std::vector<SocketAddress> listen;      // one or more addresses
  std::optional<SocketAddress> upstream;  // required unless transparent (or routed by a filter)
  bool transparent = false;               // accept TPROXY-diverted connections
  SourceConfig source;
  std::vector<std::string> filters;       // names of [filter.*] instances, in order
  std::uint32_t max_sessions = 0;         // 0 = only the global limit
  NonRfc1006Policy non_rfc1006 = NonRfc1006Policy::kPass;
  MalformedPolicy malformed = MalformedPolicy::kPass;
  bool malformed_send_er = false;         // with malformed = "close": an ER toward the sender first
  std::uint32_t max_frame = 65535;        // largest TPKT accepted
  Duration connect_timeout{5000};
  Duration handshake_timeout{30000};      // CR until CC or DR; 0 = off
  Duration idle_timeout{0};               // no byte either way; 0 = off
  std::uint64_t high_water = 256 * 1024;  // per direction: stop reading the other leg above this
  std::uint64_t low_water = 64 * 1024;    // resume below this
  bool keepalive = true;
  Duration keepalive_interval{60000};
  bool passthrough = true;                // splice(2) the data phase when no filter needs it
  Duration park_after{500};               // idle this long: drop the I/O state, keep stats and sockets; 0 = never
  bool smart_connect = true;              // the upstream handshake's last ACK goes with the first bytes (the CR)
  std::shared_ptr<const TlsServerConfig> tls;           // null: plaintext from clients
  std::shared_ptr<const TlsClientConfig> upstream_tls;  // null: plaintext to the upstream
};

struct GlobalConfig {
  std::uint32_t max_sessions = 10000;
  Duration drain_timeout{10000};  // SIGTERM: how long sessions may finish their frames
  std::string log_level = "info";  // trace, debug, info, warn, error
  std::string access_log = "off";  // "off", "stderr", "journal", or a file path: one JSON line per session at close
  bool reverse_dns = true;               // names of clients and upstreams, asynchronously, for stats and logs
  Duration reverse_dns_ttl{300000};      // how long a name found is trusted
  Duration reverse_dns_failure_ttl{60000};  // how long "no name" is remembered
  // Event loops, each a thread with its own SO_REUSEPORT listeners, sessions
  // and stats; "auto" in the file is resolved to the number of CPUs (at most
  // kMaxWorkers). Fixed at start: a reload that changes it is warned about.
  std::uint32_t workers = 1;
  bool workers_auto = false;  // written "auto": `check --verbose` says so, not this host's count
  static constexpr std::uint32_t kMaxWorkers = 64;
};

// The admin endpoint (live stats, metrics): HTTP on a TCP address or a Unix
// socket, read-only unless a token is configured.
struct AdminConfig {
  bool enabled = true;
  std::string listen = "127.0.0.1:9102";  // "HOST:PORT", "[V6]:PORT" or "unix:/path"
  std::string token;                      // empty: actions (close, reload) are refused
  std::uint32_t closed_sessions = 1000;   // how many closed sessions stay viewable
  std::uint32_t metrics_tsap_labels = 0;  // distinct TSAP label values in /metrics; 0 = no TSAP labels
  std::vector<std::string> allowed_hosts;  // Host header names accepted besides IP literals and localhost
};

struct Config {
  std::string path;  // the file it came from
  GlobalConfig global;
  AdminConfig admin;
  std::vector<ListenerConfig> listeners;
  std::map<std::string, FilterConfig> filters;
  // Valid but worth saying at every start and reload ("FILE:LINE:COL: KEY: ..."),
  // e.g. an upstream whose certificate is not verified.
  std::vector<std::string> warnings;
};

}  // namespace isoproxy::conf
