// Loader for the shared test vectors (/work/shared/vectors/frames.tsv).
//
// Header-only and free of test-framework dependencies (only the codec's
// text.h for hex parsing), so unit tests, integration tests and the fuzz seed
// generator all read the same file the same way:
//
//   for (const auto& v : isoproxy::test::load_vectors()) use(v.id, v.bytes());
//
// Format: tab-separated, '#' starts a comment line, blank lines are skipped.
// Columns: id, kind, direction, hex, expectation, source. The hex column is
// case-insensitive, spaces are ignored and '|' splits it into the separate
// reads of a TCP stream (N6: "030000 | 0902f080dead" is two reads).
//
// The file is ISOPROXY_VECTORS from the environment if set, else the compile
// definition ISOPROXY_VECTORS_FILE. Any problem (missing file, a malformed
// row, a duplicate id) throws std::runtime_error naming the file and line:
// a vector that cannot be read must never be silently skipped.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "codec/text.h"

namespace isoproxy::test {

struct Vector {
  std::string file;         // where it was read from
  std::size_t line = 0;     // 1-based line number in that file
  std::string id;           // "V1", "N6", ...
  std::string kind;         // "CC", "DT+DT", "?" (no TPDU type)
  std::string direction;    // "init->resp", "resp->init", "any", "cotp-only"
  std::string hex;          // the hex column as written
  std::string expectation;  // what a decoder must report (free text with key=value tokens)
  std::string source;       // where the bytes come from
  // The bytes, one element per read ('|'-separated); never empty, no empty element.
  std::vector<std::vector<std::uint8_t>> segments;

  // All segments concatenated: the stream as a whole.
  std::vector<std::uint8_t> bytes() const {
    std::vector<std::uint8_t> all;
    for (const auto& s : segments) all.insert(all.end(), s.begin(), s.end());
    return all;
  }
  // The row holds a bare TPDU (no TPKT header).
  bool cotp_only() const { return direction == "cotp-only"; }
  // The kind column split at '+' ("DT+DT" -> {"DT","DT"}); empty for "?".
  std::vector<std::string> kinds() const {
    std::vector<std::string> out;
    if (kind == "?") return out;
    std::size_t start = 0;
    for (;;) {
      const std::size_t plus = kind.find('+', start);
      out.push_back(kind.substr(start, plus == std::string::npos ? std::string::npos : plus - start));
      if (plus == std::string::npos) break;
      start = plus + 1;
    }
    return out;
  }
  // "V1 (frames.tsv:5)": for failure messages.
  std::string where() const { return id + " (" + file + ":" + std::to_string(line) + ")"; }
};

// The vectors file to read: $ISOPROXY_VECTORS, else ISOPROXY_VECTORS_FILE.
inline std::string vectors_path() {
  if (const char* env = std::getenv("ISOPROXY_VECTORS"); env != nullptr && *env != '\0') return env;
#ifdef ISOPROXY_VECTORS_FILE
  return ISOPROXY_VECTORS_FILE;
#else
  throw std::runtime_error(
      "no test vectors file: set the environment variable ISOPROXY_VECTORS or compile with "
      "-DISOPROXY_VECTORS_FILE=\"path/to/frames.tsv\"");
#endif
}

namespace detail {

inline std::string trim(std::string_view s) {
  const auto first = s.find_first_not_of(" \t\r\n");
  if (first == std::string_view::npos) return {};
  const auto last = s.find_last_not_of(" \t\r\n");
  return std::string(s.substr(first, last - first + 1));
}

inline std::vector<std::string> split(std::string_view s, char sep) {
  std::vector<std::string> out;
  std::size_t start = 0;
  for (;;) {
    const std::size_t at = s.find(sep, start);
    out.emplace_back(s.substr(start, at == std::string_view::npos ? std::string_view::npos : at - start));
    if (at == std::string_view::npos) return out;
    start = at + 1;
  }
}

// Hex digits and spaces only (stricter than codec::parse_hex, which also
// takes ':' and "0x": the vectors file has one spelling).
inline std::vector<std::uint8_t> parse_segment(const std::string& text, const std::string& where) {
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    const bool hex = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
    if (!hex && c != ' ' && c != '\t') {
      throw std::runtime_error(where + ": not a hex digit '" + std::string(1, c) + "' in hex column segment \"" +
                               text + "\"");
    }
  }
  auto parsed = codec::parse_hex(text);
  if (!parsed) throw std::runtime_error(where + ": bad hex \"" + text + "\": " + parsed.error().message);
  if (parsed->empty()) throw std::runtime_error(where + ": empty hex segment (stray '|'?)");
  return std::move(*parsed);
}

}  // namespace detail

// Reads every row of the vectors file. Throws std::runtime_error on any problem.
inline std::vector<Vector> load_vectors(const std::string& path = vectors_path()) {
  std::ifstream in(path);
  if (!in) {
    throw std::runtime_error("cannot open test vectors file \"" + path +
                             "\" (set ISOPROXY_VECTORS to override the built-in path)");
  }
  std::vector<Vector> rows;
  std::string text;
  std::size_t lineno = 0;
  while (std::getline(in, text)) {
    ++lineno;
    if (!text.empty() && text.back() == '\r') text.pop_back();
    const std::string trimmed = detail::trim(text);
    if (trimmed.empty() || trimmed.front() == '#') continue;
    const std::string where = path + ":" + std::to_string(lineno);
    const auto f = detail::split(text, '\t');
    if (f.size() != 6) {
      throw std::runtime_error(where + ": expected 6 tab-separated fields (id kind direction hex expectation source), got " +
                               std::to_string(f.size()));
    }
    Vector v;
    v.file = path;
    v.line = lineno;
    v.id = detail::trim(f[0]);
    v.kind = detail::trim(f[1]);
    v.direction = detail::trim(f[2]);
    v.hex = f[3];
    v.expectation = detail::trim(f[4]);
    v.source = detail::trim(f[5]);
    if (v.id.empty() || v.kind.empty() || v.direction.empty() || v.expectation.empty()) {
      throw std::runtime_error(where + ": empty id, kind, direction or expectation field");
    }
    for (const Vector& seen : rows) {
      if (seen.id == v.id) throw std::runtime_error(where + ": duplicate id " + v.id + " (first at line " + std::to_string(seen.line) + ")");
    }
    for (const std::string& seg : detail::split(v.hex, '|')) {
      v.segments.push_back(detail::parse_segment(seg, where + " (" + v.id + ")"));
    }
    rows.push_back(std::move(v));
  }
  if (in.bad()) throw std::runtime_error("error reading test vectors file \"" + path + "\"");
  if (rows.empty()) throw std::runtime_error("test vectors file \"" + path + "\" has no rows");
  return rows;
}

// The row with `id`; throws if there is none.
inline const Vector& find_vector(const std::vector<Vector>& rows, std::string_view id) {
  for (const Vector& v : rows) {
    if (v.id == id) return v;
  }
  throw std::runtime_error("no test vector with id " + std::string(id));
}

}  // namespace isoproxy::test
