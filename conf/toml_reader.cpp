#include "conf/toml_reader.h"

#include <cstdio>

#include <toml++/toml.h>

#include <algorithm>
#include <cctype>
#include <limits>

namespace isoproxy::conf {

// A TOML basic string.
std::string toml_string(std::string_view s) {
  std::string out = "\"";
  for (const char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      default:
        if (c < 0x20 || c == 0x7F) {
          char buf[8];
          std::snprintf(buf, sizeof buf, "\\u%04X", c);
          out += buf;
        } else {
          out += ch;
        }
    }
  }
  return out + "\"";
}

const char* type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a floating-point number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::date: return "a date";
    case toml::node_type::time: return "a time";
    case toml::node_type::date_time: return "a date-time";
    case toml::node_type::none: break;
  }
  return "nothing";
}

namespace {


std::string in_quotes(std::string_view s) { return "\"" + std::string(s) + "\""; }

// Bare TOML keys are written as they are; anything else quoted, so that a
// path in a message can be pasted back into the file.
std::string key_text(std::string_view key) {
  const bool bare = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-';
  });
  return bare ? std::string(key) : in_quotes(key);
}

// "listener[0]" + "listen" -> "listener[0].listen"; the root table has no path.
std::string join_path(const std::string& path, std::string_view key) {
  return path.empty() ? key_text(key) : path + "." + key_text(key);
}

std::string join_list(const std::vector<std::string>& items, bool quote) {
  std::string out;
  for (const auto& item : items) {
    if (!out.empty()) out += ", ";
    out += quote ? in_quotes(item) : item;
  }
  return out;
}

