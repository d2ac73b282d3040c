#include "codec/text.h"

#include <arpa/inet.h>

#include <cctype>

namespace isoproxy::codec {

namespace {
constexpr char kHexDigits[] = "0123456789ABCDEF";

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}
}  // namespace

std::string to_hex(Bytes b) {
  std::string s;
  s.reserve(b.size() * 2);
  for (std::uint8_t x : b) {
    s.push_back(kHexDigits[x >> 4]);
    s.push_back(kHexDigits[x & 0x0F]);
  }
  return s;
}

Result<std::vector<std::uint8_t>> parse_hex(std::string_view text) {
  std::vector<std::uint8_t> out;
  out.reserve(text.size() / 2);
  int high = -1;
  bool token_start = true;
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (std::isspace(static_cast<unsigned char>(c)) || c == ':') {
      token_start = true;
      continue;
    }
    if (token_start && c == '0' && i + 1 < text.size() && (text[i + 1] == 'x' || text[i + 1] == 'X') &&
        high < 0) {
      ++i;
      token_start = false;
      continue;
    }
    token_start = false;
    const int v = hex_value(c);
    if (v < 0) {
      std::string shown;
      if (std::isprint(static_cast<unsigned char>(c))) {
        shown.push_back(c);
      } else {
        shown.append("\\x");
        shown.append(to_hex(Bytes(reinterpret_cast<const std::uint8_t*>(&c), 1)));
      }
      return unexpected(Error{"bad-hex", "not a hex digit: '" + shown + "' at position " + std::to_string(i + 1)});
    }
    if (high < 0) {
      high = v;
    } else {
      out.push_back(static_cast<std::uint8_t>((high << 4) | v));
      high = -1;
    }
  }
  if (high >= 0) {
    return unexpected(Error{"bad-hex", "odd number of hex digits (" + std::to_string(out.size() * 2 + 1) + ")"});
  }
  return out;
}

bool is_printable(Bytes b) {
  for (std::uint8_t x : b) {
    if (x < 0x20 || x > 0x7E) return false;
  }
  return true;
}

TsapText tsap_text(Bytes b) {
  TsapText t;
  t.hex = to_hex(b);
  t.printable = !b.empty() && is_printable(b);
  if (t.printable) t.ascii.assign(b.begin(), b.end());
  return t;
}

std::string TsapText::quoted() const {
  const std::string d = display();
  std::string out;
  out.reserve(d.size() + 2);
  out.push_back('"');
  for (char c : d) {
    if (c == '"' || c == '\\') out.push_back('\\');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

AddressText address_text(Bytes b) {
  AddressText a;
  std::vector<std::string> readings;
  char buf[INET6_ADDRSTRLEN] = {};
  if (b.size() == 4 && inet_ntop(AF_INET, b.data(), buf, sizeof buf)) readings.emplace_back(buf);
  if (b.size() == 16 && inet_ntop(AF_INET6, b.data(), buf, sizeof buf)) readings.emplace_back(buf);
  if (!b.empty() && is_printable(b)) readings.push_back(tsap_text(b).quoted());  // '"' and '\\' escaped
  if (readings.empty()) readings.push_back(to_hex(b));
  a.primary = readings.front();
  a.alternatives.assign(readings.begin() + 1, readings.end());
  return a;
}

}  // namespace isoproxy::codec
