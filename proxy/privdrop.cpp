#include "privdrop.h"

#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>

#include "filters/filter.h"

namespace isoproxy::privdrop {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

Error fail(const std::string& what, int err) {
  return Error{"privdrop", "cannot drop privileges: " + what + ": " + errno_text(err)};
}

// net.ipv4.ip_unprivileged_port_start (also applies to IPv6): below it,
// binding needs CAP_NET_BIND_SERVICE. 1024 when it cannot be read.
unsigned unprivileged_port_start() {
  std::ifstream in("/proc/sys/net/ipv4/ip_unprivileged_port_start");
  unsigned v = 1024;
  if (!(in >> v) || v > 65536) v = 1024;
  return v;
}

std::uint64_t mask_of(const std::vector<Capability>& caps) {
  std::uint64_t m = 0;
  for (const auto& c : caps) m |= std::uint64_t{1} << c.value;
  return m;
}

// One "Name:\tHEX" capability field of a /proc status file.
std::optional<std::uint64_t> cap_field(const std::string& text, const std::string& name) {
  const auto at = text.find("\n" + name + ":\t");
  if (at == std::string::npos) return std::nullopt;
  const std::string hex = text.substr(at + name.size() + 3, 16);
  char* end = nullptr;
  const unsigned long long v = std::strtoull(hex.c_str(), &end, 16);
  if (hex.size() != 16 || end != hex.c_str() + hex.size()) return std::nullopt;
  return v;
}

// What the kernel says every thread now holds, compared with the plan.
Status<> verify(const Account& account, std::uint64_t keep) {
  std::error_code ec;
  std::size_t threads = 0;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task", ec)) {
    ++threads;
    std::ifstream in(task.path() / "status");
    const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string id = task.path().filename().string();
    const std::string want_uid = std::to_string(account.uid);
    const std::string uids = "\t" + want_uid + "\t" + want_uid + "\t" + want_uid + "\t" + want_uid + "\n";
    const std::string want_gid = std::to_string(account.gid);
    const std::string gids = "\t" + want_gid + "\t" + want_gid + "\t" + want_gid + "\t" + want_gid + "\n";
    if (text.find("\nUid:" + uids) == std::string::npos || text.find("\nGid:" + gids) == std::string::npos) {
      return unexpected(Error{"privdrop", "privileges not dropped: thread " + id + " still has other user or group ids"});
    }
    for (const char* field : {"CapEff", "CapPrm", "CapAmb", "CapInh"}) {
      const auto v = cap_field(text, field);
      if (!v || (*v & ~keep) != 0) {
        return unexpected(Error{"privdrop", std::string("privileges not dropped: thread ") + id + " holds " + field +
                                                " beyond what the configuration needs"});
      }
    }
  }
  if (ec || threads == 0) return unexpected(fail("reading /proc/self/task", ec ? ec.value() : ENOENT));
  // Root is gone for good: getting it back must fail.
  if (::setuid(0) == 0 || ::setgid(0) == 0) std::abort();
  return Ok{};
}

}  // namespace

Result<Account> prepare(const std::string& name) {
  long size = ::sysconf(_SC_GETPW_R_SIZE_MAX);
  std::vector<char> buf(size > 0 ? static_cast<std::size_t>(size) : 16384);
  passwd pw{};
  passwd* found = nullptr;
  int r;
  while ((r = ::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found)) == ERANGE && buf.size() < (1u << 20)) {
    buf.resize(buf.size() * 2);
  }
  if (r != 0) return unexpected(Error{"user", "--user " + name + ": looking the user up: " + errno_text(r)});
  if (found == nullptr) return unexpected(Error{"user", "--user " + name + ": no such user"});
  if (pw.pw_uid == 0) {
    return unexpected(Error{"user", "--user " + name + ": that is root; name an unprivileged user (e.g. isoproxy)"});
  }
  if (::geteuid() != 0) {
    return unexpected(Error{"user", "--user " + name + ": isoproxy must be started as root to bind, then become " + name +
                                        " (it runs as uid " + std::to_string(::geteuid()) +
                                        "); without root, run it as the user directly and leave out --user"});
  }
  return Account{name, pw.pw_uid, pw.pw_gid};
}