std::size_t levenshtein(std::string_view a, std::string_view b) {
  std::vector<std::size_t> row(b.size() + 1);
  for (std::size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (std::size_t i = 1; i <= a.size(); ++i) {
    std::size_t diag = row[0];
    row[0] = i;
    for (std::size_t j = 1; j <= b.size(); ++j) {
      const std::size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (auto& c : out) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

}  // namespace

std::string ConfigError::to_string() const {
  std::string out = file;
  if (line > 0) out += ":" + std::to_string(line) + ":" + std::to_string(column);
  out += ": ";
  if (!key.empty()) out += key + ": ";
  out += message;
  return out;
}

void ErrorSink::add(const toml::node* at, std::string key, std::string message) {
  if (at == nullptr) {
    add(0, 0, std::move(key), std::move(message));
    return;
  }
  const auto& begin = at->source().begin;
  add(static_cast<int>(begin.line), static_cast<int>(begin.column), std::move(key), std::move(message));
}

void ErrorSink::add(int line, int column, std::string key, std::string message) {
  errors_.push_back(ConfigError{file_, line, column, std::move(key), std::move(message)});
}

void ErrorSink::warn(const toml::node* at, std::string key, std::string message) {
  const int line = at != nullptr ? static_cast<int>(at->source().begin.line) : 0;
  const int column = at != nullptr ? static_cast<int>(at->source().begin.column) : 0;
  warnings_.push_back(ConfigError{file_, line, column, std::move(key), std::move(message)});
}

std::optional<std::string> did_you_mean(std::string_view word, const std::vector<std::string>& candidates) {
  const std::string w = lower(word);
  // Edits first: a typo ("conect_timeout") is the common case.
  const std::string* best = nullptr;
  std::size_t best_distance = std::numeric_limits<std::size_t>::max();
  for (const auto& c : candidates) {
    const std::size_t d = levenshtein(w, lower(c));
    if (d < best_distance) {
      best_distance = d;
      best = &c;
    }
  }
  // Two edits turn any two-letter word into any other: only suggest when the
  // word keeps more of itself than it loses.
  if (best != nullptr && best_distance <= 2 && best_distance < w.size()) return *best;
  // Then a shared beginning ("keepalive_intvl" for "keepalive_interval").
  best = nullptr;
  std::size_t best_prefix = 0;
  for (const auto& c : candidates) {
    const std::string lc = lower(c);
    std::size_t p = 0;
    while (p < w.size() && p < lc.size() && w[p] == lc[p]) ++p;
    if (p >= 4 && p > best_prefix) {
      best_prefix = p;
      best = &c;
    }
  }
  if (best != nullptr) return *best;
  return std::nullopt;
}

TableReader::TableReader(const toml::table& table, std::string path, ErrorSink& errors)
    : table_(table), path_(std::move(path)), errors_(errors) {}

int TableReader::line() const { return static_cast<int>(table_.source().begin.line); }
int TableReader::column() const { return static_cast<int>(table_.source().begin.column); }

const toml::node* TableReader::node(std::string_view key) {
  known_.emplace(key);
  return table_.get(key);
}

void TableReader::error(std::string_view key, std::string message) {
  const toml::node* at = table_.get(key);
  errors_.add(at != nullptr ? at : &table_, join_path(path_, key), std::move(message));
}

void TableReader::element_error(std::string_view key, std::size_t index, std::string message) {
  const toml::node* list = table_.get(key);
  const toml::array* a = list != nullptr ? list->as_array() : nullptr;
  const toml::node* at = a != nullptr && index < a->size() ? a->get(index) : nullptr;
  if (at == nullptr) {
    error(key, std::move(message));
    return;
  }
  errors_.add(at, join_path(path_, key) + "[" + std::to_string(index) + "]", std::move(message));
}

void TableReader::warning(std::string_view key, std::string message) {
  const toml::node* at = table_.get(key);
  errors_.warn(at != nullptr ? at : &table_, join_path(path_, key), std::move(message));
}

std::string TableReader::string(std::string_view key, std::string def) {
  auto v = optional_string(key);
  return v ? std::move(*v) : std::move(def);
}

std::optional<std::string> TableReader::optional_string(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return std::nullopt;
  if (const auto* s = n->as_string()) return s->get();
  error(key, std::string("expected a string, found ") + type_name(*n));
  return std::nullopt;
}

bool TableReader::boolean(std::string_view key, bool def) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  if (const auto* b = n->as_boolean()) return b->get();
  std::string msg = std::string("expected true or false, found ") + type_name(*n);
  if (const auto* s = n->as_string(); s != nullptr && (s->get() == "true" || s->get() == "false"))
    msg += " (write " + s->get() + " without quotes)";
  error(key, std::move(msg));
  return def;
}

std::int64_t TableReader::integer(std::string_view key, std::int64_t def, std::int64_t min, std::int64_t max) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  const auto* i = n->as_integer();
  if (i == nullptr) {
    error(key, std::string("expected an integer, found ") + type_name(*n));
    return def;
  }
  const std::int64_t v = i->get();
  if (v < min || v > max) {
    error(key, "must be between " + std::to_string(min) + " and " + std::to_string(max) + " (found " + std::to_string(v) + ")");
    return def;
  }
  return v;
}

Duration TableReader::duration(std::string_view key, Duration def) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  if (const auto* i = n->as_integer()) {
    // Only 0 is a duration without a unit; anything else is ambiguous.
    if (i->get() == 0) return Duration{0};
    if (i->get() < 0) {
      error(key, std::to_string(i->get()) + " is negative: durations are 0 or more, written with a unit (\"5s\", \"250ms\")");
      return def;
    }
    const std::string v = std::to_string(i->get());
    error(key, v + " has no unit: write a duration string such as \"" + v + "s\" or \"" + v +
                   "ms\" (units ms, s, m, h, d); only 0 may be written without");
    return def;
  }
  const auto* s = n->as_string();
  if (s == nullptr) {
    error(key, std::string("expected a duration such as \"5s\" or \"250ms\", found ") + type_name(*n));
    return def;
  }
  auto d = parse_duration(s->get());
  if (!d) {
    error(key, d.error().message);
    return def;
  }
  return *d;
}

