// Turning a listener's route into an outbound socket: where to connect
// (configured upstream, or the original destination of a TPROXY-diverted
// connection) and from which source address (auto, fixed, or the client's own).
#pragma once

#include <uv.h>

#include <string>
#include <vector>

#include "conf/config.h"
#include "result.h"

namespace isoproxy {

// "ip:port" / "[ip]:port" of a socket's peer or local end; "?" if unknown.
std::string peer_name(const uv_tcp_t& tcp);
std::string sock_name(const uv_tcp_t& tcp);
std::string address_text(const sockaddr* sa);

// Where the session's upstream connection goes: the configured upstream, or,
// on a transparent listener, the address the client was connecting to (the
// accepted socket's local address under TPROXY).
Result<conf::SocketAddress> upstream_target(const conf::ListenerConfig& c, const uv_tcp_t& client);

// Binds the (initialised, not yet connected) outbound socket as the source
// mode asks. kClient sets IP_TRANSPARENT and binds the client's IP (needs
// CAP_NET_ADMIN). Error kinds: "source-bind-failed", "source-family".
Status<> bind_source(const conf::SourceConfig& s, uv_tcp_t* out, const uv_tcp_t& client, int family);

// "ip:port" of an endpoint, v4-mapped IPv6 written as IPv4: the key under
// which the Server recognises its own outbound connections coming back.
std::string endpoint_key(const sockaddr* sa);

// Start-up check that a fixed source IP is an address of this host.
Status<> check_source_is_local(const conf::IpAddress& ip);

// Every fixed source address of the configuration (listeners' and routes')
// that is not an address of this host, one error each, naming its owner:
// run, a reload and `isoproxy check` refuse such a configuration.
std::vector<Error> sources_not_local(const conf::Config& config);

// Sets IP_TRANSPARENT (or IPV6_TRANSPARENT) on a socket.
int set_transparent(int fd, int family);

}  // namespace isoproxy
