// Captures built byte by byte, for what PcapWriter never produces: reordering,
// loss, truncation, ACKs, other link types. Shared by the pcap reader's unit
// tests and `isoproxy decode --pcap`'s through the binary.
#pragma once

#include <arpa/inet.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace isoproxy::test::craft {

using ByteVec = std::vector<std::uint8_t>;

constexpr std::uint8_t kFin = 0x01;
constexpr std::uint8_t kSyn = 0x02;
constexpr std::uint8_t kRst = 0x04;
constexpr std::uint8_t kPsh = 0x08;
constexpr std::uint8_t kAck = 0x10;

// Link types as written in file headers (LINKTYPE_* values).
constexpr std::uint32_t kLinkNull = 0;
constexpr std::uint32_t kLinkEthernet = 1;
constexpr std::uint32_t kLinkRaw = 101;
constexpr std::uint32_t kLinkLoop = 108;
constexpr std::uint32_t kLinkSll = 113;
constexpr std::uint32_t kLinkIeee80211 = 105;
constexpr std::uint32_t kLinkIpv4 = 228;
constexpr std::uint32_t kLinkSll2 = 276;

inline void write_file(const std::string& path, const ByteVec& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(bytes.data()),
            static_cast<std::streamsize>(bytes.size()));
  REQUIRE(out.good());
}

inline std::array<std::uint8_t, 16> address(const std::string& s, int family) {
  std::array<std::uint8_t, 16> a{};
  REQUIRE(inet_pton(family, s.c_str(), a.data()) == 1);
  return a;
}

inline void put16(ByteVec& v, std::uint16_t x) {
  v.push_back(static_cast<std::uint8_t>(x >> 8));
  v.push_back(static_cast<std::uint8_t>(x));
}
inline void put32(ByteVec& v, std::uint32_t x) {
  put16(v, static_cast<std::uint16_t>(x >> 16));
  put16(v, static_cast<std::uint16_t>(x));
}
inline void put16le(ByteVec& v, std::uint16_t x) {
  v.push_back(static_cast<std::uint8_t>(x));
  v.push_back(static_cast<std::uint8_t>(x >> 8));
}
inline void put32le(ByteVec& v, std::uint32_t x) {
  put16le(v, static_cast<std::uint16_t>(x));
  put16le(v, static_cast<std::uint16_t>(x >> 16));
}
inline void append(ByteVec& v, const ByteVec& more) { v.insert(v.end(), more.begin(), more.end()); }

struct Tcp {
  std::string src;
  std::uint16_t sport = 0;
  std::string dst;
  std::uint16_t dport = 0;
  std::uint32_t seq = 0;
  std::uint8_t flags = kPsh | kAck;
  ByteVec payload;
  std::uint32_t ack = 0;  // the acknowledgment number (0 unless set)
};

// TCP header + payload. Checksums are left 0: the reader must not care
// (captures taken with checksum offload have them wrong anyway).
inline ByteVec tcp_bytes(const Tcp& t) {
  ByteVec v;
  put16(v, t.sport);
  put16(v, t.dport);
  put32(v, t.seq);
  put32(v, t.ack);
  v.push_back(0x50);  // data offset 5
  v.push_back(t.flags);
  put16(v, 65535);  // window
  put16(v, 0);      // checksum
  put16(v, 0);      // urgent
  append(v, t.payload);
  return v;
}

struct Ipv4Options {
  ByteVec options;              // multiple of 4
  std::uint16_t frag = 0x4000;  // DF
  std::uint16_t id = 7;
  std::uint8_t proto = 6;
};

inline ByteVec ipv4_packet(const std::string& src, const std::string& dst, const ByteVec& l4,
                    const Ipv4Options& o = {}) {
  ByteVec v;
  const std::size_t header = 20 + o.options.size();
  v.push_back(static_cast<std::uint8_t>(0x40 | (header / 4)));
  v.push_back(0);
  put16(v, static_cast<std::uint16_t>(header + l4.size()));
  put16(v, o.id);
  put16(v, o.frag);
  v.push_back(64);
  v.push_back(o.proto);
  put16(v, 0);
  const auto s = address(src, AF_INET);
  const auto d = address(dst, AF_INET);
  v.insert(v.end(), s.begin(), s.begin() + 4);
  v.insert(v.end(), d.begin(), d.begin() + 4);
  append(v, o.options);
  append(v, l4);
  return v;
}

inline ByteVec ipv4(const Tcp& t) { return ipv4_packet(t.src, t.dst, tcp_bytes(t)); }

// `after` is whatever follows the fixed header (extension headers, then TCP).
inline ByteVec ipv6_packet(const std::string& src, const std::string& dst, std::uint8_t next,
                    const ByteVec& after) {
  ByteVec v{0x60, 0, 0, 0};
  put16(v, static_cast<std::uint16_t>(after.size()));
  v.push_back(next);
  v.push_back(64);
  const auto s = address(src, AF_INET6);
  const auto d = address(dst, AF_INET6);
  v.insert(v.end(), s.begin(), s.end());
  v.insert(v.end(), d.begin(), d.end());
  append(v, after);
  return v;
}

inline ByteVec ipv6(const Tcp& t) { return ipv6_packet(t.src, t.dst, 6, tcp_bytes(t)); }

// One hand-crafted conversation: builds its segments.
struct Conv {
  std::string client = "10.0.0.1";
  std::uint16_t client_port = 40000;
  std::string server = "10.0.0.2";
  std::uint16_t server_port = 102;

  Tcp c(std::uint32_t seq, ByteVec payload = {}, std::uint8_t flags = kPsh | kAck) const {
    return Tcp{client, client_port, server, server_port, seq, flags, std::move(payload)};
  }
  Tcp s(std::uint32_t seq, ByteVec payload = {}, std::uint8_t flags = kPsh | kAck) const {
    return Tcp{server, server_port, client, client_port, seq, flags, std::move(payload)};
  }
};

// A classic pcap file assembled record by record.
class PcapFile {
 public:
  explicit PcapFile(std::uint32_t linktype) {
    put32le(bytes_, 0xa1b2c3d4);
    put16le(bytes_, 2);
    put16le(bytes_, 4);
    put32le(bytes_, 0);
    put32le(bytes_, 0);
    put32le(bytes_, 262144);
    put32le(bytes_, linktype);
  }
  // A record of `frame`; with `caplen` smaller than the frame, the record
  // claims the whole frame but holds only its first `caplen` octets.
  void add(const ByteVec& frame, std::size_t caplen = SIZE_MAX) {
    caplen = std::min(caplen, frame.size());
    ++count_;
    put32le(bytes_, 1000 + count_);  // seconds
    put32le(bytes_, 250000);         // microseconds
    put32le(bytes_, static_cast<std::uint32_t>(caplen));
    put32le(bytes_, static_cast<std::uint32_t>(frame.size()));
    bytes_.insert(bytes_.end(), frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(caplen));
  }
  void save(const std::string& path) const { write_file(path, bytes_); }
  const ByteVec& bytes() const { return bytes_; }

 private:
  ByteVec bytes_;
  std::uint32_t count_ = 0;
};

}  // namespace isoproxy::test::craft
