#include "shared.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"

namespace isoproxy {

AccessLog::~AccessLog() {
  if (file_ && file_ != stderr) std::fclose(file_);
  if (journal_fd_ >= 0) ::close(journal_fd_);
}

namespace {

// Opens the access-log file for appending, or says why not. Never blocks: a
// FIFO put where the file was would hold open() until a reader came, on the
// loop that handles reloads and signals.
std::FILE* open_log_file(const std::string& path, std::string& why) {
  const int fd = ::open(path.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NONBLOCK, 0666);
  if (fd < 0) {
    why = errno == ENXIO ? "a FIFO with no reader: not a regular file" : std::strerror(errno);
    return nullptr;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    why = "not a regular file";
    return nullptr;
  }
  std::FILE* file = ::fdopen(fd, "a");
  if (file == nullptr) {
    why = std::strerror(errno);
    ::close(fd);
  }
  return file;
}

}  // namespace

std::optional<std::string> AccessLog::configure(const std::string& want) {
  std::lock_guard lock(mutex_);
  if (want == path_) return std::nullopt;
  std::FILE* file = nullptr;
  int journal = -1;
  if (want == "stderr") {
    file = stderr;
  } else if (want == "journal") {
    journal = open_journal_socket();
    if (journal < 0) return "access_log journal: cannot reach journald at " + std::string(kJournalSocket) + ": " + std::strerror(-journal);
  } else if (want != "off") {
    std::string why;
    file = open_log_file(want, why);
    if (!file) return "access_log " + want + ": " + why;
  }
  if (file_ && file_ != stderr) std::fclose(file_);
  if (journal_fd_ >= 0) ::close(journal_fd_);
  file_ = file;
  journal_fd_ = journal;
  failing_ = torn_ = false;
  streak_ = 0;
  path_ = want;
  enabled_ = want != "off";
  return std::nullopt;
}

void AccessLog::reopen() {
  std::lock_guard lock(mutex_);
  if (file_ == nullptr || file_ == stderr) {
    spdlog::info("SIGUSR1: no access-log file to reopen (access_log = \"{}\")", path_.empty() ? "off" : path_);
    return;
  }
  // The new file first: if it cannot be opened, lines keep going to the old one.
  std::string why;
  std::FILE* file = open_log_file(path_, why);
  if (file == nullptr) {
    spdlog::error("SIGUSR1: cannot reopen access_log {}: {}; still writing to the file opened before", path_, why);
    return;
  }
  std::fclose(file_);
  file_ = file;
  torn_ = false;  // a new file: whatever the old one ends in stays there
  spdlog::info("SIGUSR1: reopened access log {}", path_);
}

void AccessLog::write(const std::string& text) {
  std::lock_guard lock(mutex_);
  if (path_ == "journal") {
    // The journal's fields come from the parsed record (only in this mode).
    journal(nlohmann::json::parse(text, nullptr, false), text);
  } else if (file_) {
    // One write(2) per line on the O_APPEND descriptor, so that a line is
    // never split between writers and no stdio buffer keeps half a line for
    // later. A line cut short (disk full, file size limit) is ended with a
    // newline before the next one: every whole line stays JSON on its own.
    std::string line;
    line.reserve(text.size() + 2);
    if (torn_) line += '\n';
    line += text;
    line += '\n';
    const int fd = ::fileno(file_);
    std::size_t done = 0;
    int err = 0;
    while (done < line.size()) {
      const ssize_t n = ::write(fd, line.data() + done, line.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err = n < 0 ? errno : EIO;
        break;
      }
      done += static_cast<std::size_t>(n);
    }
    if (done == line.size()) {
      torn_ = false;
      if (failing_) spdlog::info("access log {}: writing again ({} line(s) lost meanwhile)", path_, streak_);
      failing_ = false;
      streak_ = 0;
      return;
    }
    // Some of it went out: the file now ends in part of a line, unless all
    // that went out was the newline that ended the last torn one.
    if (done > 0) torn_ = !(torn_ && done == 1);
    ++dropped_;
    ++streak_;
    // Once per failure streak: a full disk must not flood stderr as well.
    if (!failing_) {
      spdlog::warn("access log {}: write failed: {}; lines are lost until it works again (counted in access_log_dropped)",
                   path_, std::strerror(err));
    }
    failing_ = true;
  }
}

int AccessLog::open_journal_socket() {
  // Our own non-blocking datagram socket in journald's native protocol, not
  // sd_journal_send(): libsystemd's socket blocks when journald's queue is
  // full, and a stalled journal must never stall the relay.
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return -errno;
  sockaddr_un sun{};
  sun.sun_family = AF_UNIX;
  std::snprintf(sun.sun_path, sizeof sun.sun_path, "%s", kJournalSocket);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sun), sizeof sun) != 0) {
    const int err = errno;
    ::close(fd);
    return -err;
  }
  // Room for a burst of closes while journald catches up.
  const int size = 4 * 1024 * 1024;
  (void)::setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof size);
  return fd;
}

