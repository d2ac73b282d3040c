// Compact JSON written straight into a string, for the hot paths that only
// ever print a document (a session's snapshot at close, /sessions): building
// an nlohmann tree first and dumping it cost most of a short connection's
// CPU (bench/RESULTS.md). Strings are escaped as nlohmann's dump() with
// error_handler_t::replace does: invalid UTF-8 becomes U+FFFD, never an error.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

namespace isoproxy::json_text {

// Appends `s` as a JSON string (quotes included).
void string(std::string& out, std::string_view s);
void number(std::string& out, std::uint64_t v);
void number(std::string& out, std::int64_t v);
// Shortest form that reads back as the same double; non-finite is null.
void number(std::string& out, double v);

// An object or array written member by member; the caller writes keys in the
// order it wants them shown.
class Writer {
 public:
  explicit Writer(std::string& out) : out_(out) {}
  Writer& begin_object() { return open('{'); }
  Writer& end_object() { return close('}'); }
  Writer& begin_array() { return open('['); }
  Writer& end_array() { return close(']'); }
  Writer& key(std::string_view k);
  Writer& value(std::string_view v) { sep(); string(out_, v); return *this; }
  Writer& value(const char* v) { return value(std::string_view(v)); }
  Writer& value(const std::string& v) { return value(std::string_view(v)); }
  Writer& value(std::uint64_t v) { sep(); number(out_, v); return *this; }
  Writer& value(std::uint32_t v) { return value(static_cast<std::uint64_t>(v)); }
  Writer& value(unsigned char v) { return value(static_cast<std::uint64_t>(v)); }
  Writer& value(unsigned short v) { return value(static_cast<std::uint64_t>(v)); }
  Writer& value(double v) { sep(); number(out_, v); return *this; }
  Writer& value(bool v) { sep(); out_ += v ? "true" : "false"; return *this; }
  Writer& null() { sep(); out_ += "null"; return *this; }
  // Already-valid JSON text (a nested document written elsewhere).
  Writer& raw(std::string_view json) { sep(); out_ += json; return *this; }

 private:
  Writer& open(char c) { sep(); out_ += c; first_ = true; return *this; }
  Writer& close(char c) { out_ += c; first_ = false; return *this; }
  void sep() {
    if (after_key_) {
      after_key_ = false;
      return;
    }
    if (!first_) out_ += ',';
    first_ = false;
  }
  std::string& out_;
  bool first_ = true;
  bool after_key_ = false;
};

}  // namespace isoproxy::json_text
