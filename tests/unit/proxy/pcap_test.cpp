// PcapWriter and read_pcap_streams: round trips through the writer, plus
// captures built byte by byte for what the writer never produces (reordering,
// loss, truncation, other link types), plus tshark's view of a written file.
#include <arpa/inet.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "pcap_reader.h"
#include "pcap_writer.h"
#include "support/pcap_craft.h"

namespace isoproxy {
namespace {

using namespace isoproxy::test::craft;

constexpr auto kC2S = PcapDirection::kClientToServer;
constexpr auto kS2C = PcapDirection::kServerToClient;

ByteVec from_hex(std::string_view hex) {
  ByteVec out;
  for (std::size_t i = 0; i + 1 < hex.size(); i += 2) {
    out.push_back(static_cast<std::uint8_t>(std::stoi(std::string(hex.substr(i, 2)), nullptr, 16)));
  }
  return out;
}

ByteVec text(std::string_view s) { return ByteVec(s.begin(), s.end()); }

ByteVec pattern(std::size_t n, std::uint32_t seed) {
  std::mt19937 gen(seed);
  ByteVec out(n);
  for (auto& b : out) b = static_cast<std::uint8_t>(gen());
  return out;
}

ByteVec read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return ByteVec(std::istreambuf_iterator<char>(in), {});
}

// A unique file name in the temp directory, removed when the test is done.
class TempPath {
 public:
  TempPath() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "isoproxy-pcap-XXXXXX").string();
    const int fd = mkstemp(tmpl.data());
    REQUIRE(fd >= 0);
    close(fd);
    path_ = tmpl;
  }
  ~TempPath() {
    std::error_code ec;
    std::filesystem::remove(path_, ec);
  }
  TempPath(const TempPath&) = delete;
  TempPath& operator=(const TempPath&) = delete;
  const std::string& str() const { return path_; }

 private:
  std::string path_;
};

// --- reading ----------------------------------------------------------------

struct ChunkRecord {
  int stream;
  PcapDirection dir;
  std::uint64_t packet;
  double time;
  std::size_t size;
};

struct NoticeRecord {
  int stream;
  PcapDirection dir;
  std::string message;
};

struct Reading {
  bool ok = false;
  PcapSummary summary;
  Error error;
  std::vector<ChunkRecord> chunks;
  std::vector<NoticeRecord> notices;
  std::map<std::pair<int, PcapDirection>, ByteVec> data;

  ByteVec bytes(int stream, PcapDirection dir) const {
    auto it = data.find({stream, dir});
    return it == data.end() ? ByteVec{} : it->second;
  }
  std::vector<std::uint64_t> packets(int stream, PcapDirection dir) const {
    std::vector<std::uint64_t> out;
    for (const auto& c : chunks) {
      if (c.stream == stream && c.dir == dir) out.push_back(c.packet);
    }
    return out;
  }
};

Reading read_all(const std::string& path, std::uint16_t port = 102) {
  Reading r;
  auto result = read_pcap_streams(
      path, port,
      [&](const PcapChunk& c) {
        REQUIRE(c.stream != nullptr);
        REQUIRE(!c.bytes.empty());
        r.chunks.push_back({c.stream->id, c.direction, c.packet, c.time, c.bytes.size()});
        auto& d = r.data[{c.stream->id, c.direction}];
        d.insert(d.end(), c.bytes.begin(), c.bytes.end());
      },
      [&](const PcapNotice& n) {
        REQUIRE(n.stream != nullptr);
        r.notices.push_back({n.stream->id, n.direction, n.message});
      });
  r.ok = result.ok();
  if (result) {
    r.summary = *result;
  } else {
    r.error = result.error();
  }
  return r;
}

// --- hand-crafted packets (more in support/pcap_craft.h) ----------------------

ByteVec ethernet(const ByteVec& ip, std::uint16_t ethertype,
                 const std::vector<std::uint16_t>& tpids = {}) {
  ByteVec v{0x00, 0x1b, 0x1b, 0x00, 0x00, 0x02, 0x00, 0x1b, 0x1b, 0x00, 0x00, 0x01};
  std::uint16_t vlan = 100;
  for (const std::uint16_t tpid : tpids) {
    put16(v, tpid);
    put16(v, vlan++);  // PCP 0, DEI 0, VLAN id
  }
  put16(v, ethertype);
  append(v, ip);
  while (v.size() < 60) v.push_back(0xee);  // minimum frame: padding the reader must drop
  return v;
}

ByteVec linux_sll(const ByteVec& ip, std::uint16_t protocol) {
  ByteVec v;
  put16(v, 0);  // packet type: to us
  put16(v, 1);  // ARPHRD_ETHER
  put16(v, 6);  // address length
  append(v, ByteVec{0x00, 0x1b, 0x1b, 0x00, 0x00, 0x01, 0x00, 0x00});
  put16(v, protocol);
  append(v, ip);
  return v;
}

ByteVec linux_sll2(const ByteVec& ip, std::uint16_t protocol) {
  ByteVec v;
  put16(v, protocol);
  put16(v, 0);     // reserved
  put32(v, 2);     // interface index
  put16(v, 1);     // ARPHRD_ETHER
  v.push_back(4);  // packet type: outgoing
  v.push_back(6);  // address length
  append(v, ByteVec{0x00, 0x1b, 0x1b, 0x00, 0x00, 0x01, 0x00, 0x00});
  append(v, ip);
  return v;
}

// --- writer output parsing (for checking what the writer produced) ------------

struct RawRecord {
  std::uint32_t sec;
  std::uint32_t usec;
  ByteVec data;
};

std::uint16_t be16(const std::uint8_t* p) { return static_cast<std::uint16_t>((p[0] << 8) | p[1]); }
std::uint32_t be32(const std::uint8_t* p) { return (std::uint32_t{be16(p)} << 16) | be16(p + 2); }
std::uint32_t le32(const std::uint8_t* p) {
  return std::uint32_t{p[0]} | (std::uint32_t{p[1]} << 8) | (std::uint32_t{p[2]} << 16) |
         (std::uint32_t{p[3]} << 24);
}

std::vector<RawRecord> raw_records(const ByteVec& file) {
  std::vector<RawRecord> out;
  REQUIRE(file.size() >= 24);
  std::size_t off = 24;
  while (off < file.size()) {
    REQUIRE(off + 16 <= file.size());
    const std::uint32_t incl = le32(&file[off + 8]);
    REQUIRE(incl == le32(&file[off + 12]));
    REQUIRE(off + 16 + incl <= file.size());
    out.push_back({le32(&file[off]), le32(&file[off + 4]),
                   ByteVec(file.begin() + static_cast<std::ptrdiff_t>(off + 16),
                           file.begin() + static_cast<std::ptrdiff_t>(off + 16 + incl))});
    off += 16 + incl;
  }
  return out;
}

