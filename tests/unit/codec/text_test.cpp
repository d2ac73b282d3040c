// Text forms: hex in and out, TSAPs, MTA log addresses.
#include <catch2/catch.hpp>

#include <cstdint>
#include <string>
#include <vector>

#include "codec/text.h"

namespace {

using namespace isoproxy::codec;
using ByteVec = std::vector<std::uint8_t>;

ByteVec ascii(const std::string& s) { return ByteVec(s.begin(), s.end()); }
ByteVec hx(const char* text) { return *parse_hex(text); }

}  // namespace

TEST_CASE("text: to_hex", "[text]") {
  CHECK(to_hex(Bytes()) == "");
  const ByteVec b{0x0A, 0x1B, 0x00, 0xFF};
  CHECK(to_hex(Bytes(b)) == "0A1B00FF");
  ByteVec all(256);
  for (int i = 0; i < 256; ++i) all[static_cast<std::size_t>(i)] = static_cast<std::uint8_t>(i);
  const std::string h = to_hex(Bytes(all));
  CHECK(h.size() == 512);
  CHECK(h.substr(0, 8) == "00010203");
  CHECK(h.substr(504) == "FCFDFEFF");
  auto back = parse_hex(h);
  REQUIRE(back.ok());
  CHECK(*back == all);
}

TEST_CASE("text: parse_hex accepts the usual spellings", "[text]") {
  const ByteVec want{0x03, 0x00, 0x00, 0x07};
  for (const char* s : {"03000007", "03 00 00 07", "03:00:00:07", "0x03 0x00 0x00 0x07", "0X03 0x00:0x00 0x07",
                        "  03\t00\n00\r\n07  ", "0300 0007", "0x03000007"}) {
    INFO("\"" << s << "\"");
    auto r = parse_hex(s);
    REQUIRE(r.ok());
    CHECK(*r == want);
  }
  CHECK(*parse_hex("abcdef") == ByteVec{0xAB, 0xCD, 0xEF});
  CHECK(*parse_hex("ABCDEF") == ByteVec{0xAB, 0xCD, 0xEF});
  CHECK(*parse_hex("aBcD") == ByteVec{0xAB, 0xCD});
  CHECK(parse_hex("")->empty());
  CHECK(parse_hex("   ")->empty());
  CHECK(parse_hex("0x")->empty());
}

TEST_CASE("text: parse_hex errors", "[text]") {
  SECTION("odd digit count") {
    for (const char* s : {"0", "ABC", "03 00 0", "0x1", "0x03 0x0"}) {
      INFO("\"" << s << "\"");
      auto r = parse_hex(s);
      REQUIRE_FALSE(r.ok());
      CHECK(r.error().kind == "bad-hex");
      CHECK_THAT(r.error().message, Catch::Contains("odd"));
    }
    CHECK_THAT(parse_hex("ABC").error().message, Catch::Contains("3"));
  }
  SECTION("a bad character names itself and its position (1-based)") {
    auto r = parse_hex("0AZ1");
    REQUIRE_FALSE(r.ok());
    CHECK(r.error().kind == "bad-hex");
    CHECK_THAT(r.error().message, Catch::Contains("'Z'") && Catch::Contains("position 3"));
    auto dash = parse_hex("0A-1B");
    REQUIRE_FALSE(dash.ok());
    CHECK_THAT(dash.error().message, Catch::Contains("'-'") && Catch::Contains("position 3"));
    auto g = parse_hex("03 00 00 0g");
    REQUIRE_FALSE(g.ok());
    CHECK_THAT(g.error().message, Catch::Contains("'g'") && Catch::Contains("position 11"));
    // "0x" only at the start of a token.
    auto mid = parse_hex("AB0x12");
    REQUIRE_FALSE(mid.ok());
    CHECK_THAT(mid.error().message, Catch::Contains("'x'") && Catch::Contains("position 4"));
  }
  SECTION("an unprintable character is shown escaped") {
    auto r = parse_hex(std::string("0A\x01" "1B"));
    REQUIRE_FALSE(r.ok());
    CHECK_THAT(r.error().message, Catch::Contains("\\x01") && Catch::Contains("position 3"));
  }
}

TEST_CASE("text: is_printable", "[text]") {
  CHECK(is_printable(Bytes()));  // vacuously; tsap_text still refuses an empty TSAP as ASCII
  const ByteVec edges{0x20, 0x7E};
  CHECK(is_printable(Bytes(edges)));
  for (std::uint8_t c : {0x00, 0x09, 0x1F, 0x7F, 0x80, 0xFF}) {
    const ByteVec b{0x41, c};
    INFO(int(c));
    CHECK_FALSE(is_printable(Bytes(b)));
  }
}

