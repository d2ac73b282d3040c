#include "admin.h"

#include <openssl/crypto.h>
#include <spdlog/spdlog.h>

#include <cctype>

#include <arpa/inet.h>

#include <algorithm>
#include <charconv>
#include <set>

#include "admin_page.h"
#include "listener.h"
#include "rdns.h"
#include "server.h"
#include "supervisor.h"
#include "upstream.h"

namespace isoproxy {

using nlohmann::json;

namespace {

AdminResponse json_response(int status, const json& body) {
  AdminResponse r;
  r.status = status;
  // Compact: /sessions with a thousand sessions is half the size and twice
  // as fast to build as indented; ?pretty=1 indents for people.
  r.body = body.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
  return r;
}

AdminResponse error_response(int status, const std::string& message) {
  return json_response(status, {{"error", message}});
}

std::optional<std::uint64_t> parse_id(std::string_view s) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
  if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
  return v;
}

// Prometheus label values: backslash, double quote and newline escaped.
std::string label(std::string_view v) {
  std::string out;
  for (char c : v) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

void family(std::string& out, const char* name, const char* type, const char* help) {
  out += std::string("# HELP ") + name + " " + help + "\n# TYPE " + name + " " + type + "\n";
}

}  // namespace

// One worker's counters as the admin endpoint sums them; copied on the
// worker's loop, summed on the main loop.
struct ListenerRow {
  std::string name;
  std::vector<std::string> addresses;
  std::uint64_t accepted = 0, active = 0, refused = 0;
  bool removed = false;  // no longer configured, sessions still open
};
struct Totals {
  GlobalStats g;
  std::uint64_t active = 0;
  std::vector<ListenerRow> listeners;  // in configuration order
  ReverseDns::Counters dns;
  std::uint64_t dns_cached = 0, dns_in_flight = 0;
  json workers = json::array();  // per worker: index, active, accepted (or error)
};

namespace {

Totals worker_totals(Server& s) {
  Totals t;
  t.g = s.stats();
  t.active = s.active_sessions();
  for (const Listener* l : s.listeners()) t.listeners.push_back({l->name(), l->bound(), l->accepted(), l->active(), l->refused()});
  // A listener a reload removed still counts while its sessions last (on
  // any worker: totals() drops it once none is open), so that the
  // per-listener figures keep adding up to the totals.
  for (const auto& [name, c] : s.removed_listeners()) t.listeners.push_back({name, {}, c.accepted, c.active, c.refused, true});
  t.dns = s.rdns().counters();
  t.dns_cached = s.rdns().entries();
  t.dns_in_flight = s.rdns().in_flight();
  return t;
}

void add_map(std::map<std::string, std::uint64_t>& to, const std::map<std::string, std::uint64_t>& from) {
  for (const auto& [k, v] : from) to[k] += v;
}

Totals totals(Supervisor& sup) {
  const auto parts = sup.gather<Totals>(worker_totals);
  Totals out;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i]) {
      out.workers.push_back({{"index", i}, {"error", "no answer within " + std::to_string(Supervisor::kWorkerAnswer.count()) + "ms"}});
      continue;
    }
    const Totals& p = *parts[i];
    out.workers.push_back({{"index", i}, {"active", p.active}, {"accepted", p.g.accepted}});
    out.active += p.active;
    out.g.accepted += p.g.accepted;
    out.g.refused += p.g.refused;
    out.g.closed += p.g.closed;
    out.g.bytes_to_upstream += p.g.bytes_to_upstream;
    out.g.bytes_to_client += p.g.bytes_to_client;
    out.g.parked += p.g.parked;
    add_map(out.g.connect_failures, p.g.connect_failures);
    add_map(out.g.decode_errors, p.g.decode_errors);
    add_map(out.g.filter_actions, p.g.filter_actions);
    add_map(out.g.close_reasons, p.g.close_reasons);
    add_map(out.g.sessions_by_upstream, p.g.sessions_by_upstream);
    add_map(out.g.sessions_by_called_tsap, p.g.sessions_by_called_tsap);
    out.g.sessions_called_tsap_other += p.g.sessions_called_tsap_other;
    out.g.sessions_upstream_other += p.g.sessions_upstream_other;
    for (const ListenerRow& r : p.listeners) {
      auto it = std::find_if(out.listeners.begin(), out.listeners.end(), [&](const ListenerRow& o) { return o.name == r.name; });
      if (it == out.listeners.end()) {
        out.listeners.push_back(r);
        continue;
      }
      it->accepted += r.accepted;
      it->active += r.active;
      it->refused += r.refused;
      it->removed = it->removed && r.removed;
    }
    out.dns.lookups += p.dns.lookups;
    out.dns.found += p.dns.found;
    out.dns.failed += p.dns.failed;
    out.dns.hits += p.dns.hits;
    out.dns.skipped += p.dns.skipped;
    out.dns_cached += p.dns_cached;
    out.dns_in_flight += p.dns_in_flight;
  }
  // A removed listener is listed while a session of it is open on any
  // worker (summed: one worker's may all have ended).
  std::erase_if(out.listeners, [](const ListenerRow& r) { return r.removed && r.active == 0; });
  // The workers count under one set of labels (Shared), so the sum has no
  // more of them than any worker: nothing to fold here, and no counter ever
  // moves from a label to "other" and back.
  return out;
}