// One's complement sum over `n` octets, folded; a valid checksummed block
// sums to 0xffff.
std::uint32_t ones_sum(std::uint32_t sum, const std::uint8_t* p, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) sum += (i % 2 == 0) ? (std::uint32_t{p[i]} << 8) : p[i];
  while (sum >> 16 != 0) sum = (sum & 0xffff) + (sum >> 16);
  return sum;
}

bool tshark_available() {
  const char* path = std::getenv("PATH");
  if (path == nullptr) return false;
  std::stringstream dirs(path);
  std::string dir;
  while (std::getline(dirs, dir, ':')) {
    if (!dir.empty() && access((dir + "/tshark").c_str(), X_OK) == 0) return true;
  }
  return false;
}

// Runs a shell command, returns its standard output and exit status.
std::pair<std::string, int> run(const std::string& command) {
  std::FILE* p = popen(command.c_str(), "r");
  REQUIRE(p != nullptr);
  std::string out;
  std::array<char, 4096> buf{};
  std::size_t n = 0;
  while ((n = std::fread(buf.data(), 1, buf.size(), p)) > 0) out.append(buf.data(), n);
  const int status = pclose(p);
  return {out, WIFEXITED(status) ? WEXITSTATUS(status) : -1};
}

std::vector<std::string> lines_of(const std::string& s) {
  std::vector<std::string> out;
  std::stringstream in(s);
  std::string line;
  while (std::getline(in, line)) out.push_back(line);
  return out;
}

const ByteVec kCr = from_hex("0300001611e00000000100c0010ac2020001c1020001");  // protocol.md V3
const ByteVec kCc = from_hex("0300001611d00001000500c0010ac1020001c2020001");  // protocol.md V4

}  // namespace

// --- writer -> reader round trips -----------------------------------------------

TEST_CASE("pcap: written IPv4 and IPv6 flows read back byte for byte", "[pcap]") {
  TempPath file;
  auto opened = PcapWriter::open(file.str());
  REQUIRE(opened.ok());
  PcapWriter& w = **opened;

  const std::vector<PcapFlow> flows = {
      {"10.1.1.1", 49152, "10.1.1.2", 102},
      {"2001:db8::1", 50000, "2001:db8::2", 102},
      {"127.0.0.1", 40001, "127.0.0.1", 102},
      {"::1", 40002, "::1", 102},
  };
  std::vector<int> handles;
  std::uint64_t expected_packets = 0;
  double t = 1700000000.0;
  for (const auto& f : flows) {
    auto h = w.add_flow(f, t += 0.001);
    REQUIRE(h.ok());
    handles.push_back(*h);
    expected_packets += 3;
  }

  std::map<std::pair<int, PcapDirection>, ByteVec> expected;
  std::map<std::pair<int, PcapDirection>, std::size_t> expected_chunks;
  auto send = [&](std::size_t flow, bool from_client, const ByteVec& payload) {
    REQUIRE(w.write(handles[flow], from_client, payload, t += 0.001).ok());
    auto& e = expected[{static_cast<int>(flow) + 1, from_client ? kC2S : kS2C}];
    e.insert(e.end(), payload.begin(), payload.end());
    const std::size_t segments = (payload.size() + 64999) / 65000;
    expected_chunks[{static_cast<int>(flow) + 1, from_client ? kC2S : kS2C}] += segments;
    expected_packets += segments;
  };

  // Interleaved: every flow and direction gets many writes of odd sizes.
  std::mt19937 gen(42);
  for (int i = 0; i < 200; ++i) {
    const std::size_t flow = gen() % flows.size();
    const bool from_client = gen() % 2 == 0;
    send(flow, from_client, pattern(1 + gen() % 1500, static_cast<std::uint32_t>(i)));
  }
  send(1, false, pattern(150000, 7));  // split into 65000 + 65000 + 20000
  send(0, true, kCr);
  REQUIRE(w.write(handles[0], true, ByteVec{}, t).ok());  // nothing written

  for (int h : handles) {
    REQUIRE(w.close_flow(h, t += 0.001).ok());
    expected_packets += 3;
  }
  REQUIRE(w.flush().ok());
  CHECK(w.bytes_written() == std::filesystem::file_size(file.str()));

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.summary.packets == expected_packets);
  CHECK(r.summary.tcp_packets == expected_packets);
  REQUIRE(r.summary.streams.size() == 4);
  CHECK(r.summary.streams[0].client == "10.1.1.1:49152");
  CHECK(r.summary.streams[0].server == "10.1.1.2:102");
  CHECK(r.summary.streams[1].client == "[2001:db8::1]:50000");
  CHECK(r.summary.streams[1].server == "[2001:db8::2]:102");
  CHECK(r.summary.streams[2].client == "127.0.0.1:40001");
  CHECK(r.summary.streams[2].server == "127.0.0.1:102");
  CHECK(r.summary.streams[3].client == "[::1]:40002");
  CHECK(r.summary.streams[3].server == "[::1]:102");
  for (std::size_t i = 0; i < 4; ++i) {
    CHECK(r.summary.streams[i].id == static_cast<int>(i) + 1);
    CHECK(r.summary.streams[i].saw_syn);
  }
  for (const auto& [key, bytes] : expected) {
    INFO("stream " << key.first << (key.second == kC2S ? " c->s" : " s->c"));
    CHECK(r.bytes(key.first, key.second) == bytes);
    CHECK(r.packets(key.first, key.second).size() == expected_chunks[key]);
  }
  CHECK(r.data.size() == expected.size());

  // The 150000-octet write arrives as three segments, in order.
  std::vector<std::size_t> big;
  for (const auto& c : r.chunks) {
    CHECK(c.size <= 65000);
    if (c.size >= 20000 && c.stream == 2 && c.dir == kS2C) big.push_back(c.size);
  }
  CHECK(big == std::vector<std::size_t>{65000, 65000, 20000});
  // In-order capture: chunk packet numbers only grow.
  for (std::size_t i = 1; i < r.chunks.size(); ++i)
    CHECK(r.chunks[i].packet > r.chunks[i - 1].packet);
  CHECK(r.chunks.front().time == Approx(1700000000.005).margin(1e-6));
}

