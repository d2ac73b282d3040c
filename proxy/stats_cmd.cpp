#include "stats_cmd.h"

#include <langinfo.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <clocale>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <map>
#include <ostream>
#include <set>

#include "admin_client.h"
#include "conf/loader.h"

namespace isoproxy {

using nlohmann::json;

namespace stats_view {

namespace {

// One well-formed UTF-8 sequence at s[i] (RFC 3629: no overlong forms, no
// surrogates, nothing above U+10FFFF): its code point and length, or 0.
std::size_t decode_utf8(std::string_view s, std::size_t i, char32_t& cp) {
  const auto b0 = static_cast<unsigned char>(s[i]);
  std::size_t len = 0;
  char32_t min = 0;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    len = 2, cp = b0 & 0x1F, min = 0x80;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    len = 3, cp = b0 & 0x0F, min = 0x800;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    len = 4, cp = b0 & 0x07, min = 0x10000;
  } else {
    return 0;
  }
  if (i + len > s.size()) return 0;
  for (std::size_t k = 1; k < len; ++k) {
    const auto b = static_cast<unsigned char>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    cp = (cp << 6) | (b & 0x3F);
  }
  if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
  return len;
}

// Letters that take one column and never combine, reorder or hide: Latin-1
// and Latin Extended-A/B, Greek, Cyrillic (less its combining marks).
bool passes_in_utf8(char32_t cp) {
  if (cp >= 0xA0 && cp <= 0x24F) return cp != 0xAD;  // soft hyphen: invisible
  if (cp >= 0x370 && cp <= 0x3FF) return true;
  if (cp >= 0x400 && cp <= 0x4FF) return !(cp >= 0x483 && cp <= 0x489);
  return false;
}

void hex_escape(std::string& out, unsigned value, int digits, const char* prefix) {
  static const char* kHex = "0123456789ABCDEF";
  out += prefix;
  for (int d = digits - 1; d >= 0; --d) out += kHex[(value >> (4 * d)) & 15];
}

const std::set<std::string>& repair_actions() {
  // Filter actions that change a frame (filters/*.cpp, ctx.count): the
  // reserved-byte repair, TSAP rewrites, TPDU-size clamps and additions.
  static const std::set<std::string> kActions = {"repaired", "rewritten-cr", "restored-cc", "clamped-cr", "clamped-cc", "added"};
  return kActions;
}

}  // namespace

std::string sanitize(std::string_view text, bool utf8) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size();) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c >= 0x20 && c < 0x7F) {
      if (c == '\\') out += '\\';
      out += static_cast<char>(c);
      ++i;
      continue;
    }
    if (c < 0x80) {  // C0 controls (ESC among them) and DEL
      hex_escape(out, c, 2, "\\x");
      ++i;
      continue;
    }
    char32_t cp = 0;
    const std::size_t len = decode_utf8(text, i, cp);
    if (len == 0) {
      hex_escape(out, c, 2, "\\x");
      ++i;
      continue;
    }
    if (utf8 && passes_in_utf8(cp)) {
      out.append(text.substr(i, len));
    } else if (cp <= 0xFFFF) {
      hex_escape(out, static_cast<unsigned>(cp), 4, "\\u");
    } else {
      hex_escape(out, static_cast<unsigned>(cp), 8, "\\U");
    }
    i += len;
  }
  return out;
}

std::size_t display_width(std::string_view text) {
  std::size_t n = 0;
  for (char ch : text) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80 ? 1 : 0;
  return n;
}

std::string truncate(std::string_view text, std::size_t width, bool utf8) {
  if (display_width(text) <= width) return std::string(text);
  const std::string_view ellipsis = utf8 ? "\u2026" : "...";
  const std::size_t ew = display_width(ellipsis);
  const bool with_ellipsis = width > ew;  // too narrow for one: a plain cut
  const std::size_t keep = with_ellipsis ? width - ew : width;
  std::size_t cols = 0, i = 0;
  for (; i < text.size(); ++i) {
    if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) {
      if (cols == keep) break;
      ++cols;
    }
  }
  std::string out(text.substr(0, i));
  if (with_ellipsis) out += ellipsis;
  return out;
}

std::string human_bytes(std::uint64_t n) {
  if (n < 1000) return std::to_string(n);
  static const char kUnits[] = "KMGTPE";
  double v = static_cast<double>(n) / 1024.0;
  std::size_t u = 0;
  while (v >= 999.5 && u + 1 < sizeof kUnits - 1) {
    v /= 1024.0;
    ++u;
  }
  char buf[32];
  if (v < 9.95) std::snprintf(buf, sizeof buf, "%.1f%c", v, kUnits[u]);
  else std::snprintf(buf, sizeof buf, "%.0f%c", v, kUnits[u]);
  return buf;
}

