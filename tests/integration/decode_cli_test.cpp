// `isoproxy decode` through the real binary: what an operator types.
#include <catch2/catch.hpp>
#include <cctype>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "codec/text.h"
#include "pcap_writer.h"
#include "support/binaries.h"
#include "support/pcap_craft.h"
#include "support/process.h"
#include "support/vectors.h"

using isoproxy::test::run_process;
using nlohmann::json;

namespace {

const std::string kBin = isoproxy::test::isoproxy_binary();
const std::string kVendorCc =
    "03 11 00 2C 27 D0 01 CA 00 29 00 C1 0D 53 57 49 53 53 4C 49 46 45 54 53 41 50 C2 0D 45 58 43 48 41 4E 47 45 54 "
    "53 41 50 31 C0 01 0B";

isoproxy::test::ProcessResult decode(std::vector<std::string> args, const std::string& input = {}) {
  args.insert(args.begin(), {kBin, "decode"});
  return run_process(args, input);
}

std::size_t count_lines(const std::string& s) {
  std::size_t n = 0;
  for (char c : s) n += c == '\n';
  return n;
}

std::filesystem::path temp_file(const std::string& name) {
  auto dir = std::filesystem::temp_directory_path() / ("isoproxy-test-" + std::to_string(getpid()));
  std::filesystem::create_directories(dir);
  return dir / name;
}

}  // namespace

TEST_CASE("decode names the vendor CC's fields and its reserved byte", "[decode][cli]") {
  auto r = decode({kVendorCc});
  INFO(r.out << r.err);
  REQUIRE(r.exit_code == 0);
  CHECK(r.err.empty());
  CHECK(r.out.find("frame 1: CC Connection Confirm, 44 octets") != std::string::npos);
  CHECK(r.out.find("reserved 0x11") != std::string::npos);
  CHECK(r.out.find("calling TSAP    SWISSLIFETSAP") != std::string::npos);
  CHECK(r.out.find("called TSAP     EXCHANGETSAP1") != std::string::npos);
  CHECK(r.out.find("TPDU size       2048") != std::string::npos);
  CHECK(r.out.find("anomaly: reserved-nonzero: TPKT reserved byte 0x11") != std::string::npos);
}

TEST_CASE("decode --json gives the same fields to machines", "[decode][cli]") {
  auto r = decode({"--json", kVendorCc});
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  REQUIRE(j["frames"].size() == 1);
  const json& f = j["frames"][0];
  CHECK(f["tpkt"]["reserved"] == 0x11);
  CHECK(f["tpdu"]["type"] == "CC");
  CHECK(f["tpdu"]["calling_tsap"]["ascii"] == "SWISSLIFETSAP");
  CHECK(f["tpdu"]["called_tsap"]["ascii"] == "EXCHANGETSAP1");
  CHECK(f["tpdu"]["called_tsap"]["hex"] == "45584348414E47455453415031");
  CHECK(f["tpdu"]["tpdu_size"] == 2048);
  CHECK(f["tpdu"]["dst_ref"] == 0x01CA);
  CHECK(f["tpdu"]["src_ref"] == 0x0029);
  REQUIRE(f["anomalies"].size() == 1);
  CHECK(f["anomalies"][0]["kind"] == "reserved-nonzero");
  CHECK(j["errors"].empty());
}

TEST_CASE("decode - reads a stream of every accepted vector from standard input", "[decode][cli][vectors]") {
  // All TPKT rows that a decoder accepts, as one stream: frames come out in order with the kinds of their rows.
  std::string stream;
  std::vector<std::string> kinds;
  for (const auto& v : isoproxy::test::load_vectors()) {
    if (v.cotp_only() || v.expectation.rfind("accept", 0) != 0) continue;
    for (const auto& s : v.segments) stream += isoproxy::codec::to_hex(s) + "\n";
    for (const auto& k : v.kinds()) kinds.push_back(k);
  }
  REQUIRE(kinds.size() >= 15);  // the file holds 20 such frames today
  auto r = decode({"--json", "-"}, stream);
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  REQUIRE(j["frames"].size() == kinds.size());
  for (std::size_t i = 0; i < kinds.size(); ++i) {
    INFO("frame " << i + 1);
    CHECK(j["frames"][i]["tpdu"]["type"] == kinds[i]);
  }
}

TEST_CASE("decode - stops at 16 MiB of standard input with a message", "[decode][cli][errors]") {
  // Endless input (decode - < /dev/zero) must end with a message, not with
  // all the memory: 16 MiB and one byte of valid hex is refused as such.
  std::string big((std::size_t{16} << 20) + 1, '0');
  auto r = decode({"-"}, big);
  CHECK(r.exit_code == 2);
  CHECK(r.err == "isoproxy: decode: standard input: more than 16 MiB of hex; decode a capture with --pcap, or split the input\n");
  CHECK(r.out.empty());
}

TEST_CASE("decode --cotp decodes bare TPDUs, one per argument", "[decode][cli]") {
  auto r = decode({"--json", "--cotp", "15E00000000000C00108C703001030AB0548656C6C6F010203", "0470000001"});
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  REQUIRE(j["frames"].size() == 2);
  CHECK(j["frames"][0]["tpdu"]["type"] == "CR");
  CHECK(j["frames"][0]["tpdu"]["tpdu_size"] == 256);
  CHECK(j["frames"][0]["tpdu"]["user_data"] == "010203");
  CHECK(j["frames"][1]["tpdu"]["type"] == "ER");
  CHECK(j["frames"][1]["tpdu"]["cause"] == 1);
}