TEST_CASE("pcap: writer output has valid headers, checksums and sequence numbers", "[pcap]") {
  TempPath file;
  auto opened = PcapWriter::open(file.str());
  REQUIRE(opened.ok());
  PcapWriter& w = **opened;
  CHECK(w.bytes_written() == 24);
  const std::uint64_t before = w.bytes_written();

  SECTION("IPv4") {
    auto h = w.add_flow({"192.0.2.1", 49152, "192.0.2.2", 102}, 1700000000.123456);
    REQUIRE(h.ok());
    CHECK(w.bytes_written() == before + 3 * (16 + 40));
    REQUIRE(w.write(*h, true, kCr, 1700000001.5).ok());
    REQUIRE(w.write(*h, false, ByteVec(70001, 0x5a), 1700000002.9999999)
                .ok());  // odd length: checksum pad
    REQUIRE(w.close_flow(*h, 1700000003).ok());
    REQUIRE(w.flush().ok());
    const ByteVec bytes = read_file(file.str());
    CHECK(bytes.size() == w.bytes_written());
    CHECK(le32(&bytes[0]) == 0xa1b2c3d4);
    CHECK(bytes[4] == 2);
    CHECK(bytes[6] == 4);
    CHECK(le32(&bytes[16]) == 65535);
    CHECK(le32(&bytes[20]) == 101);  // LINKTYPE_RAW

    const auto records = raw_records(bytes);
    REQUIRE(records.size() == 3 + 1 + 2 + 3);
    CHECK(records[0].sec == 1700000000);
    CHECK(records[0].usec == 123456);
    CHECK(records[3].usec == 500000);
    CHECK(records[4].sec == 1700000003);  // rounding carried into the next second
    CHECK(records[4].usec == 0);

    const std::vector<std::uint8_t> flags = {kSyn,        kSyn | kAck, kAck,
                                             kPsh | kAck, kPsh | kAck, kPsh | kAck,
                                             kFin | kAck, kFin | kAck, kAck};
    const std::vector<std::size_t> payloads = {0, 0, 0, 22, 65000, 5001, 0, 0, 0};
    std::uint32_t client_next = 0;
    std::uint32_t server_next = 0;
    for (std::size_t i = 0; i < records.size(); ++i) {
      INFO("record " << i);
      const ByteVec& p = records[i].data;
      REQUIRE(p.size() == 40 + payloads[i]);
      CHECK(p[0] == 0x45);
      CHECK(be16(&p[2]) == p.size());
      CHECK(p[9] == 6);
      CHECK(ones_sum(0, p.data(), 20) == 0xffff);  // IPv4 header checksum
      // TCP checksum over the pseudo-header and the segment.
      std::uint32_t sum = ones_sum(0, &p[12], 8);
      sum += 6 + static_cast<std::uint32_t>(p.size() - 20);
      CHECK(ones_sum(sum, &p[20], p.size() - 20) == 0xffff);

      const std::uint8_t* tcp = &p[20];
      const bool from_client = be16(tcp) == 49152;
      CHECK(tcp[13] == flags[i]);
      CHECK(tcp[12] == 0x50);
      const std::uint32_t seq = be32(tcp + 4);
      const std::uint32_t ack = be32(tcp + 8);
      if (i == 0) client_next = seq + 1;
      if (i == 1) {
        CHECK(ack == client_next);
        server_next = seq + 1;
        continue;
      }
      if (i == 0) continue;
      std::uint32_t& mine = from_client ? client_next : server_next;
      CHECK(seq == mine);
      CHECK(ack == (from_client ? server_next : client_next));
      mine += static_cast<std::uint32_t>(payloads[i]) + ((tcp[13] & kFin) != 0 ? 1 : 0);
    }
  }

  SECTION("IPv6") {
    auto h = w.add_flow({"fe80::1", 50000, "2001:db8::2", 102}, 5.25);
    REQUIRE(h.ok());
    REQUIRE(w.write(*h, true, text("abc"), 6).ok());
    REQUIRE(w.flush().ok());
    const auto records = raw_records(read_file(file.str()));
    REQUIRE(records.size() == 4);
    CHECK(records[0].sec == 5);
    CHECK(records[0].usec == 250000);
    const ByteVec& p = records[3].data;
    REQUIRE(p.size() == 40 + 20 + 3);
    CHECK(p[0] == 0x60);
    CHECK(be16(&p[4]) == 23);  // payload length
    CHECK(p[6] == 6);
    CHECK(p[8] == 0xfe);
    CHECK(p[23] == 0x01);
    std::uint32_t sum = ones_sum(0, &p[8], 32);
    sum += 6 + 23;
    CHECK(ones_sum(sum, &p[40], 23) == 0xffff);
    CHECK(std::equal(p.end() - 3, p.end(), text("abc").begin()));
  }
}

TEST_CASE("pcap: writer rejects bad addresses, flows and paths", "[pcap]") {
  TempPath file;
  auto opened = PcapWriter::open(file.str());
  REQUIRE(opened.ok());
  PcapWriter& w = **opened;

  SECTION("invalid address") {
    auto h = w.add_flow({"10.0.0.300", 1, "10.0.0.1", 102}, 0);
    REQUIRE(!h.ok());
    CHECK(h.error().kind == "pcap-address");
    CHECK(h.error().message.find("10.0.0.300") != std::string::npos);
    CHECK(!w.add_flow({"10.0.0.1", 1, "", 102}, 0).ok());
    CHECK(!w.add_flow({"[::1]", 1, "::1", 102}, 0).ok());
    CHECK(w.bytes_written() == 24);  // nothing written for a rejected flow
  }
  SECTION("mixed families") {
    auto h = w.add_flow({"10.0.0.1", 1, "::1", 102}, 0);
    REQUIRE(!h.ok());
    CHECK(h.error().kind == "pcap-address");
  }
  SECTION("unknown and closed flows") {
    auto h = w.add_flow({"10.0.0.1", 1, "10.0.0.2", 102}, 0);
    REQUIRE(h.ok());
    auto unknown = w.write(*h + 1, true, kCr, 0);
    REQUIRE(!unknown.ok());
    CHECK(unknown.error().kind == "pcap-flow");
    CHECK(!w.write(-1, true, kCr, 0).ok());
    CHECK(!w.close_flow(*h + 1, 0).ok());
    REQUIRE(w.close_flow(*h, 0).ok());
    auto closed = w.write(*h, true, kCr, 0);
    REQUIRE(!closed.ok());
    CHECK(closed.error().kind == "pcap-flow");
    CHECK(!w.close_flow(*h, 0).ok());
  }
  SECTION("unwritable path") {
    const std::string path = file.str() + ".d/none/x.pcap";
    auto bad = PcapWriter::open(path);
    REQUIRE(!bad.ok());
    CHECK(bad.error().kind == "pcap-open");
    CHECK(bad.error().message == "cannot open " + path + ": No such file or directory");
  }
}