std::string human_duration(double s) {
  if (!std::isfinite(s) || s < 0) return "-";
  char buf[48];
  if (s < 9.95) {
    std::snprintf(buf, sizeof buf, "%.1fs", s);
    return buf;
  }
  const auto t = static_cast<std::uint64_t>(std::min(s + 0.5, 1e15));
  if (t < 60) std::snprintf(buf, sizeof buf, "%llus", static_cast<unsigned long long>(t));
  else if (t < 3600) std::snprintf(buf, sizeof buf, "%llum%02llus", static_cast<unsigned long long>(t / 60), static_cast<unsigned long long>(t % 60));
  else if (t < 86400) std::snprintf(buf, sizeof buf, "%lluh%02llum", static_cast<unsigned long long>(t / 3600), static_cast<unsigned long long>(t % 3600 / 60));
  else std::snprintf(buf, sizeof buf, "%llud%02lluh", static_cast<unsigned long long>(t / 86400), static_cast<unsigned long long>(t % 86400 / 3600));
  return buf;
}

std::size_t choose_width(std::optional<int> terminal_columns, const char* columns_env) {
  if (terminal_columns && *terminal_columns > 0) return static_cast<std::size_t>(*terminal_columns);
  if (columns_env && *columns_env) {
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(columns_env, &end, 10);
    if (errno == 0 && end && *end == '\0' && v > 0 && v <= 100000) return static_cast<std::size_t>(v);
  }
  return 80;
}

std::vector<std::string> render_table(const std::vector<Column>& columns, std::size_t width, bool utf8) {
  const std::size_t n = columns.size();
  std::size_t rows = 0;
  for (const Column& c : columns) rows = std::max(rows, c.cells.size());
  std::vector<std::size_t> natural(n), cur(n);
  std::vector<bool> shown(n, true);
  for (std::size_t i = 0; i < n; ++i) {
    natural[i] = display_width(columns[i].header);
    for (const auto& cell : columns[i].cells) natural[i] = std::max(natural[i], display_width(cell));
    cur[i] = natural[i];
  }
  auto total = [&] {
    std::size_t t = 0, k = 0;
    for (std::size_t i = 0; i < n; ++i) {
      if (!shown[i]) continue;
      t += cur[i];
      ++k;
    }
    return k ? t + 2 * (k - 1) : 0;
  };
  // The widest shown column that `eligible` allows, or n.
  auto widest = [&](auto eligible) {
    std::size_t best = n;
    for (std::size_t i = 0; i < n; ++i) {
      if (shown[i] && eligible(i) && (best == n || cur[i] > cur[best])) best = i;
    }
    return best;
  };
  if (width > 0 && total() > width) {
    // 1. Free text over its soft maximum (a long DR name, a host name).
    while (total() > width) {
      const std::size_t i = widest([&](std::size_t k) { return columns[k].shrink && columns[k].soft_max && cur[k] > columns[k].soft_max; });
      if (i == n) break;
      --cur[i];
    }
    // 2. The least important columns (the rightmost of equals first).
    while (total() > width) {
      std::size_t drop = n;
      for (std::size_t i = 0; i < n; ++i) {
        if (shown[i] && columns[i].importance > 0 && (drop == n || columns[i].importance >= columns[drop].importance)) drop = i;
      }
      if (drop == n) break;
      shown[drop] = false;
    }
    // 3. The widest, one column at a time, down to its minimum.
    while (total() > width) {
      const std::size_t i = widest([&](std::size_t k) { return columns[k].shrink && cur[k] > std::min(columns[k].min_width, natural[k]); });
      if (i == n) break;
      --cur[i];
    }
    // 4. Room left by a dropped column goes back to what was cut, most important first.
    std::vector<std::size_t> order;
    for (std::size_t i = 0; i < n; ++i) {
      if (shown[i]) order.push_back(i);
    }
    std::stable_sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) { return columns[a].importance < columns[b].importance; });
    for (std::size_t i : order) {
      const std::size_t t = total();
      if (t >= width) break;
      cur[i] = std::min(natural[i], cur[i] + (width - t));
    }
  }
  auto line_of = [&](auto cell_of) {
    std::string line;
    std::size_t pending_spaces = 0;  // no trailing blanks
    bool first = true;
    for (std::size_t i = 0; i < n; ++i) {
      if (!shown[i]) continue;
      if (!first) pending_spaces += 2;
      first = false;
      const std::string text = truncate(cell_of(i), cur[i], utf8);
      const std::size_t pad = cur[i] - display_width(text);
      if (columns[i].right) pending_spaces += pad;
      if (!text.empty()) {
        line.append(pending_spaces, ' ');
        pending_spaces = 0;
        line += text;
      }
      if (!columns[i].right) pending_spaces += pad;
    }
    if (width > 0 && display_width(line) > width) line = truncate(line, width, utf8);
    return line;
  };
  std::vector<std::string> lines;
  lines.push_back(line_of([&](std::size_t i) -> std::string_view { return columns[i].header; }));
  for (std::size_t r = 0; r < rows; ++r) {
    lines.push_back(line_of([&](std::size_t i) -> std::string_view {
      return r < columns[i].cells.size() ? std::string_view(columns[i].cells[r]) : std::string_view();
    }));
  }
  return lines;
}

