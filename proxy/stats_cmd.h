// `isoproxy stats`: the running proxy's sessions and totals as a table fitted
// to the terminal, read from its admin endpoint (proxy/admin_client.h); once,
// or redrawn every few seconds with --watch; or the endpoint's JSON for scripts.
#pragma once

#include <cstddef>
#include <cstdint>
#include <iosfwd>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace isoproxy {

struct StatsCmdOptions {
  std::string admin;                 // --admin ADDR; empty: from -c, else 127.0.0.1:9102
  std::string config;                // -c FILE: its [admin] listen
  bool json = false;                 // --json
  bool watch = false;                // --watch given
  std::string watch_interval;        // its value, seconds; empty: 2
  std::optional<std::uint64_t> count;  // --count N: stop after N refreshes (needs --watch)
  bool closed = false;               // --closed: the recently closed sessions too
  std::string state, tsap, peer;     // filters passed to /sessions; empty: none
  double timeout_s = 5.0;            // --timeout: connect, and receive each whole answer
  std::optional<long> width;         // --width: overrides the terminal's; 0 = unlimited
};

// Exit status: 0 ok (and --watch ended by SIGINT/SIGTERM or --count); 1 the
// endpoint cannot be found, reached or understood (one line on `err`); 2 a
// bad option value. --watch ended by --count returns 1 if the last refresh failed.
int run_stats(const StatsCmdOptions& opts, std::ostream& out, std::ostream& err);

// The pieces of the table, pure functions for the unit tests.
namespace stats_view {

// Text from the endpoint (peer-supplied TSAPs, names, addresses) made safe for
// a terminal: printable ASCII passes, a backslash is doubled, control
// characters and invalid UTF-8 bytes become \xNN. With `utf8`, Latin, Greek
// and Cyrillic letters (U+00A0..U+04FF, less soft hyphen and combining
// marks) pass too; every other code point becomes \uXXXX or \UXXXXXXXX. So
// nothing raw reaches the terminal and every character is one column.
std::string sanitize(std::string_view text, bool utf8);

// Columns taken by sanitized text: its UTF-8 code points.
std::size_t display_width(std::string_view text);

// Sanitized text cut to at most `width` columns, ending in an ellipsis ("…",
// or "..." without UTF-8) when cut.
std::string truncate(std::string_view text, std::size_t width, bool utf8);

// 0..999 as they are, then powers of 1024 with K, M, G, T, P, E; at most 4
// characters before the unit: 999, 1.0K, 9.9K, 10K, 999K, 1.0M.
std::string human_bytes(std::uint64_t n);
// 0.3s, 9.9s (a tenth under 10 s), 10s, 59s, 1m05s, 59m59s, 1h00m, 23h59m,
// 1d00h, 365d00h; "-" for a negative or not finite value.
std::string human_duration(double seconds);

// The output width: the terminal's columns (TIOCGWINSZ on standard output)
// when it is a terminal and says; else $COLUMNS when it is a positive
// number; else 80.
std::size_t choose_width(std::optional<int> terminal_columns, const char* columns_env);

struct Column {
  std::string header;
  std::vector<std::string> cells;  // sanitized text, one per row
  int importance = 0;              // 0: never dropped; the largest is dropped first
  bool right = false;              // right-aligned (numbers)
  bool shrink = true;              // may be cut with an ellipsis
  std::size_t soft_max = 0;        // cut to this before any column is dropped; 0: none
  std::size_t min_width = 6;       // not cut below this
};

// A header line and one line per row, separated by two spaces, no line
// wider than `width` (0: unlimited). When the natural widths do not fit: the
// free-text columns over their soft maximum are cut to it (widest first),
// then the least important columns dropped, then the widest cut down to its
// minimum, then any width left over given back, most important column
// first; a line still too wide (a tiny width) is cut at the end. Never wraps.
std::vector<std::string> render_table(const std::vector<Column>& columns, std::size_t width, bool utf8);

struct ViewOptions {
  std::size_t width = 80;     // 0: unlimited
  bool utf8 = false;
  bool closed = false;        // a section for the recently closed sessions
  std::string endpoint;       // "127.0.0.1:9102", in the first line
  std::string filters;        // "[state=established]", in the first line
  std::string refresh;        // "every 2s 12:00:01", in the first line (--watch)
  std::size_t max_lines = 0;  // 0: unlimited; else rows beyond it summed up in one line
};

// The whole view: a line of totals from /stats ("isoproxy ADDR  active N
// accepted N  refused N  closed N  ↑BYTES ↓BYTES", less important parts left
// out when narrow), the open sessions, and with
// `closed` the recently closed ones (state "closed") with close reason and DR.
// `sessions` is the answer of /sessions: {"sessions": [...]}. Fields missing
// or of another type are shown as "-", never an error.
// When a worker did not answer (workers = N), the totals and lists lack
// what it holds: render() says so in a line under the totals.
std::vector<std::string> render(const nlohmann::json& stats, const nlohmann::json& sessions, const ViewOptions& options);

// The workers that did not answer, from /stats ("workers": [{"index": I,
// "error": WHY}]) and /sessions ("workers_missing": [I, ...]):
// "worker 1: no answer within 2000ms" (more joined by "; "), or "" when
// every worker answered.
std::string missing_workers(const nlohmann::json& stats, const nlohmann::json& sessions);

}  // namespace stats_view

}  // namespace isoproxy
