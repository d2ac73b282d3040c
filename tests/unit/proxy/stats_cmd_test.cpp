// The table of `isoproxy stats`: sanitizing peer-supplied text, human units,
// the width rule, and fitting a table to 40, 80 and 200 columns by dropping
// and cutting columns, never wrapping.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "stats_cmd.h"

namespace isoproxy {
namespace {

using nlohmann::json;
using namespace stats_view;

// True if no byte of `s` is a C0 control or DEL (ESC, CR, LF, BEL...).
bool no_controls(const std::string& s) {
  for (char ch : s) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) return false;
  }
  return true;
}

// The C1 controls U+0080..U+009F as UTF-8 (0xC2 0x80..0x9F).
bool no_c1(const std::string& s) {
  for (std::size_t i = 0; i + 1 < s.size(); ++i) {
    if (static_cast<unsigned char>(s[i]) == 0xC2 && static_cast<unsigned char>(s[i + 1]) >= 0x80 &&
        static_cast<unsigned char>(s[i + 1]) <= 0x9F) {
      return false;
    }
  }
  return true;
}

std::size_t widest_line(const std::vector<std::string>& lines) {
  std::size_t w = 0;
  for (const auto& l : lines) w = std::max(w, display_width(l));
  return w;
}

bool contains(const std::string& s, const std::string& part) { return s.find(part) != std::string::npos; }

// A session object as the admin endpoint writes it (proxy/session.cpp snapshot_text()).
json session(std::uint64_t id, const std::string& state, json calling, json called) {
  return {{"id", id},
          {"listener", "x400-inbound"},
          {"state", state},
          {"client", "192.0.2.17:40123"},
          {"upstream", "198.51.100.4:102"},
          {"route", nullptr},
          {"source", "198.51.100.1:50000"},
          {"age_s", state == "closed" ? json(nullptr) : json(3725.4)},
          {"calling_tsap", std::move(calling)},
          {"called_tsap", std::move(called)},
          {"tpdu_size_proposed", 2048},
          {"tpdu_size", 2048},
          {"class", 0},
          {"cr_to_cc_ms", 1},
          {"to_upstream", {{"bytes", 1536}, {"frames", 12}, {"tpdus", {{"CR", 1}, {"DT", 11}}}, {"tsdus", 11}, {"anomalies", 0}, {"decode_errors", 0}, {"raw_bytes", 0}}},
          {"to_client", {{"bytes", 5u * 1024 * 1024}, {"frames", 40}, {"tpdus", {{"CC", 1}, {"DT", 39}}}, {"tsdus", 39}, {"anomalies", 1}, {"decode_errors", 0}, {"raw_bytes", 0}}},
          {"filters", {{"annotate.cr", 1}, {"annotate.cc", 1}, {"reserved.repaired", 1}, {"size.clamped-cc", 2}}},
          {"dr", state == "closed" ? json{{"reason", 128}, {"name", "normal disconnect initiated by session entity"}, {"from", "upstream"}} : json(nullptr)},
          {"er", nullptr},
          {"non_rfc1006", false},
          {"raw", false},
          {"close_reason", state == "closed" ? json("upstream-closed") : json(nullptr)},
          {"duration_s", state == "closed" ? json(12.25) : json(nullptr)}};
}

json ascii_tsap(const std::string& a) {
  std::string hex;
  static const char* kHex = "0123456789ABCDEF";
  for (unsigned char c : a) {
    hex += kHex[c >> 4];
    hex += kHex[c & 15];
  }
  return {{"ascii", a}, {"hex", hex}};
}

json stats_doc() {
  return {{"sessions", {{"accepted", 1234}, {"active", 2}, {"refused", 3}, {"closed", 1229}}},
          {"bytes", {{"to_upstream", 1500000}, {"to_client", 2u * 1024 * 1024 * 1024}}},
          {"listeners", json::array()}};
}

}  // namespace