TEST_CASE("decode --strict rejects a class 0 DT with TPDU-NR 1", "[decode][cli]") {
  CHECK(decode({"--cotp", "02f08132"}).exit_code == 0);
  auto r = decode({"--strict", "--cotp", "02f08132"});
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("tpdu-nr-nonzero") != std::string::npos);
}

TEST_CASE("decode --address reads the addresses MTA event logs print in hex", "[decode][cli]") {
  auto r = decode({"--address", "91F5C11B"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "145.245.193.27\n");
  r = decode({"--address", "52656d6f74654d5441"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == "\"RemoteMTA\"\n");
  // A backslash or a quote in the ASCII reading is escaped, so that the quotes still delimit it.
  r = decode({"--address", "5c22"});
  REQUIRE(r.exit_code == 0);
  CHECK(r.out == R"("\\\"")" "\n");
  r = decode({"--json", "--address", "20010db8000000000000000000000001"});
  REQUIRE(r.exit_code == 0);
  CHECK(json::parse(r.out)["addresses"][0]["address"] == "2001:db8::1");
}

TEST_CASE("decode gives bad input a one-line error and a non-zero exit", "[decode][cli][errors]") {
  struct Case {
    std::vector<std::string> args;
    std::string input;
    int exit_code;
    std::string says;
  };
  const std::string missing = temp_file("does-not-exist.pcap").string();
  const auto garbage = temp_file("garbage.pcap");
  { std::ofstream(garbage) << "this is not a capture file at all"; }
  const std::vector<Case> cases = {
      {{"03zz"}, "", 2, "not a hex digit: 'z' at position 3"},
      {{"030"}, "", 2, "odd number of hex digits"},
      {{}, "", 2, "nothing to decode"},
      {{"-"}, "", 2, "no hex to decode"},
      {{"-"}, "03 00 00 07 02 F0 8G", 2, "not a hex digit: 'G'"},
      {{"--bogus"}, "", 2, "--bogus"},
      {{"--max-length", "3", "0300000702f080"}, "", 2, "--max-length 3 is outside 7..65535"},
      {{"--max-length", "seven", "0300000702f080"}, "", 2, "--max-length seven is not a whole number in 7..65535"},
      // Named as typed, not wrapped into a size_t (-1 was 18446744073709551615).
      {{"--max-length", "-1", "0300000702f080"}, "", 2, "--max-length -1 is not a whole number in 7..65535"},
      {{"--max-length", "18446744073709551616", "0300000702f080"}, "", 2,
       "--max-length 18446744073709551616 is outside 7..65535"},
      {{"--pcap", garbage.string(), "--port", "0"}, "", 2, "--port 0 is outside 1..65535"},
      {{"--pcap", garbage.string(), "--port", "-1"}, "", 2, "--port -1 is not a whole number in 1..65535"},
      // A bad digit is placed in the argument or line it is in.
      {{"0300000702f080", "0300000702f0zz"}, "", 2, "argument 2: not a hex digit: 'z' at position 13"},
      {{"-"}, "03 00 00 07 02 F0 80\n03 00 00 07 02 F0 8G\n", 2, "standard input, line 2: not a hex digit: 'G' at position 20"},
      {{"--address", "zz"}, "", 2, "--address zz"},
      {{"--pcap", missing}, "", 2, "cannot open"},
      {{"--pcap", garbage.string()}, "", 2, "cannot open"},
      {{"--pcap", garbage.string(), "--port", "70000"}, "", 2, "port"},
      {{"0300000700f080"}, "", 1, "frame 1 rejected: li-zero"},
      {{"0400000702f080"}, "", 1, "version 0x04"},
      {{"0300000602f0"}, "", 1, "below the minimum of 7"},
      {{"0300000802f080"}, "", 1, "declared 8 octets, 7 present"},
      {{"030000"}, "", 1, "TPKT header incomplete"},
      {{"0300001611e00000000100c0010ac1090100c2020102"}, "", 1, "param-overrun"},
      {{"--max-length", "100", "0300FFFF02f080"}, "", 1, "above the maximum of 100"},
      {{"--pcap", missing, "00"}, "", 2, "give one of"},
  };
  for (const auto& c : cases) {
    std::string shown;
    for (const auto& a : c.args) shown += a + " ";
    INFO("isoproxy decode " << shown);
    auto r = decode(c.args, c.input);
    INFO("stderr: " << r.err);
    CHECK(r.exit_code == c.exit_code);
    CHECK(count_lines(r.err) == 1);
    CHECK(r.err.rfind("isoproxy: ", 0) == 0);
    CHECK(r.err.find(c.says) != std::string::npos);
  }
  std::filesystem::remove_all(garbage.parent_path());
}

TEST_CASE("decode --pcap reassembles both directions of every stream", "[decode][cli][pcap]") {
  const auto path = temp_file("two-streams.pcap");
  {
    auto w = isoproxy::PcapWriter::open(path.string());
    REQUIRE(w.ok());
    auto a = (*w)->add_flow({"10.0.0.1", 49152, "10.0.0.2", 102}, 1.0);
    auto b = (*w)->add_flow({"fd00::1", 40000, "fd00::2", 102}, 1.1);
    REQUIRE(a.ok());
    REQUIRE(b.ok());
    auto hex = [](std::string_view h) { return isoproxy::codec::parse_hex(h).value(); };
    const auto cr = hex("0300001611e00000000100c0010ac2020001c1020001");
    const auto cc = hex(kVendorCc);
    const auto dt = hex("0300001902f08032010000020000080000f0000001000101e0");
    // Stream A: CR split across three segments; CC and DT coalesced into one.
    const std::span<const std::uint8_t> crs(cr);
    REQUIRE((*w)->write(*a, true, crs.first(3), 1.2).ok());
    REQUIRE((*w)->write(*a, true, crs.subspan(3, 10), 1.3).ok());
    REQUIRE((*w)->write(*b, true, crs, 1.35).ok());
    REQUIRE((*w)->write(*a, true, crs.subspan(13), 1.4).ok());
    std::vector<std::uint8_t> both = cc;
    both.insert(both.end(), dt.begin(), dt.end());
    REQUIRE((*w)->write(*a, false, both, 1.5).ok());
    REQUIRE((*w)->write(*b, false, cc, 1.6).ok());
    REQUIRE((*w)->close_flow(*a, 2.0).ok());
    REQUIRE((*w)->close_flow(*b, 2.0).ok());
    REQUIRE((*w)->flush().ok());
  }
  auto r = decode({"--json", "--pcap", path.string()});
  INFO(r.err);
  REQUIRE(r.exit_code == 0);
  const json j = json::parse(r.out);
  REQUIRE(j["streams"].size() == 2);
  CHECK(j["streams"][0]["client"] == "10.0.0.1:49152");
  CHECK(j["streams"][0]["server"] == "10.0.0.2:102");
  CHECK(j["streams"][1]["client"] == "[fd00::1]:40000");
  const json& fr = j["frames"];
  REQUIRE(fr.size() == 5);
  // Capture order: B's CR completes before A's.
  CHECK(fr[0]["stream"] == 2);
  CHECK(fr[0]["tpdu"]["type"] == "CR");
  CHECK(fr[1]["stream"] == 1);
  CHECK(fr[1]["tpdu"]["type"] == "CR");
  CHECK(fr[1]["direction"] == "client->server");
  CHECK(fr[2]["tpdu"]["type"] == "CC");
  CHECK(fr[2]["direction"] == "server->client");
  CHECK(fr[2]["tpkt"]["reserved"] == 0x11);
  CHECK(fr[3]["tpdu"]["type"] == "DT");
  CHECK(fr[3]["packet"] == fr[2]["packet"]);  // coalesced in one segment
  CHECK(fr[4]["stream"] == 2);
  CHECK(fr[4]["tpdu"]["calling_tsap"]["ascii"] == "SWISSLIFETSAP");

  // Text form: one heading per frame naming the stream and direction.
  auto t = decode({"--pcap", path.string()});
  REQUIRE(t.exit_code == 0);
  CHECK(t.out.find("10.0.0.1:49152 -> 10.0.0.2:102 frame 1: CR") != std::string::npos);
  CHECK(t.out.find("10.0.0.2:102 -> 10.0.0.1:49152 frame 1: CC") != std::string::npos);
  CHECK(t.out.find("2 streams on port 102, 5 frames, ") != std::string::npos);

  // --port selects other streams: none here.
  auto none = decode({"--json", "--pcap", path.string(), "--port", "103"});
  REQUIRE(none.exit_code == 0);
  CHECK(json::parse(none.out)["frames"].empty());
  std::filesystem::remove_all(path.parent_path());
}

namespace {

namespace craft = isoproxy::test::craft;

// A class 0 DT frame (EOT) whose user data is `n` copies of `fill`.
craft::ByteVec dt_frame(std::size_t n, std::uint8_t fill) {
  craft::ByteVec f(7 + n, fill);
  const std::uint8_t header[] = {0x03, 0x00, 0x00, 0x00, 0x02, 0xF0, 0x80};
  std::copy(std::begin(header), std::end(header), f.begin());
  f[2] = static_cast<std::uint8_t>(f.size() >> 8);
  f[3] = static_cast<std::uint8_t>(f.size());
  return f;
}

craft::ByteVec slice(const craft::ByteVec& v, std::size_t from, std::size_t n = std::string::npos) {
  n = std::min(n, v.size() - from);
  return craft::ByteVec(v.begin() + static_cast<std::ptrdiff_t>(from), v.begin() + static_cast<std::ptrdiff_t>(from + n));
}

}  // namespace

// Captures lose their place in a stream: tcpdump joins long-lived MTA
// associations midway, drops packets under load, and ports carry other
// traffic. Decoding picks up again at the next segment that starts a frame.
TEST_CASE("decode --pcap resumes at the next frame after a midway join, a gap or garbage", "[decode][cli][pcap]") {
  using craft::kAck;
  using craft::kSyn;
  const craft::Conv conv;
  const auto path = temp_file("resync.pcap");
  const auto f1 = dt_frame(100, 'A'), f2 = dt_frame(50, 'B'), f3 = dt_frame(30, 'C'), f4 = dt_frame(20, 'D');

  SECTION("a capture that joined the stream midway") {
    craft::PcapFile pcap(craft::kLinkRaw);
    std::uint32_t seq = 7000;
    pcap.add(craft::ipv4(conv.c(seq, slice(f1, 60))));  // the tail of a frame sent before the capture began
    seq += static_cast<std::uint32_t>(f1.size() - 60);
    pcap.add(craft::ipv4(conv.c(seq, f2)));
    seq += static_cast<std::uint32_t>(f2.size());
    pcap.add(craft::ipv4(conv.c(seq, f3)));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 0);  // expected of a capture started mid-session: a notice, not an error
    const json j = json::parse(r.out);
    CHECK_FALSE(j["streams"][0]["saw_syn"].get<bool>());
    REQUIRE(j["frames"].size() == 2);
    CHECK(j["frames"][0]["packet"] == 2);
    CHECK(j["frames"][0]["length"] == f2.size());
    CHECK(j["frames"][1]["length"] == f3.size());
    CHECK(j["errors"].empty());
    REQUIRE(j["notices"].size() == 1);
    CHECK(j["notices"][0]["packet"] == 2);
    CHECK(j["notices"][0]["message"] ==
          "decoding resumes at a frame boundary after 47 octets skipped (the capture joined the stream midway)");
    // A midway join whose first segment starts a frame skips nothing, silently.
    craft::PcapFile clean(craft::kLinkRaw);
    clean.add(craft::ipv4(conv.c(9000, f2)));
    clean.save(path.string());
    auto c = decode({"--json", "--pcap", path.string()});
    CHECK(c.exit_code == 0);
    CHECK(json::parse(c.out)["notices"].empty());
    CHECK(json::parse(c.out)["frames"].size() == 1);
  }

  SECTION("a segment the capture dropped and the receiver acknowledged") {
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
    pcap.add(craft::ipv4(conv.s(4999, {}, kSyn | kAck)));
    std::uint32_t seq = 1000;
    pcap.add(craft::ipv4(conv.c(seq, f1)));
    seq += static_cast<std::uint32_t>(f1.size() + f2.size());  // f2 never captured
    pcap.add(craft::ipv4(conv.c(seq, f3)));
    seq += static_cast<std::uint32_t>(f3.size());
    craft::Tcp ack = conv.s(5000, {}, kAck);
    ack.ack = seq;
    pcap.add(craft::ipv4(ack));
    // Then a frame whose TPKT header went out in a segment of its own.
    pcap.add(craft::ipv4(conv.c(seq, slice(f4, 0, 4))));
    pcap.add(craft::ipv4(conv.c(seq + 4, slice(f4, 4))));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);  // a capture with a hole is incomplete
    const json j = json::parse(r.out);
    REQUIRE(j["frames"].size() == 3);
    CHECK(j["frames"][0]["length"] == f1.size());
    CHECK(j["frames"][1]["length"] == f3.size());
    CHECK(j["frames"][1]["packet"] == 4);
    CHECK(j["frames"][2]["length"] == f4.size());
    REQUIRE(j["errors"].size() == 1);
    CHECK(j["errors"][0]["kind"] == "gap");
    CHECK(j["errors"][0]["detail"] ==
          "57 bytes never captured (seq 1107, stream offset 107) but acknowledged by the receiver at packet 5; skipped; "
          "decoding resumes at the next segment that starts a frame");
    CHECK(j["notices"].empty());  // f3 starts right after the hole: nothing more skipped
    // The text form says the same, frame by frame in capture order.
    auto t = decode({"--pcap", path.string()});
    CHECK(t.exit_code == 1);
    const auto gap = t.out.find("error: gap: 57 bytes never captured");
    const auto third = t.out.find("frame 2: DT");
    CHECK(gap != std::string::npos);
    CHECK(third != std::string::npos);
    CHECK(gap < third);
    CHECK(t.err.find("isoproxy: decode: stream 1 client->server: 57 bytes never captured") != std::string::npos);
  }

  SECTION("the last segments the capture dropped: before the FIN, or acknowledged") {
    // Nothing captured after the hole shows it: the sender's FIN, or the
    // receiver's ACK, says how far the bytes went.
    const bool with_fin = GENERATE(true, false);
    INFO((with_fin ? "FIN" : "ACK"));
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
    pcap.add(craft::ipv4(conv.s(4999, {}, kSyn | kAck)));
    std::uint32_t seq = 1000;
    pcap.add(craft::ipv4(conv.c(seq, f1)));
    seq += static_cast<std::uint32_t>(f1.size() + f2.size());  // f2 never captured
    if (with_fin) {
      pcap.add(craft::ipv4(conv.c(seq, {}, craft::kFin | kAck)));
    } else {
      craft::Tcp ack = conv.s(5000, {}, kAck);
      ack.ack = seq;
      pcap.add(craft::ipv4(ack));
    }
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    const json j = json::parse(r.out);
    REQUIRE(j["frames"].size() == 1);
    REQUIRE(j["errors"].size() == 1);
    CHECK(j["errors"][0]["kind"] == "gap");
    CHECK(j["errors"][0]["detail"] ==
          "57 bytes never captured at the end of the direction (seq 1107, stream offset 107), " +
              std::string(with_fin ? "before the FIN at packet 4" : "acknowledged by the receiver at packet 4") +
              "; nothing captured follows it");
    // Captured in full, the same session is clean.
    craft::PcapFile whole(craft::kLinkRaw);
    whole.add(craft::ipv4(conv.c(999, {}, kSyn)));
    whole.add(craft::ipv4(conv.s(4999, {}, kSyn | kAck)));
    whole.add(craft::ipv4(conv.c(1000, f1)));
    whole.add(craft::ipv4(conv.c(1000 + static_cast<std::uint32_t>(f1.size()), f2)));
    if (with_fin) {
      whole.add(craft::ipv4(conv.c(seq, {}, craft::kFin | kAck)));
    } else {
      // The receiver acknowledges a FIN the capture missed: one octet past
      // the data, which is no data missing.
      craft::Tcp fin_ack = conv.s(5000, {}, kAck);
      fin_ack.ack = seq + 1;
      whole.add(craft::ipv4(fin_ack));
    }
    whole.save(path.string());
    auto c = decode({"--json", "--pcap", path.string()});
    INFO(c.out << c.err);
    CHECK(c.exit_code == 0);
    CHECK(json::parse(c.out)["errors"].empty());
  }

  SECTION("a capture cut short inside its last record") {
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
    pcap.add(craft::ipv4(conv.c(1000, f1)));
    pcap.add(craft::ipv4(conv.c(1000 + static_cast<std::uint32_t>(f1.size()), f2)));
    craft::ByteVec bytes = pcap.bytes();
    bytes.resize(bytes.size() - 10);  // tcpdump stopped while writing f2's record
    craft::write_file(path.string(), bytes);
    auto r = decode({"--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);  // an incomplete capture, not one that cannot be read
    CHECK(r.out.find("frame 1: DT") != std::string::npos);
    CHECK(r.out.find("error: pcap-read: " + path.string() + ": cannot read packet 3: ") != std::string::npos);
    CHECK(r.out.find("2 packets, 1 stream on port 102, 1 frames, 0 anomalies, 1 error") != std::string::npos);
    CHECK(r.err.find("cannot read packet 3") != std::string::npos);
  }

  SECTION("bytes that are not RFC 1006, then frames again") {
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
    std::uint32_t seq = 1000;
    for (const craft::ByteVec& seg : {f1, craft::ByteVec{'G', 'E', 'T', ' ', '/', '\r', '\n'}, slice(f2, 10), f3}) {
      pcap.add(craft::ipv4(conv.c(seq, seg)));
      seq += static_cast<std::uint32_t>(seg.size());
    }
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    const json j = json::parse(r.out);
    REQUIRE(j["frames"].size() == 2);
    CHECK(j["frames"][1]["length"] == f3.size());
    CHECK(j["frames"][1]["packet"] == 5);
    REQUIRE(j["errors"].size() == 1);
    CHECK(j["errors"][0]["kind"] == "tpkt-bad-version");
    REQUIRE(j["notices"].size() == 1);
    CHECK(j["notices"][0]["message"] ==
          "decoding resumes at a frame boundary after " + std::to_string(7 + f2.size() - 10) +
              " octets skipped (after a framing error)");
  }

  SECTION("a TPKT header held when bytes are lost is not continued after them") {
    craft::PcapFile pcap(craft::kLinkRaw);
    std::uint32_t seq = 7000;  // joined midway: hunting from the start
    pcap.add(craft::ipv4(conv.c(seq, slice(f2, 0, 4))));  // a header alone: held as a candidate
    seq += 4;
    seq += 100;  // lost: the rest of f2 and more
    pcap.add(craft::ipv4(conv.c(seq, slice(f3, 4))));  // a frame's body without its header
    seq += static_cast<std::uint32_t>(f3.size() - 4);
    craft::Tcp ack = conv.s(100, {}, kAck);
    ack.ack = seq;
    pcap.add(craft::ipv4(ack));
    pcap.add(craft::ipv4(conv.c(seq, f4)));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    const json j = json::parse(r.out);
    // Only f4 is a frame: the header before the gap and the body after it are not joined.
    REQUIRE(j["frames"].size() == 1);
    CHECK(j["frames"][0]["length"] == f4.size());
    REQUIRE(j["errors"].size() == 1);
    CHECK(j["errors"][0]["kind"] == "gap");
    CHECK(j["errors"][0]["packet"] == 4);
  }

  SECTION("a stray short segment, then a TPKT header sent on its own") {
    craft::PcapFile pcap(craft::kLinkRaw);
    std::uint32_t seq = 7000;
    for (const craft::ByteVec& seg : {craft::ByteVec{0x03, 0x99}, slice(f2, 0, 4), slice(f2, 4)}) {
      pcap.add(craft::ipv4(conv.c(seq, seg)));
      seq += static_cast<std::uint32_t>(seg.size());
    }
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 0);
    const json j = json::parse(r.out);
    REQUIRE(j["frames"].size() == 1);
    CHECK(j["frames"][0]["length"] == f2.size());
    REQUIRE(j["notices"].size() == 1);
    CHECK(j["notices"][0]["message"] ==
          "decoding resumes at a frame boundary after 2 octets skipped (the capture joined the stream midway)");
  }

  SECTION("user data that looks like a TPKT header with a reserved octet is no frame start") {
    craft::ByteVec fake = {0x03, 0x05, 0x00, 0x0A, 0x02, 0xF0, 0x80, 0x01, 0x02, 0x03};  // reserved 0x05, a DT
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(7000, fake)));
    pcap.add(craft::ipv4(conv.c(7010, f3)));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    const json j = json::parse(r.out);
    REQUIRE(j["frames"].size() == 1);
    CHECK(j["frames"][0]["length"] == f3.size());
    CHECK(j["errors"].empty());
  }

  SECTION("a framing error with nothing decodable after it is one error") {
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
    pcap.add(craft::ipv4(conv.c(1000, craft::ByteVec{'G', 'E', 'T', ' ', '/', '\r', '\n'})));
    pcap.add(craft::ipv4(conv.c(1007, craft::ByteVec{'H', 'o', 's', 't', '\r', '\n'})));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    const json j = json::parse(r.out);
    REQUIRE(j["errors"].size() == 1);
    CHECK(j["errors"][0]["kind"] == "tpkt-bad-version");
    REQUIRE(j["notices"].size() == 1);
    CHECK(j["notices"][0]["message"] ==
          "13 octets skipped (after a framing error) and no segment after them started a frame: not decoded");
  }

  SECTION("no segment ever starts a frame") {
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(7000, slice(f1, 20, 40))));
    pcap.add(craft::ipv4(conv.c(7040, slice(f1, 60))));
    pcap.save(path.string());
    auto r = decode({"--pcap", path.string()});
    INFO(r.out << r.err);
    CHECK(r.exit_code == 1);
    CHECK(r.out.find("error: no-frame: 87 octets skipped (the capture joined the stream midway) and no segment "
                     "after them started a frame: not decoded") != std::string::npos);
    CHECK(r.out.find("0 frames") != std::string::npos);
  }
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --pcap agrees with tshark on every field both report", "[decode][cli][pcap][tshark]") {
  if (!isoproxy::test::on_path("tshark")) {
    WARN("tshark is not installed: the comparison with Wireshark's dissector is skipped");
    return;
  }
  // Frames tshark dissects as COTP (it refuses some, e.g. the LI 9 ER and DR 0x86: protocol.md §6.1).
  const std::vector<std::string> ids = {"V1", "V3", "V4", "V5", "V6", "V7", "V8", "V9a", "V9b", "V10", "V10r", "V14", "V15"};
  const auto rows = isoproxy::test::load_vectors();
  const auto path = temp_file("compare.pcap");
  {
    auto w = isoproxy::PcapWriter::open(path.string());
    REQUIRE(w.ok());
    double t = 1.0;
    int port = 50000;
    for (const auto& id : ids) {
      // One flow per frame, so tshark's per-conversation state never mixes frames.
      const auto& v = isoproxy::test::find_vector(rows, id);
      auto flow = (*w)->add_flow({"192.0.2.1", static_cast<std::uint16_t>(port++), "192.0.2.2", 102}, t);
      REQUIRE(flow.ok());
      const bool from_client = v.direction != "resp->init";
      REQUIRE((*w)->write(*flow, from_client, v.bytes(), t += 0.01).ok());
      REQUIRE((*w)->close_flow(*flow, t += 0.01).ok());
    }
    REQUIRE((*w)->flush().ok());
  }
  auto ours = decode({"--json", "--pcap", path.string()});
  REQUIRE(ours.exit_code == 0);
  const json j = json::parse(ours.out);
  REQUIRE(j["frames"].size() == ids.size());

  auto ts = run_process({"/usr/bin/env", "tshark", "-n", "-r", path.string(), "-Y", "cotp", "-T", "fields",
                         "-E", "separator=|", "-e", "tcp.srcport", "-e", "cotp.type", "-e", "cotp.destref", "-e",
                         "cotp.srcref", "-e", "cotp.src-tsap-bytes", "-e", "cotp.dst-tsap-bytes", "-e", "cotp.tpdu_size",
                         "-e", "tpkt.reserved"});
  INFO(ts.err);
  REQUIRE(ts.exit_code == 0);
  std::istringstream lines(ts.out);
  std::vector<std::vector<std::string>> rowsout;
  for (std::string l; std::getline(lines, l);) {
    std::vector<std::string> f;
    std::size_t start = 0;
    for (;;) {
      auto bar = l.find('|', start);
      f.push_back(l.substr(start, bar == std::string::npos ? std::string::npos : bar - start));
      if (bar == std::string::npos) break;
      start = bar + 1;
    }
    rowsout.push_back(f);
  }
  REQUIRE(rowsout.size() == ids.size());
  auto num = [](const std::string& s) { return s.empty() ? -1L : std::stol(s, nullptr, 0); };
  auto upper = [](std::string s) {
    for (auto& c : s) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    return s;
  };
  for (std::size_t i = 0; i < ids.size(); ++i) {
    INFO(ids[i] << ": tshark says " << ts.out);
    const json& t = j["frames"][i]["tpdu"];
    const auto& f = rowsout[i];
    REQUIRE(f.size() == 8);
    const std::map<std::string, long> type_codes = {{"CR", 0x0e}, {"CC", 0x0d}, {"DR", 0x08}, {"DT", 0x0f}, {"ER", 0x07}};
    CHECK(num(f[1]) == type_codes.at(t["type"].get<std::string>()));
    if (t.contains("dst_ref")) CHECK(num(f[2]) == t["dst_ref"].get<long>());
    if (t.contains("src_ref")) CHECK(num(f[3]) == t["src_ref"].get<long>());
    if (t.contains("calling_tsap")) CHECK(upper(f[4]) == t["calling_tsap"]["hex"].get<std::string>());
    if (t.contains("called_tsap")) CHECK(upper(f[5]) == t["called_tsap"]["hex"].get<std::string>());
    if (t.contains("tpdu_size")) CHECK(num(f[6]) == t["tpdu_size"].get<long>());  // tshark shows octets
    CHECK(num(f[7]) == j["frames"][i]["tpkt"]["reserved"].get<long>());
  }
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --pcap resumes at a CR or CC whose reserved byte is set, and says why not at a DT", "[decode][cli][pcap]") {
  // Joined midway. Known MTAs set the reserved byte in a CR (KB Q157015) or
  // a CC (KB Q151626): decoding resumes there. Elsewhere it must be 0, to
  // tell frames from user data; a direction that never resumes says that the
  // reserved byte is what stopped it.
  const craft::Conv conv;
  const auto path = temp_file("midway-reserved.pcap");
  const auto capture = [&](craft::ByteVec frame) {
    craft::PcapFile pcap(craft::kLinkRaw);
    std::uint32_t seq = 5000;
    pcap.add(craft::ipv4(conv.c(seq, {0x01, 0x02, 0x03})));  // the tail of an earlier frame
    seq += 3;
    for (int i = 0; i < 3; ++i, seq += static_cast<std::uint32_t>(frame.size())) pcap.add(craft::ipv4(conv.c(seq, frame)));
    pcap.save(path.string());
    return decode({"--json", "--pcap", path.string()});
  };
  auto cr = isoproxy::codec::parse_hex("0311001611e00000000100c0010ac2020001c1020001").value();
  auto r = capture(cr);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  json j = json::parse(r.out);
  REQUIRE(j["frames"].size() == 3);
  CHECK(j["frames"][0]["packet"] == 2);
  CHECK(j["frames"][0]["tpkt"]["reserved"] == 0x11);

  auto dt = dt_frame(2, 0xEE);
  dt[1] = 0x11;
  r = capture(dt);
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  j = json::parse(r.out);
  CHECK(j["frames"].empty());
  REQUIRE(j["errors"].size() == 1);
  CHECK(j["errors"][0]["kind"] == "no-frame");
  CHECK(j["errors"][0]["detail"] ==
        "30 octets skipped (the capture joined the stream midway) and no segment after them started a frame: not "
        "decoded (3 segments would have but for a TPKT reserved octet that is not 0, which only a CR or CC may have "
        "where decoding resumes)");
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --pcap times frames from the capture's first packet", "[decode][cli][pcap]") {
  // The second segment is captured before the first: the frame it ends is
  // decoded after the one the first segment holds, and both are timed from
  // packet 1 (tshark's frame.time_relative), not from the first frame decoded.
  using craft::kAck;
  using craft::kSyn;
  const craft::Conv conv;
  const auto path = temp_file("reordered.pcap");
  const auto f1 = dt_frame(10, 'A'), f2 = dt_frame(10, 'B');
  craft::PcapFile pcap(craft::kLinkRaw);  // packet N at 1000 + N seconds
  pcap.add(craft::ipv4(conv.c(999, {}, kSyn)));
  pcap.add(craft::ipv4(conv.c(1000 + static_cast<std::uint32_t>(f1.size()), f2)));
  pcap.add(craft::ipv4(conv.c(1000, f1)));
  pcap.save(path.string());
  auto r = decode({"--pcap", path.string()});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.out.find("#3 2.000000 stream 1 10.0.0.1:40000 -> 10.0.0.2:102 frame 1: DT") != std::string::npos);
  CHECK(r.out.find("#2 1.000000 stream 1 10.0.0.1:40000 -> 10.0.0.2:102 frame 2: DT") != std::string::npos);
  CHECK(r.out.find("#2 -") == std::string::npos);  // not -1.000000, as when timed from the first frame decoded
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --pcap names the ports in use when none is the one asked for", "[decode][cli][pcap]") {
  craft::Conv conv;
  conv.server_port = 10102;  // a lab MTA, or a trace of a listener toward another port
  const auto path = temp_file("other-port.pcap");
  craft::PcapFile pcap(craft::kLinkRaw);
  pcap.add(craft::ipv4(conv.c(1000, dt_frame(4, 'A'))));
  pcap.add(craft::ipv4(conv.s(2000, dt_frame(4, 'B'))));
  pcap.save(path.string());
  auto t = decode({"--pcap", path.string()});
  INFO(t.out << t.err);
  CHECK(t.exit_code == 0);
  CHECK(t.out.find("0 streams on port 102") != std::string::npos);
  CHECK(t.out.find("notice: TCP packets on other ports: 10102 (2), 40000 (2); choose one with --port") !=
        std::string::npos);
  auto j = decode({"--json", "--pcap", path.string()});
  CHECK(json::parse(j.out)["other_ports"] == json::parse(R"([{"port":10102,"packets":2},{"port":40000,"packets":2}])"));
  auto right = decode({"--json", "--pcap", path.string(), "--port", "10102"});
  CHECK(json::parse(right.out)["frames"].size() == 2);
  CHECK_FALSE(json::parse(right.out).contains("other_ports"));
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --pcap says why a pcapng with interfaces of two link types stops", "[decode][cli][pcap]") {
  // libpcap reads a pcapng only while its interfaces share one link type.
  using craft::put16le;
  using craft::put32le;
  const craft::Conv conv;
  craft::ByteVec f;
  const auto block = [&f](std::uint32_t type, const craft::ByteVec& body) {
    craft::ByteVec padded = body;
    while (padded.size() % 4 != 0) padded.push_back(0);
    const auto total = static_cast<std::uint32_t>(12 + padded.size());
    put32le(f, type);
    put32le(f, total);
    f.insert(f.end(), padded.begin(), padded.end());
    put32le(f, total);
  };
  craft::ByteVec shb;
  put32le(shb, 0x1A2B3C4D);  // byte-order magic
  put16le(shb, 1);
  put16le(shb, 0);
  put32le(shb, 0xFFFFFFFF);  // section length unknown
  put32le(shb, 0xFFFFFFFF);
  block(0x0A0D0D0A, shb);
  const auto idb = [&](std::uint16_t linktype) {
    craft::ByteVec b;
    put16le(b, linktype);
    put16le(b, 0);
    put32le(b, 262144);
    block(1, b);
  };
  const auto epb = [&](std::uint32_t interface, const craft::ByteVec& packet) {
    craft::ByteVec b;
    put32le(b, interface);
    put32le(b, 0);
    put32le(b, 1000000);
    put32le(b, static_cast<std::uint32_t>(packet.size()));
    put32le(b, static_cast<std::uint32_t>(packet.size()));
    b.insert(b.end(), packet.begin(), packet.end());
    block(6, b);
  };
  idb(static_cast<std::uint16_t>(craft::kLinkRaw));
  epb(0, craft::ipv4(conv.c(1000, dt_frame(4, 'A'))));
  idb(static_cast<std::uint16_t>(craft::kLinkEthernet));
  const auto path = temp_file("two-linktypes.pcapng");
  craft::write_file(path.string(), f);
  auto r = decode({"--pcap", path.string()});
  INFO(r.out << r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.out.find("frame 1: DT") != std::string::npos);  // the packet before it is decoded
  CHECK(r.out.find("error: pcap-read: ") != std::string::npos);
  CHECK(r.out.find("libpcap reads a pcapng only while all its interfaces have one link type: split the capture "
                   "per interface first") != std::string::npos);
  std::filesystem::remove_all(path.parent_path());
}