TEST_CASE("pcap: stream pointers stay valid while many streams are added", "[pcap]") {
  TempPath file;
  auto opened = PcapWriter::open(file.str());
  REQUIRE(opened.ok());
  PcapWriter& w = **opened;
  constexpr int kFlows = 60;
  for (int i = 0; i < kFlows; ++i) {
    REQUIRE(w.add_flow({"10.2.0." + std::to_string(i + 1), 30000, "10.2.1.1", 102}, 1).ok());
  }
  for (int round = 0; round < 3; ++round) {
    for (int i = 0; i < kFlows; ++i) {
      REQUIRE(w.write(i, round % 2 == 0, ByteVec(10, static_cast<std::uint8_t>(i)), 2).ok());
    }
  }
  REQUIRE(w.flush().ok());

  std::map<int, const PcapStreamInfo*> seen;
  std::size_t chunks = 0;
  auto result = read_pcap_streams(
      file.str(), 102,
      [&](const PcapChunk& c) {
        ++chunks;
        auto [it, fresh] = seen.try_emplace(c.stream->id, c.stream);
        CHECK(it->second == c.stream);
        // Every earlier pointer still reads back its own stream (ASan would
        // flag a pointer into reallocated storage).
        for (const auto& [id, info] : seen) REQUIRE(info->id == id);
        CHECK(c.stream->client == "10.2.0." + std::to_string(c.stream->id) + ":30000");
        CHECK(c.bytes[0] == c.stream->id - 1);
      },
      [](const PcapNotice&) { FAIL("no notice expected"); });
  REQUIRE(result.ok());
  CHECK(chunks == 3 * kFlows);
  CHECK(result->streams.size() == kFlows);
}

// --- hand-crafted captures ---------------------------------------------------

TEST_CASE("pcap: out-of-order segments are delivered once the hole fills", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(1000, {}, kSyn)));         // 1
  pcap.add(ipv4(conv.s(5000, {}, kSyn | kAck)));  // 2
  pcap.add(ipv4(conv.c(1012, text("world"))));    // 3: third part first
  pcap.add(ipv4(conv.c(1007, text("wide "))));    // 4
  pcap.add(ipv4(conv.s(5001, text("reply"))));    // 5: other direction unaffected
  pcap.add(ipv4(conv.c(1001, text("hello "))));   // 6: fills the hole
  pcap.add(ipv4(conv.c(1017, text("!"))));        // 7: in order again
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.summary.packets == 7);
  CHECK(r.summary.tcp_packets == 7);
  REQUIRE(r.summary.streams.size() == 1);
  CHECK(r.summary.streams[0].saw_syn);
  CHECK(r.bytes(1, kC2S) == text("hello wide world!"));
  CHECK(r.bytes(1, kS2C) == text("reply"));
  // Held segments keep their own packet numbers but come after the filler.
  CHECK(r.packets(1, kC2S) == std::vector<std::uint64_t>{6, 4, 3, 7});
  REQUIRE(r.chunks.size() == 5);
  CHECK(r.chunks[0].packet == 5);
  CHECK(r.chunks[1].packet == 6);
  CHECK(r.chunks[1].time == Approx(1006.25));
}

TEST_CASE("pcap: retransmitted and overlapping segments are trimmed", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(99, {}, kSyn)));
  pcap.add(ipv4(conv.c(100, text("0123456789"))));
  pcap.add(ipv4(conv.c(100, text("0123456789"))));  // exact duplicate
  pcap.add(ipv4(conv.c(105, text("56789ABCDE"))));  // half old, half new
  pcap.add(ipv4(conv.c(102, text("23"))));          // wholly old
  // Overlapping out-of-order segments, then the filler.
  pcap.add(ipv4(conv.c(120, text("KLMNOP"))));
  pcap.add(ipv4(conv.c(118, text("IJKL"))));
  pcap.add(ipv4(conv.c(120, text("KLM"))));  // shorter copy of a held one
  pcap.add(ipv4(conv.c(115, text("FGH"))));
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.bytes(1, kC2S) == text("0123456789ABCDEFGHIJKLMNOP"));
  std::vector<std::size_t> sizes;
  for (const auto& c : r.chunks) sizes.push_back(c.size);
  CHECK(sizes == std::vector<std::size_t>{10, 5, 3, 4, 4});
}

TEST_CASE("pcap: sequence numbers wrap", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0xfffffff8u, {}, kSyn)));
  pcap.add(ipv4(conv.c(0xfffffff9u, text("abcd"))));  // ...fff9 - ...fffc
  pcap.add(ipv4(conv.c(0x00000001u, text("ijkl"))));  // held across the wrap
  pcap.add(ipv4(conv.c(0xfffffffdu, text("efgh"))));  // ...fffd - 0x0
  pcap.add(ipv4(conv.c(0xfffffffbu, text("cdef"))));  // old, across nothing new
  pcap.add(ipv4(conv.c(0x00000005u, text("mn"))));
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.bytes(1, kC2S) == text("abcdefghijklmn"));
}

TEST_CASE("pcap: segments never captured are skipped at the end of the capture", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0, {}, kSyn)));
  pcap.add(ipv4(conv.s(0, {}, kSyn | kAck)));
  pcap.add(ipv4(conv.c(1, text("abcde"))));
  pcap.add(ipv4(conv.c(11, text("klmno"))));  // 6..10 missing
  pcap.add(ipv4(conv.c(16, text("pq"))));
  pcap.add(ipv4(conv.c(21, text("uv"))));  // 18..20 missing too
  pcap.add(ipv4(conv.s(1, text("ok"))));   // no ACK flag: says nothing of the holes
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  // Nothing filled the holes by the end: each is skipped, with a notice, and
  // what followed it delivered, in packet order.
  CHECK(r.bytes(1, kC2S) == text("abcdeklmnopquv"));
  CHECK(r.packets(1, kC2S) == std::vector<std::uint64_t>{3, 4, 5, 6});
  CHECK(r.bytes(1, kS2C) == text("ok"));
  REQUIRE(r.notices.size() == 2);
  CHECK(r.notices[0].stream == 1);
  CHECK(r.notices[0].dir == kC2S);
  CHECK(r.notices[0].message == "gap: 5 bytes never captured (seq 6, stream offset 5) by the end of the capture; skipped");
  CHECK(r.notices[1].message == "gap: 3 bytes never captured (seq 18, stream offset 17) by the end of the capture; skipped");
}