TEST_CASE("stats view: sanitize keeps escape sequences and controls away from the terminal", "[stats-view]") {
  CHECK(sanitize("SWISSLIFETSAP", false) == "SWISSLIFETSAP");
  // ESC [ 2 J (clear screen) and an OSC title sequence arrive as text.
  const std::string evil = "EVIL\x1b[2J\x1b]0;pwned\x07TSAP\r\n";
  for (bool utf8 : {false, true}) {
    const std::string s = sanitize(evil, utf8);
    CHECK(no_controls(s));
    CHECK(s == "EVIL\\x1B[2J\\x1B]0;pwned\\x07TSAP\\x0D\\x0A");
  }
  CHECK(sanitize(std::string("a\0b", 3), false) == "a\\x00b");
  CHECK(sanitize("\x7f", false) == "\\x7F");
  // A backslash is doubled: "\x1B" above cannot be forged by the peer.
  CHECK(sanitize("a\\x1B", false) == "a\\\\x1B");
  // C1 controls (U+009B is a one-byte CSI on some terminals), bidi overrides,
  // zero-width and combining characters never pass, with or without UTF-8.
  for (bool utf8 : {false, true}) {
    CHECK(sanitize("\xc2\x9b" "2J", utf8) == "\\u009B2J");
    CHECK(sanitize("abc\xe2\x80\xae" "cba", utf8) == "abc\\u202Ecba");
    CHECK(sanitize("a\xe2\x80\x8b" "b", utf8) == "a\\u200Bb");
    CHECK(sanitize("e\xcc\x81", utf8) == "e\\u0301");
    CHECK(no_c1(sanitize("\xc2\x85\xc2\x9b\xc2\x9d", utf8)));
  }
  // Invalid UTF-8 (a lone continuation byte, an overlong '/', a surrogate, a cut sequence).
  CHECK(sanitize("\x80", true) == "\\x80");
  CHECK(sanitize("\xc0\xaf", true) == "\\xC0\\xAF");
  CHECK(sanitize("\xed\xa0\x80", true) == "\\xED\\xA0\\x80");
  CHECK(sanitize("ab\xe2\x82", true) == "ab\\xE2\\x82");
  // Letters pass only with a UTF-8 locale; wide or other characters are escaped
  // so that one character is always one column.
  CHECK(sanitize("z\xc3\xbcrich", true) == "z\xc3\xbcrich");
  CHECK(sanitize("z\xc3\xbcrich", false) == "z\\u00FCrich");
  CHECK(sanitize("\xd0\x9c\xd0\xa2\xd0\x90", true) == "\xd0\x9c\xd0\xa2\xd0\x90");
  CHECK(sanitize("\xe6\x9d\xb1", true) == "\\u6771");
  CHECK(sanitize("\xf0\x9f\x98\x80", true) == "\\U0001F600");
  CHECK(display_width("z\xc3\xbcrich") == 6);
}

TEST_CASE("stats view: truncate ends in an ellipsis and never exceeds the width", "[stats-view]") {
  CHECK(truncate("EXCHANGETSAP1", 13, true) == "EXCHANGETSAP1");
  CHECK(truncate("EXCHANGETSAP1", 8, true) == "EXCHANG\u2026");
  CHECK(display_width(truncate("EXCHANGETSAP1", 8, true)) == 8);
  CHECK(truncate("EXCHANGETSAP1", 8, false) == "EXCHA...");
  CHECK(truncate("EXCHANGETSAP1", 3, false) == "EXC");  // too narrow for "...": a plain cut
  CHECK(truncate("EXCHANGETSAP1", 0, true).empty());
  // Cuts between characters, never inside one.
  const std::string cut = truncate("\xc3\xbc\xc3\xbc\xc3\xbc\xc3\xbc", 3, true);
  CHECK(cut == "\xc3\xbc\xc3\xbc\u2026");
}