std::uint64_t TableReader::size(std::string_view key, std::uint64_t def, std::uint64_t min, std::uint64_t max) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  std::uint64_t v = 0;
  std::string written;
  if (const auto* i = n->as_integer()) {
    if (i->get() < 0) {
      error(key, "size " + std::to_string(i->get()) + " is negative");
      return def;
    }
    v = static_cast<std::uint64_t>(i->get());
    written = std::to_string(v);
  } else if (const auto* s = n->as_string()) {
    auto r = parse_size(s->get());
    if (!r) {
      error(key, r.error().message);
      return def;
    }
    v = *r;
    written = in_quotes(s->get()) + " = " + std::to_string(v);
  } else {
    error(key, std::string("expected a size such as 65535 or \"256KiB\", found ") + type_name(*n));
    return def;
  }
  if (v < min || v > max) {
    auto show = [](std::uint64_t b) {
      const std::string f = format_size(b);
      return f == std::to_string(b) ? f : f + " (" + std::to_string(b) + ")";
    };
    error(key, "must be between " + show(min) + " and " + show(max) + " bytes (found " + written + ")");
    return def;
  }
  return v;
}

std::string TableReader::choice(std::string_view key, std::string def, const std::vector<std::string>& allowed) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  const auto* s = n->as_string();
  if (s == nullptr) {
    error(key, "expected one of " + join_list(allowed, true) + ", found " + type_name(*n));
    return def;
  }
  if (std::find(allowed.begin(), allowed.end(), s->get()) != allowed.end()) return s->get();
  std::string msg = "expected one of " + join_list(allowed, true) + ", found " + in_quotes(s->get());
  if (auto hint = did_you_mean(s->get(), allowed)) msg += "; did you mean " + in_quotes(*hint) + "?";
  error(key, std::move(msg));
  return def;
}

std::vector<std::string> TableReader::string_list(std::string_view key, std::vector<std::string> def) {
  const toml::node* n = node(key);
  if (n == nullptr) return def;
  const auto* a = n->as_array();
  if (a == nullptr) {
    std::string msg = std::string("expected a list of strings, found ") + type_name(*n);
    if (const auto* s = n->as_string()) msg += " (write [" + in_quotes(s->get()) + "])";
    error(key, std::move(msg));
    return def;
  }
  std::vector<std::string> out;
  bool ok = true;
  for (std::size_t i = 0; i < a->size(); ++i) {
    const toml::node& e = *a->get(i);
    if (const auto* s = e.as_string()) {
      out.push_back(s->get());
    } else {
      ok = false;
      errors_.add(&e, join_path(path_, key) + "[" + std::to_string(i) + "]",
                  std::string("expected a string, found ") + type_name(e));
    }
  }
  return ok ? out : def;
}

std::optional<SocketAddress> TableReader::socket_address(std::string_view key, std::uint16_t default_port,
                                                        bool allow_port_zero) {
  const toml::node* n = node(key);
  if (n == nullptr) return std::nullopt;
  const auto* s = n->as_string();
  if (s == nullptr) {
    error(key, std::string("expected an address string such as \"192.0.2.10:102\", found ") + type_name(*n));
    return std::nullopt;
  }
  auto a = parse_socket_address(s->get(), default_port, allow_port_zero);
  if (!a) {
    error(key, a.error().message);
    return std::nullopt;
  }
  return std::move(*a);
}

std::vector<SocketAddress> TableReader::socket_addresses(std::string_view key, std::uint16_t default_port,
                                                        bool allow_port_zero) {
  const toml::node* n = node(key);
  if (n == nullptr) return {};
  if (n->is_string()) {
    auto a = socket_address(key, default_port, allow_port_zero);
    if (!a) return {};
    return {std::move(*a)};
  }
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    error(key, std::string("expected an address or a list of addresses, found ") + type_name(*n));
    return {};
  }
  std::vector<SocketAddress> out;
  bool ok = true;
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    const std::string at = join_path(path_, key) + "[" + std::to_string(i) + "]";
    const auto* s = e.as_string();
    if (s == nullptr) {
      errors_.add(&e, at, std::string("expected an address string, found ") + type_name(e));
      ok = false;
      continue;
    }
    auto a = parse_socket_address(s->get(), default_port, allow_port_zero);
    if (!a) {
      errors_.add(&e, at, a.error().message);
      ok = false;
      continue;
    }
    out.push_back(std::move(*a));
  }
  return ok ? out : std::vector<SocketAddress>{};
}