void AccessLog::journal(const nlohmann::json& snapshot, const std::string& text_line) {
  // The JSON line as MESSAGE, and the fields operators filter on as journal
  // fields: journalctl -t isoproxy-access ISOPROXY_CLOSE_REASON=connect-refused
  auto text = [&](const char* key) -> std::string {
    const auto it = snapshot.find(key);
    if (it == snapshot.end() || it->is_null()) return "";
    return it->is_string() ? it->get<std::string>() : it->dump();
  };
  auto tsap = [&](const char* key) -> std::string {
    const auto it = snapshot.find(key);
    if (it == snapshot.end() || !it->is_object()) return "";
    const auto& a = (*it)["ascii"];
    return a.is_string() ? a.get<std::string>() : (*it)["hex"].get<std::string>();
  };
  // KEY=VALUE lines; a value never holds a newline (compact JSON escapes
  // them, TSAPs are printable, the rest are addresses and names).
  std::string d;
  auto field = [&](const char* key, std::string value) {
    std::replace(value.begin(), value.end(), '\n', ' ');
    d += key;
    d += '=';
    d += value;
    d += '\n';
  };
  field("MESSAGE", text_line);
  field("PRIORITY", "6");
  field("SYSLOG_IDENTIFIER", "isoproxy-access");
  field("ISOPROXY_SESSION", text("id"));
  field("ISOPROXY_LISTENER", text("listener"));
  field("ISOPROXY_CLIENT", text("client"));
  field("ISOPROXY_UPSTREAM", text("upstream"));
  field("ISOPROXY_CALLING_TSAP", tsap("calling_tsap"));
  field("ISOPROXY_CALLED_TSAP", tsap("called_tsap"));
  field("ISOPROXY_CLOSE_REASON", text("close_reason"));
  ssize_t n = ::send(journal_fd_, d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
  if (n < 0 && errno == ECONNREFUSED) {
    // journald restarted and made a new socket: connect again, once.
    if (const int fd = open_journal_socket(); fd >= 0) {
      ::close(journal_fd_);
      journal_fd_ = fd;
      n = ::send(journal_fd_, d.data(), d.size(), MSG_DONTWAIT | MSG_NOSIGNAL);
    }
  }
  if (n < 0) {
    ++dropped_;
    // Once per failure streak: a journal that is down must not flood stderr.
    if (!failing_) {
      spdlog::warn("access log journal: line dropped: {}{}", std::strerror(errno),
                   errno == EAGAIN ? " (journald is not keeping up; counted in access_log_dropped)" : "");
    }
    failing_ = true;
  } else {
    failing_ = false;
  }
}

Endpoint Endpoint::of(const sockaddr* sa) {
  Endpoint e;
  if (sa->sa_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(sa);
    e.family = 4;
    std::memcpy(e.addr.data(), &in->sin_addr, 4);
    e.port = ntohs(in->sin_port);
  } else if (sa->sa_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(sa);
    e.port = ntohs(in6->sin6_port);
    if (IN6_IS_ADDR_V4MAPPED(&in6->sin6_addr)) {
      // A dual-stack listener's IPv4 peer is the IPv4 socket it came from.
      e.family = 4;
      std::memcpy(e.addr.data(), &in6->sin6_addr.s6_addr[12], 4);
    } else {
      e.family = 6;
      std::memcpy(e.addr.data(), &in6->sin6_addr, 16);
    }
  }
  return e;
}

std::size_t EndpointHash::operator()(const Endpoint& e) const {
  // FNV-1a over the bytes that matter.
  std::uint64_t h = 1469598103934665603ULL;
  auto mix = [&](std::uint8_t b) { h = (h ^ b) * 1099511628211ULL; };
  for (std::size_t i = 0; i < (e.family == 6 ? 16u : 4u); ++i) mix(e.addr[i]);
  mix(static_cast<std::uint8_t>(e.port >> 8));
  mix(static_cast<std::uint8_t>(e.port));
  mix(e.family);
  return static_cast<std::size_t>(h);
}

std::size_t EndpointHash::operator()(const EndpointPair& p) const {
  return (*this)(p.source) * 31 + (*this)(p.destination);
}

void OutboundRegistry::opened(const EndpointPair& key, Owner owner) {
  std::lock_guard lock(mutex_);
  const auto [it, added] = by_key_.emplace(key, owner.session);
  if (added) {
    ++sources_[key.source];
  } else {
    // The key's previous owner is gone from the registry with it.
    by_session_.erase(it->second);
    it->second = owner.session;
  }
  by_session_[owner.session] = std::move(owner);
}

bool OutboundRegistry::has_source(const Endpoint& source) const {
  std::lock_guard lock(mutex_);
  return sources_.count(source) != 0;
}

void OutboundRegistry::closed(const EndpointPair& key) {
  std::lock_guard lock(mutex_);
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return;
  if (const auto src = sources_.find(key.source); src != sources_.end() && --src->second == 0) sources_.erase(src);
  by_session_.erase(it->second);
  by_key_.erase(it);
}

std::optional<std::uint64_t> OutboundRegistry::owner(const EndpointPair& key) const {
  std::lock_guard lock(mutex_);
  const auto it = by_key_.find(key);
  if (it == by_key_.end()) return std::nullopt;
  return it->second;
}

std::vector<OutboundRegistry::Owner> OutboundRegistry::chain(std::uint64_t first, std::size_t max) const {
  std::lock_guard lock(mutex_);
  std::vector<Owner> out;
  for (std::uint64_t cur = first; cur != 0 && out.size() <= max;) {
    const auto it = by_session_.find(cur);
    if (it == by_session_.end()) break;
    out.push_back(it->second);
    cur = it->second.parent;
  }
  return out;
}

}  // namespace isoproxy