TEST_CASE("stats view: human units for bytes and durations", "[stats-view]") {
  CHECK(human_bytes(0) == "0");
  CHECK(human_bytes(999) == "999");
  CHECK(human_bytes(1000) == "1.0K");
  CHECK(human_bytes(1536) == "1.5K");
  CHECK(human_bytes(10188) == "9.9K");
  CHECK(human_bytes(10189) == "10K");
  CHECK(human_bytes(999 * 1024) == "999K");
  CHECK(human_bytes(1023 * 1024) == "1.0M");
  CHECK(human_bytes(5ull << 20) == "5.0M");
  CHECK(human_bytes(3ull << 30) == "3.0G");
  CHECK(human_bytes(1ull << 40) == "1.0T");
  CHECK(human_bytes(UINT64_MAX) == "16E");
  for (std::uint64_t n = 1; n < UINT64_MAX / 3; n = n * 3 + 7) CHECK(human_bytes(n).size() <= 5);

  CHECK(human_duration(0.0) == "0.0s");
  CHECK(human_duration(0.34) == "0.3s");
  CHECK(human_duration(9.9) == "9.9s");
  CHECK(human_duration(10) == "10s");
  CHECK(human_duration(59.4) == "59s");
  CHECK(human_duration(65) == "1m05s");
  CHECK(human_duration(3599) == "59m59s");
  CHECK(human_duration(3725.4) == "1h02m");
  CHECK(human_duration(86400 + 3 * 3600) == "1d03h");
  CHECK(human_duration(-1) == "-");
  CHECK(human_duration(std::nan("")) == "-");
}

TEST_CASE("stats view: the width comes from the terminal, else COLUMNS, else 80", "[stats-view]") {
  CHECK(choose_width(132, "60") == 132);
  CHECK(choose_width(std::nullopt, "60") == 60);
  CHECK(choose_width(0, "60") == 60);  // a pty that reports 0 columns
  CHECK(choose_width(std::nullopt, nullptr) == 80);
  CHECK(choose_width(std::nullopt, "") == 80);
  CHECK(choose_width(std::nullopt, "wide") == 80);
  CHECK(choose_width(std::nullopt, "60x") == 80);
  CHECK(choose_width(std::nullopt, "-5") == 80);
  CHECK(choose_width(std::nullopt, "0") == 80);
}

TEST_CASE("stats view: a table is fitted by dropping the least important columns, then cutting", "[stats-view]") {
  auto make = [] {
    std::vector<Column> cols(4);
    cols[0] = {"ID", {"1", "22"}, 0, true, false, 0, 6};
    cols[1] = {"NAME", {"a-rather-long-name-of-a-session", "short"}, 0, false, true, 0, 6};
    cols[2] = {"EXTRA", {"xxxxxxxxxx", "y"}, 2, false, true, 0, 6};
    cols[3] = {"COUNT", {"12345", "7"}, 1, true, false, 0, 6};
    return cols;
  };
  // Wide enough: everything, aligned (numbers right, text left), no trailing blanks.
  auto all = render_table(make(), 200, true);
  REQUIRE(all.size() == 3);
  CHECK(all[0] == "ID  NAME                             EXTRA       COUNT");
  CHECK(all[1] == " 1  a-rather-long-name-of-a-session  xxxxxxxxxx  12345");
  CHECK(all[2] == "22  short                            y               7");
  CHECK(render_table(make(), 0, true) == all);  // 0: unlimited

  // 50 columns: EXTRA (importance 2) goes first; the rest fits as it is.
  auto fifty = render_table(make(), 50, true);
  CHECK(fifty[0] == "ID  NAME                             COUNT");
  CHECK(widest_line(fifty) <= 50);

  // 30: COUNT goes too, then NAME is cut with an ellipsis to fit exactly.
  auto thirty = render_table(make(), 30, true);
  CHECK(thirty[0] == "ID  NAME");
  CHECK(thirty[1] == " 1  a-rather-long-name-of-a-s\u2026");
  CHECK(display_width(thirty[1]) == 30);
  CHECK(thirty[2] == "22  short");

  // Below every minimum: lines are cut at the end, never wrapped.
  auto tiny = render_table(make(), 7, false);
  for (const auto& l : tiny) CHECK(display_width(l) <= 7);
  CHECK(tiny[1] == " 1  ...");
}

