#include "server.h"

#include <malloc.h>

#include <algorithm>
#include <cctype>
#include <set>

#include <unistd.h>

#include "log.h"
#include "upstream.h"

namespace isoproxy {

namespace {

std::shared_ptr<const ListenerRuntime> make_runtime(const conf::Config& c, const conf::ListenerConfig& l) {
  auto rt = std::make_shared<ListenerRuntime>();
  rt->cfg = l;
  for (const auto& name : l.filters) rt->factories.push_back(c.filters.at(name).factory);
  return rt;
}

}  // namespace

bool same_sockets(const conf::ListenerConfig& a, const conf::ListenerConfig& b) {
  if (a.transparent != b.transparent || a.listen.size() != b.listen.size()) return false;
  for (std::size_t i = 0; i < a.listen.size(); ++i) {
    if (!a.listen[i].same_endpoint(b.listen[i])) return false;  // however written: "[::1]" is "[0:0::1]"
  }
  return true;
}

Server::Server(std::shared_ptr<const conf::Config> config, Shared& shared, unsigned index)
    : index_(index), shared_(shared), config_(std::move(config)) {
  uv_loop_init(&loop_);
  uv_timer_init(&loop_, &drain_timer_);
  drain_timer_.data = this;
  uv_timer_init(&loop_, &dns_check_timer_);
  dns_check_timer_.data = this;
  uv_timer_init(&loop_, &trim_timer_);
  trim_timer_.data = this;
  uv_idle_init(&loop_, &reaper_);
  reaper_.data = this;
  timers_.init(&loop_);
  splice_.start([this](std::uint64_t id) {
    if (Session* s = find_session(id)) s->enter_passthrough();
  });
  // Log lines go out once per loop iteration, just before the loop waits.
  uv_prepare_init(&loop_, &log_flush_);
  uv_prepare_start(&log_flush_, [](uv_prepare_t*) noexcept { log::flush(); });
  uv_async_init(&loop_, &mail_, [](uv_async_t* a) noexcept { static_cast<Server*>(a->data)->on_mail(); });
  mail_.data = this;
}

Server::~Server() {
  // run() closed every handle; a Server that never ran closes its loop here.
  if (!handles_closed_) {
    uv_walk(&loop_, [](uv_handle_t* h, void*) noexcept {
      if (!uv_is_closing(h)) uv_close(h, nullptr);
    }, nullptr);
    uv_run(&loop_, UV_RUN_DEFAULT);
    uv_loop_close(&loop_);
  }
}

bool Server::post(std::function<void(Server&)> fn) {
  {
    std::lock_guard lock(mail_mutex_);
    if (!mail_open_) return false;
    mailbox_.push_back(std::move(fn));
    // Under the lock: the handle is closed only after mail_open_ turned false.
    uv_async_send(&mail_);
  }
  return true;
}

void Server::on_mail() {
  std::deque<std::function<void(Server&)>> todo;
  {
    std::lock_guard lock(mail_mutex_);
    todo.swap(mailbox_);
  }
  for (auto& fn : todo) fn(*this);
}

void Server::apply(std::shared_ptr<const conf::Config> config, Sockets fresh_sockets, bool initial) {
  // Listeners whose sockets are unchanged keep them and take the new
  // settings; the others are replaced by listeners on the sockets the
  // Supervisor bound (all of them first: if one failed, nothing came here).
  std::vector<std::unique_ptr<Listener>> next;
  std::vector<std::unique_ptr<Listener>> fresh;
  for (const auto& lc : config->listeners) {
    auto rt = make_runtime(*config, lc);
    auto it = std::find_if(listeners_.begin(), listeners_.end(), [&](const auto& l) {
      return l && l->name() == lc.name && same_sockets(l->runtime()->cfg, lc);
    });
    if (it != listeners_.end()) {
      (*it)->set_runtime(rt);
      next.push_back(std::move(*it));
      continue;
    }
    auto l = std::make_unique<Listener>(*this, rt);
    l->adopt(fresh_sockets[lc.name]);
    next.push_back(std::move(l));
  }
  for (auto& l : listeners_) {
    if (!l) continue;
    if (index_ == 0) {
      const bool kept_name = std::any_of(config->listeners.begin(), config->listeners.end(),
                                         [&](const conf::ListenerConfig& lc) { return lc.name == l->name(); });
      if (kept_name) {
        // Its new sockets are bound already (the "listening on" lines): an
        // address in both lists is served on without a gap.
        spdlog::info("listener {} changed: its sockets on {} are closed, its new ones accept", l->name(),
                     fmt::join(l->bound(), ", "));
      } else {
        spdlog::info("listener {} removed: no longer accepting on {}", l->name(), fmt::join(l->bound(), ", "));
      }
    }
    l->stop();
    stopping_listeners_.push_back(std::move(l));
  }
  listeners_ = std::move(next);
  // Sockets of listeners the config no longer has (never expected) are closed.
  for (auto& [name, fds] : fresh_sockets) {
    const std::string& n = name;  // a structured binding is not captured before clang 16
    if (std::none_of(listeners_.begin(), listeners_.end(), [&](const auto& l) { return l->name() == n; })) {
      for (int fd : fds) ::close(fd);
    }
  }
  config_ = std::move(config);
  // A lower admin.closed_sessions holds from now on, not from the next close.
  while (closed_.size() > config_->admin.closed_sessions) closed_.pop_front();
  ReverseDns::Options dns;
  dns.enabled = config_->global.reverse_dns;
  dns.ttl_ms = static_cast<std::uint64_t>(config_->global.reverse_dns_ttl.count());
  dns.failure_ttl_ms = static_cast<std::uint64_t>(config_->global.reverse_dns_failure_ttl.count());
  rdns_.configure(dns);
  // Once per process (worker 0), from the loop, not now: the initial apply
  // runs before `--user` drops privileges, and a lookup would start libuv's
  // thread pool with root's capabilities.
  if (index_ == 0) {
    uv_timer_start(&dns_check_timer_, [](uv_timer_t* t) noexcept { static_cast<Server*>(t->data)->check_source_names(); }, 0, 0);
  }
  (void)initial;
}

void Server::check_source_names() {
  // A receiver that finds the connector for an incoming connection by the
  // caller's host name refuses a source IP without one: say so at start-up,
  // not at 3 a.m. Asynchronous; the answer is logged when it comes.
  if (!config_->global.reverse_dns || draining_) return;
  std::vector<std::pair<std::string, conf::IpAddress>> fixed;  // who, address
  for (const auto& l : config_->listeners) {
    if (l.source.mode == conf::SourceMode::kFixed && l.source.address) fixed.emplace_back("listener " + l.name, *l.source.address);
  }
  for (const auto& [name, f] : config_->filters) {
    if (!f.factory) continue;
    for (const auto& src : f.factory->fixed_sources()) fixed.emplace_back("filter " + name + " " + src.who, src.address);
  }
  std::set<std::string> seen;
  for (const auto& [owner, address] : fixed) {
    const std::string ip = address.text;
    if (!seen.insert(ip).second) continue;
    const std::string who = owner + ": source_address " + ip;
    const std::string canonical = numeric_host(address.sa());  // as getaddrinfo prints it
    // A resolver that did not answer says nothing of the records: not
    // "publish a PTR record" then, but that the check could not be made.
    auto unanswered = [](const std::string& e) {
      return e == uv_strerror(UV_EAI_AGAIN) || e == uv_strerror(UV_EAI_FAIL) || e == uv_strerror(UV_ETIMEDOUT);
    };
    rdns_.lookup(address.sa(), [this, ip, who, canonical, unanswered](std::optional<std::string> name, std::string error) {
      if (draining_) return;  // cancelled by the shutdown: nothing was learnt
      if (!name && unanswered(error)) {
        spdlog::warn("{}: its reverse-DNS (PTR) name could not be checked: the resolver did not answer ({}); "
                     "checked again at the next start or reload",
                     who, error);
        return;
      }
      if (!name) {
        spdlog::warn("{} has no reverse-DNS (PTR) name ({}): receivers that identify the calling MTA by its host name "
                     "(a connector matched by FQDN, an address check by name) will refuse connections from it; "
                     "publish a PTR record for {}",
                     who, error, ip);
        return;
      }
      rdns_.forward(*name, [this, who, canonical, unanswered, name = *name](std::vector<std::string> hosts, std::string ferror) {
        if (draining_) return;
        if (hosts.empty() && unanswered(ferror)) {
          spdlog::warn("{} is {} by its PTR record; whether {} resolves back to it could not be checked: the resolver "
                       "did not answer ({})",
                       who, name, name, ferror);
          return;
        }
        if (std::find(hosts.begin(), hosts.end(), canonical) != hosts.end()) {
          spdlog::info("{} is {} (PTR, and the name resolves back to it)", who, name);
        } else {
          spdlog::warn("{} is {} by its PTR record, but {} does not resolve back to it ({}): receivers that check "
                       "forward-confirmed reverse DNS will refuse connections from it",
                       who, name, name, ferror.empty() ? "resolves to " + (hosts.empty() ? std::string("nothing") : fmt::format("{}", fmt::join(hosts, ", "))) : ferror);
        }
      });
    });
  }
}

namespace {

bool has_handles(uv_loop_t* loop) {
  bool any = false;
  uv_walk(loop, [](uv_handle_t*, void* arg) noexcept { *static_cast<bool*>(arg) = true; }, &any);
  return any;
}

}  // namespace

int Server::run() {
  // Returns when nothing is left, or when maybe_stop() stopped it: then the
  // handles it closed finish closing, and what can still keep the loop alive
  // is only lookups the resolver has not answered.
  uv_run(&loop_, UV_RUN_DEFAULT);
  while (has_handles(&loop_) && uv_run(&loop_, UV_RUN_ONCE) != 0) {
  }
  // Lookups that ended (or were cancelled) during the last iteration.
  if (!has_handles(&loop_)) uv_run(&loop_, UV_RUN_NOWAIT);
  // Sessions go back to this thread's pools (Session::pool), so on this thread.
  closed_.clear();
  handles_closed_ = true;
  // Abandoned only if every request left is a lookup: anything else (no
  // other kind runs on a worker's loop today) is waited for as before.
  // active_reqs is libuv's own count (uv.h: "not part of the public API",
  // but the only way to tell; uv_loop_alive() reads it too).
  if (!has_handles(&loop_) && uv_loop_alive(&loop_) != 0 && rdns_.in_flight_requests() > 0 &&
      loop_.active_reqs.count == rdns_.in_flight_requests()) {
    // A resolver that does not answer would hold a stop or a restart for
    // its whole timeout (resolv.conf's timeout x attempts x nameservers).
    const std::size_t n = rdns_.abandon();
    spdlog::info("not waiting for {} reverse-DNS lookup{} the resolver has not answered{}", n, n == 1 ? "" : "s",
                 config_->global.workers > 1 ? " (worker " + std::to_string(index_) + ")" : std::string());
    loop_memory_.keep = true;
    log::flush();
    return 0;
  }
  uv_run(&loop_, UV_RUN_DEFAULT);  // nothing left, or what is left is waited for
  log::flush();  // what the last iteration logged
  return uv_loop_close(&loop_);
}

Session* Server::new_session(Listener& l, const std::shared_ptr<const ListenerRuntime>& rt) {
  const std::uint64_t id = shared_.next_session_id.fetch_add(1, std::memory_order_relaxed);
  auto s = std::make_unique<Session>(*this, l, id, rt);
  Session* raw = s.get();
  sessions_.emplace(id, std::move(s));
  l.session_started();
  stats_.accepted++;
  return raw;
}

void Server::session_closed(std::uint64_t id) {
  auto it = sessions_.find(id);
  if (it == sessions_.end()) return;
  it->second->owner().session_ended();
  shared_.release_session();
  // Destroyed from the reaper, never inside the session's own callback.
  finished_.push_back(std::move(it->second));
  sessions_.erase(it);
  schedule_reap();
}

void Server::listener_closed() { schedule_reap(); }

void Server::schedule_reap() {
  if (!reaper_active_ && !uv_is_closing(reinterpret_cast<uv_handle_t*>(&reaper_))) {
    reaper_active_ = true;
    uv_idle_start(&reaper_, [](uv_idle_t* h) noexcept {
      auto* self = static_cast<Server*>(h->data);
      for (auto& s : self->finished_) self->retire(std::move(s));
      self->finished_.clear();
      self->reaper_active_ = false;
      uv_idle_stop(h);
      std::erase_if(self->stopping_listeners_, [](const auto& l) { return l->stopped() && l->own_active() == 0; });
      self->maybe_stop();
    });
  }
}

void Server::close_all(const std::string& reason) {
  std::vector<Session*> all;
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  for (Session* s : all) s->close(reason);
}

void Server::begin_drain() {
  if (draining_) return;
  draining_ = true;
  rdns_.shutdown();
  for (auto& l : listeners_) {
    l->stop();
    stopping_listeners_.push_back(std::move(l));
  }
  listeners_.clear();
  std::vector<Session*> all;
  for (auto& [id, s] : sessions_) all.push_back(s.get());
  for (Session* s : all) s->drain();
  uv_timer_start(&drain_timer_, [](uv_timer_t* t) noexcept {
    auto* self = static_cast<Server*>(t->data);
    if (!self->sessions_.empty()) {
      spdlog::warn("drain deadline passed: closing {} sessions{}", self->sessions_.size(),
                   self->config_->global.workers > 1 ? " of worker " + std::to_string(self->index_) : std::string());
    }
    self->close_all("drain-timeout");
  }, static_cast<std::uint64_t>(config_->global.drain_timeout.count()), 0);
  maybe_stop();
}

void Server::maybe_stop() {
  if (!draining_ || !sessions_.empty() || !finished_.empty()) return;
  for (auto& l : stopping_listeners_) {
    if (!l->stopped()) return;
  }
  if (on_drained_ && !released_) {
    // Held (hold_after_drain): the loop goes on answering mail until release().
    if (!drained_) {
      drained_ = true;
      on_drained_();
    }
    return;
  }
  // Nothing is left to serve: no more mail, close our own handles and let the loop end.
  {
    std::lock_guard lock(mail_mutex_);
    mail_open_ = false;
  }
  on_mail();  // what came before the door closed
  splice_.close();
  park_.close();
  for (uv_handle_t* h : {reinterpret_cast<uv_handle_t*>(&drain_timer_), reinterpret_cast<uv_handle_t*>(&dns_check_timer_),
                         reinterpret_cast<uv_handle_t*>(&trim_timer_),
                         reinterpret_cast<uv_handle_t*>(&reaper_), reinterpret_cast<uv_handle_t*>(&mail_),
                         reinterpret_cast<uv_handle_t*>(&log_flush_), timers_.handle()}) {
    if (!uv_is_closing(h)) uv_close(h, nullptr);
  }
  // run() finishes the closing; it does not wait for the resolver.
  uv_stop(&loop_);
}

void Server::release() {
  released_ = true;
  maybe_stop();
}

void Server::session_parked() {
  // The Io a parked session frees comes from slabs, which go back by
  // themselves; what its handshake left in malloc's heap (filters, requests)
  // lies in holes that only malloc_trim returns. Once per burst of parking,
  // not per session: it walks every arena.
  // Only for a wave (kTrimAfterParks since the last trim): a few sessions
  // parking now and then leave too little to be worth walking the heap.
  if (++parked_since_trim_ < kTrimAfterParks) return;
  if (uv_is_active(reinterpret_cast<uv_handle_t*>(&trim_timer_)) || uv_is_closing(reinterpret_cast<uv_handle_t*>(&trim_timer_))) return;
  uv_timer_start(&trim_timer_, [](uv_timer_t* t) noexcept {
    static_cast<Server*>(t->data)->parked_since_trim_ = 0;
    ::malloc_trim(0);
  }, kTrimMs, 0);
}

std::uint32_t Server::counter_key(std::string_view filter, std::string_view action) {
  thread_local std::string name;  // no allocation per count once it has grown
  name.assign(filter).append(".").append(action);
  if (const auto it = counter_keys_.find(std::string_view(name)); it != counter_keys_.end()) return it->second;
  const auto key = static_cast<std::uint32_t>(counter_names_.size());
  counter_names_.push_back(name);
  counter_keys_.emplace(counter_names_.back(), key);
  return key;
}

bool Server::may_come_back(const conf::SocketAddress& target) const {
  const std::uint16_t port = target.port();
  for (const auto& l : config_->listeners) {
    if (l.transparent) return true;
    for (const auto& a : l.listen) {
      if (a.port() == port || a.port() == 0) return true;  // port 0: the kernel chose one, any may be it
    }
  }
  return false;
}

void Server::outbound_opened(const EndpointPair& key, std::uint64_t session) {
  OutboundRegistry::Owner o;
  o.session = session;
  o.worker = index_;
  if (Session* s = find_session(session)) {
    o.parent = s->parent_;
    o.listener = std::shared_ptr<const std::string>(s->rt_, &s->rt_->cfg.name);  // no copy: shares the runtime
  }
  shared_.outbound.opened(key, std::move(o));
}

bool Server::close_if_loop(Session& s, std::uint64_t owner, std::size_t max) {
  const auto chain = shared_.outbound.chain(owner, max);
  const bool looped = chain.size() > max || std::any_of(chain.begin(), chain.end(), [&](const auto& o) {
    return o.listener && *o.listener == s.rt_->cfg.name;
  });
  if (!looped) return false;
  const std::string why = "loop: the upstream connection of session S" + std::to_string(owner) +
                          " came back to isoproxy (listener " + s.rt_->cfg.name +
                          "); its upstream leads to isoproxy itself: check the upstream address, or for a "
                          "transparent listener exclude local destinations from the TPROXY rule "
                          "(nft: fib daddr type local return)";
  spdlog::warn("[S{}] {}", s.id(), why);
  for (const auto& o : chain) {
    if (o.worker == index_) {
      if (Session* p = find_session(o.session)) p->close(why);
    } else if (shared_.post) {
      shared_.post(o.worker, [id = o.session, why](Server& w) {
        if (Session* p = w.find_session(id)) p->close(why);
      });
    }
  }
  s.close(why);
  return true;
}

std::vector<Session*> Server::sessions_in_order() {
  std::vector<Session*> out;
  out.reserve(sessions_.size());
  for (auto& [id, s] : sessions_) out.push_back(s.get());
  std::sort(out.begin(), out.end(), [](const Session* a, const Session* b) { return a->id() < b->id(); });
  return out;
}

Session* Server::find_session(std::uint64_t id) {
  auto it = sessions_.find(id);
  return it == sessions_.end() ? nullptr : it->second.get();
}

std::vector<const Listener*> Server::listeners() const {
  std::vector<const Listener*> out;
  for (const auto& l : listeners_) out.push_back(l.get());
  return out;
}

std::vector<std::pair<std::string, Listener::Counters>> Server::removed_listeners() const {
  std::vector<std::pair<std::string, Listener::Counters>> out;
  for (const auto& [name, c] : listener_counters_) {
    const std::string& n = name;  // a structured binding is not captured before clang 16
    const bool current = std::any_of(listeners_.begin(), listeners_.end(), [&](const auto& l) { return l->name() == n; });
    if (!current) out.emplace_back(name, c);
  }
  return out;
}

void Server::retire(std::unique_ptr<Session> s) {
  const std::size_t keep = config_->admin.closed_sessions;
  if (keep > 0 && s->final_state() != nullptr) {
    s->release_io();
    closed_.push_back(ClosedSession{std::move(s)});
  }  // else destroyed here
  while (closed_.size() > keep) closed_.pop_front();  // the oldest goes (apply() trims after a reload)
}

namespace {

// One more under `label` if it has (or now gets) one of the bounded label
// set shared by the workers (`admit`), else one more in `other`: no label
// value can stand for the rest (any text may be a TSAP or an address).
template <class Admit>
void count_label(std::map<std::string, std::uint64_t>& by_label, std::uint64_t& other, const std::string& label, Admit admit) {
  auto it = by_label.find(label);
  if (it != by_label.end()) {
    ++it->second;
  } else if (admit(label)) {
    by_label[label] = 1;
  } else {
    ++other;
  }
}

}  // namespace

void Server::count_upstream(const std::string& address) {
  count_label(stats_.sessions_by_upstream, stats_.sessions_upstream_other, address,
              [this](const std::string& l) { return shared_.admit_upstream_label(l); });
}

void Server::count_called_tsap(const std::string& display) {
  const std::size_t limit = config_->admin.metrics_tsap_labels;
  if (limit == 0) return;
  count_label(stats_.sessions_by_called_tsap, stats_.sessions_called_tsap_other, display,
              [this, limit](const std::string& l) { return shared_.admit_tsap_label(l, limit); });
}

}  // namespace isoproxy
