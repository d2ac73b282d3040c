// Parsers and formatters for the value types of the configuration. Every
// error is a sentence that quotes what was written and says what to write
// instead, because it ends up in front of an operator as
// "FILE:LINE:COL: KEY: MESSAGE".
#include "conf/config.h"

#include <array>

#include <arpa/inet.h>

#include <algorithm>
#include <cctype>
#include <cstring>
#include <limits>

namespace isoproxy::conf {

namespace {

using namespace std::string_literals;

constexpr std::uint64_t kKiB = 1024;
constexpr std::uint64_t kMiB = kKiB * 1024;
constexpr std::uint64_t kGiB = kMiB * 1024;
constexpr std::uint64_t kTiB = kGiB * 1024;

bool is_digit(char c) { return c >= '0' && c <= '9'; }

std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

Unexpected<Error> fail(const char* kind, std::string message) { return unexpected(Error{kind, std::move(message)}); }

// Reads the decimal digits at the front of `s` into `value`, consuming them.
// False when there are none or the number does not fit in 64 bits.
bool take_number(std::string_view& s, std::uint64_t& value, bool& overflow) {
  std::size_t i = 0;
  value = 0;
  overflow = false;
  while (i < s.size() && is_digit(s[i])) {
    const std::uint64_t d = static_cast<std::uint64_t>(s[i] - '0');
    if (value > (std::numeric_limits<std::uint64_t>::max() - d) / 10) overflow = true;
    value = value * 10 + d;
    ++i;
  }
  s.remove_prefix(i);
  return i > 0;
}

// a * b, false on overflow.
bool checked_mul(std::uint64_t a, std::uint64_t b, std::uint64_t& out) {
  if (b != 0 && a > std::numeric_limits<std::uint64_t>::max() / b) return false;
  out = a * b;
  return true;
}

// A port: decimal digits only, 1..65535. Port 0 would mean "any port" to
// bind() and "nothing" to connect(), neither of which a proxy route wants.
Result<std::uint16_t> parse_port(std::string_view s, std::string_view whole, bool allow_zero) {
  if (s.empty()) return fail("bad-address", "missing port after ':' in " + in_quotes(whole));
  std::uint64_t v = 0;
  bool overflow = false;
  std::string_view rest = s;
  if (!take_number(rest, v, overflow) || !rest.empty())
    return fail("bad-address", "port " + in_quotes(s) + " in " + in_quotes(whole) + " is not a number");
  if (overflow || v > 65535 || (v == 0 && !allow_zero))
    return fail("bad-address", "port " + std::string(s) + " in " + in_quotes(whole) + " is out of range (" +
                                   (allow_zero ? "0" : "1") + "..65535)");
  return static_cast<std::uint16_t>(v);
}

// Explains why a host part did not parse. Names are refused on purpose: a
// configuration must mean the same thing at every start and every reload,
// and start-up must not block on (or fail with) DNS.
Unexpected<Error> bad_host(std::string_view host, std::string_view whole, bool bracketed) {
  if (host.empty()) return fail("bad-address", "missing address in " + in_quotes(whole) + " (0.0.0.0 or [::] means every address)");
  if (host == "*") return fail("bad-address", "\"*\" is not an address: write 0.0.0.0 (every IPv4 address) or [::] (every IPv6 address)");
  if (host.find('%') != std::string_view::npos)
    return fail("bad-address", in_quotes(whole) + ": IPv6 zone indexes (%interface) are not supported");
  const bool v4_like = std::all_of(host.begin(), host.end(), [](char c) { return is_digit(c) || c == '.'; });
  if (v4_like) return fail("bad-address", in_quotes(host) + " is not a valid IPv4 address (four decimal numbers 0..255, no leading zeros)");
  if (bracketed || host.find(':') != std::string_view::npos) return fail("bad-address", in_quotes(host) + " is not a valid IPv6 address");
  return fail("hostname", in_quotes(whole) +
                              " is not a numeric address: host names are not resolved, write an IPv4 address "
                              "(192.0.2.10:102) or an IPv6 address in brackets ([2001:db8::10]:102)");
}

// Fills `storage` from a numeric host, or fails. `family` is set on success.
bool host_to_storage(const std::string& host, std::uint16_t port, sockaddr_storage& storage, socklen_t& length) {
  storage = {};
  in_addr a4{};
  in6_addr a6{};
  if (inet_pton(AF_INET, host.c_str(), &a4) == 1) {
    sockaddr_in sin{};
    sin.sin_family = AF_INET;
    sin.sin_port = htons(port);
    sin.sin_addr = a4;
    std::memcpy(&storage, &sin, sizeof sin);
    length = sizeof sin;
    return true;
  }
  if (inet_pton(AF_INET6, host.c_str(), &a6) == 1) {
    sockaddr_in6 sin6{};
    sin6.sin6_family = AF_INET6;
    sin6.sin6_port = htons(port);
    sin6.sin6_addr = a6;
    std::memcpy(&storage, &sin6, sizeof sin6);
    length = sizeof sin6;
    return true;
  }
  return false;
}

// The raw address bytes of a sockaddr (4 or 16), for CIDR matching.
int address_bytes(const sockaddr* addr, std::uint8_t out[16]) {
  if (addr->sa_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, addr, sizeof sin);
    std::memcpy(out, &sin.sin_addr, 4);
    return AF_INET;
  }
  if (addr->sa_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, addr, sizeof sin6);
    std::memcpy(out, &sin6.sin6_addr, 16);
    return AF_INET6;
  }
  return AF_UNSPEC;
}