namespace {

const json* field(const json& o, const char* key) {
  if (!o.is_object()) return nullptr;
  auto it = o.find(key);
  return it == o.end() ? nullptr : &*it;
}

std::optional<std::uint64_t> u64(const json* v) {
  if (!v || !v->is_number_unsigned()) {
    if (v && v->is_number_integer() && v->get<std::int64_t>() >= 0) return static_cast<std::uint64_t>(v->get<std::int64_t>());
    return std::nullopt;
  }
  return v->get<std::uint64_t>();
}
std::optional<std::uint64_t> u64(const json& o, const char* key) { return u64(field(o, key)); }

std::optional<double> number(const json& o, const char* key) {
  const json* v = field(o, key);
  if (!v || !v->is_number()) return std::nullopt;
  return v->get<double>();
}

std::optional<std::string> string_of(const json& o, const char* key) {
  const json* v = field(o, key);
  if (!v || !v->is_string()) return std::nullopt;
  return v->get<std::string>();
}

std::string text(const json& o, const char* key, bool utf8) {
  auto s = string_of(o, key);
  return s && !s->empty() ? sanitize(*s, utf8) : "-";
}

std::string count_text(std::optional<std::uint64_t> v) { return v ? std::to_string(*v) : "-"; }

// "127.0.0.1:40000" with a reverse-DNS name: "mta.example.org:40000".
std::string peer(const json& s, const char* addr_key, const char* name_key, bool utf8) {
  auto addr = string_of(s, addr_key);
  if (!addr || addr->empty()) return "-";
  auto name = string_of(s, name_key);
  if (!name || name->empty()) return sanitize(*addr, utf8);
  const auto colon = addr->rfind(':');
  const bool has_port = colon != std::string::npos && colon + 1 < addr->size() &&
                        addr->find_first_not_of("0123456789", colon + 1) == std::string::npos &&
                        (addr->front() != '[' || (colon > 0 && (*addr)[colon - 1] == ']'));
  return sanitize(*name, utf8) + (has_port ? addr->substr(colon) : "");
}

std::string tsap(const json& s, const char* key, bool utf8) {
  const json* t = field(s, key);
  if (!t || !t->is_object()) return "-";
  // A TSAP that is the text "-" is quoted: a bare - says there is none.
  if (auto a = string_of(*t, "ascii")) return *a == "-" ? std::string("\"-\"") : sanitize(*a, utf8);
  if (auto h = string_of(*t, "hex")) return h->empty() ? "(empty)" : "hex:" + sanitize(*h, utf8);
  return "-";
}

std::string both(const json& s, const char* key, bool bytes) {
  auto one = [&](const char* dir) -> std::string {
    auto v = u64(field(s, dir) ? *field(s, dir) : json(), key);
    if (!v) return "-";
    return bytes ? human_bytes(*v) : std::to_string(*v);
  };
  return one("to_upstream") + "/" + one("to_client");
}

std::string repairs(const json& s) {
  const json* f = field(s, "filters");
  if (!f || !f->is_object()) return "-";
  std::uint64_t sum = 0;
  for (auto it = f->begin(); it != f->end(); ++it) {
    const std::string& k = it.key();
    const auto dot = k.rfind('.');
    if (repair_actions().count(dot == std::string::npos ? k : k.substr(dot + 1))) sum += u64(&it.value()).value_or(0);
  }
  return std::to_string(sum);
}

// "0x80 normal disconnect initiated by session entity (upstream)".
std::string disconnect(const json& s, bool utf8) {
  const json* d = field(s, "dr");
  if (!d || !d->is_object()) return "-";
  std::string out;
  if (auto r = u64(*d, "reason")) {
    char hex[16];
    std::snprintf(hex, sizeof hex, "0x%02llX", static_cast<unsigned long long>(*r));
    out = hex;
  } else {
    out = "?";
  }
  auto name = string_of(*d, "name");
  out += " " + (name ? sanitize(*name, utf8) : std::string("unknown reason"));
  if (auto from = string_of(*d, "from")) out += " (" + sanitize(*from, utf8) + ")";
  return out;
}

struct Table {
  std::vector<Column> columns;
  void add(std::string header, int importance, bool right, bool shrink, std::size_t soft_max = 0, std::size_t min_width = 6) {
    Column c;
    c.header = std::move(header);
    c.importance = importance;
    c.right = right;
    c.shrink = shrink;
    c.soft_max = soft_max;
    c.min_width = min_width;
    columns.push_back(std::move(c));
  }
};

// Open sessions: who, where, how much. Importance 0 is never dropped.
std::vector<Column> open_table(const std::vector<const json*>& rows, bool utf8) {
  Table t;
  t.add("ID", 0, true, false);
  t.add("LISTENER", 7, false, true, 16);
  t.add("STATE", 1, false, false);
  t.add("CLIENT", 2, false, true, 28, 8);
  t.add("UPSTREAM", 4, false, true, 28, 8);
  t.add("CALLING", 0, false, true, 20);
  t.add("CALLED", 0, false, true, 20);
  t.add("AGE", 5, true, false);
  t.add(utf8 ? "BYTES\u2191/\u2193" : "BYTES UP/DN", 3, true, false);
  t.add(utf8 ? "FRAMES\u2191/\u2193" : "FRAMES UP/DN", 8, true, false);
  t.add("REPAIRS", 9, true, false);
  t.add("LAST DR", 6, false, true, 24, 8);
  for (const json* s : rows) {
    auto& c = t.columns;
    c[0].cells.push_back(count_text(u64(*s, "id")));
    c[1].cells.push_back(text(*s, "listener", utf8));
    c[2].cells.push_back(text(*s, "state", utf8));
    c[3].cells.push_back(peer(*s, "client", "client_name", utf8));
    c[4].cells.push_back(peer(*s, "upstream", "upstream_name", utf8));
    c[5].cells.push_back(tsap(*s, "calling_tsap", utf8));
    c[6].cells.push_back(tsap(*s, "called_tsap", utf8));
    auto age = number(*s, "age_s");
    c[7].cells.push_back(age ? human_duration(*age) : "-");
    c[8].cells.push_back(both(*s, "bytes", true));
    c[9].cells.push_back(both(*s, "frames", false));
    c[10].cells.push_back(repairs(*s));
    c[11].cells.push_back(disconnect(*s, utf8));
  }
  return std::move(t.columns);
}

// Recently closed sessions: why they ended.
std::vector<Column> closed_table(const std::vector<const json*>& rows, bool utf8) {
  Table t;
  t.add("ID", 0, true, false);
  t.add("LISTENER", 7, false, true, 16);
  t.add("CLIENT", 2, false, true, 28, 8);
  t.add("UPSTREAM", 4, false, true, 28, 8);
  t.add("CALLING", 0, false, true, 20);
  t.add("CALLED", 0, false, true, 20);
  t.add("LASTED", 5, true, false);
  t.add(utf8 ? "BYTES\u2191/\u2193" : "BYTES UP/DN", 3, true, false);
  t.add(utf8 ? "FRAMES\u2191/\u2193" : "FRAMES UP/DN", 8, true, false);
  t.add("REPAIRS", 9, true, false);
  t.add("CLOSE REASON", 0, false, true, 24, 8);
  t.add("DR", 1, false, true, 32, 8);
  for (const json* s : rows) {
    auto& c = t.columns;
    c[0].cells.push_back(count_text(u64(*s, "id")));
    c[1].cells.push_back(text(*s, "listener", utf8));
    c[2].cells.push_back(peer(*s, "client", "client_name", utf8));
    c[3].cells.push_back(peer(*s, "upstream", "upstream_name", utf8));
    c[4].cells.push_back(tsap(*s, "calling_tsap", utf8));
    c[5].cells.push_back(tsap(*s, "called_tsap", utf8));
    auto d = number(*s, "duration_s");
    c[6].cells.push_back(d ? human_duration(*d) : "-");
    c[7].cells.push_back(both(*s, "bytes", true));
    c[8].cells.push_back(both(*s, "frames", false));
    c[9].cells.push_back(repairs(*s));
    c[10].cells.push_back(text(*s, "close_reason", utf8));
    c[11].cells.push_back(disconnect(*s, utf8));
  }
  return std::move(t.columns);
}

std::string plural(std::size_t n, const char* one, const char* many) { return std::to_string(n) + " " + (n == 1 ? one : many); }

}  // namespace