json rdns_json(Supervisor& sup, const Totals& t) {
  return {{"enabled", sup.config().global.reverse_dns},
          {"lookups", t.dns.lookups},
          {"found", t.dns.found},
          {"failed", t.dns.failed},
          {"cache_hits", t.dns.hits},
          {"skipped", t.dns.skipped},
          {"cached", t.dns_cached},
          {"in_flight", t.dns_in_flight}};
}

}  // namespace

bool Admin::host_allowed(const std::string& host_header) const {
  // DNS rebinding: a web page whose name is made to resolve to 127.0.0.1
  // could read the endpoint from an operator's browser. Its requests carry
  // its own name in Host; answer only to IP literals, localhost and names
  // configured in admin.allowed_hosts.
  std::string h = host_header;
  for (auto& c : h) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  if (!h.empty() && h.front() == '[') return h.find(']') != std::string::npos;  // an IPv6 literal
  if (const auto colon = h.rfind(':'); colon != std::string::npos) {
    const std::string port = h.substr(colon + 1);
    if (port.empty() || port.find_first_not_of("0123456789") != std::string::npos) return false;
    h.resize(colon);
  }
  in_addr v4{};
  if (inet_pton(AF_INET, h.c_str(), &v4) == 1) return true;
  if (h == "localhost") return true;
  const auto& allowed = server_.config().admin.allowed_hosts;
  return std::find(allowed.begin(), allowed.end(), h) != allowed.end();
}

AdminResponse Admin::handle(const AdminRequest& r) {
  if (auto host = r.headers.find("host"); host != r.headers.end() && !host_allowed(host->second)) {
    return error_response(403, "Host \"" + host->second.substr(0, 100) +
                                   "\" is not allowed: the admin endpoint answers to an IP address, localhost, or a "
                                   "name listed in admin.allowed_hosts (protection against DNS rebinding)");
  }
  AdminResponse resp = route(r);
  const auto pretty = r.query.find("pretty");
  if (pretty != r.query.end() && pretty->second != "0" && resp.content_type.rfind("application/json", 0) == 0) {
    resp.body = json::parse(resp.body).dump(2, ' ', false, json::error_handler_t::replace) + "\n";
  }
  return resp;
}

AdminResponse Admin::route(const AdminRequest& r) {
  const std::string& p = r.path;
  if (r.method == "POST") return action(r);
  if (r.method != "GET" && r.method != "HEAD") {
    AdminResponse resp = error_response(405, "method " + r.method + " not allowed: the admin endpoint reads with GET");
    resp.headers.emplace_back("Allow", "GET, HEAD, POST");
    return resp;
  }
  if (p == "/reload" || (p.rfind("/sessions/", 0) == 0 && p.ends_with("/close"))) {
    AdminResponse resp = error_response(405, "POST " + p + " is an action: send it with POST and 'Authorization: Bearer <admin.token>'");
    resp.headers.emplace_back("Allow", "POST");
    return resp;
  }
  if (p == "/") return admin_page_response();
  if (p == "/sessions") return sessions(r);
  if (p.rfind("/sessions/", 0) == 0) {
    auto id = parse_id(std::string_view(p).substr(10));
    if (!id) return error_response(404, "no such session: " + p.substr(10));
    return session(*id);
  }
  if (p == "/stats") return stats();
  if (p == "/metrics") return metrics();
  return error_response(404, "no such resource: " + p + " (try / for the live page, /sessions, /sessions/ID, /stats, /metrics)");
}