TEST_CASE("stats view: soft maximums cut long free text before a column is dropped, and room is given back", "[stats-view]") {
  std::vector<Column> cols(3);
  cols[0] = {"ID", {"1"}, 0, true, false, 0, 6};
  cols[1] = {"DR", {"0x80 normal disconnect initiated by session entity (upstream)"}, 1, false, true, 24, 8};
  cols[2] = {"AGE", {"12s"}, 2, true, false, 0, 6};
  // 40: the DR name is cut to fit, AGE stays.
  auto forty = render_table(cols, 40, true);
  CHECK(contains(forty[0], "AGE"));
  CHECK(contains(forty[1], "0x80 normal disconnect"));
  CHECK(display_width(forty[1]) == 40);
  // 30: cutting DR to its soft maximum is not enough: AGE is dropped and the
  // room it leaves goes back to DR.
  auto thirty = render_table(cols, 30, true);
  CHECK_FALSE(contains(thirty[0], "AGE"));
  CHECK(display_width(thirty[1]) == 30);
  CHECK(thirty[1] == " 1  0x80 normal disconnect in\u2026");
}

TEST_CASE("stats view: the whole view at 40, 80 and 200 columns", "[stats-view]") {
  const json sessions = {{"sessions", json::array({session(7, "established", ascii_tsap("SWISSLIFETSAP"), ascii_tsap("EXCHANGETSAP1")),
                                                   session(8, "awaiting-cc", {{"ascii", nullptr}, {"hex", "0102A0FF"}}, nullptr),
                                                   session(5, "closed", ascii_tsap("MTA-A"), ascii_tsap("MTA-B"))})}};
  for (bool utf8 : {true, false}) {
    ViewOptions o;
    o.utf8 = utf8;
    o.closed = true;
    o.endpoint = "127.0.0.1:9102";
    o.width = 200;
    const auto wide = render(stats_doc(), sessions, o);
    INFO([&] { std::string all; for (auto& l : wide) all += l + "\n"; return all; }());
    // The totals line.
    CHECK(contains(wide[0], "127.0.0.1:9102"));
    CHECK(contains(wide[0], "active 2  accepted 1234  refused 3  closed 1229"));
    CHECK(contains(wide[0], utf8 ? "\u21911.4M \u21932.0G" : "bytes up 1.4M down 2.0G"));
    // Every column of the open table, and the rows with their values.
    for (const char* h : {"ID", "LISTENER", "STATE", "CLIENT", "UPSTREAM", "CALLING", "CALLED", "AGE", "FRAMES", "REPAIRS", "LAST DR"}) {
      CHECK(contains(wide[1], h));
    }
    CHECK(contains(wide[2], "x400-inbound"));
    CHECK(contains(wide[2], "established"));
    CHECK(contains(wide[2], "192.0.2.17:40123"));
    CHECK(contains(wide[2], "SWISSLIFETSAP"));
    CHECK(contains(wide[2], "EXCHANGETSAP1"));
    CHECK(contains(wide[2], "1h02m"));
    CHECK(contains(wide[2], "1.5K/5.0M"));
    CHECK(contains(wide[2], "12/40"));
    CHECK(contains(wide[2], "  3  "));  // repairs: reserved.repaired + size.clamped-cc, not annotate
    CHECK(contains(wide[3], "0102A0FF"));  // hex when not printable
    // The closed section: reason and decoded DR.
    std::size_t closed_at = 0;
    for (std::size_t i = 0; i < wide.size(); ++i) {
      if (contains(wide[i], "recently closed")) closed_at = i;
    }
    REQUIRE(closed_at > 0);
    CHECK(contains(wide[closed_at], "1 session"));
    CHECK(contains(wide[closed_at + 1], "CLOSE REASON"));
    CHECK(contains(wide[closed_at + 2], "upstream-closed"));
    CHECK(contains(wide[closed_at + 2], "0x80 normal disconnect initiated by session entity (upstream)"));
    CHECK(contains(wide[closed_at + 2], "12s"));
    CHECK(widest_line(wide) <= 200);

    o.width = 80;
    const auto eighty = render(stats_doc(), sessions, o);
    CHECK(widest_line(eighty) <= 80);
    CHECK(eighty.size() == wide.size());  // rows are never wrapped
    CHECK(contains(eighty[2], "SWISSLIFETSAP"));
    CHECK(contains(eighty[2], "EXCHANGETSAP1"));
    CHECK_FALSE(contains(eighty[1], "REPAIRS"));  // the least important went first
    CHECK(contains(eighty[1], "CLIENT"));

    o.width = 40;
    const auto forty = render(stats_doc(), sessions, o);
    CHECK(widest_line(forty) <= 40);
    CHECK(forty.size() == wide.size());
    CHECK(contains(forty[1], "ID"));
    CHECK(contains(forty[1], "CALLING"));
    CHECK_FALSE(contains(forty[1], "LISTENER"));
    CHECK(contains(forty[2], "SWISS"));
  }
}