TEST_CASE("pcap: a hole the receiver acknowledged is skipped at the sender's next packet", "[pcap]") {
  // The receiver's ACK covers bytes the capture never saw: no retransmission
  // will bring them. The sender's next packet may still hold them (a capture
  // can order packets differently from the wire); if it does not, the hole
  // is skipped then, not at the end of the file.
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0, {}, kSyn)));
  pcap.add(ipv4(conv.s(500, {}, kSyn | kAck)));
  pcap.add(ipv4(conv.c(1, text("abcde"))));
  pcap.add(ipv4(conv.c(11, text("klmno"))));  // 6..10 missing
  Tcp partial = conv.s(501, {}, kAck);
  partial.ack = 8;  // the receiver has 6 and 7 only: 8..10 may still come
  pcap.add(ipv4(partial));
  pcap.add(ipv4(conv.c(16, text("pq"))));  // a packet that does not fill the hole: still held
  Tcp all = conv.s(501, text("ok"));
  all.ack = 18;  // the receiver has it all
  pcap.add(ipv4(all));
  pcap.add(ipv4(conv.c(18, text("rs"))));  // the sender's next packet: the hole is skipped
  pcap.add(ipv4(conv.c(6, text("fghij"))));  // the missing bytes, too late
  pcap.add(ipv4(conv.s(503, text("!"))));
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.bytes(1, kC2S) == text("abcdeklmnopqrs"));
  REQUIRE(r.notices.size() == 2);
  CHECK(r.notices[0].message ==
        "gap: 5 bytes never captured (seq 6, stream offset 5) but acknowledged by the receiver at packet 7; skipped");
  CHECK(r.notices[1].message ==
        "packet 9: 5 bytes of the gap skipped at stream offset 5 arrived late (the capture has them out of order); "
        "not decoded");
  // Chunks in the order they could be delivered: the server's "ok" (packet 7)
  // before what was held behind the hole, which came out at packet 8.
  REQUIRE(r.chunks.size() == 6);
  CHECK(r.chunks[1].packet == 7);
  CHECK(r.chunks[1].dir == kS2C);
  CHECK(r.chunks[2].packet == 4);
  CHECK(r.chunks[3].packet == 6);
  CHECK(r.chunks[4].packet == 8);
  CHECK(r.chunks[5].packet == 10);
}

TEST_CASE("pcap: a segment the capture holds just after the ACK for it still fills the hole", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0, {}, kSyn)));
  pcap.add(ipv4(conv.s(500, {}, kSyn | kAck)));
  pcap.add(ipv4(conv.c(1, text("abcde"))));
  pcap.add(ipv4(conv.c(11, text("klmno"))));
  Tcp ack = conv.s(501, {}, kAck);
  ack.ack = 16;
  pcap.add(ipv4(ack));
  pcap.add(ipv4(conv.c(6, text("fghij"))));  // captured after the ACK that covers it
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.bytes(1, kC2S) == text("abcdefghijklmno"));
}

TEST_CASE("pcap: more than 16 MiB held behind a hole skips the hole", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0, {}, kSyn)));
  const ByteVec all = pattern(100 + 260 * 65000, 3);
  // The first 100 octets are lost; 260 full segments follow.
  for (std::size_t i = 0; i < 260; ++i) {
    const std::size_t start = 100 + i * 65000;
    Tcp t = conv.c(static_cast<std::uint32_t>(1 + start));
    t.payload.assign(all.begin() + static_cast<std::ptrdiff_t>(start),
                     all.begin() + static_cast<std::ptrdiff_t>(start + 65000));
    pcap.add(ipv4(t));
  }
  pcap.add(ipv4(conv.c(1, ByteVec(all.begin(), all.begin() + 100))));  // too late
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  REQUIRE(r.notices.size() == 2);
  CHECK_THAT(r.notices[0].message, Catch::StartsWith("gap: 100 bytes never captured"));
  CHECK_THAT(r.notices[1].message, Catch::EndsWith(": 100 bytes of the gap skipped at stream offset 0 arrived late "
                                                   "(the capture has them out of order); not decoded"));
  CHECK(r.bytes(1, kC2S) == ByteVec(all.begin() + 100, all.end()));
}

TEST_CASE("pcap: truncated and malformed packets are skipped", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.c(0, {}, kSyn)));
  pcap.add(ipv4(conv.c(1, text("first"))));
  pcap.add(ipv4(conv.c(6, ByteVec(100, 0x41))), 20 + 20 + 30);  // snap length cut the payload
  pcap.add(ipv4(conv.c(106, text("later"))));
  pcap.add(ipv4(conv.c(111, text("x"))), 10);       // not even the IP header
  pcap.add(ipv4(conv.c(111, text("x"))), 20 + 12);  // TCP header cut: no ports
  pcap.add(ByteVec{0x45, 0x00});                    // a 2-octet packet
  pcap.add(ByteVec{});                              // an empty one
  ByteVec bad_ihl = ipv4(conv.c(111, text("y")));
  bad_ihl[0] = 0x43;  // IHL below 5
  pcap.add(bad_ihl);
  ByteVec bad_offset = ipv4(conv.c(111, text("z")));
  bad_offset[20 + 12] = 0xf0;  // TCP data offset past the end
  pcap.add(bad_offset);
  ByteVec short_total = ipv4(conv.c(111, text("w")));
  short_total[3] = 10;  // total length < header
  pcap.add(short_total);
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.summary.packets == 11);
  CHECK(r.bytes(1, kC2S) == text("firstlater"));
  CHECK(r.summary.tcp_packets == 4);
  REQUIRE(r.notices.size() == 2);
  CHECK_THAT(r.notices[0].message,
             Catch::Contains("packet 3: truncated by the capture (30 of 100"));
  CHECK_THAT(r.notices[1].message, Catch::StartsWith("gap: 100 bytes never captured"));
}