constexpr std::uint8_t kV4MappedPrefix[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF};

bool prefix_equal(const std::uint8_t* a, const std::uint8_t* b, int prefix) {
  const int whole = prefix / 8;
  if (std::memcmp(a, b, static_cast<std::size_t>(whole)) != 0) return false;
  const int bits = prefix % 8;
  if (bits == 0) return true;
  const auto mask = static_cast<std::uint8_t>(0xFF << (8 - bits));
  return (a[whole] & mask) == (b[whole] & mask);
}

}  // namespace

namespace {

// The host part of an IPv4 or IPv6 socket address, zero-padded.
std::array<std::uint8_t, 16> host_bytes(const sockaddr_storage& s) {
  std::array<std::uint8_t, 16> out{};
  if (s.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &s, sizeof sin);
    std::memcpy(out.data(), &sin.sin_addr, 4);
  } else if (s.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &s, sizeof sin6);
    std::memcpy(out.data(), &sin6.sin6_addr, 16);
  }
  return out;
}

}  // namespace

bool SocketAddress::same_endpoint(const SocketAddress& o) const {
  return family() == o.family() && port() == o.port() && host_bytes(storage) == host_bytes(o.storage);
}

bool SocketAddress::overlaps(const SocketAddress& o) const {
  return family() == o.family() && port() == o.port() &&
         (is_wildcard() || o.is_wildcard() || host_bytes(storage) == host_bytes(o.storage));
}

SocketAddress SocketAddress::unmapped() const {
  if (storage.ss_family != AF_INET6) return *this;
  sockaddr_in6 sin6;
  std::memcpy(&sin6, &storage, sizeof sin6);
  if (!IN6_IS_ADDR_V4MAPPED(&sin6.sin6_addr)) return *this;
  char v4_text[INET_ADDRSTRLEN] = {};
  inet_ntop(AF_INET, &sin6.sin6_addr.s6_addr[12], v4_text, sizeof v4_text);
  auto v4 = parse_socket_address(std::string(v4_text) + ":" + std::to_string(port()), port(), true);
  return v4 ? *v4 : *this;
}

bool IpAddress::is_wildcard() const {
  SocketAddress s;
  s.storage = storage;
  return s.is_wildcard();
}

bool SocketAddress::is_wildcard() const {
  if (storage.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &storage, sizeof sin);
    return sin.sin_addr.s_addr == htonl(INADDR_ANY);
  }
  if (storage.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &storage, sizeof sin6);
    return IN6_IS_ADDR_UNSPECIFIED(&sin6.sin6_addr);
  }
  return false;
}

std::uint16_t SocketAddress::port() const {
  if (storage.ss_family == AF_INET) {
    sockaddr_in sin;
    std::memcpy(&sin, &storage, sizeof sin);
    return ntohs(sin.sin_port);
  }
  if (storage.ss_family == AF_INET6) {
    sockaddr_in6 sin6;
    std::memcpy(&sin6, &storage, sizeof sin6);
    return ntohs(sin6.sin6_port);
  }
  return 0;
}

bool valid_listener_name(std::string_view s) {
  return !s.empty() && s.size() <= 64 && std::all_of(s.begin(), s.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '.';
  });
}