TEST_CASE("decode --json is one valid document whatever the input", "[decode][cli][json]") {
  const craft::Conv conv;
  SECTION("a capture file name that is not UTF-8") {
    // A Latin-1 name from a Windows share: the document holds it with U+FFFD
    // in place of the bad octet, instead of the process aborting.
    const auto path = temp_file(std::string("caf\xE9.pcap"));
    craft::PcapFile pcap(craft::kLinkRaw);
    pcap.add(craft::ipv4(conv.c(1000, dt_frame(4, 'A'))));
    pcap.save(path.string());
    auto r = decode({"--json", "--pcap", path.string()});
    INFO(r.err);
    CHECK(r.exit_code == 0);
    const json j = json::parse(r.out);
    CHECK(j["file"].get<std::string>().ends_with("caf\xEF\xBF\xBD.pcap"));
    CHECK(j["frames"].size() == 1);
    std::filesystem::remove_all(path.parent_path());
  }
  SECTION("memory stays that of a frame, not of the document") {
    // 75 000 frames: about 370 MB when every frame was kept as a JSON object
    // until the end; printed as decoded, a few MB. Not with a sanitized
    // isoproxy (tests/run drives one from this Release harness): ASan's
    // shadow memory needs the address space ulimit -v takes away.
    std::ifstream bin(kBin, std::ios::binary);
    const std::string image((std::istreambuf_iterator<char>(bin)), std::istreambuf_iterator<char>());
    if (std::getenv("ASAN_OPTIONS") != nullptr || image.find("__asan_init") != std::string::npos) {
      WARN("not run: " << kBin << " is built with AddressSanitizer");
      return;
    }
    std::string hex;
    for (int i = 0; i < 75000; ++i) hex += "0300000702f080";
    auto r = run_process({"/bin/sh", "-c", "ulimit -v 262144 && exec \"$0\" decode --json -", kBin}, hex);
    INFO(r.err.substr(0, 500));
    REQUIRE(r.exit_code == 0);
    const json j = json::parse(r.out);
    CHECK(j["frames"].size() == 75000);
    CHECK(j["frames"][74999]["index"] == 75000);
    CHECK(j["errors"].empty());
  }
}