std::string missing_workers(const json& stats, const json& sessions) {
  std::map<std::uint64_t, std::string> why;  // by worker index
  if (const json* w = field(stats, "workers"); w && w->is_array()) {
    for (const json& e : *w) {
      const auto index = u64(e, "index");
      const auto error = string_of(e, "error");
      if (index && error) why[*index] = *error;
    }
  }
  if (const json* m = field(sessions, "workers_missing"); m && m->is_array()) {
    for (const json& i : *m) {
      if (auto index = u64(&i); index && !why.count(*index)) why[*index] = "";
    }
  }
  std::string text;
  for (const auto& [index, reason] : why) {
    text += (text.empty() ? "worker " : "; worker ") + std::to_string(index) + ": " +
            (reason.empty() ? "did not answer" : reason);
  }
  return text;
}

std::vector<std::string> render(const json& stats, const json& sessions, const ViewOptions& o) {
  const bool u = o.utf8;
  std::vector<std::string> lines;
  auto put = [&](std::string line) { lines.push_back(o.width ? truncate(line, o.width, u) : std::move(line)); };

  // The totals: segments separated by two spaces; when they do not fit, the
  // least important go first (refused, closed, accepted, the refresh time).
  const json* ss = field(stats, "sessions");
  const json& sj = ss ? *ss : json();
  const json* bj = field(stats, "bytes");
  const json& b = bj ? *bj : json();
  auto bytes_of = [&](const char* k) { auto v = u64(b, k); return v ? human_bytes(*v) : std::string("-"); };
  std::vector<std::pair<std::string, int>> head = {
      {"isoproxy " + sanitize(o.endpoint, u), 0},
      {"active " + count_text(u64(sj, "active")), 0},
      {"accepted " + count_text(u64(sj, "accepted")), 3},
      {"refused " + count_text(u64(sj, "refused")), 5},
      {"closed " + count_text(u64(sj, "closed")), 4},
      {u ? "\u2191" + bytes_of("to_upstream") + " \u2193" + bytes_of("to_client")
         : "bytes up " + bytes_of("to_upstream") + " down " + bytes_of("to_client"), 1},
  };
  if (!o.filters.empty()) head.emplace_back(sanitize(o.filters, u), 1);
  if (!o.refresh.empty()) head.emplace_back(sanitize(o.refresh, u), 2);
  auto joined = [&] {
    std::string line;
    for (const auto& [text, importance] : head) line += (line.empty() ? "" : "  ") + text;
    return line;
  };
  while (o.width && display_width(joined()) > o.width) {
    auto least = head.begin();  // the rightmost of the least important
    for (auto it = head.begin(); it != head.end(); ++it) {
      if (it->second >= least->second) least = it;
    }
    if (least == head.end() || least->second == 0) break;
    head.erase(least);
  }
  put(joined());
  // Said under the totals, never cut for room: what follows is incomplete.
  if (const std::string missing = missing_workers(stats, sessions); !missing.empty()) {
    lines.push_back(sanitize("INCOMPLETE: " + missing + " (the totals and sessions below leave out what " +
                                 (missing.find("; ") == std::string::npos ? "it holds)" : "they hold)"),
                             u));
  }

  std::vector<const json*> open, closed;
  if (const json* list = field(sessions, "sessions"); list && list->is_array()) {
    for (const json& s : *list) {
      if (!s.is_object()) continue;
      const json* st = field(s, "state");
      (st && st->is_string() && *st == "closed" ? closed : open).push_back(&s);
    }
  }

  // Rows beyond max_lines: as many as fit, then one line that says how many more.
  std::size_t budget = o.max_lines ? (o.max_lines > lines.size() ? o.max_lines - lines.size() : 0) : SIZE_MAX;
  auto section = [&](const std::vector<const json*>& rows, std::vector<Column> columns, const std::string& none, const char* what) {
    if (budget == 0) return;
    if (rows.empty()) {
      put(none);
      --budget;
      return;
    }
    std::vector<std::string> table = render_table(columns, o.width, u);
    std::size_t show = table.size();
    if (table.size() > budget) show = budget >= 2 ? budget - 1 : budget;
    for (std::size_t i = 0; i < show; ++i) lines.push_back(std::move(table[i]));
    budget -= show;
    if (show < table.size() && budget > 0) {
      const std::size_t hidden = table.size() - show;
      put("  (" + std::string(u ? "\u2026" : "...") + " and " + plural(hidden, what, "sessions") + " more: enlarge the terminal, or use --json)");
      --budget;
    }
  };
  section(open, open_table(open, u), "no open sessions", "session");
  if (o.closed && budget > 1) {
    lines.emplace_back();
    --budget;
    put("recently closed, newest first: " + plural(closed.size(), "session", "sessions"));
    --budget;
    if (!closed.empty()) section(closed, closed_table(closed, u), "", "session");
  }
  return lines;
}

}  // namespace stats_view

