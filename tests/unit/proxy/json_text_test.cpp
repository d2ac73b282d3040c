#include "json_text.h"

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>

#include <limits>
#include <string>

using namespace isoproxy;

namespace {

std::string as_json(std::string_view s) {
  std::string out;
  json_text::string(out, s);
  return out;
}

// What the admin endpoint printed before it wrote JSON itself.
std::string nlohmann_quoted(const std::string& s) {
  return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace

TEST_CASE("json_text escapes strings as nlohmann's dump does", "[json_text]") {
  const std::string cases[] = {
      "",
      "plain ASCII: 127.0.0.1:102",
      "quote \" and backslash \\",
      std::string("controls \x01\x1f\b\f\n\r\t end"),
      std::string("NUL \0 inside", 12),
      "UTF-8: caf\xC3\xA9 \xE2\x82\xAC \xF0\x9F\x93\xA8",
      "DEL \x7f stays",
  };
  for (const auto& c : cases) {
    INFO(c);
    CHECK(as_json(c) == nlohmann_quoted(c));
    CHECK(nlohmann::json::parse(as_json(c)).get<std::string>() == c);
  }
}

TEST_CASE("json_text replaces invalid UTF-8 and stays valid JSON", "[json_text]") {
  const std::string cases[] = {
      "lone continuation \x80 byte",
      "truncated \xC3",
      "overlong \xC0\xAF slash",
      "surrogate \xED\xA0\x80 half",
      "beyond U+10FFFF \xF4\x90\x80\x80",
      "\xFF\xFE",
  };
  for (const auto& c : cases) {
    INFO(c);
    const std::string q = as_json(c);
    const auto parsed = nlohmann::json::parse(q, nullptr, false);
    REQUIRE_FALSE(parsed.is_discarded());
    const std::string back = parsed.get<std::string>();
    CHECK(back.find("\xEF\xBF\xBD") != std::string::npos);
    // The valid text before the bad bytes is kept.
    if (c[0] != '\xFF') CHECK(back.rfind(c.substr(0, c.find(' ')), 0) == 0);
  }
}

TEST_CASE("json_text::Writer nests objects and arrays with the right commas", "[json_text]") {
  std::string out;
  json_text::Writer w(out);
  w.begin_object();
  w.key("a").value(std::uint64_t{18446744073709551615ULL});
  w.key("b").begin_object().end_object();
  w.key("c").begin_array().value(true).null().begin_object().key("x").value("y").end_object().end_array();
  w.key("d").value(0.25);
  w.key("e\"").value(std::string("v"));
  w.end_object();
  CHECK(out == R"({"a":18446744073709551615,"b":{},"c":[true,null,{"x":"y"}],"d":0.25,"e\"":"v"})");
  const auto j = nlohmann::json::parse(out);
  CHECK(j["a"].get<std::uint64_t>() == 18446744073709551615ULL);
  CHECK(j["d"].get<double>() == 0.25);
}

TEST_CASE("json_text numbers read back exactly, non-finite is null", "[json_text]") {
  for (double v : {0.0, 1.0, 0.1, 123.456, 1e-7, 98765.4321}) {
    std::string out;
    json_text::number(out, v);
    CHECK(nlohmann::json::parse(out).get<double>() == v);
  }
  std::string out;
  json_text::number(out, std::numeric_limits<double>::infinity());
  CHECK(out == "null");
  out.clear();
  json_text::number(out, std::int64_t{-42});
  CHECK(out == "-42");
}
