#include "rdns.h"

#include <netdb.h>
#include <netinet/in.h>
#include <arpa/inet.h>

#include <atomic>
#include <cstring>

namespace isoproxy {

std::string numeric_host(const sockaddr* sa) {
  char buf[INET6_ADDRSTRLEN] = {};
  if (sa->sa_family == AF_INET) {
    // The dotted quad written directly: every session's stats, close line
    // and reverse-DNS lookups ask (inet_ntop goes through sprintf).
    unsigned char a[4];
    std::memcpy(a, &reinterpret_cast<const sockaddr_in*>(sa)->sin_addr, 4);
    std::string out;
    out.reserve(15);
    for (int i = 0; i < 4; ++i) {
      if (i != 0) out += '.';
      const unsigned v = a[i];
      if (v >= 100) out += static_cast<char>('0' + v / 100);
      if (v >= 10) out += static_cast<char>('0' + v / 10 % 10);
      out += static_cast<char>('0' + v % 10);
    }
    return out;
  } else if (sa->sa_family == AF_INET6) {
    inet_ntop(AF_INET6, &reinterpret_cast<const sockaddr_in6*>(sa)->sin6_addr, buf, sizeof buf);
  }
  return buf;
}

struct ReverseDns::Request {
  uv_getnameinfo_t req{};
  ReverseDns* owner = nullptr;  // nullptr once the owner is gone: the callback only frees
  std::string key;
  Done done;  // empty for cache lookups
  std::list<Request*>::iterator pos;
};

struct ReverseDns::Forward {
  uv_getaddrinfo_t req{};
  ReverseDns* owner = nullptr;
  Resolved done;
  std::list<Forward*>::iterator pos;
};

ReverseDns::~ReverseDns() {
  for (Forward* f : forwards_) f->owner = nullptr;
  // Normally none is left: the Server runs its loop until every request
  // ended, or abandon() took them all. If one is, its callback frees it
  // without touching this object.
  for (Request* r : requests_) r->owner = nullptr;
}

void ReverseDns::configure(const Options& o) {
  options_ = o;
  if (!o.enabled) {
    // Names already found stay until they expire; nothing new is looked up.
    return;
  }
  evict();
}

void ReverseDns::want(const sockaddr* sa) {
  if (!options_.enabled || shut_down_) return;
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) return;
  const std::string key = numeric_host(sa);
  const std::uint64_t now = uv_now(loop_);
  auto it = cache_.find(key);
  if (it != cache_.end()) {
    order_.splice(order_.end(), order_, it->second.order);  // most recently wanted last: evicted last
    if (it->second.pending || it->second.expires_ms > now) {
      ++counters_.hits;
      return;
    }
  }
  if (in_flight_ >= options_.max_in_flight) {
    ++counters_.skipped;
    return;
  }
  if (!start(sa, key, {})) return;
  if (it == cache_.end()) {
    order_.push_back(key);
    Entry e;
    e.order = std::prev(order_.end());
    it = cache_.emplace(key, std::move(e)).first;
  }
  it->second.pending = true;
  evict();
}

std::optional<std::string> ReverseDns::name(const sockaddr* sa) const {
  if (sa->sa_family != AF_INET && sa->sa_family != AF_INET6) return std::nullopt;
  auto it = cache_.find(numeric_host(sa));
  if (it == cache_.end() || !it->second.name) return std::nullopt;
  // A name past its TTL is still the best we know until the new lookup ends;
  // an entry is only dropped when it is evicted.
  return it->second.name;
}

void ReverseDns::lookup(const sockaddr* sa, Done done) {
  if (shut_down_) {
    done(std::nullopt, "shutting down");
    return;
  }
  if (!start(sa, numeric_host(sa), done)) return;
}

bool ReverseDns::start(const sockaddr* sa, const std::string& key, Done done) {
  auto* r = new Request;
  r->owner = this;
  r->key = key;
  r->done = std::move(done);
  r->req.data = r;
  sockaddr_storage ss{};
  std::memcpy(&ss, sa, sa->sa_family == AF_INET6 ? sizeof(sockaddr_in6) : sizeof(sockaddr_in));
  if (ss.ss_family == AF_INET) reinterpret_cast<sockaddr_in*>(&ss)->sin_port = 0;
  if (ss.ss_family == AF_INET6) reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = 0;
  const int rc = uv_getnameinfo(
      loop_, &r->req,
      [](uv_getnameinfo_t* req, int status, const char* host, const char*) noexcept {
        auto* self = static_cast<Request*>(req->data);
        if (self->owner) {
          self->owner->finished(self, status, host);
        } else {
          delete self;
        }
      },
      reinterpret_cast<const sockaddr*>(&ss), NI_NAMEREQD);
  if (rc != 0) {
    Done d = std::move(r->done);
    delete r;
    ++counters_.failed;
    if (d) d(std::nullopt, uv_strerror(rc));
    return false;
  }
  requests_.push_back(r);
  r->pos = std::prev(requests_.end());
  ++in_flight_;
  ++counters_.lookups;
  return true;
}