TEST_CASE("pcap: a stream joined midway has saw_syn false", "[pcap]") {
  TempPath file;
  const Conv conv;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(conv.s(9000, text("srv"))));  // the server speaks first in the capture
  pcap.add(ipv4(conv.c(5000, {}, kAck)));     // a pure ACK does not start delivery
  pcap.add(ipv4(conv.c(5000, text("cli"))));
  pcap.add(ipv4(conv.c(4990, text("0123456789"))));  // before the join: dropped as old
  pcap.add(ipv4(conv.s(9003, text("ver"))));
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  REQUIRE(r.summary.streams.size() == 1);
  CHECK_FALSE(r.summary.streams[0].saw_syn);
  CHECK(r.summary.streams[0].client == "10.0.0.1:40000");
  CHECK(r.summary.streams[0].server == "10.0.0.2:102");
  CHECK(r.bytes(1, kC2S) == text("cli"));
  CHECK(r.bytes(1, kS2C) == text("srvver"));
}

TEST_CASE("pcap: streams, ports and tuple reuse", "[pcap]") {
  TempPath file;
  const Conv a;
  Conv other_port = a;
  other_port.server_port = 80;
  PcapFile pcap(kLinkRaw);
  pcap.add(ipv4(a.s(700, {}, kSyn | kAck)));       // 1: SYN-ACK captured before the SYN
  pcap.add(ipv4(a.c(100, {}, kSyn)));              // 2
  pcap.add(ipv4(other_port.c(1, text("GET /"))));  // 3: not our port
  pcap.add(ipv4_packet("10.0.0.1", "10.0.0.2", ByteVec(12, 0), {{}, 0, 1, 17}));  // 4: UDP
  pcap.add(ipv4(a.c(101, text("one"))));                                          // 5
  pcap.add(ipv4(a.c(104, text("X"), kRst | kAck)));  // 6: RST payload is not stream data
  pcap.add(ipv4(a.c(50000, {}, kSyn)));              // 7: tuple reused: a new stream
  pcap.add(ipv4(a.s(90000, {}, kSyn | kAck)));       // 8
  pcap.add(ipv4(a.c(50000, {}, kSyn)));              // 9: retransmitted SYN: same stream
  pcap.add(ipv4(a.c(50001, text("two"))));           // 10
  pcap.add(ipv4(a.c(50004, {}, kFin | kAck)));       // 11
  pcap.add(ipv4(a.s(90001, {}, kFin | kAck)));       // 12
  pcap.add(ipv4(a.c(60000, {}, kSyn)));              // 13: after FINs: a third stream
  pcap.add(ipv4(a.c(60001, text("three"))));         // 14
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.notices.empty());
  CHECK(r.summary.packets == 14);
  CHECK(r.summary.tcp_packets == 12);
  REQUIRE(r.summary.streams.size() == 3);
  CHECK(r.bytes(1, kC2S) == text("one"));
  CHECK(r.bytes(2, kC2S) == text("two"));
  CHECK(r.bytes(3, kC2S) == text("three"));
  for (const auto& s : r.summary.streams) {
    CHECK(s.saw_syn);
    CHECK(s.client == "10.0.0.1:40000");
  }

  SECTION("another port") {
    const Reading web = read_all(file.str(), 80);
    REQUIRE(web.ok);
    REQUIRE(web.summary.streams.size() == 1);
    CHECK(web.summary.tcp_packets == 1);
    CHECK(web.summary.streams[0].server == "10.0.0.2:80");
    CHECK_FALSE(web.summary.streams[0].saw_syn);
    CHECK(web.bytes(1, kC2S) == text("GET /"));
  }
}

TEST_CASE("pcap: IPv4 options, IPv6 extension headers and fragments", "[pcap]") {
  TempPath file;
  Conv v6;
  v6.client = "2001:db8::10";
  v6.server = "2001:db8::20";
  const Conv v4;
  PcapFile pcap(kLinkRaw);

  // IPv4 with IHL 6 (one word of NOP options).
  pcap.add(ipv4_packet(v4.client, v4.server, tcp_bytes(v4.c(0, {}, kSyn)), {{1, 1, 1, 1}}));
  pcap.add(ipv4_packet(v4.client, v4.server, tcp_bytes(v4.c(1, text("opt"))), {{1, 1, 1, 1}}));

  // IPv6: hop-by-hop (8 octets) -> destination options (16 octets) -> TCP.
  auto with_ext = [&](const Tcp& t) {
    ByteVec after{60, 0, 1, 4, 0, 0, 0, 0};  // hop-by-hop, next = dest opts, PadN
    append(after, ByteVec{6, 1, 1, 12});     // dest opts, next = TCP, 16 octets
    append(after, ByteVec(12, 0));
    append(after, tcp_bytes(t));
    return ipv6_packet(t.src, t.dst, 0, after);
  };
  pcap.add(with_ext(v6.c(0, {}, kSyn)));
  pcap.add(with_ext(v6.c(1, text("ext"))));
  pcap.add(ipv6(v6.s(77, text("plain"))));

  // A fragmented IPv4 segment: first fragment carries the TCP header.
  const ByteVec whole = tcp_bytes(v4.c(4, text("fragmented data")));
  pcap.add(ipv4_packet(v4.client, v4.server, ByteVec(whole.begin(), whole.begin() + 24),
                       {{}, 0x2000, 99}));
  pcap.add(ipv4_packet(v4.client, v4.server, ByteVec(whole.begin() + 24, whole.end()),
                       {{}, 3, 99}));                                         // offset 3 * 8 = 24
  pcap.add(ipv4_packet(v4.client, v4.server, ByteVec(8, 0), {{}, 5, 1234}));  // unknown origin
  // An IPv6 non-first fragment of a known first fragment.
  ByteVec frag1{6, 0, 0, 1, 0, 0, 0, 42};  // next TCP, offset 0, M=1, id 42
  append(frag1, tcp_bytes(v6.c(4, text("x"))));
  pcap.add(ipv6_packet(v6.client, v6.server, 44, frag1));
  ByteVec frag2{6, 0, 0, 16, 0, 0, 0, 42};  // offset 2 (16 octets), M=0, id 42
  append(frag2, ByteVec(8, 0));
  pcap.add(ipv6_packet(v6.client, v6.server, 44, frag2));
  pcap.save(file.str());

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  REQUIRE(r.summary.streams.size() == 2);
  CHECK(r.summary.streams[0].client == "10.0.0.1:40000");
  CHECK(r.summary.streams[1].client == "[2001:db8::10]:40000");
  CHECK(r.summary.streams[1].server == "[2001:db8::20]:102");
  CHECK(r.bytes(1, kC2S) == text("opt"));
  CHECK(r.bytes(2, kC2S) == text("ext"));
  CHECK(r.bytes(2, kS2C) == text("plain"));
  REQUIRE(r.notices.size() == 4);
  CHECK(r.notices[0].stream == 1);
  CHECK_THAT(r.notices[0].message, Catch::Contains("packet 6: IPv4 fragmented segment skipped"));
  CHECK_THAT(r.notices[1].message, Catch::Contains("packet 7: IPv4 fragment at offset 24 skipped"));
  CHECK(r.notices[2].stream == 2);
  CHECK_THAT(r.notices[2].message, Catch::Contains("packet 9: IPv6 fragmented segment"));
  CHECK_THAT(r.notices[3].message, Catch::Contains("packet 10: IPv6 fragment at offset 16"));
  CHECK(r.summary.tcp_packets == 9);
}