namespace {

using Clock = std::chrono::steady_clock;

volatile std::sig_atomic_t g_stop = 0;
volatile std::sig_atomic_t g_resized = 0;

extern "C" void on_stop_signal(int) { g_stop = 1; }
extern "C" void on_winch_signal(int) { g_resized = 1; }

// SIGINT and SIGTERM end --watch cleanly, SIGWINCH redraws. They are
// blocked except inside ppoll(), so none slips in between a check and a wait.
class WatchSignals {
 public:
  WatchSignals() {
    g_stop = 0;
    g_resized = 0;
    struct sigaction stop {};
    stop.sa_handler = on_stop_signal;
    sigemptyset(&stop.sa_mask);
    struct sigaction winch {};
    winch.sa_handler = on_winch_signal;
    sigemptyset(&winch.sa_mask);
    sigaction(SIGINT, &stop, &old_int_);
    sigaction(SIGTERM, &stop, &old_term_);
    sigaction(SIGWINCH, &winch, &old_winch_);
    sigset_t block;
    sigemptyset(&block);
    for (int s : {SIGINT, SIGTERM, SIGWINCH}) sigaddset(&block, s);
    sigprocmask(SIG_BLOCK, &block, &old_mask_);
    wait_mask_ = old_mask_;
    for (int s : {SIGINT, SIGTERM, SIGWINCH}) sigdelset(&wait_mask_, s);
  }
  ~WatchSignals() {
    sigprocmask(SIG_SETMASK, &old_mask_, nullptr);
    sigaction(SIGINT, &old_int_, nullptr);
    sigaction(SIGTERM, &old_term_, nullptr);
    sigaction(SIGWINCH, &old_winch_, nullptr);
  }
  WatchSignals(const WatchSignals&) = delete;
  WatchSignals& operator=(const WatchSignals&) = delete;