bool Cidr::contains(const sockaddr* addr) const {
  if (addr == nullptr) return false;
  std::uint8_t b[16];
  const int fam = address_bytes(addr, b);
  if (fam == family) return prefix_equal(b, bytes, prefix);
  // An IPv4 peer seen through an IPv6 socket is ::ffff:a.b.c.d; it must
  // still match the IPv4 ranges the operator wrote, and vice versa.
  if (fam == AF_INET6 && family == AF_INET && std::memcmp(b, kV4MappedPrefix, 12) == 0)
    return prefix_equal(b + 12, bytes, prefix);
  // The other way only for a range inside ::ffff:0:0/96: "::/0" means every
  // IPv6 client to the operator who writes it, not every client (IPv6
  // listeners are IPv6-only, so an IPv4 client is never one of them).
  if (fam == AF_INET && family == AF_INET6 && prefix >= 96 && std::memcmp(bytes, kV4MappedPrefix, 12) == 0) {
    std::uint8_t mapped[16];
    std::memcpy(mapped, kV4MappedPrefix, 12);
    std::memcpy(mapped + 12, b, 4);
    return prefix_equal(mapped, bytes, prefix);
  }
  return false;
}

// A sum of <integer><unit> terms ("90s", "1m30s"); units ms, s, m, h, d.
// Only 0 may go without a unit: a bare "30" is seconds to one reader and
// milliseconds to the next, and a wrong guess is a timeout 1000x off.
Result<Duration> parse_duration(std::string_view s) {
  const std::string_view whole = s;
  constexpr const char* kUnits = "ms, s, m, h or d";
  if (s.empty()) return fail("bad-duration", "empty duration: write e.g. \"5s\" or \"250ms\" (units "s + kUnits + ")");
  if (s.front() == '-') return fail("bad-duration", "duration " + in_quotes(whole) + " is negative");
  std::uint64_t total = 0;
  bool first_term = true;
  while (!s.empty()) {
    std::uint64_t n = 0;
    bool overflow = false;
    if (!take_number(s, n, overflow))
      return fail("bad-duration", in_quotes(whole) + " is not a duration: write an integer and a unit ("s + kUnits +
                                      "), e.g. \"5s\" or \"250ms\"");
    if (!s.empty() && (s.front() == '.' || s.front() == ','))
      return fail("bad-duration", in_quotes(whole) + ": fractions are not supported, use a smaller unit (\"1500ms\", not \"1.5s\")");
    std::size_t unit_len = 0;
    while (unit_len < s.size() && !is_digit(s[unit_len])) ++unit_len;
    const std::string_view unit = s.substr(0, unit_len);
    s.remove_prefix(unit_len);
    std::uint64_t scale = 0;
    if (unit.empty()) {
      if (n == 0 && whole.find_first_not_of('0') == std::string_view::npos) return Duration{0};
      if (!first_term) {
        // A number left over after a term ("5s0"): "0s" would be the wrong advice.
        return fail("bad-duration", in_quotes(whole) + " ends in a number without a unit: every term needs one (" +
                                        kUnits + "), e.g. \"1m30s\"");
      }
      return fail("bad-duration", in_quotes(whole) + " has no unit: durations need one (" + kUnits +
                                      "), e.g. \"" + std::to_string(n) + "s\" or \"" + std::to_string(n) +
                                      "ms\"; only 0 may be written without");
    }
    if (unit == "ms") scale = 1;
    else if (unit == "s") scale = 1000;
    else if (unit == "m") scale = 60 * 1000;
    else if (unit == "h") scale = 60 * 60 * 1000;
    else if (unit == "d") scale = 24 * 60 * 60 * 1000;
    else
      return fail("bad-duration", "unknown unit " + in_quotes(unit) + " in " + in_quotes(whole) + ": use " + kUnits);
    std::uint64_t ms = 0;
    if (overflow || !checked_mul(n, scale, ms) || ms > static_cast<std::uint64_t>(Duration::max().count()) - total)
      return fail("bad-duration", "duration " + in_quotes(whole) + " is too large");
    total += ms;
    first_term = false;
  }
  return Duration{static_cast<Duration::rep>(total)};
}