TEST_CASE("stats view: a TSAP with an escape sequence never reaches the terminal raw", "[stats-view]") {
  const json evil = {{"ascii", "\x1b[31mRED\x1b[0m\x1b]2;title\x07"}, {"hex", "1B"}};
  json s = session(1, "established", evil, ascii_tsap("OK"));
  s["listener"] = "li\x1b[Kst";
  s["client_name"] = "host\r\x1b[2K.example";
  s["dr"] = {{"reason", 128}, {"name", "\x9b" "2J"}, {"from", "client\x1b"}};
  const json sessions = {{"sessions", json::array({s})}};
  for (std::size_t width : {0, 40, 80, 200}) {
    ViewOptions o;
    o.utf8 = true;
    o.width = width;
    o.endpoint = "unix:/run/\x1b[2J";
    for (const auto& l : render(stats_doc(), sessions, o)) {
      CHECK(no_controls(l));
      CHECK(no_c1(l));
    }
  }
  ViewOptions o;
  o.width = 0;
  const auto lines = render(stats_doc(), sessions, o);
  CHECK(contains(lines[2], "\\x1B[31mRED\\x1B[0m"));
  CHECK(contains(lines[2], "host\\x0D\\x1B[2K.example:40123"));  // the name, with the client's port
}

TEST_CASE("stats view: a TSAP that is the text - is quoted, an absent one is a bare -", "[stats-view]") {
  json dash = session(1, "established", ascii_tsap("-"), ascii_tsap("OK"));
  json none = session(2, "established", ascii_tsap("X"), ascii_tsap("OK"));
  none["calling_tsap"] = nullptr;
  ViewOptions o;
  o.width = 0;
  const auto lines = render(stats_doc(), json{{"sessions", json::array({dash, none})}}, o);
  REQUIRE(lines.size() >= 4);
  CHECK(contains(lines[2], " \"-\" "));
  CHECK_FALSE(contains(lines[3], "\"-\""));
}

