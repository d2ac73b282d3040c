// `isoproxy run --user NAME`: started as root without a service manager, the
// daemon binds its ports, then becomes NAME keeping only the capabilities its
// configuration needs (libcap), in the effective, permitted and bounding sets.
#pragma once

#include <sys/capability.h>
#include <sys/types.h>

#include <string>
#include <vector>

#include "conf/config.h"
#include "result.h"

namespace isoproxy::privdrop {

struct Account {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
};

// A capability kept after the drop, and why (for the log line).
struct Capability {
  cap_value_t value;
  std::string why;
};

// Looks NAME up before anything is bound, so that a typo fails at once:
// refused when the process is not root, the user does not exist, or is root.
Result<Account> prepare(const std::string& name);

// What `config` needs once unprivileged, so that a reload can still bind:
// CAP_NET_BIND_SERVICE if a listener is on a port below
// net.ipv4.ip_unprivileged_port_start; CAP_NET_ADMIN if a listener is
// transparent or a listener or route uses source = "client" (IP_TRANSPARENT).
std::vector<Capability> needed_capabilities(const conf::Config& config);

// True if the process has `c` in its effective set now (true when that
// cannot be read: the socket calls then say what is missing).
bool has_effective(cap_value_t c);

// Becomes `account` (supplementary groups from the group database, then gid,
// then uid) keeping `keep` permitted and effective and nothing else: the
// bounding set is reduced to `keep`, the inheritable and ambient sets are
// emptied, and no_new_privs is set. Verified afterwards from /proc for every
// thread; any failure is an error and the caller must not serve.
Status<> drop(const Account& account, const std::vector<Capability>& keep);

// "cap_net_bind_service, cap_net_admin" or "none".
std::string names(const std::vector<Capability>& caps);

}  // namespace isoproxy::privdrop