AdminResponse Admin::sessions(const AdminRequest& r) {
  // Filters: ?state=established|closed|..., ?tsap=EXCHANGETSAP1 (ASCII or hex),
  // ?peer=IP or IP:PORT, ?closed=1 (the recently closed ones too).
  auto get = [&](const char* k) -> const std::string* {
    auto it = r.query.find(k);
    return it == r.query.end() ? nullptr : &it->second;
  };
  const std::string* state = get("state");
  const std::string* tsap = get("tsap");
  const std::string* peer = get("peer");
  const std::string* closed = get("closed");
  static const std::set<std::string> kStates = {"connecting", "awaiting-cc", "established", "draining", "closed"};
  // A filter that cannot match is an operator's typo: said, not answered
  // with an empty list that reads as "no such session".
  static const std::set<std::string> kParams = {"state", "tsap", "peer", "closed", "pretty"};
  for (const auto& [key, value] : r.query) {
    if (!kParams.count(key)) {
      return error_response(400, "unknown parameter \"" + key.substr(0, 64) +
                                     "\": /sessions takes state, tsap, peer, closed (and pretty)");
    }
  }
  if (!r.repeated.empty()) {
    return error_response(400, "parameter \"" + r.repeated.front().substr(0, 64) +
                                   "\" given more than once: give each filter once");
  }
  if (state && !kStates.count(*state)) {
    return error_response(400, "state must be one of connecting, awaiting-cc, established, draining, closed");
  }
  if (closed && *closed != "0" && *closed != "1") return error_response(400, "closed must be 0 or 1");
  if (tsap) {
    // ASCII as it is, or octets in hex after "hex:" (as the close line writes them).
    const bool hex = tsap->size() >= 4 && (tsap->compare(0, 4, "hex:") == 0 || tsap->compare(0, 4, "HEX:") == 0);
    const std::string_view digits = hex ? std::string_view(*tsap).substr(4) : std::string_view();
    if (tsap->empty() || (hex && (digits.empty() || digits.size() % 2 != 0 ||
                                  !std::all_of(digits.begin(), digits.end(), [](unsigned char c) { return std::isxdigit(c) != 0; })))) {
      return error_response(400, "tsap must be a TSAP in ASCII, or its octets in hex (bare, or after hex: with an even number of digits)");
    }
  }
  // The peer as /sessions writes addresses, however it was typed: "[::1]",
  // "0:0:0:0:0:0:0:1" and "::1" are one address, "127.0.0.1:0102" is port 102.
  std::optional<std::string> f_peer;
  if (peer) {
    std::string_view text = *peer;
    if (text.size() >= 2 && text.front() == '[' && text.back() == ']') text = text.substr(1, text.size() - 2);
    if (auto ip = conf::parse_ip(text)) {
      f_peer = numeric_host(ip->sa());
    } else if (auto sa = conf::parse_socket_address(*peer, 0)) {  // a port, written: none is no default here
      f_peer = address_text(sa->sa());
    } else {
      return error_response(400, "peer must be an IP address or IP:PORT ([IPv6]:PORT), as /sessions shows client and upstream");
    }
  }
  // Closed sessions are in state "closed": ?state=established&closed=1 has none.
  const bool with_closed = (closed && *closed == "1" && !state) || (state && *state == "closed");
  // Built as text: a thousand snapshots are cheaper written one by one than
  // as one tree.
  AdminResponse resp;
  resp.status = 200;
  std::string& out = resp.body;
  out = "{\"sessions\":[";
  bool first = true;
  auto add = [&](const std::string& text) {
    if (!first) out.push_back(',');
    first = false;
    out += text;
  };
  // Each worker picks its own (on its loop); merged here in id order, the
  // closed ones most recent first, as one loop would list them.
  struct Part {
    std::vector<std::pair<std::uint64_t, std::string>> live;    // id, snapshot
    std::vector<std::pair<std::uint64_t, std::string>> closed;  // close order, snapshot
  };
  const std::optional<std::string> f_state = state ? std::optional<std::string>(*state) : std::nullopt;
  const std::optional<std::string> f_tsap = tsap ? std::optional<std::string>(*tsap) : std::nullopt;
  const auto parts = server_.gather<Part>([=](Server& w) {
    Part p;
    for (Session* s : w.sessions_in_order()) {
      // A session that has just closed joins the closed list once its
      // handles have closed (Server::retire); until then it is listed among
      // the closed ones from here, so that it is never in neither list.
      const bool closing = with_closed && s->closed() && s->final_state() != nullptr;
      if (f_state && !closing && session_state_name(s->state()) != *f_state) continue;
      if (f_tsap && !s->matches_tsap(*f_tsap)) continue;
      if (f_peer && !s->matches_peer(*f_peer)) continue;
      if (closing) p.closed.emplace_back(s->final_state()->seq, s->snapshot_text());
      else p.live.emplace_back(s->id(), s->snapshot_text());
    }
    if (with_closed) {
      for (const ClosedSession& c : w.closed_sessions()) {
        if (f_tsap && !c.matches_tsap(*f_tsap)) continue;
        if (f_peer && !c.matches_peer(*f_peer)) continue;
        p.closed.emplace_back(c.seq(), c.json());
      }
    }
    return p;
  });
  std::vector<const std::pair<std::uint64_t, std::string>*> live, gone;
  std::vector<std::size_t> missing;
  for (std::size_t i = 0; i < parts.size(); ++i) {
    if (!parts[i]) {
      missing.push_back(i);
      continue;
    }
    for (const auto& e : parts[i]->live) live.push_back(&e);
    for (const auto& e : parts[i]->closed) gone.push_back(&e);
  }
  std::sort(live.begin(), live.end(), [](const auto* a, const auto* b) { return a->first < b->first; });
  std::sort(gone.begin(), gone.end(), [](const auto* a, const auto* b) { return a->first > b->first; });
  if (gone.size() > server_.config().admin.closed_sessions) gone.resize(server_.config().admin.closed_sessions);
  for (const auto* e : live) add(e->second);
  for (const auto* e : gone) add(e->second);
  if (!missing.empty()) {
    // Said, not hidden: the list lacks what these workers hold.
    out += "],\"workers_missing\":" + json(missing).dump() + "}\n";
    return resp;
  }
  out += "]}\n";
  return resp;
}

