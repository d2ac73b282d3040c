#include "upstream.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <ifaddrs.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <vector>

namespace isoproxy {

std::string address_text(const sockaddr* sa) {
  char ip[INET6_ADDRSTRLEN] = "?";
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    inet_ntop(AF_INET, &in->sin_addr, ip, sizeof ip);
    return std::string(ip) + ":" + std::to_string(ntohs(in->sin_port));
  }
  if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    inet_ntop(AF_INET6, &in6->sin6_addr, ip, sizeof ip);
    return "[" + std::string(ip) + "]:" + std::to_string(ntohs(in6->sin6_port));
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

namespace {

// The host's own addresses, read with getifaddrs at most once a second (a
// netlink dump; only transparent listeners ask). bind() cannot answer this:
// with net.ipv4.ip_nonlocal_bind = 1, common on TPROXY and VIP hosts, it
// accepts any address.
bool same_ip(const sockaddr* a, const sockaddr* b) {
  if (a->sa_family != b->sa_family) return false;
  if (a->sa_family == AF_INET) {
    return reinterpret_cast<const sockaddr_in*>(a)->sin_addr.s_addr == reinterpret_cast<const sockaddr_in*>(b)->sin_addr.s_addr;
  }
  if (a->sa_family == AF_INET6) {
    return std::memcmp(&reinterpret_cast<const sockaddr_in6*>(a)->sin6_addr, &reinterpret_cast<const sockaddr_in6*>(b)->sin6_addr,
                       sizeof(in6_addr)) == 0;
  }
  return false;
}

}  // namespace

bool is_local_address(const sockaddr* sa) {
  if (sa->sa_family == AF_INET) {
    const std::uint32_t ip = ntohl(reinterpret_cast<const sockaddr_in*>(sa)->sin_addr.s_addr);
    if ((ip >> 24) == 127) return true;  // all of 127/8 is local, only 127.0.0.1 is listed
  } else if (sa->sa_family == AF_INET6) {
    const auto* a6 = &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(a6)) return true;
    if (IN6_IS_ADDR_V4MAPPED(a6)) {
      sockaddr_in v4{};
      v4.sin_family = AF_INET;
      std::memcpy(&v4.sin_addr, &a6->s6_addr[12], 4);
      return is_local_address(reinterpret_cast<const sockaddr*>(&v4));
    }
  } else {
    return false;
  }
  static thread_local std::vector<sockaddr_storage> cached;
  static thread_local std::chrono::steady_clock::time_point read_at{};
  const auto now = std::chrono::steady_clock::now();
  if (read_at == std::chrono::steady_clock::time_point{} || now - read_at > std::chrono::seconds(1)) {
    ifaddrs* list = nullptr;
    if (getifaddrs(&list) == 0) {
      cached.clear();
      for (ifaddrs* i = list; i; i = i->ifa_next) {
        if (!i->ifa_addr || (i->ifa_addr->sa_family != AF_INET && i->ifa_addr->sa_family != AF_INET6)) continue;
        sockaddr_storage ss{};
        std::memcpy(&ss, i->ifa_addr, i->ifa_addr->sa_family == AF_INET ? sizeof(sockaddr_in) : sizeof(sockaddr_in6));
        cached.push_back(ss);
      }
      freeifaddrs(list);
      read_at = now;
    }
  }
  for (const auto& ss : cached) {
    if (same_ip(reinterpret_cast<const sockaddr*>(&ss), sa)) return true;
  }
  return false;
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
  // A connection to this host's own address, diverted by a TPROXY rule that
  // does not exclude local destinations: relaying it would dial isoproxy
  // again, and again. Refuse it, and say how to fix the rule.
  if (is_local_address(a.sa())) {
    return unexpected(Error{"transparent-loop", a.text + " is an address of this host: relaying it would connect back "
                                                "to isoproxy; exclude local destinations from the TPROXY rule "
                                                "(nft: fib daddr type local return) or serve it with a non-transparent listener"});
  }
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

}  // namespace isoproxy
