#include "upstream.h"

#include "filters/filter.h"
#include "rdns.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace isoproxy {

std::string address_text(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    return numeric_host(sa) + ":" + std::to_string(ntohs(reinterpret_cast<const sockaddr_in*>(sa)->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    return "[" + numeric_host(sa) + "]:" + std::to_string(ntohs(reinterpret_cast<const sockaddr_in6*>(sa)->sin6_port));
  }
  return "?";
}

std::string peer_name(const uv_tcp_t& tcp) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getpeername(&tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return address_text(reinterpret_cast<sockaddr*>(&ss));
}

std::string sock_name(const uv_tcp_t& tcp) {
  sockaddr_storage ss{};
  int len = sizeof ss;
  if (uv_tcp_getsockname(&tcp, reinterpret_cast<sockaddr*>(&ss), &len) != 0) return "?";
  return address_text(reinterpret_cast<sockaddr*>(&ss));
}

int set_transparent(int fd, int family) {
  const int one = 1;
  const int r = family == AF_INET6 ? setsockopt(fd, SOL_IPV6, IPV6_TRANSPARENT, &one, sizeof one)
                                   : setsockopt(fd, SOL_IP, IP_TRANSPARENT, &one, sizeof one);
  return r == 0 ? 0 : -errno;
}

std::string endpoint_key(const sockaddr* sa) {
  // A v4-mapped IPv6 peer (dual-stack listener) is the same endpoint as the
  // IPv4 socket it came from.
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      sockaddr_in v4{};
      v4.sin_family = AF_INET;
      v4.sin_port = in6->sin6_port;
      std::memcpy(&v4.sin_addr, &in6->sin6_addr.s6_addr[12], 4);
      return address_text(reinterpret_cast<const sockaddr*>(&v4));
    }
  }
  return address_text(sa);
}

Result<conf::SocketAddress> upstream_target(const conf::ListenerConfig& c, const uv_tcp_t& client) {
  if (!c.transparent) {
    if (!c.upstream) return unexpected(Error{"no-upstream", "listener " + c.name + " has no upstream"});
    return *c.upstream;
  }
  // TPROXY keeps the original destination as the accepted socket's local address.
  conf::SocketAddress a;
  int len = sizeof a.storage;
  if (int r = uv_tcp_getsockname(&client, reinterpret_cast<sockaddr*>(&a.storage), &len); r != 0) {
    return unexpected(Error{"no-original-destination", uv_strerror(r)});
  }
  a.length = static_cast<socklen_t>(len);
  a.text = address_text(a.sa());
  return a;
}

Status<> bind_source(const conf::SourceConfig& s, uv_tcp_t* out, const uv_tcp_t& client, int family) {
  if (s.mode == conf::SourceMode::kAuto) return Ok{};
  sockaddr_storage src{};
  if (s.mode == conf::SourceMode::kFixed) {
    if (!s.address || s.address->family() != family) {
      return unexpected(Error{"source-family", "the fixed source address is not of the upstream's address family"});
    }
    std::memcpy(&src, &s.address->storage, sizeof src);
  } else {
    int len = sizeof src;
    if (uv_tcp_getpeername(&client, reinterpret_cast<sockaddr*>(&src), &len) != 0 || src.ss_family != family) {
      return unexpected(Error{"source-family", "the client's address is not of the upstream's address family"});
    }
    // Port 0: the kernel picks; the client's IP is what the receiver checks.
    if (family == AF_INET) reinterpret_cast<sockaddr_in*>(&src)->sin_port = 0;
    else reinterpret_cast<sockaddr_in6*>(&src)->sin6_port = 0;
    uv_os_fd_t tfd;
    if (int r = uv_fileno(reinterpret_cast<uv_handle_t*>(out), &tfd); r != 0) {
      return unexpected(Error{"source-bind-failed", uv_strerror(r)});
    }
    if (int r = set_transparent(tfd, family); r != 0) {
      return unexpected(Error{"source-bind-failed", std::string("IP_TRANSPARENT: ") + std::strerror(-r) +
                                                        " (source = \"client\" needs CAP_NET_ADMIN)"});
    }
  }
  // With a fixed source every upstream connection shares one IP: let connect()
  // choose the port (IP_BIND_ADDRESS_NO_PORT) so bind() does not exhaust them.
  uv_os_fd_t fd;
  if (uv_fileno(reinterpret_cast<uv_handle_t*>(out), &fd) == 0) {
    const int one = 1;
    (void)setsockopt(fd, SOL_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
  }
  if (int r = uv_tcp_bind(out, reinterpret_cast<const sockaddr*>(&src), 0); r != 0) {
    return unexpected(Error{"source-bind-failed", address_text(reinterpret_cast<const sockaddr*>(&src)) + ": " +
                                                      uv_err_name(r) + " (" + uv_strerror(r) + ")"});
  }
  return Ok{};
}

Status<> check_source_is_local(const conf::IpAddress& ip) {
  const int fd = socket(ip.family(), SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return unexpected(Error{"socket", std::strerror(errno)});
  const int r = bind(fd, ip.sa(), ip.length);
  const int err = errno;
  ::close(fd);
  if (r != 0) {
    if (err == EADDRNOTAVAIL) {
      return unexpected(Error{"source-not-local", ip.text + " is not an address of this host"});
    }
    return unexpected(Error{"source-bind-failed", ip.text + ": " + std::strerror(err)});
  }
  return Ok{};
}

std::vector<Error> sources_not_local(const conf::Config& config) {
  std::vector<Error> out;
  const auto check = [&out](const std::string& who, const conf::IpAddress& ip) {
    if (auto ok = check_source_is_local(ip); !ok) {
      out.push_back(Error{ok.error().kind, (ip.where.empty() ? "" : ip.where + ": ") + who + ": source_address " +
                                               ok.error().message + " (outbound connections could not be bound to it)"});
    }
  };
  for (const auto& l : config.listeners) {
    if (l.source.mode == conf::SourceMode::kFixed && l.source.address) check("listener " + l.name, *l.source.address);
  }
  for (const auto& [name, f] : config.filters) {
    if (!f.factory) continue;
    for (const auto& src : f.factory->fixed_sources()) check("filter " + name + " " + src.who, src.address);
  }
  return out;
}

}  // namespace isoproxy