  const sigset_t* wait_mask() const { return &wait_mask_; }

  // Sleeps until `until`, a stop signal (true) or a resize (false, g_resized set).
  bool sleep_until(Clock::time_point until) const {
    for (;;) {
      if (g_stop) return true;
      if (g_resized) return false;
      const auto left = until - Clock::now();
      if (left <= Clock::duration::zero()) return false;
      const auto ns = std::chrono::duration_cast<std::chrono::nanoseconds>(left).count();
      timespec ts{static_cast<time_t>(ns / 1000000000), static_cast<long>(ns % 1000000000)};
      ::ppoll(nullptr, 0, &ts, &wait_mask_);
    }
  }

 private:
  struct sigaction old_int_ {}, old_term_ {}, old_winch_ {};
  sigset_t old_mask_{}, wait_mask_{};
};

struct Terminal {
  bool tty = false;
  std::optional<int> columns, rows;
};

Terminal probe_terminal() {
  Terminal t;
  t.tty = ::isatty(STDOUT_FILENO) == 1;
  winsize ws{};
  if (t.tty && ::ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0) {
    if (ws.ws_col > 0) t.columns = ws.ws_col;
    if (ws.ws_row > 0) t.rows = ws.ws_row;
  }
  return t;
}

// Whether the locale's character set is UTF-8 (LC_ALL, LC_CTYPE, LANG).
bool utf8_locale() {
  const char* previous = std::setlocale(LC_CTYPE, nullptr);
  const std::string saved = previous ? previous : "C";
  bool utf8 = false;
  if (std::setlocale(LC_CTYPE, "")) {
    const char* cs = nl_langinfo(CODESET);
    utf8 = cs && (std::strcmp(cs, "UTF-8") == 0 || std::strcmp(cs, "utf8") == 0);
  }
  std::setlocale(LC_CTYPE, saved.c_str());
  return utf8;
}

std::optional<double> parse_seconds(const std::string& s) {
  if (s.empty()) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (errno != 0 || end != s.c_str() + s.size() || !std::isfinite(v)) return std::nullopt;
  return v;
}

std::string seconds_text(double s) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%gs", s);
  return buf;
}

std::string clock_text() {
  const std::time_t now = std::time(nullptr);
  std::tm tm{};
  localtime_r(&now, &tm);
  char buf[16];
  std::strftime(buf, sizeof buf, "%H:%M:%S", &tm);
  return buf;
}