void ReverseDns::finished(Request* r, int status, const char* host) {
  requests_.erase(r->pos);
  --in_flight_;
  std::optional<std::string> name;
  if (status == 0 && host && *host) name = host;
  if (name) {
    ++counters_.found;
  } else {
    ++counters_.failed;
  }
  if (r->done) {
    Done d = std::move(r->done);
    delete r;
    d(name, status == 0 ? std::string("no name") : std::string(uv_strerror(status)));
    return;
  }
  auto it = cache_.find(r->key);
  if (it != cache_.end() && status != UV_ECANCELED) {
    it->second.pending = false;
    // "No such name" is an answer: the PTR record is gone, forget the name.
    // A resolver that does not answer (EAI_AGAIN, timeouts) keeps the name
    // found before, so that an outage does not erase what operators see.
    if (name || status == UV_EAI_NONAME) it->second.name = std::move(name);
    it->second.expires_ms = uv_now(loop_) + (status == 0 ? options_.ttl_ms : options_.failure_ttl_ms);
  } else if (it != cache_.end()) {
    it->second.pending = false;
  }
  delete r;
}

void ReverseDns::evict() {
  // Oldest first, never an entry whose lookup is under way (its request
  // would come back to nothing, which is harmless, but it wastes the lookup).
  auto o = order_.begin();
  while (cache_.size() > options_.max_entries && o != order_.end()) {
    auto it = cache_.find(*o);
    if (it != cache_.end() && it->second.pending) {
      ++o;
      continue;
    }
    if (it != cache_.end()) cache_.erase(it);
    o = order_.erase(o);
  }
}

void ReverseDns::forward(const std::string& name, Resolved done) {
  if (shut_down_) {
    done({}, "shutting down");
    return;
  }
  auto* f = new Forward;
  f->owner = this;
  f->done = std::move(done);
  f->req.data = f;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  const int rc = uv_getaddrinfo(
      loop_, &f->req,
      [](uv_getaddrinfo_t* req, int status, addrinfo* res) noexcept {
        auto* self = static_cast<Forward*>(req->data);
        std::vector<std::string> hosts;
        for (addrinfo* a = res; a; a = a->ai_next) hosts.push_back(numeric_host(a->ai_addr));
        uv_freeaddrinfo(res);
        if (self->owner) {
          self->owner->forwards_.erase(self->pos);
          Resolved d = std::move(self->done);
          delete self;
          d(std::move(hosts), status == 0 ? std::string() : std::string(uv_strerror(status)));
          return;
        }
        delete self;
      },
      name.c_str(), nullptr, &hints);
  if (rc != 0) {
    Resolved d = std::move(f->done);
    delete f;
    d({}, uv_strerror(rc));
    return;
  }
  forwards_.push_back(f);
  f->pos = std::prev(forwards_.end());
}

namespace {
std::atomic<bool> g_abandoned{false};
}  // namespace

std::size_t ReverseDns::abandon() {
  shut_down_ = true;
  const std::size_t n = requests_.size() + forwards_.size();
  // The requests stay allocated: libuv's thread writes into them when the
  // resolver returns. Nothing runs their callbacks any more.
  for (Request* r : requests_) r->owner = nullptr;
  for (Forward* f : forwards_) f->owner = nullptr;
  requests_.clear();
  forwards_.clear();
  in_flight_ = 0;
  g_abandoned.store(true, std::memory_order_relaxed);
  return n;
}

bool ReverseDns::lookups_abandoned() { return g_abandoned.load(std::memory_order_relaxed); }

void ReverseDns::shutdown() {
  shut_down_ = true;
  for (Request* r : requests_) uv_cancel(reinterpret_cast<uv_req_t*>(&r->req));
  for (Forward* f : forwards_) uv_cancel(reinterpret_cast<uv_req_t*>(&f->req));
}

}  // namespace isoproxy