std::optional<IpAddress> TableReader::ip(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return std::nullopt;
  const auto* s = n->as_string();
  if (s == nullptr) {
    error(key, std::string("expected an IP address string such as \"192.0.2.5\", found ") + type_name(*n));
    return std::nullopt;
  }
  auto a = parse_ip(s->get());
  if (!a) {
    error(key, a.error().message);
    return std::nullopt;
  }
  const auto& at = n->source().begin;
  a->where = errors_.file() + ":" + std::to_string(at.line) + ":" + std::to_string(at.column) + ": " + path_ +
             (path_.empty() ? "" : ".") + std::string(key);
  return std::move(*a);
}

std::vector<Cidr> TableReader::cidrs(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return {};
  const std::string base = join_path(path_, key);
  std::vector<Cidr> out;
  bool ok = true;
  auto one = [&](const toml::node& e, const std::string& at) {
    const auto* s = e.as_string();
    if (s == nullptr) {
      errors_.add(&e, at, std::string("expected an address range such as \"10.0.0.0/8\", found ") + type_name(e));
      ok = false;
      return;
    }
    auto c = parse_cidr(s->get());
    if (!c) {
      errors_.add(&e, at, c.error().message);
      ok = false;
      return;
    }
    out.push_back(std::move(*c));
  };
  if (const auto* arr = n->as_array()) {
    for (std::size_t i = 0; i < arr->size(); ++i) one(*arr->get(i), base + "[" + std::to_string(i) + "]");
  } else {
    one(*n, base);
  }
  return ok ? out : std::vector<Cidr>{};
}

const toml::table* TableReader::table(std::string_view key) {
  const toml::node* n = node(key);
  if (n == nullptr) return nullptr;
  if (const auto* t = n->as_table()) return t;
  error(key, std::string("expected a table, found ") + type_name(*n));
  return nullptr;
}

std::size_t TableReader::tables(std::string_view key, std::string_view element,
                               const std::function<void(TableReader&, std::size_t)>& each) {
  const toml::node* n = node(key);
  if (n == nullptr) return 0;
  const auto* arr = n->as_array();
  if (arr == nullptr) {
    error(key, "expected [[" + join_path(path_, key) + "]] tables (an array of tables, double brackets), found " +
                   type_name(*n));
    return 0;
  }
  for (std::size_t i = 0; i < arr->size(); ++i) {
    const toml::node& e = *arr->get(i);
    const std::string at = join_path(path_, key) + "[" + std::to_string(i) + "]";
    const auto* t = e.as_table();
    if (t == nullptr) {
      errors_.add(&e, at, "expected " + std::string(element) + ", found " + type_name(e));
      continue;
    }
    TableReader r(*t, at, errors_);
    each(r, i);
  }
  return arr->size();
}

void TableReader::finish() {
  const std::vector<std::string> candidates(known_.begin(), known_.end());
  std::vector<std::string> reported;
  for (auto&& [k, v] : table_) {
    if (known_.contains(k.str())) continue;
    std::string msg = v.is_table() || v.is_array_of_tables() ? "unknown table" : "unknown key";
    if (auto hint = did_you_mean(k.str(), candidates)) {
      msg += "; did you mean " + in_quotes(*hint) + "?";
    } else if (!candidates.empty()) {
      msg += "; expected one of: " + join_list(candidates, false);
    }
    const auto& begin = k.source().begin;
    errors_.add(static_cast<int>(begin.line), static_cast<int>(begin.column),
                join_path(path_, k.str()), std::move(msg));
    reported.emplace_back(k.str());
  }
  // Reported keys count as known from now on, so that a second finish()
  // (the loader's safety net after a filter's own) reports nothing twice.
  for (auto& k : reported) known_.insert(std::move(k));
}

}  // namespace isoproxy::conf