TEST_CASE("text: tsap_text", "[text]") {
  SECTION("printable: ASCII, hex too") {
    const ByteVec t = ascii("SWISSLIFETSAP");
    const TsapText tt = tsap_text(Bytes(t));
    CHECK(tt.printable);
    CHECK(tt.ascii == "SWISSLIFETSAP");
    CHECK(tt.hex == "53574953534C49464554534150");
    CHECK(tt.display() == "SWISSLIFETSAP");
  }
  SECTION("S7 binary TSAP: hex only") {
    const ByteVec t{0x01, 0x02};
    const TsapText tt = tsap_text(Bytes(t));
    CHECK_FALSE(tt.printable);
    CHECK(tt.ascii.empty());
    CHECK(tt.hex == "0102");
    CHECK(tt.display() == "hex:0102");  // as a filter's configuration writes it
  }
  SECTION("one unprintable byte makes it hex") {
    const ByteVec t = ascii("0-0ABCD0\x01");
    const TsapText tt = tsap_text(Bytes(t));
    CHECK_FALSE(tt.printable);
    CHECK(tt.display() == "hex:302D30414243443001");
  }
  SECTION("S7CommPlus 16-byte ASCII") {
    const ByteVec t = ascii("SIMATIC-ROOT-HMI");
    CHECK(tsap_text(Bytes(t)).display() == "SIMATIC-ROOT-HMI");
  }
  SECTION("empty") {
    const TsapText tt = tsap_text(Bytes());
    CHECK_FALSE(tt.printable);
    CHECK(tt.hex.empty());
    CHECK(tt.display().empty());
  }
  SECTION("an ASCII TSAP that reads like the hex form is shown in hex, as a rule writes it") {
    const ByteVec t = ascii("hex:0102");
    const TsapText tt = tsap_text(Bytes(t));
    CHECK(tt.printable);
    CHECK(tt.ascii == "hex:0102");
    CHECK(tt.display() == "hex:6865783A30313032");
    CHECK(tsap_text(Bytes(ByteVec{0x01, 0x02})).display() == "hex:0102");  // the binary one keeps its form
  }
  SECTION("quoted, for log lines: quotes and backslashes escaped") {
    const ByteVec t = ascii("A\" b=\\");
    CHECK(tsap_text(Bytes(t)).quoted() == R"("A\" b=\\")");
    CHECK(tsap_text(Bytes(ByteVec{0x01, 0x02})).quoted() == "\"hex:0102\"");
  }
  SECTION("digits that look like hex are still ASCII when printable") {
    const ByteVec t = ascii("0001");
    const TsapText tt = tsap_text(Bytes(t));
    CHECK(tt.printable);
    CHECK(tt.display() == "0001");
    CHECK(tt.hex == "30303031");
  }
}

TEST_CASE("text: address_text", "[text]") {
  SECTION("4 octets: IPv4") {
    const AddressText a = address_text(Bytes(hx("91F5C11B")));
    CHECK(a.primary == "145.245.193.27");
    CHECK(a.alternatives.empty());
  }
  SECTION("printable: quoted ASCII") {
    const AddressText a = address_text(Bytes(hx("52656d6f74654d5441")));
    CHECK(a.primary == "\"RemoteMTA\"");
    CHECK(a.alternatives.empty());
  }
  SECTION("16 octets: IPv6") {
    const AddressText a = address_text(Bytes(hx("20010db8000000000000000000000001")));
    CHECK(a.primary == "2001:db8::1");
    CHECK(a.alternatives.empty());
    const AddressText v4mapped = address_text(Bytes(hx("00000000000000000000ffffc0a80001")));
    CHECK(v4mapped.primary == "::ffff:192.168.0.1");
  }
  SECTION("4 printable octets: IPv4 first, ASCII as the alternative") {
    const AddressText a = address_text(Bytes(ascii("MTA1")));
    CHECK(a.primary == "77.84.65.49");
    REQUIRE(a.alternatives.size() == 1);
    CHECK(a.alternatives[0] == "\"MTA1\"");
  }
  SECTION("16 printable octets: IPv6 first, ASCII as the alternative") {
    const AddressText a = address_text(Bytes(ascii("SIMATIC-ROOT-HMI")));
    CHECK(a.primary == "5349:4d41:5449:432d:524f:4f54:2d48:4d49");
    REQUIRE(a.alternatives.size() == 1);
    CHECK(a.alternatives[0] == "\"SIMATIC-ROOT-HMI\"");
  }
  SECTION("anything else: hex") {
    CHECK(address_text(Bytes(hx("0102"))).primary == "0102");
    CHECK(address_text(Bytes(hx("0102030405"))).primary == "0102030405");
    CHECK(address_text(Bytes(hx("0102030405"))).alternatives.empty());
    CHECK(address_text(Bytes()).primary.empty());
  }
}