TEST_CASE("stats view: bad or missing fields show as '-', and max_lines sums up the rest", "[stats-view]") {
  const json weird = {{"sessions", json::array({json{{"id", "seven"}, {"state", 3}}, json(42), json{{"id", 9}}})}};
  ViewOptions o;
  o.width = 120;
  const auto lines = render(json::array(), weird, o);
  REQUIRE(lines.size() == 4);  // totals, header, two rows (42 is not a session)
  CHECK(contains(lines[0], "active -"));
  CHECK(lines[2].rfind(" -  -", 0) == 0);
  CHECK(lines[3].rfind(" 9  -", 0) == 0);
  CHECK(render(stats_doc(), json::object(), o)[1] == "no open sessions");

  json many = {{"sessions", json::array()}};
  for (std::uint64_t i = 1; i <= 50; ++i) many["sessions"].push_back(session(i, "established", ascii_tsap("A"), ascii_tsap("B")));
  o.max_lines = 10;
  const auto cut = render(stats_doc(), many, o);
  CHECK(cut.size() == 10);
  CHECK(contains(cut.back(), "and 43 sessions more"));
}

}  // namespace isoproxy

namespace isoproxy {

TEST_CASE("stats view: the totals line leaves out its least important parts when narrow", "[stats-view]") {
  stats_view::ViewOptions o;
  o.utf8 = true;
  o.endpoint = "127.0.0.1:9102";
  o.filters = "[state=established]";
  o.refresh = "every 2s 12:00:00";
  o.width = 0;
  const json none = {{"sessions", json::array()}};
  const std::string full = stats_view::render(stats_doc(), none, o)[0];
  CHECK(full == "isoproxy 127.0.0.1:9102  active 2  accepted 1234  refused 3  closed 1229  \u21911.4M \u21932.0G  "
                "[state=established]  every 2s 12:00:00");
  o.width = 80;
  CHECK(stats_view::render(stats_doc(), none, o)[0] ==
        "isoproxy 127.0.0.1:9102  active 2  \u21911.4M \u21932.0G  [state=established]");
  o.width = 60;
  CHECK(stats_view::render(stats_doc(), none, o)[0] == "isoproxy 127.0.0.1:9102  active 2  \u21911.4M \u21932.0G");
  o.width = 30;
  CHECK(stats_view::render(stats_doc(), none, o)[0] == "isoproxy 127.0.0.1:9102  acti\u2026");
}

}  // namespace isoproxy

namespace isoproxy {

TEST_CASE("stats view: a worker that did not answer is said under the totals", "[stats-view]") {
  // workers = 2 and worker 1 silent: /stats sums worker 0 alone, /sessions
  // lists its sessions alone. The view must not pass that off as the whole.
  stats_view::ViewOptions o;
  o.endpoint = "127.0.0.1:9102";
  json stats = stats_doc();
  stats["workers"] = json::parse(R"([{"index":0,"active":2,"accepted":1234},{"index":1,"error":"no answer within 2000ms"}])");
  const json sessions = json::parse(R"({"sessions":[],"workers_missing":[1]})");
  CHECK(stats_view::missing_workers(stats, sessions) == "worker 1: no answer within 2000ms");
  const auto lines = stats_view::render(stats, sessions, o);
  REQUIRE(lines.size() >= 2);
  CHECK(lines[1] == "INCOMPLETE: worker 1: no answer within 2000ms (the totals and sessions below leave out what it holds)");
  // Either answer alone says it; two workers are both named.
  CHECK(stats_view::missing_workers(stats_doc(), sessions) == "worker 1: did not answer");
  const json two = json::parse(R"({"sessions":[],"workers_missing":[0,2]})");
  CHECK(stats_view::missing_workers(stats_doc(), two) == "worker 0: did not answer; worker 2: did not answer");
  CHECK(stats_view::render(stats_doc(), two, o)[1] ==
        "INCOMPLETE: worker 0: did not answer; worker 2: did not answer (the totals and sessions below leave out "
        "what they hold)");
  // Every worker answered: no such line.
  const json whole = {{"sessions", json::array()}};
  CHECK(stats_view::missing_workers(stats_doc(), whole).empty());
  CHECK(stats_view::render(stats_doc(), whole, o)[1] == "no open sessions");
}

}  // namespace isoproxy