AdminResponse Admin::session(std::uint64_t id) {
  // 0: not found; 1: live (the snapshot), 2: closed (its kept JSON).
  const auto parts = server_.gather<std::pair<int, std::string>>([id](Server& w) -> std::pair<int, std::string> {
    if (Session* s = w.find_session(id)) return {1, s->snapshot_text()};
    for (const ClosedSession& c : w.closed_sessions()) {
      if (c.id() == id) return {2, c.json()};
    }
    return {0, {}};
  });
  bool missing = false;
  for (const auto& p : parts) {
    if (!p) missing = true;
    if (p && p->first != 0) {
      AdminResponse resp;
      resp.body = p->second + "\n";
      return resp;
    }
  }
  if (missing) return error_response(503, "session " + std::to_string(id) + " not found, and a worker did not answer");
  return error_response(404, "no session " + std::to_string(id) + " (active or among the last closed)");
}

namespace {

// "Bearer TOKEN": the scheme in any case (RFC 9110 §11.1), the token
// compared in constant time, so that its bytes cannot be guessed by timing.
bool bearer_matches(std::string_view header, const std::string& token) {
  constexpr std::string_view kScheme = "bearer ";
  if (header.size() != kScheme.size() + token.size()) return false;
  for (std::size_t i = 0; i < kScheme.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(header[i])) != kScheme[i]) return false;
  }
  return CRYPTO_memcmp(header.data() + kScheme.size(), token.data(), token.size()) == 0;
}

}  // namespace