// One line for an endpoint error, after "isoproxy stats: ".
std::string describe(const Error& e, const AdminAddress& a) {
  if (e.kind == "connect" || e.kind == "resolve") {
    return "cannot reach the admin endpoint at " + a.text + ": " + e.message + " (is isoproxy running? is [admin] listen set?)";
  }
  if (e.kind == "http") return "the admin endpoint at " + a.text + " answered " + e.message;
  if (e.kind == "timeout") return "the admin endpoint at " + a.text + " did not answer: " + e.message;
  return "the admin endpoint at " + a.text + ": " + e.message;
}

struct Snapshot {
  json stats;
  json sessions;
};

Result<Snapshot> fetch(const AdminAddress& a, const std::string& sessions_target, const AdminClientOptions& o) {
  auto stats = get_json(a, "/stats", o);
  if (!stats) return unexpected(stats.error());
  auto sessions = get_json(a, sessions_target, o);
  if (!sessions) return unexpected(sessions.error());
  if (!sessions->is_object() || !sessions->contains("sessions") || !(*sessions)["sessions"].is_array()) {
    return unexpected(Error{"json", "the answer to " + sessions_target + " has no \"sessions\" list (is this isoproxy's admin endpoint?)"});
  }
  return Snapshot{std::move(*stats), std::move(*sessions)};
}

}  // namespace