TEST_CASE("pcap: link-layer headers", "[pcap]") {
  TempPath file;
  const Conv v4;
  Conv v6;
  v6.client = "fe80::1";
  v6.server = "fe80::2";
  // The same exchange over each link type: handshake, data both ways.
  auto exchange = [&](std::uint32_t linktype,
                      const std::function<ByteVec(const ByteVec&, bool)>& wrap, bool use_v6) {
    const Conv& c = use_v6 ? v6 : v4;
    auto ip = [&](const Tcp& t) { return wrap(use_v6 ? ipv6(t) : ipv4(t), use_v6); };
    PcapFile pcap(linktype);
    pcap.add(ip(c.c(10, {}, kSyn)));
    pcap.add(ip(c.s(20, {}, kSyn | kAck)));
    pcap.add(ip(c.c(11, text("hi"))));
    pcap.add(ip(c.s(21, kCc)));
    pcap.save(file.str());
    const Reading r = read_all(file.str());
    REQUIRE(r.ok);
    CHECK(r.notices.empty());
    CHECK(r.summary.tcp_packets == 4);
    REQUIRE(r.summary.streams.size() == 1);
    CHECK(r.summary.streams[0].saw_syn);
    CHECK(r.summary.streams[0].client == (use_v6 ? "[fe80::1]:40000" : "10.0.0.1:40000"));
    CHECK(r.bytes(1, kC2S) == text("hi"));  // no Ethernet padding in it
    CHECK(r.bytes(1, kS2C) == kCc);
  };
  auto ethertype = [](bool is_v6) -> std::uint16_t { return is_v6 ? 0x86dd : 0x0800; };

  for (const bool use_v6 : {false, true}) {
    DYNAMIC_SECTION("Ethernet " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkEthernet, [&](const ByteVec& ip, bool v) { return ethernet(ip, ethertype(v)); },
          use_v6);
    }
    DYNAMIC_SECTION("Ethernet 802.1Q " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkEthernet,
          [&](const ByteVec& ip, bool v) { return ethernet(ip, ethertype(v), {0x8100}); }, use_v6);
    }
    DYNAMIC_SECTION("Ethernet QinQ " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkEthernet,
          [&](const ByteVec& ip, bool v) {
            return ethernet(ip, ethertype(v), {0x88a8, 0x8100});
          },
          use_v6);
    }
    DYNAMIC_SECTION("Linux SLL " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkSll, [&](const ByteVec& ip, bool v) { return linux_sll(ip, ethertype(v)); }, use_v6);
    }
    DYNAMIC_SECTION("Linux SLL2 " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkSll2, [&](const ByteVec& ip, bool v) { return linux_sll2(ip, ethertype(v)); },
          use_v6);
    }
    DYNAMIC_SECTION("BSD null " << (use_v6 ? "IPv6" : "IPv4")) {
      // Host byte order (little-endian here); AF_INET6 is 30 on macOS.
      exchange(
          kLinkNull,
          [&](const ByteVec& ip, bool v) {
            ByteVec f;
            put32le(f, v ? 30 : 2);
            append(f, ip);
            return f;
          },
          use_v6);
    }
    DYNAMIC_SECTION("OpenBSD loop " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkLoop,
          [&](const ByteVec& ip, bool v) {
            ByteVec f;
            put32(f, v ? 24 : 2);  // network byte order
            append(f, ip);
            return f;
          },
          use_v6);
    }
    DYNAMIC_SECTION("raw " << (use_v6 ? "IPv6" : "IPv4")) {
      exchange(
          kLinkRaw, [](const ByteVec& ip, bool) { return ip; }, use_v6);
    }
  }
  SECTION("LINKTYPE_IPV4") {
    exchange(
        kLinkIpv4, [](const ByteVec& ip, bool) { return ip; }, false);
  }
  SECTION("Ethernet frames that are not IP, or too short") {
    PcapFile pcap(kLinkEthernet);
    pcap.add(ethernet(ByteVec(28, 1), 0x0806));                // ARP
    pcap.add(ethernet(ipv4(v4.c(1, text("a"))), 0x8100), 16);  // VLAN tag cut
    pcap.add(ByteVec(10, 0));                                  // runt
    pcap.add(ethernet(ipv4(v4.c(1, text("b"))), 0x0800));
    pcap.save(file.str());
    const Reading r = read_all(file.str());
    REQUIRE(r.ok);
    CHECK(r.summary.packets == 4);
    CHECK(r.summary.tcp_packets == 1);
    CHECK(r.bytes(1, kC2S) == text("b"));
  }
}