AdminResponse Admin::action(const AdminRequest& r) {
  const std::string& token = server_.config().admin.token;
  if (token.empty()) return error_response(403, "actions are disabled: set admin.token in the configuration");
  auto it = r.headers.find("authorization");
  if (it == r.headers.end() || !bearer_matches(it->second, token)) {
    if (std::uint64_t held = 0; auth_warns_.due(held)) {
      spdlog::warn("admin: POST {} from {} refused (401): {}{}", r.path.substr(0, 100), r.peer,
                   it == r.headers.end() ? "no Authorization header" : "not the admin.token",
                   held ? " (" + std::to_string(held) + " more refused since the last line)" : "");
    }
    AdminResponse resp = error_response(401, "actions need the header 'Authorization: Bearer <admin.token>'");
    resp.headers.emplace_back("WWW-Authenticate", "Bearer");
    return resp;
  }
  if (r.path == "/reload") {
    // The reload runs before the answer: a deploy script learns whether the
    // new configuration is in force, not only that it was asked for.
    using Kind = Supervisor::ReloadOutcome::Kind;
    const auto out = server_.request_reload();
    switch (out.kind) {
      case Kind::kDone:
        return json_response(200, {{"reload", "done"}, {"config", server_.config().path}, {"warnings", out.warnings}});
      case Kind::kIncomplete:
        return json_response(202, {{"reload", "incomplete"}, {"errors", out.errors}, {"warnings", out.warnings}});
      case Kind::kRefused:
        return json_response(503, {{"reload", "refused"}, {"errors", out.errors}});
      case Kind::kFailed:
        break;
    }
    return json_response(422, {{"reload", "failed"}, {"errors", out.errors}});
  }
  const std::string prefix = "/sessions/";
  const std::string suffix = "/close";
  if (r.path.rfind(prefix, 0) == 0 && r.path.size() > prefix.size() + suffix.size() &&
      r.path.compare(r.path.size() - suffix.size(), suffix.size(), suffix) == 0) {
    auto id = parse_id(std::string_view(r.path).substr(prefix.size(), r.path.size() - prefix.size() - suffix.size()));
    bool closed = false, missing = false;
    if (id) {
      for (const auto& p : server_.gather<bool>([id = *id](Server& w) {
             Session* s = w.find_session(id);
             if (s == nullptr || s->closed()) return false;
             s->close("admin-close", true);
             return true;
           })) {
        closed = closed || p.value_or(false);
        missing = missing || !p;
      }
    }
    // A worker that did not answer in time may still hold (and close) it.
    if (!closed && missing) return error_response(503, "a worker did not answer in time: session " + r.path.substr(prefix.size()) + " may still close; look again");
    if (!closed) return error_response(404, "no active session at " + r.path);
    return json_response(200, {{"closed", *id}});
  }
  return error_response(404, "no such action: POST " + r.path + " (try /sessions/ID/close, /reload)");
}

AdminResponse Admin::stats() {
  const Totals t = totals(server_);
  const GlobalStats& g = t.g;
  json listeners = json::array();
  for (const ListenerRow& l : t.listeners) {
    listeners.push_back({{"name", l.name}, {"addresses", l.addresses}, {"accepted", l.accepted}, {"active", l.active}, {"refused", l.refused}});
    if (l.removed) listeners.back()["removed"] = true;
  }
  return json_response(200, {{"sessions", {{"accepted", g.accepted}, {"active", t.active}, {"parked", g.parked}, {"refused", g.refused}, {"closed", g.closed}}},
                             {"bytes", {{"to_upstream", g.bytes_to_upstream}, {"to_client", g.bytes_to_client}}},
                             {"listeners", listeners},
                             {"workers", t.workers},
                             {"upstreams", g.sessions_by_upstream},
                             {"upstreams_other", g.sessions_upstream_other},
                             {"connect_failures", g.connect_failures},
                             {"decode_errors", g.decode_errors},
                             {"filter_actions", g.filter_actions},
                             {"close_reasons", g.close_reasons},
                             {"reverse_dns", rdns_json(server_, t)},
                             {"access_log_dropped", server_.shared().access_log.dropped()}});
}

AdminResponse Admin::metrics() {
  AdminResponse r;
  r.content_type = "text/plain; version=0.0.4; charset=utf-8";
  r.body = render_metrics(server_);
  return r;
}