int run_stats(const StatsCmdOptions& opts, std::ostream& out, std::ostream& err) {
  auto usage = [&](const std::string& msg) {
    err << "isoproxy stats: " << msg << " (see isoproxy stats --help)\n";
    return 2;
  };
  // Option values (CLI11 has checked the syntax).
  double interval = 2.0;
  if (opts.watch && !opts.watch_interval.empty()) {
    auto v = parse_seconds(opts.watch_interval);
    if (!v || *v < 0.2 || *v > 3600) return usage("--watch: the interval must be a number of seconds from 0.2 to 3600, not \"" + stats_view::sanitize(opts.watch_interval, false) + "\"");
    interval = *v;
  }
  if (opts.count && !opts.watch) return usage("--count needs --watch");
  if (opts.count && *opts.count == 0) return usage("--count must be at least 1");
  if (!std::isfinite(opts.timeout_s) || opts.timeout_s < 0.1 || opts.timeout_s > 600) return usage("--timeout must be from 0.1 to 600 seconds");
  if (opts.width && (*opts.width < 0 || *opts.width > 100000)) return usage("--width must be from 0 (unlimited) to 100000");
  if (!opts.admin.empty() && !opts.config.empty()) return usage("--admin and -c are alternatives: give one");

  // Where the endpoint is: --admin, else -c FILE's [admin] listen, else the default.
  AdminAddress address;
  if (!opts.admin.empty()) {
    auto a = parse_admin_address(opts.admin);
    if (!a) return usage("--admin " + a.error().message);
    address = *a;
  } else if (!opts.config.empty()) {
    auto config = conf::load_admin_config_file(opts.config);
    if (!config) {
      const auto& errors = config.error();
      err << "isoproxy stats: cannot read the admin address from " << stats_view::sanitize(opts.config, false) << ": "
          << (errors.empty() ? std::string("invalid") : stats_view::sanitize(errors.front().to_string(), false))
          << (errors.size() > 1 ? " (and " + std::to_string(errors.size() - 1) + " more in [admin]: isoproxy check -c FILE)" : "") << "\n";
      return 1;
    }
    if (!config->admin.enabled) {
      err << "isoproxy stats: the admin endpoint is off in " << stats_view::sanitize(opts.config, false)
          << " ([admin] listen = \"off\"): set it to an address or unix:/path and restart isoproxy\n";
      return 1;
    }
    auto a = admin_address_from_listen(config->admin.listen);
    if (!a) {
      err << "isoproxy stats: " << stats_view::sanitize(opts.config, false) << ": [admin] listen " << a.error().message
          << (a.error().message.find("port 0") != std::string::npos ? "; pass --admin ADDR" : "") << "\n";
      return 1;
    }
    address = *a;
  } else {
    address = *parse_admin_address("127.0.0.1:9102");
  }

  std::string target = "/sessions";
  std::string note;
  {
    std::string query;
    auto param = [&](const char* key, const std::string& value) {
      query += (query.empty() ? "?" : "&") + std::string(key) + "=" + url_encode(value);
      note += (note.empty() ? "" : " ") + std::string(key) + "=" + value;
    };
    if (opts.closed) query += "?closed=1";
    if (!opts.state.empty()) param("state", opts.state);
    if (!opts.tsap.empty()) param("tsap", opts.tsap);
    if (!opts.peer.empty()) param("peer", opts.peer);
    target += query;
  }
  if (!note.empty()) note = "[" + note + "]";

  AdminClientOptions client;
  client.connect_timeout = std::chrono::milliseconds(static_cast<long long>(opts.timeout_s * 1000));
  client.read_timeout = client.connect_timeout;

  const bool utf8 = utf8_locale();
  auto view_options = [&](const Terminal& term, bool watching) {
    stats_view::ViewOptions v;
    v.width = opts.width ? static_cast<std::size_t>(*opts.width) : stats_view::choose_width(term.columns, std::getenv("COLUMNS"));
    v.utf8 = utf8;
    v.closed = opts.closed;
    v.endpoint = address.text;
    v.filters = note;
    if (watching) {
      v.refresh = "every " + seconds_text(interval) + " " + clock_text();
      // A redrawn screen must not scroll: one line is kept for the cursor.
      if (term.tty && term.rows && *term.rows > 1) v.max_lines = static_cast<std::size_t>(*term.rows - 1);
    }
    return v;
  };
  auto as_json = [](const Snapshot& s) {
    json j{{"sessions", s.sessions["sessions"]}, {"stats", s.stats}};
    // Workers that did not answer: the lists lack their sessions.
    if (s.sessions.contains("workers_missing")) j["workers_missing"] = s.sessions["workers_missing"];
    return j;
  };

  if (!opts.watch) {
    auto snap = fetch(address, target, client);
    if (!snap) {
      err << "isoproxy stats: " << stats_view::sanitize(describe(snap.error(), address), false) << "\n";
      return 1;
    }
    if (opts.json) {
      out << as_json(*snap).dump(2) << "\n";
    } else {
      for (const auto& line : stats_view::render(snap->stats, snap->sessions, view_options(probe_terminal(), false))) out << line << "\n";
    }
    out.flush();
    // A worker that did not answer: what was printed is incomplete, and a
    // script must not take it for the whole.
    if (const std::string missing = stats_view::missing_workers(snap->stats, snap->sessions); !missing.empty()) {
      err << "isoproxy stats: incomplete: " << stats_view::sanitize(missing, false) << "\n";
      return 1;
    }
    return out ? 0 : 1;
  }

  // --watch: until SIGINT/SIGTERM, or --count refreshes.
  WatchSignals signals;
  client.wait_mask = signals.wait_mask();
  client.stop = &g_stop;
  std::uint64_t frames = 0;
  bool last_failed = false;
  std::optional<Snapshot> last;
  std::string last_error;
  bool first_draw = true;
  auto draw = [&] {
    const Terminal term = probe_terminal();
    std::vector<std::string> lines;
    if (opts.json) {
      if (last_failed) err << "isoproxy stats: " << stats_view::sanitize(last_error, false) << "\n";
      else out << as_json(*last).dump() << "\n";
      out.flush();
      return;
    }
    const stats_view::ViewOptions v = view_options(term, true);
    if (last_failed || !last) {
      lines.push_back(stats_view::truncate("isoproxy " + stats_view::sanitize(address.text, utf8) + "  " + v.refresh, v.width ? v.width : SIZE_MAX, utf8));
      // A message, not a table row: whole, even if the terminal wraps it.
      lines.push_back(stats_view::sanitize(last_error, utf8) + " (retrying)");
    } else {
      lines = stats_view::render(last->stats, last->sessions, v);
    }
    if (term.tty) {
      // Home, each line over the old one (erased first: a full-width line
      // leaves the cursor in the last column), then erase what is below.
      std::string frame = first_draw ? "\x1b[H\x1b[2J" : "\x1b[H";
      for (const auto& l : lines) frame += "\x1b[2K" + l + "\n";
      frame += "\x1b[J";
      out << frame;
    } else {
      if (!first_draw) out << "\n";
      for (const auto& l : lines) out << l << "\n";
    }
    first_draw = false;
    out.flush();
  };
  auto next = Clock::now();
  while (!g_stop) {
    auto snap = fetch(address, target, client);
    if (g_stop) break;
    if (snap) {
      last = std::move(*snap);
      last_failed = false;
    } else {
      last_failed = true;
      last_error = describe(snap.error(), address);
    }
    draw();
    ++frames;
    if (opts.count && frames >= *opts.count) {
      return last_failed || (last && !stats_view::missing_workers(last->stats, last->sessions).empty()) ? 1 : 0;
    }
    next += std::chrono::duration_cast<Clock::duration>(std::chrono::duration<double>(interval));
    if (next < Clock::now()) next = Clock::now();  // a slow poll does not cause a burst
    for (;;) {
      if (signals.sleep_until(next)) break;
      if (!g_resized) break;
      g_resized = 0;
      if (!opts.json && (last || last_failed)) draw();  // redraw at the new size, no new poll
    }
  }
  return 0;
}

}  // namespace isoproxy