TEST_CASE("pcap: pcapng is read too", "[pcap]") {
  TempPath file;
  const Conv conv;
  ByteVec ng;
  // Section header block: type, length, byte-order magic, version 1.0,
  // section length unknown (-1), length again.
  put32le(ng, 0x0a0d0d0a);
  put32le(ng, 28);
  put32le(ng, 0x1a2b3c4d);
  put16le(ng, 1);
  put16le(ng, 0);
  put32le(ng, 0xffffffff);
  put32le(ng, 0xffffffff);
  put32le(ng, 28);
  // Interface description block: raw IP, snap length 65535, no options.
  put32le(ng, 1);
  put32le(ng, 20);
  put16le(ng, 101);
  put16le(ng, 0);
  put32le(ng, 65535);
  put32le(ng, 20);
  // Enhanced packet blocks; timestamps in microseconds (the default).
  auto epb = [&](const ByteVec& packet, std::uint64_t usec) {
    const std::size_t padded = (packet.size() + 3) / 4 * 4;
    const auto length = static_cast<std::uint32_t>(32 + padded);
    put32le(ng, 6);
    put32le(ng, length);
    put32le(ng, 0);  // interface 0
    put32le(ng, static_cast<std::uint32_t>(usec >> 32));
    put32le(ng, static_cast<std::uint32_t>(usec));
    put32le(ng, static_cast<std::uint32_t>(packet.size()));
    put32le(ng, static_cast<std::uint32_t>(packet.size()));
    append(ng, packet);
    ng.resize(ng.size() + padded - packet.size(), 0);
    put32le(ng, length);
  };
  epb(ipv4(conv.c(1, {}, kSyn)), 1700000000'000000);
  epb(ipv4(conv.c(2, kCr)), 1700000000'500000);
  epb(ipv4(conv.s(9, kCc)), 1700000001'250000);
  write_file(file.str(), ng);

  const Reading r = read_all(file.str());
  REQUIRE(r.ok);
  CHECK(r.summary.packets == 3);
  CHECK(r.bytes(1, kC2S) == kCr);
  CHECK(r.bytes(1, kS2C) == kCc);
  REQUIRE(r.chunks.size() == 2);
  CHECK(r.chunks[0].time == Approx(1700000000.5).margin(1e-6));
  CHECK(r.chunks[1].time == Approx(1700000001.25).margin(1e-6));
  CHECK(r.chunks[1].packet == 3);
}

TEST_CASE("pcap: files that cannot be read", "[pcap]") {
  TempPath file;
  SECTION("nonexistent") {
    const std::string path = file.str() + "-missing.pcap";
    const Reading r = read_all(path);
    REQUIRE(!r.ok);
    CHECK(r.error.kind == "pcap-open");
    CHECK(r.error.message == "cannot open " + path + ": No such file or directory");
  }
  SECTION("garbage") {
    write_file(file.str(), text("this is not a capture file at all, just words"));
    const Reading r = read_all(file.str());
    REQUIRE(!r.ok);
    CHECK(r.error.kind == "pcap-open");
    CHECK_THAT(r.error.message, Catch::StartsWith("cannot open " + file.str() + ": "));
  }
  SECTION("empty") {
    write_file(file.str(), {});
    const Reading r = read_all(file.str());
    REQUIRE(!r.ok);
    CHECK(r.error.kind == "pcap-open");
  }
  SECTION("unsupported link type") {
    PcapFile pcap(kLinkIeee80211);
    pcap.add(ByteVec(24, 0));
    pcap.save(file.str());
    const Reading r = read_all(file.str());
    REQUIRE(!r.ok);
    CHECK(r.error.kind == "pcap-linktype");
    CHECK_THAT(r.error.message, Catch::Contains(file.str()));
    CHECK_THAT(r.error.message, Catch::Contains("IEEE802_11 (105)"));
  }
  SECTION("cut off in the middle of a record") {
    const Conv conv;
    PcapFile pcap(kLinkRaw);
    pcap.add(ipv4(conv.c(0, {}, kSyn)));
    pcap.add(ipv4(conv.c(1, text("kept"))));
    pcap.add(ipv4(conv.c(9, text("hello"))));
    pcap.add(ipv4(conv.c(5, text("lost"))));
    ByteVec bytes = pcap.bytes();
    bytes.resize(bytes.size() - 3);
    write_file(file.str(), bytes);
    const Reading r = read_all(file.str());
    REQUIRE(r.ok);  // what the file holds before the damage is read
    CHECK_THAT(r.summary.read_error, Catch::Contains("cannot read packet 4"));
    CHECK_THAT(r.summary.read_error, Catch::Contains(file.str()));
    CHECK(r.summary.packets == 3);
    // What came before the damage was delivered, the hole reported and what
    // was held behind it delivered too.
    CHECK(r.bytes(1, kC2S) == text("kepthello"));
    REQUIRE(r.notices.size() == 1);
    CHECK_THAT(r.notices[0].message, Catch::StartsWith("gap: 4 bytes never captured"));
  }
}

TEST_CASE("pcap: tshark dissects a written file as TPKT/COTP", "[pcap][tshark]") {
  if (!tshark_available()) {
    WARN("tshark not found on PATH: skipping the tshark check");
    return;
  }
  TempPath file;
  {
    auto opened = PcapWriter::open(file.str());
    REQUIRE(opened.ok());
    PcapWriter& w = **opened;
    auto v4 = w.add_flow({"192.0.2.10", 49152, "192.0.2.20", 102}, 1700000000);
    REQUIRE(v4.ok());
    REQUIRE(w.write(*v4, true, kCr, 1700000000.1).ok());
    REQUIRE(w.write(*v4, false, kCc, 1700000000.2).ok());
    REQUIRE(w.close_flow(*v4, 1700000000.3).ok());
    auto v6 = w.add_flow({"2001:db8::10", 49153, "2001:db8::20", 102}, 1700000001);
    REQUIRE(v6.ok());
    // A CR split across two segments: tshark must reassemble it.
    REQUIRE(w.write(*v6, true, codec::Bytes(kCr).first(5), 1700000001.1).ok());
    REQUIRE(w.write(*v6, true, codec::Bytes(kCr).subspan(5), 1700000001.2).ok());
    REQUIRE(w.write(*v6, false, kCc, 1700000001.3).ok());
    REQUIRE(w.close_flow(*v6, 1700000001.4).ok());
    REQUIRE(w.flush().ok());
  }

  const auto [out, status] =
      run("tshark -r '" + file.str() + "' -T fields -e cotp.type -e tcp.srcport 2>/dev/null");
  REQUIRE(status == 0);
  std::vector<std::string> cotp;
  for (const auto& line : lines_of(out)) {
    if (!line.empty() && line[0] != '\t') cotp.push_back(line);  // packets with a COTP type
  }
  CHECK(cotp == std::vector<std::string>{"0x0e\t49152", "0x0d\t102", "0x0e\t49153", "0x0d\t102"});

  // With validation on, every checksum is good (status 1) and TCP sees no
  // problems (no expert info from the tcp.analysis checks).
  const auto [checks, status2] =
      run("tshark -r '" + file.str() +
          "' -o ip.check_checksum:TRUE -o tcp.check_checksum:TRUE -T fields -e ip.checksum.status "
          "-e ipv6.src -e tcp.checksum.status -e tcp.analysis.flags 2>/dev/null");
  REQUIRE(status2 == 0);
  const auto rows = lines_of(checks);
  CHECK(rows.size() == 17);
  for (const auto& row : rows) {
    INFO(row);
    CHECK((row.starts_with("1\t\t1\t") || row.starts_with("\t2001:db8::")));
    CHECK(row.ends_with("\t1\t"));
  }
}

}  // namespace isoproxy