std::string render_metrics(Supervisor& server) {
  const Totals t = totals(server);
  const GlobalStats& g = t.g;
  std::string out;
  family(out, "isoproxy_sessions_accepted_total", "counter", "Sessions accepted, by listener.");
  for (const ListenerRow& l : t.listeners) {
    out += "isoproxy_sessions_accepted_total{listener=\"" + label(l.name) + "\"} " + std::to_string(l.accepted) + "\n";
  }
  family(out, "isoproxy_sessions_active", "gauge", "Sessions open now, by listener.");
  for (const ListenerRow& l : t.listeners) {
    out += "isoproxy_sessions_active{listener=\"" + label(l.name) + "\"} " + std::to_string(l.active) + "\n";
  }
  family(out, "isoproxy_sessions_parked", "gauge", "Idle sessions parked now (their I/O state released; listener.park_after).");
  out += "isoproxy_sessions_parked " + std::to_string(g.parked) + "\n";
  family(out, "isoproxy_sessions_refused_total", "counter", "Connections refused at accept (limits, shutdown), by listener.");
  for (const ListenerRow& l : t.listeners) {
    out += "isoproxy_sessions_refused_total{listener=\"" + label(l.name) + "\"} " + std::to_string(l.refused) + "\n";
  }
  family(out, "isoproxy_upstream_sessions_total", "counter", "Sessions connected, by upstream address.");
  for (const auto& [k, v] : g.sessions_by_upstream) {
    out += "isoproxy_upstream_sessions_total{upstream=\"" + label(k) + "\"} " + std::to_string(v) + "\n";
  }
  family(out, "isoproxy_upstream_other_sessions_total", "counter",
         "Sessions connected to an upstream that came after 1000 distinct upstream addresses had a label.");
  out += "isoproxy_upstream_other_sessions_total " + std::to_string(g.sessions_upstream_other) + "\n";
  family(out, "isoproxy_bytes_total", "counter", "Bytes written toward each side (after the filters, with isoproxy's own DRs and ERs), by direction.");
  out += "isoproxy_bytes_total{direction=\"to_upstream\"} " + std::to_string(g.bytes_to_upstream) + "\n";
  out += "isoproxy_bytes_total{direction=\"to_client\"} " + std::to_string(g.bytes_to_client) + "\n";
  family(out, "isoproxy_session_closes_total", "counter", "Sessions closed, by close reason.");
  for (const auto& [k, v] : g.close_reasons) {
    out += "isoproxy_session_closes_total{reason=\"" + label(k) + "\"} " + std::to_string(v) + "\n";
  }
  family(out, "isoproxy_connect_failures_total", "counter", "Upstream connections that failed, by cause.");
  for (const auto& [k, v] : g.connect_failures) {
    out += "isoproxy_connect_failures_total{cause=\"" + label(k) + "\"} " + std::to_string(v) + "\n";
  }
  family(out, "isoproxy_decode_errors_total", "counter", "Frames or streams the decoder rejected, by kind.");
  for (const auto& [k, v] : g.decode_errors) {
    out += "isoproxy_decode_errors_total{kind=\"" + label(k) + "\"} " + std::to_string(v) + "\n";
  }
  family(out, "isoproxy_filter_actions_total", "counter", "Filter actions, by filter instance and action.");
  for (const auto& [k, v] : g.filter_actions) {
    const auto dot = k.find('.');
    out += "isoproxy_filter_actions_total{filter=\"" + label(k.substr(0, dot)) + "\",action=\"" +
           label(dot == std::string::npos ? "" : k.substr(dot + 1)) + "\"} " + std::to_string(v) + "\n";
  }
  family(out, "isoproxy_access_log_dropped_total", "counter", "Access-log lines not written whole (file: a failed write, e.g. disk full) or not taken by the journal (journald not keeping up).");
  out += "isoproxy_access_log_dropped_total " + std::to_string(server.shared().access_log.dropped()) + "\n";
  family(out, "isoproxy_reverse_dns_lookups_total", "counter", "Reverse-DNS lookups of client and upstream addresses, by result.");
  const auto& dns = t.dns;
  out += "isoproxy_reverse_dns_lookups_total{result=\"found\"} " + std::to_string(dns.found) + "\n";
  out += "isoproxy_reverse_dns_lookups_total{result=\"failed\"} " + std::to_string(dns.failed) + "\n";
  out += "isoproxy_reverse_dns_lookups_total{result=\"skipped\"} " + std::to_string(dns.skipped) + "\n";
  if (server.config().admin.metrics_tsap_labels > 0) {
    family(out, "isoproxy_called_tsap_sessions_total", "counter",
           "Sessions by called TSAP (the first admin.metrics_tsap_labels distinct values).");
    for (const auto& [k, v] : g.sessions_by_called_tsap) {
      out += "isoproxy_called_tsap_sessions_total{called_tsap=\"" + label(k) + "\"} " + std::to_string(v) + "\n";
    }
    family(out, "isoproxy_called_tsap_other_sessions_total", "counter",
           "Sessions whose called TSAP came after admin.metrics_tsap_labels distinct values had a label.");
    out += "isoproxy_called_tsap_other_sessions_total " + std::to_string(g.sessions_called_tsap_other) + "\n";
  }
  return out;
}

}  // namespace isoproxy