// Sizes take IEC binary units (KiB, MiB, GiB, TiB = powers of 1024) and SI
// decimal units (kB/KB, MB, GB, TB = powers of 1000), as IEC 80000-13 has
// them. A bare "K"/"M"/"G" is refused because half of its readers take it as
// 1000 and half as 1024. A plain number, or "B", is bytes.
Result<std::uint64_t> parse_size(std::string_view s) {
  const std::string_view whole = s;
  constexpr const char* kUnits = "B, KiB, MiB, GiB, TiB (1024-based) or kB, MB, GB, TB (1000-based)";
  if (s.empty()) return fail("bad-size", "empty size: write e.g. \"65535\" or \"256KiB\"");
  if (s.front() == '-') return fail("bad-size", "size " + in_quotes(whole) + " is negative");
  std::uint64_t n = 0;
  bool overflow = false;
  if (!take_number(s, n, overflow))
    return fail("bad-size", in_quotes(whole) + " is not a size: write a number of bytes, optionally with a unit (" + kUnits + ")");
  if (!s.empty() && (s.front() == '.' || s.front() == ','))
    return fail("bad-size", in_quotes(whole) + ": fractions are not supported, use a smaller unit (\"1536KiB\", not \"1.5MiB\")");
  while (!s.empty() && s.front() == ' ') s.remove_prefix(1);
  std::uint64_t scale = 0;
  if (s.empty() || s == "B") scale = 1;
  else if (s == "KiB") scale = kKiB;
  else if (s == "MiB") scale = kMiB;
  else if (s == "GiB") scale = kGiB;
  else if (s == "TiB") scale = kTiB;
  else if (s == "kB" || s == "KB") scale = 1000;
  else if (s == "MB") scale = 1000ull * 1000;
  else if (s == "GB") scale = 1000ull * 1000 * 1000;
  else if (s == "TB") scale = 1000ull * 1000 * 1000 * 1000;
  else if (s == "K" || s == "k" || s == "M" || s == "G" || s == "T") {
    const std::string u(1, static_cast<char>(std::toupper(static_cast<unsigned char>(s.front()))));
    const std::string si = u == "K" ? "kB" : u + "B";
    return fail("bad-size", in_quotes(whole) + " is ambiguous: write \"" + std::to_string(n) + u + "iB\" (powers of 1024) or \"" +
                                std::to_string(n) + si + "\" (powers of 1000)");
  } else {
    return fail("bad-size", "unknown unit " + in_quotes(s) + " in " + in_quotes(whole) + ": use " + kUnits);
  }
  std::uint64_t bytes = 0;
  if (overflow || !checked_mul(n, scale, bytes)) return fail("bad-size", "size " + in_quotes(whole) + " is too large");
  return bytes;
}

Result<SocketAddress> parse_socket_address(std::string_view s, std::uint16_t default_port, bool allow_port_zero) {
  std::string_view host;
  std::string_view port_text;
  bool has_port = false;
  bool bracketed = false;
  if (!s.empty() && s.front() == '[') {
    const auto close = s.find(']');
    if (close == std::string_view::npos) return fail("bad-address", in_quotes(s) + ": missing ']' after the IPv6 address");
    host = s.substr(1, close - 1);
    bracketed = true;
    const std::string_view after = s.substr(close + 1);
    if (!after.empty()) {
      if (after.front() != ':')
        return fail("bad-address", in_quotes(s) + ": expected ':PORT' after ']', found " + in_quotes(after));
      port_text = after.substr(1);
      has_port = true;
    }
  } else {
    const auto colons = std::count(s.begin(), s.end(), ':');
    if (colons > 1) {
      // "::1:102" is itself a valid IPv6 address, so without brackets the
      // port cannot be told apart from the address.
      return fail("bad-address", in_quotes(s) + ": write IPv6 addresses in brackets, e.g. \"[::1]:102\" or \"[::]\"");
    }
    const auto colon = s.find(':');
    if (colon != std::string_view::npos) {
      host = s.substr(0, colon);
      port_text = s.substr(colon + 1);
      has_port = true;
    } else {
      host = s;
    }
  }
  std::uint16_t port = default_port;
  if (has_port) {
    auto p = parse_port(port_text, s, allow_port_zero);
    if (!p) return unexpected(p.error());
    port = *p;
  }
  SocketAddress out;
  const std::string host_str(host);
  if (!host_to_storage(host_str, port, out.storage, out.length)) return bad_host(host, s, bracketed);
  if (bracketed && out.family() != AF_INET6)
    return fail("bad-address", in_quotes(s) + ": brackets are for IPv6 addresses; write IPv4 as " + host_str + ":" + std::to_string(port));
  if (port == 0 && !allow_port_zero) return fail("bad-address", in_quotes(s) + ": port 0 is not allowed (1..65535)");
  // Written back with its port, so that logs and `check --verbose` show the
  // port in use even when it was the default.
  out.text = bracketed ? "[" + host_str + "]:" + std::to_string(port) : host_str + ":" + std::to_string(port);
  return out;
}