std::vector<Capability> needed_capabilities(const conf::Config& config) {
  std::vector<Capability> out;
  const unsigned start = unprivileged_port_start();
  std::string low_port, client_source;
  for (const auto& l : config.listeners) {
    for (const auto& a : l.listen) {
      if (low_port.empty() && a.port() != 0 && a.port() < start) low_port = "listener " + l.name + " on " + a.text;
    }
    if (client_source.empty() && l.transparent) client_source = "listener " + l.name + " is transparent";
    if (client_source.empty() && l.source.mode == conf::SourceMode::kClient) {
      client_source = "listener " + l.name + " uses source = \"client\"";
    }
  }
  for (const auto& [name, f] : config.filters) {
    if (client_source.empty() && f.factory && f.factory->uses_client_source()) {
      client_source = "filter " + name + " routes with source = \"client\"";
    }
  }
  if (!low_port.empty()) out.push_back({CAP_NET_BIND_SERVICE, low_port});
  if (!client_source.empty()) out.push_back({CAP_NET_ADMIN, client_source});
  return out;
}

bool has_effective(cap_value_t c) {
  cap_t caps = cap_get_proc();
  if (caps == nullptr) return true;
  cap_flag_value_t v = CAP_CLEAR;
  const bool read = cap_get_flag(caps, c, CAP_EFFECTIVE, &v) == 0;
  cap_free(caps);
  return !read || v == CAP_SET;
}

Status<> drop(const Account& account, const std::vector<Capability>& keep) {
  const std::uint64_t keep_mask = mask_of(keep);
  // The bounding set first: reducing it needs CAP_SETPCAP, which is gone
  // once the uid changes. Afterwards no execve can gain anything else.
  const cap_value_t max = cap_max_bits();
  for (cap_value_t c = 0; c < max; ++c) {
    if ((keep_mask & (std::uint64_t{1} << c)) != 0) continue;
    if (CAP_IS_SUPPORTED(c) && cap_drop_bound(c) != 0) {
      char* n = cap_to_name(c);
      const std::string what = std::string("removing ") + (n ? n : std::to_string(c)) + " from the bounding set";
      cap_free(n);
      return unexpected(fail(what, errno));
    }
  }
  // Keep the permitted set across the uid change (otherwise a change away
  // from uid 0 empties it), then reduce it to what is needed.
  if (::prctl(PR_SET_KEEPCAPS, 1L, 0L, 0L, 0L) != 0) return unexpected(fail("PR_SET_KEEPCAPS", errno));
  // Groups before the gid, the gid before the uid: each needs the privilege
  // the next one gives up.
  if (::initgroups(account.name.c_str(), account.gid) != 0) return unexpected(fail("initgroups", errno));
  if (::setresgid(account.gid, account.gid, account.gid) != 0) return unexpected(fail("setresgid", errno));
  if (::setresuid(account.uid, account.uid, account.uid) != 0) return unexpected(fail("setresuid", errno));
  cap_t caps = cap_init();  // every set empty
  if (caps == nullptr) return unexpected(fail("cap_init", errno));
  std::vector<cap_value_t> values;
  for (const auto& c : keep) values.push_back(c.value);
  int r = 0;
  if (!values.empty()) {
    r = cap_set_flag(caps, CAP_PERMITTED, static_cast<int>(values.size()), values.data(), CAP_SET);
    if (r == 0) r = cap_set_flag(caps, CAP_EFFECTIVE, static_cast<int>(values.size()), values.data(), CAP_SET);
  }
  if (r == 0) r = cap_set_proc(caps);
  const int err = errno;
  cap_free(caps);
  if (r != 0) return unexpected(fail("cap_set_proc", err));
  if (CAP_AMBIENT_SUPPORTED() && cap_reset_ambient() != 0) return unexpected(fail("clearing the ambient set", errno));
  if (::prctl(PR_SET_KEEPCAPS, 0L, 0L, 0L, 0L) != 0) return unexpected(fail("PR_SET_KEEPCAPS", errno));
  // Nothing this process could execute may gain privileges again.
  if (::prctl(PR_SET_NO_NEW_PRIVS, 1L, 0L, 0L, 0L) != 0) return unexpected(fail("PR_SET_NO_NEW_PRIVS", errno));
  return verify(account, keep_mask);
}

std::string names(const std::vector<Capability>& caps) {
  if (caps.empty()) return "none";
  std::string out;
  for (const auto& c : caps) {
    char* n = cap_to_name(c.value);
    out += (out.empty() ? "" : ", ") + std::string(n ? n : "?") + " (" + c.why + ")";
    cap_free(n);
  }
  return out;
}

}  // namespace isoproxy::privdrop