Result<IpAddress> parse_ip(std::string_view s) {
  std::string_view host = s;
  bool bracketed = false;
  if (!host.empty() && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
    bracketed = true;
  }
  IpAddress out;
  const std::string host_str(host);
  if (host_to_storage(host_str, 0, out.storage, out.length)) {
    out.text = std::string(s);
    return out;
  }
  if (!bracketed && std::count(s.begin(), s.end(), ':') == 1 && s.find('.') != std::string_view::npos)
    return fail("bad-address", in_quotes(s) + ": an IP address without a port is expected here");
  return bad_host(host, s, bracketed);
}

Result<Cidr> parse_cidr(std::string_view s) {
  const auto slash = s.find('/');
  const std::string host(s.substr(0, slash));
  Cidr c;
  c.text = std::string(s);
  if (inet_pton(AF_INET, host.c_str(), c.bytes) == 1) {
    c.family = AF_INET;
  } else if (inet_pton(AF_INET6, host.c_str(), c.bytes) == 1) {
    c.family = AF_INET6;
  } else {
    return fail("bad-cidr", in_quotes(s) + " is not an address range: write a numeric address and a prefix length, e.g. "
                                        "\"10.0.0.0/8\" or \"2001:db8::/32\"");
  }
  const int max_prefix = c.family == AF_INET ? 32 : 128;
  if (slash == std::string_view::npos) {
    // A bare address is the one-host range, as most firewalls read it.
    c.prefix = max_prefix;
    return c;
  }
  std::string_view p = s.substr(slash + 1);
  std::uint64_t v = 0;
  bool overflow = false;
  std::string_view rest = p;
  if (!take_number(rest, v, overflow) || !rest.empty())
    return fail("bad-cidr", in_quotes(s) + ": the prefix length after '/' must be a number 0.." + std::to_string(max_prefix));
  if (overflow || v > static_cast<std::uint64_t>(max_prefix))
    return fail("bad-cidr", in_quotes(s) + ": prefix length " + std::string(p) + " is out of range for " +
                                (c.family == AF_INET ? "IPv4 (0..32)" : "IPv6 (0..128)"));
  c.prefix = static_cast<int>(v);
  // Host bits set usually means a typo in the address or the prefix; silently
  // masking them would turn a /8 meant for one network into another network.
  std::uint8_t masked[16] = {};
  const int len = c.family == AF_INET ? 4 : 16;
  for (int i = 0; i < len; ++i) {
    const int bits = std::clamp(c.prefix - i * 8, 0, 8);
    const auto mask = static_cast<std::uint8_t>(bits == 0 ? 0 : 0xFF << (8 - bits));
    masked[i] = c.bytes[i] & mask;
  }
  if (std::memcmp(masked, c.bytes, static_cast<std::size_t>(len)) != 0) {
    char buf[INET6_ADDRSTRLEN] = {};
    inet_ntop(c.family, masked, buf, sizeof buf);
    return fail("bad-cidr", in_quotes(s) + " has host bits set after the /" + std::to_string(c.prefix) + "; did you mean " +
                                buf + "/" + std::to_string(c.prefix) + "?");
  }
  return c;
}

// The largest unit that represents `d` exactly, so that the text parses back
// to the same value: 90000ms is "90s", 1500ms stays "1500ms".
std::string format_duration(Duration d) {
  const auto ms = d.count();
  if (ms == 0) return "0s";
  struct Unit {
    Duration::rep scale;
    const char* name;
  };
  static constexpr Unit kUnits[] = {{86400000, "d"}, {3600000, "h"}, {60000, "m"}, {1000, "s"}};
  for (const auto& u : kUnits)
    if (ms % u.scale == 0) return std::to_string(ms / u.scale) + u.name;
  return std::to_string(ms) + "ms";
}

// Exact binary units only, so that the text parses back to the same number.
std::string format_size(std::uint64_t bytes) {
  if (bytes != 0) {
    if (bytes % kTiB == 0) return std::to_string(bytes / kTiB) + "TiB";
    if (bytes % kGiB == 0) return std::to_string(bytes / kGiB) + "GiB";
    if (bytes % kMiB == 0) return std::to_string(bytes / kMiB) + "MiB";
    if (bytes % kKiB == 0) return std::to_string(bytes / kKiB) + "KiB";
  }
  return std::to_string(bytes);
}

}  // namespace isoproxy::conf
